"""``provisioning fleet`` end to end: bundles for an inventory, a device enrolling from its
bundle against an in-process server, idempotent and resumable re-runs, failures named in the
exit status, the boot-partition hook, and SSH pushes to an sshd on loopback."""

from __future__ import annotations

import asyncio
import io
import os
import re
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from appliance import config as appliance_config
from appliance.identity import Identity
from appliance.realtime.provisioning_keys import ProvisioningKeySource
from provisioning import fleet
from provisioning.fleet import (
    BUNDLE_FILES,
    TOKEN_FILE,
    UNIT,
    Fleet,
    Manifest,
    Options,
    SshOptions,
    read_inventory,
)
from provisioning.server import ProvisioningServer
from provisioning.store import Device, EnrollmentToken, Store, hash_token
from tests.conftest import require, require_tool
from tests.provisioning.conftest import STANDIN_KEY
from tests.waiting import OutputLines

STANDARD_KEY = STANDIN_KEY
SERVER = "https://prov.example.com"
APPLIANCE_BIN = str(Path(sys.executable).parent / "appliance")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'prov.db'}")
    s.ensure_group("default")
    s.ensure_group("lab")
    yield s
    s.close()


@pytest.fixture
def appliance_cli() -> str:
    """The real ``appliance`` command the firstboot script runs."""
    require(Path(APPLIANCE_BIN).exists(), f"{APPLIANCE_BIN} (pip install -e .)")
    return APPLIANCE_BIN


