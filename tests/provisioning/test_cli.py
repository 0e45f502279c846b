"""The ``provisioning`` CLI as an operator meets it: names or ids, one line per mistake with
exit 64 (usage) or 65 (data), the service's database by default, quiet output, --json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import provisioning.__main__ as cli_module
from provisioning.__main__ import EX_CONFIG, EX_DATAERR, EX_USAGE
from provisioning.__main__ import main as cli
from provisioning.store import Device, Group, Store


@pytest.fixture
def url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("PROVISIONING_DATABASE_URL", raising=False)
    return f"sqlite:///{tmp_path / 'cli.db'}"


def run(url: str, *args: str) -> int:
    return cli(["--database-url", url, *args])


def add_device(url: str, device_id: str, name: str) -> None:
    store = Store(url)
    try:
        with store.session.begin() as db:
            db.add(
                Device(id=device_id, name=name, group="default", public_key=device_id, created_at=0)
            )
    finally:
        store.close()


def device(url: str, device_id: str) -> Device:
    store = Store(url)
    try:
        with store.session() as db:
            return db.get_one(Device, device_id)
    finally:
        store.close()


@pytest.mark.parametrize("by", ["name", "id"])
def test_device_commands_take_a_name_or_an_id(url: str, by: str) -> None:
    assert run(url, "group", "set", "default") == 0
    add_device(url, "dev_1", "kitchen")
    ref = "kitchen" if by == "name" else "dev_1"
    assert run(url, "device", "disable", ref) == 0
    assert not device(url, "dev_1").enabled
    assert run(url, "device", "enable", ref) == 0
    assert device(url, "dev_1").enabled
    assert run(url, "device", "rotate", ref) == 0
    assert device(url, "dev_1").rotate_requested_at is not None
    assert run(url, "device", "revoke", ref) == 0
    assert device(url, "dev_1").revoked
    assert run(url, "device", "rotate", ref) == EX_DATAERR
    assert run(url, "device", "delete", ref) == 0
    assert run(url, "device", "delete", ref) == EX_DATAERR


def test_names_are_unique_and_not_empty(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(url, "group", "set", "default") == 0
    add_device(url, "dev_1", "kitchen")
    assert run(url, "device", "add", "kitchen") == EX_DATAERR
    assert "exists already" in capsys.readouterr().err
    assert run(url, "device", "add", "  ") == EX_USAGE
    assert run(url, "device", "add", "hall") == 0
    assert "--name hall" in capsys.readouterr().out


def test_a_profile_typo_is_refused_naming_the_field(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    good = {
        "type": "realtime",
        "instructions": "Be brief.",
        "audio": {"output": {"voice": "marin"}},
    }
    assert run(url, "group", "set", "lab", "--profile", json.dumps(good)) == 0
    typo = {"type": "realtime", "modle": "gpt-realtime-2.1"}
    assert run(url, "group", "set", "lab", "--profile", json.dumps(typo)) == EX_DATAERR
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "modle: unknown field (did you mean 'model'?)" in err
    nested = {"type": "realtime", "audio": {"output": {"speeed": 1.2}}}
    assert run(url, "group", "set", "lab", "--profile", json.dumps(nested)) == EX_DATAERR
    assert "audio.output.speeed" in capsys.readouterr().err
    wrong_type = {"type": "realtime", "max_output_tokens": "lots"}
    assert run(url, "group", "set", "lab", "--profile", json.dumps(wrong_type)) == EX_DATAERR
    assert "max_output_tokens" in capsys.readouterr().err
    store = Store(url)
    try:
        with store.session() as db:
            assert db.get_one(Group, "lab").profile == good, "a refused profile changes nothing"
    finally:
        store.close()


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["group", "set", "x", "--profile", "{bad"], EX_DATAERR, "--profile: not valid JSON"),
        (["group", "set", "x", "--limits", '{"per_minute": 1}'], EX_DATAERR, "unknown limit"),
        (["token", "create", "--group", "nope"], EX_DATAERR, "no group 'nope'"),
        (["device", "frob"], EX_USAGE, "invalid choice"),
        (["device", "disable"], EX_USAGE, "give a device name or id"),
        (["device", "disable", "ghost"], EX_DATAERR, "no device named or with id 'ghost'"),
    ],
)
def test_user_errors_are_one_line_not_a_traceback(
    url: str, capsys: pytest.CaptureFixture[str], args: list[str], code: int, says: str
) -> None:
    assert run(url, *args) == code
    err = capsys.readouterr().err
    assert says in err
    assert err.startswith("provisioning: ")
    assert err.count("\n") == 1


def test_a_bad_or_unreachable_database_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["--database-url", "nonsense", "device", "list"]) == EX_CONFIG
    assert capsys.readouterr().err.startswith("provisioning: bad database URL")
    missing = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}"
    assert cli(["--database-url", missing, "device", "list"]) == 69
    err = capsys.readouterr().err
    assert err.startswith("provisioning: cannot use the database")
    assert err.count("\n") == 1


def test_without_a_url_the_services_database_is_used_or_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PROVISIONING_DATABASE_URL", raising=False)
    service_db = tmp_path / "var-lib-provisioning" / "provisioning.db"
    monkeypatch.setattr(cli_module, "SERVICE_DATABASE_URL", f"sqlite:///{service_db}")
    assert cli(["device", "list"]) == EX_CONFIG
    err = capsys.readouterr().err
    assert "PROVISIONING_DATABASE_URL" in err
    assert str(service_db) in err
    assert not service_db.exists(), "no stray database is created"
    service_db.parent.mkdir()
    assert cli(["db", "upgrade"]) == 0
    assert service_db.exists()
    assert cli(["device", "add", "kitchen"]) == 0


def test_list_commands_speak_json(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(url, "group", "set", "default") == 0
    add_device(url, "dev_1", "kitchen")
    capsys.readouterr()
    assert run(url, "device", "list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(d["id"], d["name"], d["status"]) for d in listed] == [("dev_1", "kitchen", "enabled")]
    assert run(url, "group", "list", "--json") == 0
    assert [g["name"] for g in json.loads(capsys.readouterr().out)] == ["default"]


@pytest.mark.slow  # CLI subprocesses
def test_quiet_by_default_version_and_completion(tmp_path: Path) -> None:
    env = {**os.environ, "PROVISIONING_DATABASE_URL": f"sqlite:///{tmp_path / 'q.db'}"}

    def provisioning(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "provisioning", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    first = provisioning("device", "list")  # creates the schema: no Alembic lines
    assert (first.returncode, first.stdout, first.stderr) == (0, "", "")
    upgraded = provisioning("db", "upgrade")
    assert upgraded.stderr == ""
    assert upgraded.stdout.startswith("database at revision")
    version = provisioning("--version")
    assert version.returncode == 0
    assert version.stdout.startswith("provisioning ")
    completion = provisioning("completion", "bash")
    assert completion.returncode == 0
    assert "disable" in completion.stdout
    assert "complete" in completion.stdout
