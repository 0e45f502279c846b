"""``appliance enroll`` checks everything local before it spends the single-use token."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from appliance.__main__ import main as appliance_main
from appliance.errors import EX_CONFIG, ConfigError, EnrollmentError, ProvisioningUnavailable
from appliance.identity import KEY_FILE, PENDING_KEY_FILE, Identity, enroll, public_key_b64
from provisioning.server import ProvisioningServer
from provisioning.store import Device


def unwritable(tmp_path: Path) -> Path:
    """A state dir that cannot be made, even by root: its parent is a regular file."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    return blocker / "state"


async def test_unwritable_state_dir_fails_before_the_token_is_spent(
    tmp_path: Path, server: ProvisioningServer
) -> None:
    token = server.store.create_token("default")
    with pytest.raises(ConfigError, match="state-dir") as err:
        await enroll(server.base_url, token, unwritable(tmp_path), "kitchen")
    assert "unspent" in str(err.value)
    with server.store.session() as db:
        assert db.query(Device).count() == 0
    # the same token still works once the directory is right
    identity = await enroll(server.base_url, token, tmp_path / "state", "kitchen")
    assert Identity.load(tmp_path / "state").device_id == identity.device_id


def test_cli_exits_78_naming_the_state_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["enroll", "--server", "http://127.0.0.1:9", "--token", "enr_x"]
    code = appliance_main([*argv, "--state-dir", str(unwritable(tmp_path))])
    assert code == EX_CONFIG
    err = capsys.readouterr().err
    assert "--state-dir" in err
    assert "Traceback" not in err


async def test_retry_after_a_failed_claim_sends_the_same_key(
    tmp_path: Path, server: ProvisioningServer
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    state = tmp_path / "state"
    with pytest.raises(ProvisioningUnavailable):
        await enroll(dead, "enr_whatever", state, "kitchen")
    pending = (state / PENDING_KEY_FILE).read_bytes()
    assert (state / PENDING_KEY_FILE).stat().st_mode & 0o777 == 0o600
    identity = await enroll(server.base_url, server.store.create_token("default"), state, "k")
    assert (state / KEY_FILE).read_bytes() == pending
    assert not (state / PENDING_KEY_FILE).exists()
    with server.store.session() as db:
        device = db.get_one(Device, identity.device_id)
        assert device.public_key == public_key_b64(identity.private_key)


async def test_refused_reenrollment_keeps_the_working_identity(
    tmp_path: Path, server: ProvisioningServer
) -> None:
    first = await enroll(server.base_url, server.store.create_token("default"), tmp_path, "a")
    with pytest.raises(EnrollmentError):
        await enroll(server.base_url, "enr_not-a-token", tmp_path, "a")
    kept = Identity.load(tmp_path)
    assert kept.device_id == first.device_id
    assert public_key_b64(kept.private_key) == public_key_b64(first.private_key)


async def test_a_taken_name_is_refused_before_the_token_is_spent(
    tmp_path: Path, server: ProvisioningServer
) -> None:
    await enroll(server.base_url, server.store.create_token("default"), tmp_path / "a", "hall")
    token = server.store.create_token("default")
    with pytest.raises(EnrollmentError, match=r"409.*named 'hall' exists"):
        await enroll(server.base_url, token, tmp_path / "b", "hall")
    again = await enroll(server.base_url, token, tmp_path / "b", "hall-2")
    assert Identity.load(tmp_path / "b").device_id == again.device_id
