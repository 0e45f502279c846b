#!/usr/bin/env bash
# Install (or remove) the appliance on 64-bit Raspberry Pi OS (trixie or bookworm), or the
# provisioning server on a Debian/Ubuntu machine. Needs only bash (no make).
#
#   sudo scripts/install.sh --board respeaker-2mic   # the device daemon; `appliance` on PATH
#   sudo scripts/install.sh --server                  # the provisioning server; `provisioning` on PATH
#   sudo scripts/install.sh --uninstall               # keeps config and state
#   sudo scripts/install.sh --uninstall --purge       # also config, state, user
#   scripts/install.sh --root /tmp/fakeroot           # dry run into a throwaway root
#
# Idempotent: run it again to upgrade; an existing /etc/appliance/appliance.toml is kept.
# With --root, files are written below that directory and the system commands (apt-get,
# useradd, pip, systemctl) are listed in $ROOT/install-plan.txt instead of being run.
# 32-bit Raspberry Pi OS (armhf) is refused: see docs/pi-wheels.md for why.
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
    --server) ACTION=server; shift ;;
    --print-apt-packages) ACTION=print-apt; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
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
BIN_DIR="$ROOT/usr/local/bin"
SERVER_APT_PACKAGES="python3 python3-venv"

run() {  # run a system command, or record it when installing into a throwaway root
  if [ -n "$ROOT" ]; then
    mkdir -p "$ROOT"
    grep -qxF "$*" "$PLAN" 2>/dev/null || echo "$*" >> "$PLAN"
  else
    "$@"
  fi
}

preflight() {  # $1: what is being installed
  if [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (sudo scripts/install.sh …)" >&2; exit 77
  fi
  local arch
  arch=$(uname -m)
  if [ -z "$ROOT" ] && [ "$1" = device ] && [ "$arch" != aarch64 ] && [ "$arch" != x86_64 ]; then
    echo "install.sh: $arch is not supported; use 64-bit Raspberry Pi OS (docs/pi-wheels.md)" >&2
    exit 69
  fi
  if [ -z "$ROOT" ] && [ ! -f "$SRC/hw/$BOARD.toml" ]; then
    echo "install.sh: no board profile hw/$BOARD.toml" >&2; exit 64
  fi
  # apt's lists on a fresh image are missing or stale: refresh them once a day at most
  if [ -z "$ROOT" ] && [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -1440 2>/dev/null | head -n1)" ]; then
    apt-get update
  fi
}

copy_source() {  # a copy of this checkout under /opt/appliance/src
  mkdir -p "$PREFIX"
  rm -rf "$PREFIX/src.new"
  mkdir -p "$PREFIX/src.new"
  (cd "$SRC" && tar --exclude=.venv --exclude=.git --exclude=demo-out -cf - .) | tar -C "$PREFIX/src.new" -xf -
  rm -rf "$PREFIX/src" && mv "$PREFIX/src.new" "$PREFIX/src"
  cp "$SRC/README.md" "$PREFIX/README.md"
}

link_command() {  # /usr/local/bin/NAME -> the venv's NAME, so it is on every user's PATH
  mkdir -p "$BIN_DIR"
  ln -sfn "/opt/appliance/venv/bin/$1" "$BIN_DIR/$1"
}

daemon_reload() {  # not in a chroot or container without systemd as PID 1
  if [ -n "$ROOT" ] || [ -d /run/systemd/system ]; then run systemctl daemon-reload; fi
}

install_all() {
  preflight device
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
  # the code, and a venv that can see Debian's PyAudio/systemd/lgpio
  copy_source
  run python3 -m venv --system-site-packages /opt/appliance/venv
  # the device distribution and the shared one, nothing of the server's
  run /opt/appliance/venv/bin/pip install --upgrade "/opt/appliance/src/common[webrtc]" "/opt/appliance/src/device[wake]"
  link_command appliance

  install -m 0644 "$SRC/systemd/appliance.service" "$UNIT_DIR/appliance.service"
  if [ ! -f "$CONF_DIR/appliance.toml" ]; then
    install -m 0644 "$SRC/hw/$BOARD.toml" "$CONF_DIR/appliance.toml"
  fi
  if [ -z "$ROOT" ]; then chown -R appliance:appliance "$STATE_DIR"; else run chown -R appliance:appliance /var/lib/appliance; fi
  daemon_reload
  run systemctl enable appliance.service
  echo "installed: $(command -v appliance || echo /usr/local/bin/appliance) (board $BOARD, /etc/appliance/appliance.toml)"
  echo "Next: sudo appliance enroll --server URL --token TOKEN --name NAME --state-dir /var/lib/appliance"
  echo "      appliance check; sudo systemctl start appliance; journalctl -u appliance -f"
}

install_server() {
  preflight server
  run apt-get install -y --no-install-recommends $SERVER_APT_PACKAGES
  copy_source
  run python3 -m venv /opt/appliance/venv
  # the server distribution and the shared one: no WebRTC, audio or GPIO packages
  run /opt/appliance/venv/bin/pip install --upgrade "/opt/appliance/src/common[http]" "/opt/appliance/src/server[postgres]"
  link_command provisioning
  mkdir -p "$UNIT_DIR" "$ROOT/etc/provisioning"
  chmod 0700 "$ROOT/etc/provisioning"
  install -m 0644 "$SRC/systemd/provisioning.service" "$UNIT_DIR/provisioning.service"
  daemon_reload
  run systemctl enable provisioning.service
  echo "installed: /usr/local/bin/provisioning, provisioning.service (enabled, not started)"
  echo "Next: put the OpenAI key in /etc/provisioning/openai-api-key (mode 0600), then"
  echo "      sudo systemctl start provisioning; see docs/server.md for PostgreSQL and TLS"
}

uninstall_all() {
  run systemctl disable --now appliance.service
  rm -f "$UNIT_DIR/appliance.service" "$BIN_DIR/appliance" "$BIN_DIR/provisioning"
  daemon_reload
  rm -rf "$PREFIX"
  if [ "$PURGE" = 1 ]; then
    rm -rf "$CONF_DIR" "$STATE_DIR"
    run userdel appliance
  fi
  echo "uninstalled"
}

case "$ACTION" in
  install) install_all ;;
  server) install_server ;;
  uninstall) uninstall_all ;;
  print-apt) echo $APT_PACKAGES ;;
esac
