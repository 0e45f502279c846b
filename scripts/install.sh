#!/usr/bin/env bash
# Install (or remove) the appliance daemon on Raspberry Pi OS bookworm (64- or 32-bit).
#
#   sudo make install            # = scripts/install.sh
#   sudo make uninstall          # = scripts/install.sh --uninstall  (keeps config and state)
#   scripts/install.sh --uninstall --purge                     # also config, state, user
#   scripts/install.sh --root /tmp/fakeroot                     # dry run into a throwaway root
#
# Idempotent: run it again to upgrade; an existing /etc/appliance/appliance.toml is kept.
# With --root, files are written below that directory and the system commands (apt-get,
# useradd, pip, systemctl) are listed in $ROOT/install-plan.txt instead of being run.
set -euo pipefail

ROOT=""
ACTION=install
PURGE=0
BOARD=generic
SRC=$(cd "$(dirname "$0")/.." && pwd)
while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT=$(realpath -m "$2"); shift 2 ;;
    --uninstall) ACTION=uninstall; shift ;;
    --purge) PURGE=1; shift ;;
    --board) BOARD=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1" >&2; exit 64 ;;
  esac
done

APT_PACKAGES="python3 python3-venv python3-dev python3-pyaudio python3-systemd python3-lgpio \
python3-spidev libspeexdsp1 portaudio19-dev libsystemd-dev pkg-config alsa-utils espeak-ng"
PREFIX="$ROOT/opt/appliance"
UNIT_DIR="$ROOT/etc/systemd/system"
CONF_DIR="$ROOT/etc/appliance"
STATE_DIR="$ROOT/var/lib/appliance"
PLAN="$ROOT/install-plan.txt"

run() {  # run a system command, or record it when installing into a throwaway root
  if [ -n "$ROOT" ]; then
    mkdir -p "$ROOT"
    grep -qxF "$*" "$PLAN" 2>/dev/null || echo "$*" >> "$PLAN"
  else
    "$@"
  fi
}

install_all() {
  if [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (sudo make install)" >&2; exit 77
  fi
  run apt-get install -y --no-install-recommends $APT_PACKAGES
  for group in audio gpio spi; do
    if [ -n "$ROOT" ] || ! getent group "$group" >/dev/null; then run groupadd -f "$group"; fi
  done
  if [ -n "$ROOT" ] || ! id appliance >/dev/null 2>&1; then
    run useradd --system --user-group --home-dir /var/lib/appliance --shell /usr/sbin/nologin appliance
  fi
  run usermod -a -G audio,gpio,spi appliance

  mkdir -p "$PREFIX" "$UNIT_DIR" "$CONF_DIR" "$STATE_DIR"
  chmod 0700 "$STATE_DIR"
  # the code: a copy of this checkout, and a venv that can see Debian's PyAudio/systemd/lgpio
  rm -rf "$PREFIX/src.new"
  mkdir -p "$PREFIX/src.new"
  (cd "$SRC" && tar --exclude=.venv --exclude=.git --exclude=demo-out -cf - .) | tar -C "$PREFIX/src.new" -xf -
  rm -rf "$PREFIX/src" && mv "$PREFIX/src.new" "$PREFIX/src"
  cp "$SRC/README.md" "$PREFIX/README.md"
  run python3 -m venv --system-site-packages /opt/appliance/venv
  run /opt/appliance/venv/bin/pip install --upgrade "/opt/appliance/src[wake]"

  install -m 0644 "$SRC/systemd/appliance.service" "$UNIT_DIR/appliance.service"
  if [ ! -f "$CONF_DIR/appliance.toml" ]; then
    install -m 0644 "$SRC/hw/$BOARD.toml" "$CONF_DIR/appliance.toml"
  fi
  if [ -z "$ROOT" ]; then chown -R appliance:appliance "$STATE_DIR"; else run chown -R appliance:appliance /var/lib/appliance; fi
  run systemctl daemon-reload
  run systemctl enable appliance.service
  echo "installed. Next: appliance enroll --server URL --token TOKEN --state-dir /var/lib/appliance"
  echo "           then: systemctl start appliance; journalctl -u appliance -f"
}

uninstall_all() {
  run systemctl disable --now appliance.service
  rm -f "$UNIT_DIR/appliance.service"
  run systemctl daemon-reload
  rm -rf "$PREFIX"
  if [ "$PURGE" = 1 ]; then
    rm -rf "$CONF_DIR" "$STATE_DIR"
    run userdel appliance
  fi
  echo "uninstalled"
}

if [ "$ACTION" = install ]; then install_all; else uninstall_all; fi
