"""scripts/install.sh into a throwaway root: layout, idempotency, config kept, uninstall."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "scripts" / "install.sh"


def install(root: Path, *args: str) -> str:
    result = subprocess.run(
        ["bash", str(SCRIPT), "--root", str(root), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_install_lays_out_the_system_and_is_idempotent(tmp_path: Path) -> None:
    install(tmp_path, "--board", "respeaker-2mic")
    unit = tmp_path / "etc/systemd/system/appliance.service"
    config = tmp_path / "etc/appliance/appliance.toml"
    assert unit.read_text() == (SCRIPT.parents[1] / "systemd/appliance.service").read_text()
    assert 'board = "respeaker-2mic"' in config.read_text()
    assert (tmp_path / "var/lib/appliance").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "opt/appliance/src/pyproject.toml").exists()
    plan = (tmp_path / "install-plan.txt").read_text().splitlines()
    assert plan[0].startswith("apt-get install")
    for package in ("python3-pyaudio", "python3-systemd", "libspeexdsp1", "python3-lgpio"):
        assert package in plan[0]
    assert "usermod -a -G audio,gpio,spi appliance" in plan
    assert plan[-1] == "systemctl enable appliance.service"
    first = snapshot(tmp_path)
    config.write_text(config.read_text() + "\n# edited by the owner\n")
    install(tmp_path, "--board", "generic")
    assert "edited by the owner" in config.read_text(), "an existing config is never overwritten"
    second = snapshot(tmp_path)
    first.pop("etc/appliance/appliance.toml")
    second.pop("etc/appliance/appliance.toml")
    assert first == second, "a second run changes nothing"


def test_uninstall_keeps_config_and_state_unless_purged(tmp_path: Path) -> None:
    install(tmp_path)
    (tmp_path / "var/lib/appliance/device.json").write_text("{}")
    install(tmp_path, "--uninstall")
    assert not (tmp_path / "etc/systemd/system/appliance.service").exists()
    assert not (tmp_path / "opt/appliance").exists()
    assert (tmp_path / "etc/appliance/appliance.toml").exists()
    assert (tmp_path / "var/lib/appliance/device.json").exists()
    install(tmp_path, "--uninstall", "--purge")
    assert not (tmp_path / "var/lib/appliance").exists()
    assert "userdel appliance" in (tmp_path / "install-plan.txt").read_text()


def test_unknown_option_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(SCRIPT), "--frobnicate"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 64
    assert "unknown option" in result.stderr


def test_the_commands_land_on_path(tmp_path: Path) -> None:
    out = install(tmp_path / "pi", "--board", "respeaker-4mic")
    link = tmp_path / "pi/usr/local/bin/appliance"
    assert link.is_symlink()
    assert str(link.readlink()) == "/opt/appliance/venv/bin/appliance"
    assert "sudo appliance enroll" in out
    install(tmp_path / "pi", "--uninstall")
    assert not link.is_symlink()


def test_server_install_puts_provisioning_where_the_unit_runs_it(tmp_path: Path) -> None:
    install(tmp_path, "--server")
    unit = (tmp_path / "etc/systemd/system/provisioning.service").read_text()
    assert "ExecStart=/opt/appliance/venv/bin/provisioning serve" in unit
    assert str((tmp_path / "usr/local/bin/provisioning").readlink()) == (
        "/opt/appliance/venv/bin/provisioning"
    )
    plan = (tmp_path / "install-plan.txt").read_text().splitlines()
    assert (
        "/opt/appliance/venv/bin/pip install --upgrade /opt/appliance/src/common[http]"
        " /opt/appliance/src/server[postgres]" in plan
    )
    assert plan[-1] == "systemctl enable provisioning.service"
    assert (tmp_path / "etc/provisioning").stat().st_mode & 0o777 == 0o700
