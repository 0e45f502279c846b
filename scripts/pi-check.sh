#!/usr/bin/env bash
# make pi-check: install the appliance into an emulated 64-bit Raspberry Pi OS stand-in and
# check it there. The stand-in is a Debian arm64 root (trixie by default: Python 3.13, what
# Raspberry Pi OS is based on today) made with debootstrap and run with qemu-user-static.
#
#   scripts/pi-check.sh                      # trixie, board respeaker-2mic
#   PI_CHECK_SUITE=bookworm scripts/pi-check.sh
#   PI_CHECK_BOARD=generic scripts/pi-check.sh
#
# Steps: (1) the root: debootstrap + the apt packages scripts/install.sh asks for, cached as
# $PI_CHECK_CACHE/<suite>-arm64-<hash>.tar.zst, the hash taken over everything that goes into
# it (suite, mirror, package list, stubs, this recipe), so a rerun on the same machine unpacks
# it in seconds and a change rebuilds it; (2) scripts/install.sh --board BOARD inside it, as a
# user would run it; (3) `appliance` on PATH, `appliance check` on mock pins and WAV audio
# (must pass) and on no hardware at all (must give FAIL rows, not a traceback); (4) the
# device's unit tests (tests/device, tests/hw) under the root's Python.
# Packages only the Raspberry Pi archive has (that archive is not reachable from CI) are
# replaced by empty stub packages: STUBS below, listed in docs/pi-wheels.md.
# Needs root, debootstrap, qemu-user-static, binfmt-support, zstd (.ci/run installs them).
# Any failure exits non-zero with a line saying which step failed.
set -euo pipefail

SUITE=${PI_CHECK_SUITE:-trixie}
BOARD=${PI_CHECK_BOARD:-respeaker-2mic}
CACHE=${PI_CHECK_CACHE:-/var/cache/appliance-pi-check}
SRC=$(cd "$(dirname "$0")/.." && pwd)
ARCH=arm64
INCLUDE=ca-certificates,systemd,python3,python3-venv
STUBS="python3-lgpio"   # only in archive.raspberrypi.com
case "$SUITE" in
  trixie) PY_EXPECT=3.13 ;;
  bookworm) PY_EXPECT=3.11 ;;
  *) echo "pi-check: unknown suite $SUITE (trixie or bookworm)" >&2; exit 64 ;;
esac

step() { echo "== pi-check [$SUITE/$BOARD]: $*"; STEP=$*; }
STEP=start
trap 'rc=$?; [ $rc -eq 0 ] || echo "pi-check: FAILED at step: $STEP (exit $rc)" >&2' EXIT

[ "$(id -u)" -eq 0 ] || { echo "pi-check: run as root (debootstrap and chroot)" >&2; exit 77; }
for tool in debootstrap qemu-aarch64-static update-binfmts zstd dpkg-deb unshare; do
  command -v "$tool" >/dev/null || { echo "pi-check: missing tool $tool" >&2; exit 69; }
done

host_mirror() {  # the Debian mirror the host's apt uses (deb822 or one-line sources)
  local m
  m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
        2>/dev/null | sed -E 's/\[[^]]*\]//' |
      awk '$1=="URIs:"||$1=="deb" {print $2}' | grep -E '/debian/?$' | head -n1 || true)
  echo "${m:-http://deb.debian.org/debian}"
}
MIRROR=${PI_CHECK_MIRROR:-$(host_mirror)}
APT_PACKAGES=$("$SRC/scripts/install.sh" --print-apt-packages)

step "binfmt handler for aarch64"
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
update-binfmts --enable qemu-aarch64 2>/dev/null || true
grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 ||
  { echo "pi-check: qemu-aarch64 binfmt handler not enabled" >&2; exit 69; }

# Runs a command in the root in a private mount namespace: /proc, /sys and the pip cache are
# mounted there only, and vanish with the process (nothing to unmount before rm -rf).
in_root() {
  local root=$1; shift
  unshare --mount --fork -- /bin/bash -euc '
    root=$1; shift
    mount -t proc proc "$root/proc"
    mount -t sysfs sysfs "$root/sys"
    mkdir -p "$root/root/.cache/pip" "$PIP_CACHE_HOST"
    mount --bind "$PIP_CACHE_HOST" "$root/root/.cache/pip"
    exec chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
      PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 "$@"
  ' _ "$root" "$@"
}
export PIP_CACHE_HOST="$CACHE/pip-$SUITE-$ARCH"

make_stub() {  # an empty .deb standing in for a Raspberry-Pi-archive package
  local name=$1 out=$2 d
  d=$(mktemp -d)
  mkdir -p "$d/DEBIAN"
  cat > "$d/DEBIAN/control" <<EOF
Package: $name
Version: 0~pi-check-stub
Architecture: all
Maintainer: pi-check <pi-check@localhost>
Description: pi-check stub for $name (only in the Raspberry Pi archive)
EOF
  dpkg-deb --build --root-owner-group "$d" "$out" >/dev/null
  rm -rf "$d"
}

