"""``provisioning fleet``: enrollment tokens and first-boot bundles for a whole inventory.

For every device of an inventory (CSV or TOML: ``name``, ``group``, optional ``host`` and
``board``) it creates a single-use enrollment token — straight in the database, the same
``Store.create_token`` the ``token create`` command uses — and writes a first-boot bundle for
Raspberry Pi OS into ``OUT/<name>/``:

- ``appliance.toml``: ``device.name``, ``device.board``, ``provisioning.server`` (over an
  optional ``--template``);
- ``enroll-token`` (mode 0600): the token, deleted on the device once it has enrolled;
- ``firstboot.sh`` and ``appliance-firstboot.service``: a systemd oneshot that runs
  ``appliance enroll --server URL --token-file …``, enables ``appliance.service`` and deletes
  the token.

``--boot DIR`` also writes one device's bundle onto a mounted boot partition (``DIR/appliance``)
and hooks ``cmdline.txt`` so the first boot installs the unit; ``--push`` copies bundles to the
inventory's hosts with the system ``ssh``/``scp`` (``--jobs`` at a time) and enrolls there.

State lives in ``OUT/fleet-manifest.json`` (token *hashes* only), rewritten atomically after
every device: a re-run skips devices that have enrolled or whose bundle still holds a valid
token, and carries on where an interrupted run stopped. Exit status 1 names the failures.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import shlex
import sys
import time
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from appliance_common.boards import PROFILES, board_config
from provisioning.errors import ProvisioningError

MANIFEST = "fleet-manifest.json"
TOKEN_FILE = "enroll-token"  # noqa: S105 - a file name
SCRIPT = "firstboot.sh"
UNIT = "appliance-firstboot.service"
CONFIG = "appliance.toml"
BUNDLE_FILES = (CONFIG, TOKEN_FILE, SCRIPT, UNIT)
HOOK = "systemd.run_success_action=reboot systemd.unit=kernel-command-line.target"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class InventoryError(ProvisioningError, ValueError):
    pass


class PushError(ProvisioningError, RuntimeError):
    pass


class TokenIssuer(Protocol):
    """What fleet needs from the server side (``provisioning.store.Store`` is one)."""

    def create_token(
        self, group: str, max_uses: int = 1, ttl_s: float = 86400, label: str = ""
    ) -> str: ...

    def token_state(self, token_hash: str) -> tuple[int, int, float] | None: ...


@dataclass(frozen=True)
class Device:
    name: str
    group: str = "default"
    host: str = ""
    board: str = ""


@dataclass(frozen=True)
class SshOptions:
    user: str = ""
    identity: str = ""
    options: tuple[str, ...] = ()
    """Extra ``-o`` options, e.g. ``StrictHostKeyChecking=accept-new``."""
    remote_dir: str = "/var/lib/appliance-firstboot"
    remote_env: tuple[str, ...] = ()
    """``KEY=VALUE`` set for the remote script (``APPLIANCE_BIN``, ``SYSTEMCTL``, …).
    ``{name}`` here and in ``remote_dir`` becomes the device name."""
    sudo: bool | None = None
    """Run the remote script with ``sudo -n``; ``None``: unless logging in as root."""
    timeout_s: float = 180.0


@dataclass(frozen=True)
class Options:
    server_url: str
    out: Path
    ttl_s: float = 7 * 86400
    min_valid_s: float = 3600
    """A bundled token with less time left than this is replaced."""
    template: Path | None = None
    boot: Path | None = None
    boot_mount: str = "/boot/firmware"
    """Where the boot partition is mounted on the Pi (bookworm: /boot/firmware)."""
    hook_cmdline: bool = True
    push: bool = False
    jobs: int = 8
    ssh: SshOptions = field(default_factory=SshOptions)


@dataclass
class Record:
    """One device in the manifest."""

    group: str
    host: str = ""
    board: str = ""
    state: str = "new"
    """``bundled`` (token and bundle written), ``enrolled`` or ``failed``."""
    token_hashes: list[str] = field(default_factory=list)
    """Every token issued for the device, newest last (hashes: the manifest holds no secret)."""
    expires_at: float = 0.0
    server: str = ""
    error: str = ""
    via: str = ""
    updated_at: float = 0.0


@dataclass(frozen=True)
class Result:
    name: str
    group: str
    host: str
    action: str
    """``bundled``, ``pushed``, ``skipped`` or ``failed``."""
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.action == "failed"


# --- inventory -------------------------------------------------------------------------------


def read_inventory(path: Path) -> list[Device]:
    """``.csv`` with a header row, or ``.toml`` with ``[[device]]`` tables (top-level ``group``
    and ``board`` are defaults)."""
    rows: list[Mapping[str, Any]]
    defaults: dict[str, Any] = {}
    if path.suffix.lower() == ".toml":
        data = tomllib.loads(path.read_text())
        rows = data.get("device", [])
        if not isinstance(rows, list):
            raise InventoryError(f"{path}: [[device]] must be an array of tables")
        defaults = {k: data[k] for k in ("group", "board") if isinstance(data.get(k), str)}
    else:
        with path.open(newline="") as f:
            reader = csv.DictReader(
                line for line in f if line.strip() and not line.lstrip().startswith("#")
            )
            if reader.fieldnames is None or "name" not in [h.strip() for h in reader.fieldnames]:
                raise InventoryError(f"{path}: the CSV needs a header row with 'name'")
            rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    devices: list[Device] = []
    seen: set[str] = set()
    for i, row in enumerate(rows, 1):
        values = {**defaults, **{k: str(v).strip() for k, v in row.items() if v not in (None, "")}}
        name = values.get("name", "")
        if not NAME_RE.match(name):
            raise InventoryError(
                f"{path}: device {i}: name {name!r} must be 1–63 of A–Z a–z 0–9 . _ -"
            )
        if name in seen:
            raise InventoryError(f"{path}: device name {name!r} appears twice")
        board = values.get("board", "")
        if board and board not in PROFILES:
            known = ", ".join(sorted(PROFILES))
            raise InventoryError(f"{path}: device {name!r}: unknown board {board!r} ({known})")
        seen.add(name)
        if values.get("host"):
            try:
                parse_host(values["host"], "")
            except PushError as exc:
                raise InventoryError(f"{path}: device {name!r}: {exc}") from None
        devices.append(
            Device(
                name,
                values.get("group") or "default",
                values.get("host", ""),
                values.get("board", ""),
            )
        )
    return devices


# --- manifest ------------------------------------------------------------------------------


class Manifest:
    def __init__(self, path: Path, records: dict[str, Record] | None = None) -> None:
        self.path = path
        self.records: dict[str, Record] = records or {}

    @classmethod
    def load(cls, path: Path) -> Manifest:
        if not path.exists():
            return cls(path)
        data = json.loads(path.read_text())
        known = set(Record.__dataclass_fields__)
        records = {
            name: Record(**{k: v for k, v in rec.items() if k in known})
            for name, rec in data.get("devices", {}).items()
        }
        return cls(path, records)

    def save(self) -> None:
        """Atomically: an interrupted run leaves the previous or the new manifest."""
        data = {
            "version": 1,
            "devices": {name: asdict(rec) for name, rec in sorted(self.records.items())},
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w") as f:
            json.dump(data, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


# --- bundle --------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a TOML basic string


def render_config(device: Device, server_url: str, template: Mapping[str, Any]) -> str:
    """The board's own profile (audio devices, activation) first, then the ``--template``
    over it key by key, then this device's name, board and server."""
    data: dict[str, dict[str, Any]] = {
        k: dict(v) for k, v in (board_config(device.board) if device.board else {}).items()
    }
    for section, values in template.items():
        if isinstance(values, Mapping):
            data.setdefault(section, {}).update(values)
    data.setdefault("device", {})["name"] = device.name
    if device.board:
        data["device"]["board"] = device.board
    data.setdefault("provisioning", {})["server"] = server_url
    lines = [f"# written by 'provisioning fleet' for {device.name}"]
    for section in ["device", "provisioning", *sorted(set(data) - {"device", "provisioning"})]:
        lines += ["", f"[{section}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in data[section].items()]
    return "\n".join(lines) + "\n"


FIRSTBOOT = r"""#!/bin/sh
# First boot of appliance @NAME@: enroll with the provisioning server, then start the daemon.
# Written by 'provisioning fleet'; see docs/fleet.md.
#
#   firstboot.sh              kernel command-line hook (systemd.run=): install the unit below,
#                             take our hook out of cmdline.txt; the system then reboots
#   firstboot.sh install      copy this bundle to $FIRSTBOOT_DIR (0700, off the FAT boot
#                             partition) and enable appliance-firstboot.service
#   firstboot.sh install --now  ... and enroll right away (what 'fleet --push' runs over SSH)
#   firstboot.sh enroll       what the unit runs: enroll, enable appliance.service, delete the token
set -eu
SERVER=@SERVER@
NAME=@NAME_Q@
HERE=$(cd "$(dirname "$0")" && pwd)
APPLIANCE_BIN=${APPLIANCE_BIN:-/opt/appliance/venv/bin/appliance}
APPLIANCE_ETC=${APPLIANCE_ETC:-/etc/appliance}
APPLIANCE_STATE=${APPLIANCE_STATE:-/var/lib/appliance}
FIRSTBOOT_DIR=${FIRSTBOOT_DIR:-/var/lib/appliance-firstboot}
SYSTEMD_DIR=${SYSTEMD_DIR:-/etc/systemd/system}
SYSTEMCTL=${SYSTEMCTL:-systemctl}
log() { echo "appliance-firstboot: $*" >&2; }

install_bundle() {
  umask 077
  mkdir -p "$FIRSTBOOT_DIR"
  chmod 0700 "$FIRSTBOOT_DIR"
  dest=$(cd "$FIRSTBOOT_DIR" && pwd)
  if [ "$HERE" != "$dest" ]; then
    for f in appliance.toml firstboot.sh appliance-firstboot.service enroll-token; do
      if [ -f "$HERE/$f" ]; then cp "$HERE/$f" "$dest/$f.new" && mv "$dest/$f.new" "$dest/$f"; fi
    done
    rm -f "$HERE/enroll-token"  # never leave the token on a world-readable FAT partition
  fi
  if [ -f "$dest/enroll-token" ]; then chmod 0600 "$dest/enroll-token"; fi
  mkdir -p "$SYSTEMD_DIR"
  sed "s#@BUNDLE@#$dest#g" "$dest/appliance-firstboot.service" \
    > "$SYSTEMD_DIR/appliance-firstboot.service"
  chmod 0644 "$SYSTEMD_DIR/appliance-firstboot.service"
  $SYSTEMCTL daemon-reload || true  # not running yet under systemd.run=: enable still works
  $SYSTEMCTL enable appliance-firstboot.service
  log "installed in $dest"
}

enroll() {
  if [ -f "$APPLIANCE_STATE/device.json" ]; then
    log "already enrolled ($APPLIANCE_STATE/device.json)"
  elif [ ! -f "$HERE/enroll-token" ]; then
    log "no enrollment token in $HERE"; exit 1
  elif "$APPLIANCE_BIN" enroll --help 2>/dev/null | grep -q -- '--token-file'; then
    "$APPLIANCE_BIN" enroll --server "$SERVER" --token-file "$HERE/enroll-token" \
      --name "$NAME" --state-dir "$APPLIANCE_STATE"
  else  # an appliance without --token-file: the token shows in ps for a moment
    "$APPLIANCE_BIN" enroll --server "$SERVER" --token "$(cat "$HERE/enroll-token")" \
      --name "$NAME" --state-dir "$APPLIANCE_STATE"
  fi
  mkdir -p "$APPLIANCE_ETC"
  if [ -f "$APPLIANCE_ETC/appliance.toml" ] && [ ! -f "$APPLIANCE_ETC/appliance.toml.image" ]; then
    cp "$APPLIANCE_ETC/appliance.toml" "$APPLIANCE_ETC/appliance.toml.image"
  fi
  cp "$HERE/appliance.toml" "$APPLIANCE_ETC/appliance.toml.new"
  chmod 0644 "$APPLIANCE_ETC/appliance.toml.new"
  mv "$APPLIANCE_ETC/appliance.toml.new" "$APPLIANCE_ETC/appliance.toml"
  if id appliance >/dev/null 2>&1; then chown -R appliance:appliance "$APPLIANCE_STATE"; fi
  $SYSTEMCTL enable appliance.service
  $SYSTEMCTL start --no-block appliance.service
  shred -u "$HERE/enroll-token" 2>/dev/null || rm -f "$HERE/enroll-token"
  $SYSTEMCTL disable appliance-firstboot.service || true
  log "enrolled; appliance.service enabled"
}

cmdline_hook() {
  cmdline="$HERE/../cmdline.txt"
  if [ -f "$HERE/chain" ]; then  # a hook that was there before ours (e.g. Raspberry Pi Imager's)
    chained=$(cat "$HERE/chain")
    rm -f "$HERE/chain"
    sh "$chained" || log "chained hook $chained failed"
  fi
  install_bundle
  if [ -f "$cmdline" ]; then
    sed -i 's# systemd.run=[^ ]*appliance/firstboot.sh @HOOK@##' "$cmdline"
  fi
}

case "${1:-}" in
  "") cmdline_hook ;;
  install)
    install_bundle
    if [ "${2:-}" = "--now" ]; then exec sh "$FIRSTBOOT_DIR/firstboot.sh" enroll; fi ;;
  enroll) enroll ;;
  *) log "usage: $0 [install [--now] | enroll]"; exit 64 ;;
esac
"""

UNIT_TEXT = """\
# Enrolls this appliance with its provisioning server once, then starts appliance.service.
# Installed by firstboot.sh (see docs/fleet.md); disables itself after it succeeded.
[Unit]
Description=Enroll the appliance with its provisioning server (first boot)
Wants=network-online.target
After=network-online.target time-sync.target
ConditionPathExists=@BUNDLE@/enroll-token

[Service]
Type=oneshot
ExecStart=/bin/sh @BUNDLE@/firstboot.sh enroll
# no network yet, server unreachable: try again (the token stays until it has been used)
Restart=on-failure
RestartSec=30

[Install]
WantedBy=multi-user.target
"""


def render_script(device: Device, server_url: str) -> str:
    return (
        FIRSTBOOT.replace("@SERVER@", shlex.quote(server_url))
        .replace("@NAME_Q@", shlex.quote(device.name))
        .replace("@NAME@", device.name)
        .replace("@HOOK@", HOOK)
    )


def write_bundle(
    folder: Path, device: Device, token: str, server_url: str, template: Mapping[str, Any]
) -> None:
    """Write the bundle files; the token last and through a 0600 temp file, so a bundle with
    a token file is always complete."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write(folder / CONFIG, render_config(device, server_url, template), 0o644)
    _write(folder / SCRIPT, render_script(device, server_url), 0o755)
    _write(folder / UNIT, UNIT_TEXT, 0o644)
    _write(folder / TOKEN_FILE, token + "\n", 0o600)


def _write(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def write_boot(boot: Path, bundle: Path, boot_mount: str, hook_cmdline: bool) -> str:
    """Copy a bundle onto a mounted boot partition (``BOOT/appliance``) and, when the
    partition has a ``cmdline.txt``, make the first boot run ``firstboot.sh`` (chaining a
    ``systemd.run=`` hook that is already there). Returns what was done."""
    if not boot.is_dir():
        raise FileNotFoundError(f"boot partition {boot} is not a directory")
    dest = boot / "appliance"
    dest.mkdir(exist_ok=True)
    for name in BUNDLE_FILES:
        _write(dest / name, (bundle / name).read_text(), 0o600 if name == TOKEN_FILE else 0o755)
    cmdline = boot / "cmdline.txt"
    if not hook_cmdline or not cmdline.exists():
        return f"bundle in {dest}"
    ours = f"systemd.run={boot_mount.rstrip('/')}/appliance/{SCRIPT}"
    words = cmdline.read_text().split()
    if ours in words:
        return f"bundle in {dest}, cmdline.txt already hooked"
    kept: list[str] = []
    for word in words:
        if word.startswith("systemd.run="):
            (dest / "chain").write_text(word.split("=", 1)[1] + "\n")
        elif not word.startswith(("systemd.run_success_action=", "systemd.unit=")):
            kept.append(word)
    _write(cmdline, " ".join([*kept, ours, HOOK]) + "\n", 0o755)
    return f"bundle in {dest}, cmdline.txt hooked"


# --- SSH push ------------------------------------------------------------------------------


HOST_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}")
"""A host name or IPv4 address: never an option to ssh (no leading ``-``), no spaces."""
USER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9._-]{0,31}")


def parse_host(spec: str, default_user: str) -> tuple[str, str, str]:
    """``[user@]host[:port]`` → (user, host, port); ``PushError`` for anything else (an
    inventory's host reaches ssh's command line)."""
    user, _, rest = spec.rpartition("@")
    host, _, port = rest.partition(":")
    if (
        not HOST_RE.fullmatch(host)
        or (user and not USER_RE.fullmatch(user))
        or (port and not (port.isdigit() and 0 < int(port) < 65536))
    ):
        raise PushError(f"bad host {spec!r}: use [user@]host[:port]")
    return user or default_user, host, port


async def _run(argv: list[str], timeout_s: float, what: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise PushError(f"{what}: timed out after {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        lines = [line for line in err.decode(errors="replace").splitlines() if line.strip()]
        tail = lines[-1] if lines else "no output"
        raise PushError(f"{what} exited {proc.returncode}: {tail}")
    return out.decode(errors="replace")


async def push(bundle: Path, device: Device, ssh: SshOptions) -> None:
    """Copy the bundle to ``device.host`` with scp and run ``firstboot.sh install --now``
    there (which enrolls and enables the daemon). Raises ``PushError``."""
    user, host, port = parse_host(device.host, ssh.user)
    target = f"{user}@{host}" if user else host
    common = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
    if ssh.identity:
        common += ["-i", ssh.identity]
    for option in ssh.options:
        common += ["-o", option]
    ssh_argv = ["ssh", *common, *(["-p", port] if port else []), "--", target]
    scp_argv = ["scp", "-q", "-p", *common, *(["-P", port] if port else []), "--"]
    stage = f".appliance-bundle-{device.name}"
    await _run([*ssh_argv, f"rm -rf {stage} && mkdir -m 700 {stage}"], ssh.timeout_s, "ssh")
    files = [str(bundle / name) for name in BUNDLE_FILES]
    await _run([*scp_argv, *files, f"{target}:{stage}/"], ssh.timeout_s, "scp")
    sudo = ssh.sudo if ssh.sudo is not None else user not in ("", "root")
    env = [
        v.replace("{name}", device.name)
        for v in ("env", f"FIRSTBOOT_DIR={ssh.remote_dir}", *ssh.remote_env)
    ]
    script = shlex.join([*(["sudo", "-n"] if sudo else []), *env, "sh", f"{stage}/{SCRIPT}"])
    remote = f"{script} install --now; rc=$?; rm -rf {stage}; exit $rc"
    await _run([*ssh_argv, remote], ssh.timeout_s, "remote firstboot.sh")


# --- the run -------------------------------------------------------------------------------


class Fleet:
    def __init__(
        self, issuer: TokenIssuer, options: Options, progress: TextIO | None = None
    ) -> None:
        self.issuer, self.options = issuer, options
        self.progress = progress or sys.stdout
        options.out.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.manifest = Manifest.load(options.out / MANIFEST)
        self.template: dict[str, Any] = (
            tomllib.loads(options.template.read_text()) if options.template else {}
        )
        self._done = 0
        self._total = 0

    async def run(self, devices: list[Device]) -> list[Result]:
        self._done, self._total = 0, len(devices)
        results: dict[str, Result] = {}
        pushes: list[Device] = []
        for device in devices:  # tokens and files: local and quick, one after the other
            result = self._prepare(device)
            if result is None:
                pushes.append(device)
            else:
                results[device.name] = self._report(result)
        gate = asyncio.Semaphore(max(1, self.options.jobs))

        async def one(device: Device) -> None:
            async with gate:
                results[device.name] = self._report(await self._push(device))

        await asyncio.gather(*(one(d) for d in pushes))
        return [results[d.name] for d in devices]

    def _prepare(self, device: Device) -> Result | None:
        """Token and bundle for one device; ``None`` when it is ready to be pushed."""
        opts, now = self.options, time.time()
        rec = self.manifest.records.get(device.name)
        folder = opts.out / device.name
        try:
            if rec is not None and self._enrolled(rec):
                if rec.state != "enrolled":
                    self._save(device, rec, state="enrolled", error="", via=rec.via or "token")
                (folder / TOKEN_FILE).unlink(missing_ok=True)
                return Result(device.name, device.group, device.host, "skipped", "enrolled")
            reuse = (
                rec is not None
                and rec.token_hashes
                and rec.group == device.group
                and rec.board == device.board
                and rec.server == opts.server_url
                and rec.expires_at - now > opts.min_valid_s
                and all((folder / name).exists() for name in BUNDLE_FILES)
            )
            if reuse and rec is not None:
                # the bundle is current; re-render everything except the token (cheap)
                token = (folder / TOKEN_FILE).read_text().strip()
                write_bundle(folder, device, token, opts.server_url, self.template)
                action, detail = "skipped", f"bundled, token valid until {_when(rec.expires_at)}"
            else:
                from provisioning.store import hash_token

                token = self.issuer.create_token(
                    device.group, 1, opts.ttl_s, label=f"fleet:{device.name}"
                )
                write_bundle(folder, device, token, opts.server_url, self.template)
                rec = rec or Record(group=device.group)
                self._save(
                    device,
                    rec,
                    state="bundled",
                    token_hashes=[*rec.token_hashes, hash_token(token)],
                    expires_at=now + opts.ttl_s,
                    error="",
                )
                action, detail = "bundled", f"token valid until {_when(rec.expires_at)}"
            if opts.boot is not None:
                detail = write_boot(opts.boot, folder, opts.boot_mount, opts.hook_cmdline)
                action = "bundled"
            if opts.push and device.host:
                return None
            return Result(device.name, device.group, device.host, action, detail)
        except (KeyError, OSError, ValueError) as exc:
            message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
            self._save(device, rec or Record(group=device.group), state="failed", error=message)
            return Result(device.name, device.group, device.host, "failed", message)

    async def _push(self, device: Device) -> Result:
        rec = self.manifest.records[device.name]
        folder = self.options.out / device.name
        try:
            await push(folder, device, self.options.ssh)
        except (PushError, OSError) as exc:
            self._save(device, rec, state="failed", error=str(exc))
            return Result(device.name, device.group, device.host, "failed", str(exc))
        self._save(device, rec, state="enrolled", error="", via="ssh")
        (folder / TOKEN_FILE).unlink(missing_ok=True)
        return Result(device.name, device.group, device.host, "pushed", "enrolled over SSH")

    def _enrolled(self, rec: Record) -> bool:
        if rec.state == "enrolled":
            return True
        for token_hash in rec.token_hashes:
            state = self.issuer.token_state(token_hash)
            if state is not None and state[0] >= state[1]:
                return True
        return False

    def _save(self, device: Device, rec: Record, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(rec, key, value)
        rec.group, rec.host, rec.board = device.group, device.host, device.board
        rec.server, rec.updated_at = self.options.server_url, time.time()
        self.manifest.records[device.name] = rec
        self.manifest.save()

    def _report(self, result: Result) -> Result:
        self._done += 1
        width = len(str(self._total))
        bar = _bar(self._done, self._total)
        self.progress.write(
            f"[{self._done:>{width}}/{self._total}] {bar} {result.name:<20} "
            f"{result.action}: {result.detail}\n"
        )
        self.progress.flush()
        return result


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = round(width * done / total) if total else width
    return "#" * filled + "." * (width - filled)


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(at))


def summary(results: Iterable[Result]) -> str:
    rows = [("device", "group", "host", "result", "detail")]
    rows += [(r.name, r.group, r.host or "-", r.action, r.detail) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)) + "  " + row[4]
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 6)
    counts: dict[str, int] = {}
    for row in rows[1:]:
        counts[row[3]] = counts.get(row[3], 0) + 1
    lines.append(", ".join(f"{n} {action}" for action, n in sorted(counts.items())))
    return "\n".join(line.rstrip() for line in lines)


def main(
    issuer: TokenIssuer,
    inventory: Path,
    options: Options,
    only: list[str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run a fleet provisioning; exit status 0, 1 (some devices failed) or 64 (usage)."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        devices = read_inventory(inventory)
    except (InventoryError, OSError, tomllib.TOMLDecodeError) as exc:
        print(f"provisioning fleet: {exc}", file=err)
        return 64
    if only:
        unknown = sorted(set(only) - {d.name for d in devices})
        if unknown:
            print(f"provisioning fleet: not in the inventory: {', '.join(unknown)}", file=err)
            return 64
        devices = [d for d in devices if d.name in only]
    if options.boot is not None and len(devices) != 1:
        print("provisioning fleet: --boot writes one device: pick it with --only", file=err)
        return 64
    if options.push and not any(d.host for d in devices):
        print("provisioning fleet: --push, but no device has a host", file=err)
        return 64
    results = asyncio.run(Fleet(issuer, options, out).run(devices))
    print(summary(results), file=out)
    failed = [r.name for r in results if r.failed]
    if failed:
        print(f"provisioning fleet: {len(failed)} failed: {', '.join(failed)}", file=err)
        return 1
    return 0