def inventory(path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    lines = ["name,group,host,board", *(",".join(row) for row in rows)]
    path.write_text("# the lab's Pis\n" + "\n".join(lines) + "\n")
    return path


def twenty(tmp_path: Path) -> Path:
    rows = [
        (f"pi-{i:02d}", "lab" if i % 2 else "default", "", "respeaker-2mic" if i % 3 else "")
        for i in range(20)
    ]
    return inventory(tmp_path / "inventory.csv", rows)


def token_count(store: Store) -> int:
    with store.session() as db:
        return int(db.scalar(select(func.count()).select_from(EnrollmentToken)) or 0)


def pi_env(root: Path) -> dict[str, str]:
    """The firstboot script's paths, redirected into a throwaway 'Pi' root; systemctl is a
    stand-in that records its arguments."""
    root.mkdir(parents=True, exist_ok=True)
    systemctl = root / "systemctl"
    systemctl.write_text(f'#!/bin/sh\necho "$*" >> {root / "systemctl.log"}\n')
    systemctl.chmod(0o755)
    return {
        **os.environ,
        "FIRSTBOOT_DIR": str(root / "firstboot"),
        "APPLIANCE_BIN": APPLIANCE_BIN,
        "APPLIANCE_STATE": str(root / "state"),
        "APPLIANCE_ETC": str(root / "etc"),
        "SYSTEMD_DIR": str(root / "systemd"),
        "SYSTEMCTL": str(systemctl),
    }


def run_sh(script: Path, *args: str, env: dict[str, str]) -> str:
    proc = subprocess.run(
        ["sh", str(script), *args], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stderr


async def sh(script: Path, *args: str, env: dict[str, str]) -> str:
    """``run_sh`` without blocking the loop an in-process server runs on."""
    proc = await asyncio.create_subprocess_exec(
        "sh", str(script), *args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    return out.decode()


def test_bundles_for_an_inventory_of_twenty(store: Store, tmp_path: Path) -> None:
    out, log = tmp_path / "out", io.StringIO()
    assert fleet.main(store, twenty(tmp_path), Options(SERVER, out), out=log) == 0
    text = log.getvalue()
    assert "[20/20] ####################" in text
    assert "20 bundled" in text.splitlines()[-1]
    manifest = Manifest.load(out / "fleet-manifest.json")
    assert len(manifest.records) == 20
    assert token_count(store) == 21 - 1  # one token per device, nothing else
    for i in range(20):
        name = f"pi-{i:02d}"
        bundle = out / name
        assert sorted(p.name for p in bundle.iterdir()) == sorted(BUNDLE_FILES)
        assert stat.S_IMODE((bundle / TOKEN_FILE).stat().st_mode) == 0o600
        assert stat.S_IMODE(bundle.stat().st_mode) == 0o700
        token = (bundle / TOKEN_FILE).read_text().strip()
        rec = manifest.records[name]
        assert rec.state == "bundled"
        assert rec.token_hashes == [hash_token(token)]
        assert token not in (out / "fleet-manifest.json").read_text()
        with store.session() as db:
            row = db.scalars(
                select(EnrollmentToken).where(EnrollmentToken.token_hash == hash_token(token))
            ).one()
        assert (row.group, row.uses, row.max_uses, row.label) == (rec.group, 0, 1, f"fleet:{name}")
        assert row.expires_at == pytest.approx(time.time() + 7 * 86400, abs=60)
        cfg = appliance_config.load(bundle / "appliance.toml", environ={})
        assert (cfg.device.name, cfg.provisioning.server) == (name, SERVER)
        assert cfg.device.board == ("respeaker-2mic" if i % 3 else "generic")
        assert (
            subprocess.run(["sh", "-n", str(bundle / "firstboot.sh")], check=False).returncode == 0
        )


def test_a_rerun_skips_bundled_devices_and_replaces_expiring_tokens(
    store: Store, tmp_path: Path
) -> None:
    inv, out = twenty(tmp_path), tmp_path / "out"
    assert fleet.main(store, inv, Options(SERVER, out), out=io.StringIO()) == 0
    before = {p.name: (p / TOKEN_FILE).read_text() for p in out.iterdir() if p.is_dir()}
    log = io.StringIO()
    assert fleet.main(store, inv, Options(SERVER, out), out=log) == 0
    assert "20 skipped" in log.getvalue().splitlines()[-1]
    assert token_count(store) == 20, "no new tokens"
    assert before == {p.name: (p / TOKEN_FILE).read_text() for p in out.iterdir() if p.is_dir()}
    # a token with less than --min-valid left is replaced, and the old hash kept
    short = Options(SERVER, out, min_valid_s=30 * 86400)
    assert fleet.main(store, inv, short, only=["pi-03"], out=io.StringIO()) == 0
    assert (out / "pi-03" / TOKEN_FILE).read_text() != before["pi-03"]
    assert len(Manifest.load(out / "fleet-manifest.json").records["pi-03"].token_hashes) == 2
    # moving a device to another group re-issues its token for that group
    inventory(tmp_path / "inventory.csv", [("pi-04", "lab", "", "")])
    log = io.StringIO()
    assert fleet.main(store, inv, Options(SERVER, out), out=log) == 0
    assert "pi-04" in log.getvalue()
    assert "bundled" in log.getvalue()
    token = (out / "pi-04" / TOKEN_FILE).read_text().strip()
    with store.session() as db:
        row = db.scalars(
            select(EnrollmentToken).where(EnrollmentToken.token_hash == hash_token(token))
        ).one()
        assert row.group == "lab"


def test_failures_are_named_and_a_rerun_resumes(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = inventory(
        tmp_path / "inventory.csv",
        [("hall", "default", "", ""), ("attic", "nosuch", "", ""), ("porch", "lab", "", "")],
    )
    out = tmp_path / "out"
    assert fleet.main(store, inv, Options(SERVER, out)) == 1
    captured = capsys.readouterr()
    assert "provisioning fleet: 1 failed: attic" in captured.err
    assert re.search(r"^attic +nosuch +- +failed +no group 'nosuch'$", captured.out, re.M)
    assert Manifest.load(out / "fleet-manifest.json").records["attic"].state == "failed"
    assert not (out / "attic").exists()
    store.ensure_group("nosuch")
    assert fleet.main(store, inv, Options(SERVER, out)) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == "1 bundled, 2 skipped"


class Interrupted:
    """A token issuer that is interrupted (Ctrl-C) before its ``after``-th token."""

    def __init__(self, store: Store, after: int) -> None:
        self.store, self.after, self.calls = store, after, 0

    def create_token(
        self, group: str, max_uses: int = 1, ttl_s: float = 86400, label: str = ""
    ) -> str:
        if self.calls == self.after:
            raise KeyboardInterrupt
        self.calls += 1
        return self.store.create_token(group, max_uses, ttl_s, label)

    def token_state(self, token_hash: str) -> tuple[int, int, float] | None:
        return self.store.token_state(token_hash)


def test_an_interrupted_run_resumes_where_it_stopped(store: Store, tmp_path: Path) -> None:
    inv, out = twenty(tmp_path), tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        fleet.main(Interrupted(store, 7), inv, Options(SERVER, out), out=io.StringIO())
    assert len(Manifest.load(out / "fleet-manifest.json").records) == 7
    log = io.StringIO()
    assert fleet.main(store, inv, Options(SERVER, out), out=log) == 0
    assert log.getvalue().splitlines()[-1] == "13 bundled, 7 skipped"
    assert token_count(store) == 20


def test_inventory_formats_and_errors(tmp_path: Path) -> None:
    toml = tmp_path / "fleet.toml"
    toml.write_text(
        'group = "lab"\nboard = "aiy-voice"\n'
        '[[device]]\nname = "a"\nhost = "pi@10.0.0.5:2222"\n'
        '[[device]]\nname = "b"\ngroup = "default"\nboard = "generic"\n'
    )
    assert read_inventory(toml) == [
        fleet.Device("a", "lab", "pi@10.0.0.5:2222", "aiy-voice"),
        fleet.Device("b", "default", "", "generic"),
    ]
    assert fleet.parse_host("pi@10.0.0.5:2222", "root") == ("pi", "10.0.0.5", "2222")
    assert fleet.parse_host("kitchen.local", "pi") == ("pi", "kitchen.local", "")
    with pytest.raises(fleet.InventoryError, match="appears twice"):
        read_inventory(inventory(tmp_path / "dup.csv", [("a", "", "", ""), ("a", "", "", "")]))
    with pytest.raises(fleet.InventoryError, match=r"name '\.\./x'"):
        read_inventory(inventory(tmp_path / "bad.csv", [("../x", "", "", "")]))
    bad = tmp_path / "nohead.csv"
    bad.write_text("a,b\n")
    err = io.StringIO()
    assert fleet.main(Interrupted(Store("sqlite://"), 0), bad, Options(SERVER, tmp_path), err=err)
    assert "header row" in err.getvalue()


async def test_a_device_enrolls_from_its_bundle(
    server: ProvisioningServer, tmp_path: Path, appliance_cli: str
) -> None:
    inv = inventory(tmp_path / "inventory.csv", [("kitchen", "default", "", "generic")])
    out = tmp_path / "out"
    options = Options(server.base_url, out)
    [result] = await Fleet(server.store, options, io.StringIO()).run(read_inventory(inv))
    assert result.action == "bundled"
    bundle, pi = out / "kitchen", tmp_path / "pi"
    env = pi_env(pi)
    await sh(bundle / "firstboot.sh", "install", env=env)  # as the boot hook or SSH would
    installed = pi / "firstboot"
    assert not (bundle / TOKEN_FILE).exists(), "the token moved off the bundle"
    assert stat.S_IMODE((installed / TOKEN_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE(installed.stat().st_mode) == 0o700
    unit = (pi / "systemd" / UNIT).read_text()
    assert f"ExecStart=/bin/sh {installed}/firstboot.sh enroll" in unit
    assert f"ConditionPathExists={installed}/{TOKEN_FILE}" in unit
    analyze = require_tool("systemd-analyze")
    verify = await asyncio.to_thread(
        subprocess.run,
        [analyze, "verify", str(pi / "systemd" / UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr

    # what appliance-firstboot.service runs at boot: the real `appliance enroll`
    await sh(installed / "firstboot.sh", "enroll", env=env)
    identity = Identity.load(pi / "state")
    with server.store.session() as db:
        device = db.get_one(Device, identity.device_id)
        assert (device.name, device.group) == ("kitchen", "default")
    assert not (installed / TOKEN_FILE).exists(), "the token is deleted after enrolling"
    calls = (pi / "systemctl.log").read_text().splitlines()
    assert calls == [
        "daemon-reload",
        "enable appliance-firstboot.service",
        "enable appliance.service",
        "start --no-block appliance.service",
        "disable appliance-firstboot.service",
    ]
    cfg = appliance_config.load(pi / "etc" / "appliance.toml", environ={})
    assert (cfg.device.name, cfg.device.board) == ("kitchen", "generic")
    assert cfg.provisioning.server == server.base_url
    key = await ProvisioningKeySource(identity).get_key()
    assert key.value.startswith("ek_")

    # running the unit again is harmless; fleet now knows the device has enrolled
    await sh(installed / "firstboot.sh", "enroll", env=env)
    [again] = await Fleet(server.store, options, io.StringIO()).run(read_inventory(inv))
    assert (again.action, again.detail) == ("skipped", "enrolled")
    assert Manifest.load(out / "fleet-manifest.json").records["kitchen"].state == "enrolled"


async def test_firstboot_passes_the_token_as_a_file_when_the_appliance_can(
    store: Store, tmp_path: Path
) -> None:
    """With an ``appliance`` that has ``--token-file``, the token is not on the command line."""
    inv = inventory(tmp_path / "inventory.csv", [("den", "default", "", "")])
    await Fleet(store, Options(SERVER, tmp_path / "out"), io.StringIO()).run(read_inventory(inv))
    pi = tmp_path / "pi"
    env = pi_env(pi)
    fake = pi / "appliance"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$*" in *--help*) echo "--token-file FILE"; exit 0 ;; esac\n'
        f'echo "$*" > {pi / "args"}\n'
        'while [ $# -gt 0 ]; do [ "$1" = --state-dir ] && mkdir -p "$2" && '
        'echo "{}" > "$2/device.json"; shift; done\n'
    )
    fake.chmod(0o755)
    env["APPLIANCE_BIN"] = str(fake)
    bundle = tmp_path / "out" / "den"
    token = (bundle / TOKEN_FILE).read_text().strip()
    await sh(bundle / "firstboot.sh", "install", "--now", env=env)
    args = (pi / "args").read_text()
    assert f"enroll --server {SERVER} --token-file {pi / 'firstboot' / TOKEN_FILE}" in args
    assert "--name den" in args
    assert token not in args


def test_boot_partition_bundle_and_cmdline_hook(store: Store, tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    original = "console=serial0,115200 root=PARTUUID=4e639091-02 rootfstype=ext4 rootwait"
    imager = tmp_path / "firstrun.sh"  # a hook already there, e.g. Raspberry Pi Imager's
    imager.write_text(f"#!/bin/sh\ntouch {tmp_path / 'imager-ran'}\n")
    (boot / "cmdline.txt").write_text(f"{original} systemd.run={imager} {fleet.HOOK}\n")
    inv = twenty(tmp_path)
    err = io.StringIO()
    assert fleet.main(store, inv, Options(SERVER, tmp_path / "out", boot=boot), err=err) == 64
    assert "--only" in err.getvalue()
    options = Options(SERVER, tmp_path / "out", boot=boot)
    assert fleet.main(store, inv, options, only=["pi-05"], out=io.StringIO()) == 0
    assert sorted(p.name for p in (boot / "appliance").iterdir()) == sorted(
        [*BUNDLE_FILES, "chain"]
    )
    words = (boot / "cmdline.txt").read_text().split()
    assert words[:4] == original.split()
    assert "systemd.run=/boot/firmware/appliance/firstboot.sh" in words
    assert f"systemd.run={imager}" not in words
    assert words.count("systemd.unit=kernel-command-line.target") == 1

    # the first boot: systemd.run= runs the script with no arguments
    pi = tmp_path / "pi"
    run_sh(boot / "appliance" / "firstboot.sh", env=pi_env(pi))
    assert (tmp_path / "imager-ran").exists(), "the earlier hook still ran"
    assert (boot / "cmdline.txt").read_text().split() == original.split()
    assert not (boot / "appliance" / TOKEN_FILE).exists(), "no token left on the FAT partition"
    assert (pi / "firstboot" / TOKEN_FILE).read_text().strip()
    assert (pi / "systemd" / UNIT).exists()
    assert "enable appliance-firstboot.service" in (pi / "systemctl.log").read_text()


# --- SSH ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """An sshd on 127.0.0.1 that lets in one freshly made key; yields (port, client key)."""
    daemon = require_tool("sshd")
    keygen = require_tool("ssh-keygen")
    require_tool("ssh")
    require_tool("scp")
    require(os.geteuid() == 0, "root, to run sshd")
    d = tmp_path / "sshd"
    d.mkdir()
    for name in ("host_key", "client_key"):
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\n"
        f"PidFile {d / 'sshd.pid'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        "PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
        "Subsystem sftp internal-sftp\nMaxStartups 64\nLogLevel INFO\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    proc = subprocess.Popen(
        [daemon, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE
    )
    assert proc.stderr is not None
    output = OutputLines(proc.stderr, d / "sshd.log")
    try:
        if not output.wait_for(f"Server listening on 127.0.0.1 port {port}"):
            pytest.fail(f"sshd did not start: {''.join(output.lines)}")
        yield port, d / "client_key"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        output.join()


@pytest.mark.slow  # pushes over a real sshd
async def test_push_over_ssh_in_parallel(
    server: ProvisioningServer, sshd: tuple[int, Path], tmp_path: Path, appliance_cli: str
) -> None:
    port, key = sshd
    names = [f"unit-{i}" for i in range(4)]
    rows = [(n, "default", f"127.0.0.1:{port}", "") for n in names]
    rows.append(("offline", "default", "127.0.0.1:1", ""))  # nothing listens there
    rows.append(("unhosted", "default", "", ""))
    inv = inventory(tmp_path / "inventory.csv", rows)
    pis = tmp_path / "pis"
    env_probe = pi_env(pis)  # one recording systemctl for all the "remote" devices
    ssh = SshOptions(
        user="root",
        identity=str(key),
        options=("StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "LogLevel=ERROR"),
        remote_dir=str(pis / "{name}" / "firstboot"),
        remote_env=(
            f"APPLIANCE_BIN={APPLIANCE_BIN}",
            f"APPLIANCE_STATE={pis / '{name}' / 'state'}",
            f"APPLIANCE_ETC={pis / '{name}' / 'etc'}",
            f"SYSTEMD_DIR={pis / '{name}' / 'systemd'}",
            f"SYSTEMCTL={env_probe['SYSTEMCTL']}",
        ),
        timeout_s=60,
    )
    out = tmp_path / "out"
    options = Options(server.base_url, out, push=True, jobs=4, ssh=ssh)
    log = io.StringIO()
    started = time.monotonic()
    results = await Fleet(server.store, options, log).run(read_inventory(inv))
    elapsed = time.monotonic() - started
    by_name = {r.name: r for r in results}
    assert [by_name[n].action for n in names] == ["pushed"] * 4, log.getvalue()
    assert by_name["offline"].action == "failed"
    assert "ssh exited 255" in by_name["offline"].detail
    assert by_name["unhosted"].action == "bundled"
    with server.store.session() as db:
        enrolled = sorted(d.name for d in db.scalars(select(Device)))
    assert enrolled == names
    for name in names:
        identity = Identity.load(pis / name / "state")
        assert identity.server == server.base_url
        assert not (pis / name / "firstboot" / TOKEN_FILE).exists()
        assert not (out / name / TOKEN_FILE).exists(), "a used token is not kept locally"
        assert not (Path.home() / f".appliance-bundle-{name}").exists(), "staging cleaned up"
    manifest = Manifest.load(out / "fleet-manifest.json")
    assert {n: manifest.records[n].state for n in [*names, "offline"]} == {
        **dict.fromkeys(names, "enrolled"),
        "offline": "failed",
    }
    print(f"4 pushes with --jobs 4 took {elapsed:.1f} s")

    # a re-run skips the enrolled devices and retries only the failed push
    log = io.StringIO()
    again = await Fleet(server.store, options, log).run(read_inventory(inv))
    assert [r.action for r in again] == ["skipped"] * 4 + ["failed", "skipped"]
    assert fleet.summary(again).splitlines()[-1] == "1 failed, 5 skipped"