build_root() {  # $1: empty directory → a root with the apt packages install.sh needs
  local root=$1 stub pkgs
  unshare --mount --fork -- debootstrap --arch="$ARCH" --variant=minbase \
    --include="$INCLUDE" "$SUITE" "$root" "$MIRROR" > "$root.debootstrap.log" 2>&1 ||
    { tail -n 30 "$root.debootstrap.log" >&2; return 1; }
  echo "deb $MIRROR $SUITE main" > "$root/etc/apt/sources.list"
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  in_root "$root" apt-get update -qq
  for stub in $STUBS; do
    make_stub "$stub" "$root/tmp/$stub.deb"
    in_root "$root" dpkg -i "/tmp/$stub.deb" >/dev/null
    rm -f "$root/tmp/$stub.deb"
  done
  pkgs=$APT_PACKAGES
  in_root "$root" apt-get install -y -qq --no-install-recommends $pkgs > "$root.apt.log" 2>&1 ||
    { tail -n 30 "$root.apt.log" >&2; return 1; }
  in_root "$root" apt-get clean
}

KEY=$( { echo "$SUITE $ARCH $MIRROR $INCLUDE $STUBS $APT_PACKAGES"; declare -f build_root make_stub in_root; } |
       sha256sum | cut -c1-16)
TARBALL="$CACHE/$SUITE-$ARCH-$KEY.tar.zst"
mkdir -p "$CACHE"
WORK=$(mktemp -d /var/tmp/pi-check.XXXXXX)
trap 'rc=$?; rm -rf "$WORK"; [ $rc -eq 0 ] || echo "pi-check: FAILED at step: $STEP (exit $rc)" >&2' EXIT
ROOT="$WORK/root"
mkdir -p "$ROOT"

started=$SECONDS
if [ -f "$TARBALL" ]; then
  step "unpack cached root $(basename "$TARBALL")"
  zstd -dc -q "$TARBALL" | tar -C "$ROOT" --numeric-owner -xf -
else
  step "build root: debootstrap $SUITE $ARCH from $MIRROR (no cache $TARBALL)"
  build_root "$ROOT"
  step "cache root"
  tar -C "$ROOT" --numeric-owner -cf - . | zstd -q -T0 -3 -o "$TARBALL.tmp"
  mv "$TARBALL.tmp" "$TARBALL"
  find "$CACHE" -maxdepth 1 -name "$SUITE-$ARCH-*.tar.zst" ! -name "$(basename "$TARBALL")" -delete
fi
echo "   root ready in $((SECONDS - started)) s"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# pip in the root trusts what the host trusts (a TLS-intercepting proxy's CA, if any): the
# host's bundle, through the root's /etc/pip.conf. apt uses the plain-HTTP mirror.
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/pi-check-host-ca.crt"
printf '[global]\ncert = /etc/ssl/certs/pi-check-host-ca.crt\n' > "$ROOT/etc/pip.conf"

step "python in the root is $PY_EXPECT on aarch64"
got=$(in_root "$ROOT" python3 -c 'import platform,sys; print(f"{sys.version_info[0]}.{sys.version_info[1]} {platform.machine()}")')
[ "$got" = "$PY_EXPECT aarch64" ] || { echo "pi-check: root runs '$got'" >&2; exit 1; }

step "scripts/install.sh --board $BOARD (as on a Pi)"
mkdir -p "$ROOT/home/pi/appliance"
(cd "$SRC" && tar --exclude=./.venv --exclude=./.git --exclude=./demo-out --exclude=./fleet-out \
   --exclude='*.egg-info' --exclude=__pycache__ --exclude=.mypy_cache --exclude=.ruff_cache \
   --exclude=.pytest_cache -cf - .) | tar -C "$ROOT/home/pi/appliance" -xf -
started=$SECONDS
in_root "$ROOT" /home/pi/appliance/scripts/install.sh --board "$BOARD"
echo "   install.sh took $((SECONDS - started)) s"

step "appliance and its config on PATH"
in_root "$ROOT" /bin/sh -c 'command -v appliance && appliance --version'
grep -q "board = \"$BOARD\"" "$ROOT/etc/appliance/appliance.toml" ||
  { echo "pi-check: /etc/appliance/appliance.toml is not the $BOARD profile" >&2; exit 1; }

step "appliance check on mock pins and WAV audio (must pass)"
in_root "$ROOT" /usr/bin/env GPIOZERO_PIN_FACTORY=mock APPLIANCE_AUDIO_BACKEND=wav \
  APPLIANCE_AUDIO_WAV_INPUT=/opt/appliance/src/device/appliance/assets/question-time.wav \
  appliance check --config /etc/appliance/appliance.toml --no-button --offline

step "appliance check without hardware (FAIL rows, no traceback)"
set +e
out=$(in_root "$ROOT" appliance check --config /etc/appliance/appliance.toml --no-button --offline 2>&1)
rc=$?
set -e
echo "$out"
if [ $rc -ne 1 ] || grep -q Traceback <<<"$out" || ! grep -qE '^(leds|button|audio) +FAIL' <<<"$out"; then
  echo "pi-check: expected exit 1 with FAIL rows and no traceback, got exit $rc" >&2; exit 1
fi

step "device unit tests under Python $PY_EXPECT (tests/device tests/hw)"
# the `test` extra's packages alone (the project itself is installed already)
in_root "$ROOT" /bin/sh -c '/opt/appliance/venv/bin/pip install -q $(/opt/appliance/venv/bin/python -c \
  "import tomllib; print(*tomllib.load(open(\"/home/pi/appliance/device/pyproject.toml\", \"rb\"))[\"project\"][\"optional-dependencies\"][\"test\"])")' 
started=$SECONDS
in_root "$ROOT" /bin/sh -c 'cd /home/pi/appliance && exec /opt/appliance/venv/bin/python -m pytest -q -p no:cacheprovider tests/device tests/hw'
echo "   tests took $((SECONDS - started)) s"
step "done"
echo "pi-check: PASS ($SUITE, $BOARD, Python $PY_EXPECT aarch64 under qemu)"
