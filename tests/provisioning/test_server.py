"""Provisioning server: enrollment, device JWTs, minting, revocation — on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select, text

from appliance.errors import DeviceRevoked, EnrollmentError, ProvisioningUnavailable, RateLimited
from appliance.identity import AUDIENCE, Identity, enroll
from appliance.realtime.provisioning_keys import ProvisioningKeySource
from provisioning.server import ProvisioningServer, Settings, profile_for
from provisioning.store import Audit, Device, MintCounter, UsedJti
from standin import StandIn
from tests.provisioning.conftest import STANDARD_KEY, enrolled, serving
from tests.waiting import LogWatch


@pytest.fixture
async def server(db_url: str, standin: StandIn) -> AsyncIterator[ProvisioningServer]:
    async with serving(db_url, standin) as srv:
        yield srv


async def post(url: str, token: str | None, body: Any = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient() as http:
        return await http.post(url, json=body or {}, headers=headers)


async def test_enroll_then_mint_an_ephemeral_key(
    server: ProvisioningServer, standin: StandIn, tmp_path: Path
) -> None:
    server.store.ensure_group("default", profile_for(voice="cedar", instructions="Be brief."))
    identity = await enrolled(server, tmp_path)
    key_file = tmp_path / "kitchen" / "device.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = await ProvisioningKeySource(identity).get_key()
    assert key.value.startswith("ek_")
    assert key.value in standin.keys
    assert key.realtime_base == standin.base_url
    assert key.session["audio"]["output"]["voice"] == "cedar"
    assert key.expires_at - time.time() == pytest.approx(60, abs=5)
    await server.app.state.ledger.flush()  # last seen and audit are written with the next batch
    with server.store.session() as db:
        device = db.get_one(Device, identity.device_id)
        assert device.last_seen is not None
        stored = device.public_key
    assert "PRIVATE" not in stored
    assert len(stored) == 43  # base64url of a raw 32-byte Ed25519 public key, nothing else


async def test_profile_changes_apply_at_the_next_mint(
    server: ProvisioningServer, tmp_path: Path
) -> None:
    source = ProvisioningKeySource(await enrolled(server, tmp_path))
    assert (await source.get_key()).session["audio"]["output"]["voice"] == "alloy"
    server.store.ensure_group("default", profile_for(voice="sage"))
    assert (await source.get_key()).session["audio"]["output"]["voice"] == "sage"


async def test_enrollment_tokens_are_single_use_and_expire(
    server: ProvisioningServer, tmp_path: Path
) -> None:
    token = server.store.create_token("default")
    await enroll(server.base_url, token, tmp_path / "a", "a")
    with pytest.raises(EnrollmentError, match="409"):
        await enroll(server.base_url, token, tmp_path / "b", "b")
    with pytest.raises(EnrollmentError, match="401"):
        await enroll(server.base_url, "enr_made_up", tmp_path / "c", "c")
    expired = server.store.create_token("default", ttl_s=-1)
    with pytest.raises(EnrollmentError, match="410"):
        await enroll(server.base_url, expired, tmp_path / "d", "d")
    claim = server.store.create_token("default", max_uses=2)
    await enroll(server.base_url, claim, tmp_path / "e", "e")
    await enroll(server.base_url, claim, tmp_path / "f", "f")
    with pytest.raises(EnrollmentError, match="409"):
        await enroll(server.base_url, claim, tmp_path / "g", "g")
    assert not (tmp_path / "g" / "device.key").exists(), "nothing is stored when refused"


def forged(identity: Identity, **changes: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": identity.device_id,
        "sub": identity.device_id,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 30,
        "jti": secrets.token_urlsafe(8),
    }
    key = changes.pop("key", identity.private_key)
    claims.update(changes)
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": identity.device_id})


async def test_bad_jwts_are_refused(server: ProvisioningServer, tmp_path: Path) -> None:
    identity = await enrolled(server, tmp_path)
    url = f"{server.base_url}/v1/realtime/keys"
    token = identity.token()
    assert (await post(url, token)).status_code == 200
    replay = await post(url, token)
    assert (replay.status_code, replay.json()["error"]["code"]) == (401, "replayed")
    now = int(time.time())
    for bad in [
        forged(identity, exp=now - 10, iat=now - 40),  # expired past the leeway
        forged(identity, aud="someone-else"),  # foreign audience
        forged(identity, key=Ed25519PrivateKey.generate()),  # another key
        forged(identity, exp=now + 3600),  # lifetime over 60 s
        forged(identity, sub="dev_other"),
        jwt.encode(
            {"sub": identity.device_id},
            "s" * 32,
            algorithm="HS256",
            headers={"kid": identity.device_id},
        ),
        "not-a-jwt",
        _resigned(identity.token(), b"\x00" * 64),  # a signature that is not one
        _resigned(identity.token(), b"\x01" * 63),  # the wrong length
        _resigned(identity.token(), b""),
        "eyJ" + "A" * 600 + ".e30.",  # a header far longer than a device's
    ]:
        assert (await post(url, bad)).status_code == 401
    assert (await post(url, None)).status_code == 401


def _resigned(token: str, signature: bytes) -> str:
    """``token`` with its signature replaced."""
    signing_input = token.rsplit(".", 1)[0]
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


async def test_revocation_is_immediate(
    server: ProvisioningServer, standin: StandIn, tmp_path: Path
) -> None:
    identity = await enrolled(server, tmp_path)
    source = ProvisioningKeySource(identity)
    await source.get_key()
    minted = len(standin.keys)
    assert server.store.set_device_state(identity.device_id, "disable")
    with pytest.raises(DeviceRevoked, match="401"):
        await source.get_key()
    assert server.store.set_device_state(identity.device_id, "enable")
    await source.get_key()
    assert server.store.set_device_state(identity.device_id, "revoke")
    with pytest.raises(DeviceRevoked, match="401"):
        await source.get_key()
    assert len(standin.keys) == minted + 1, "a revoked or disabled device mints nothing"
    await server.app.state.ledger.flush()
    with server.store.session() as db:
        actions = [a.action for a in db.scalars(select(Audit).order_by(Audit.id))]
    assert "device.revoke" in actions
    assert actions.count("key.mint") == 2


@pytest.mark.parametrize("status", [429, 500])
async def test_upstream_failures_become_503(
    server: ProvisioningServer, standin: StandIn, tmp_path: Path, status: int
) -> None:
    identity = await enrolled(server, tmp_path)
    standin.faults.client_secrets_status = status
    response = await post(f"{server.base_url}/v1/realtime/keys", identity.token())
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert "Rate limit" not in response.text
    assert "server had an error" not in response.text
    with pytest.raises(ProvisioningUnavailable) as caught:
        await ProvisioningKeySource(identity).get_key()
    assert caught.value.retry_after is not None


async def test_dead_upstream_becomes_503(db_url: str, tmp_path: Path) -> None:
    settings = Settings(
        database_url=db_url, upstream_url="http://127.0.0.1:9", openai_api_key=STANDARD_KEY, port=0
    )
    async with ProvisioningServer(settings) as server:
        identity = await enrolled(server, tmp_path)
        response = await post(f"{server.base_url}/v1/realtime/keys", identity.token())
        assert response.status_code == 503


async def test_dead_server_is_unavailable_not_revoked(tmp_path: Path) -> None:
    identity = Identity("dev_x", "http://127.0.0.1:9", Ed25519PrivateKey.generate())
    with pytest.raises(ProvisioningUnavailable):
        await ProvisioningKeySource(identity).get_key()


async def test_heartbeat_is_stored(server: ProvisioningServer, tmp_path: Path) -> None:
    identity = await enrolled(server, tmp_path)
    health = {
        "version": "0.1.0",
        "uptime_s": 12,
        "last_turn_latency_ms": 640,
        "reconnects": 1,
        "false_wakes": 0,
    }
    before = time.time()
    await ProvisioningKeySource(identity).heartbeat(health)
    with server.store.session() as db:
        row = db.get_one(Device, identity.device_id)
        assert row.health == health
        assert row.last_seen is not None
        assert row.last_seen >= before


async def test_heartbeats_share_the_replay_check_and_are_batched(
    server: ProvisioningServer, tmp_path: Path
) -> None:
    """Every device JWT goes through the ledger: a token spent on a heartbeat cannot mint,
    nor the other way round, and a fleet's heartbeats at once are one transaction or few."""
    identities = [await enrolled(server, tmp_path, f"d{i}") for i in range(20)]
    heartbeat_url = f"{server.base_url}/v1/devices/heartbeat"
    mint_url = f"{server.base_url}/v1/realtime/keys"
    token = identities[0].token()
    first = await post(heartbeat_url, token, {"uptime_s": 1})
    assert first.status_code == 204
    assert "content-length" not in first.headers, "a 204 has no body, so no length (RFC 9110)"
    spent = await post(mint_url, token)
    assert (spent.status_code, spent.json()["error"]["code"]) == (401, "replayed")
    token = identities[0].token()
    assert (await post(mint_url, token)).status_code == 200
    again = await post(heartbeat_url, token, {"uptime_s": 2})
    assert (again.status_code, again.json()["error"]["code"]) == (401, "replayed")

    registry = server.app.state.metrics.registry
    name = "provisioning_ledger_transactions_total"
    before = registry.get_sample_value(name)
    async with httpx.AsyncClient() as http:
        replies = await asyncio.gather(
            *(
                http.post(
                    heartbeat_url,
                    json={"uptime_s": 100 + i},
                    headers={"Authorization": f"Bearer {identity.token()}"},
                )
                for i, identity in enumerate(identities)
            )
        )
    assert [r.status_code for r in replies] == [204] * 20
    assert registry.get_sample_value(name) - before < 20, "heartbeats are group-committed"
    with server.store.session() as db:
        stored = {d.id: d.health for d in db.scalars(select(Device))}
    assert {stored[x.device_id]["uptime_s"] for x in identities} == set(range(100, 120))


async def test_a_heartbeat_that_is_not_json_is_refused(
    server: ProvisioningServer, tmp_path: Path
) -> None:
    identity = await enrolled(server, tmp_path)
    async with httpx.AsyncClient() as http:
        reply = await http.post(
            f"{server.base_url}/v1/devices/heartbeat",
            content=b"{not json",
            headers={"Authorization": f"Bearer {identity.token()}"},
        )
    assert (reply.status_code, reply.json()["error"]["code"]) == (400, "bad_request")
    with server.store.session() as db:
        assert db.get_one(Device, identity.device_id).health in (None, {})


async def test_the_standard_key_never_leaks(
    server: ProvisioningServer, standin: StandIn, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    identity = await enrolled(server, tmp_path)
    bodies = []
    for status in (None, 500):
        standin.faults.client_secrets_status = status
        bodies.append((await post(f"{server.base_url}/v1/realtime/keys", identity.token())).text)
    bodies.append((await post(f"{server.base_url}/v1/realtime/keys", "junk")).text)
    async with httpx.AsyncClient() as http:
        bodies.append((await http.get(f"{server.base_url}/openapi.json")).text)
    assert all(STANDARD_KEY not in body for body in bodies)
    assert STANDARD_KEY not in caplog.text
    assert STANDARD_KEY not in repr(server.settings)
    minted = bodies[0]
    assert "ek_" in minted
    key_value = minted.split('"value":"')[1].split('"')[0]
    assert key_value not in caplog.text, "ephemeral keys are secrets too"


async def test_rate_limit_and_quota_give_429_with_retry_after(
    server: ProvisioningServer, standin: StandIn, tmp_path: Path
) -> None:
    server.store.ensure_group("default", limits={"device_per_minute": 3, "device_per_day": 5})
    identity = await enrolled(server, tmp_path)
    url = f"{server.base_url}/v1/realtime/keys"
    statuses = [(await post(url, identity.token())).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    limited = await post(url, identity.token())
    assert limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 60 + 1, "the window and its 1 s bucket"
    other = await enrolled(server, tmp_path, "other")
    assert (await post(url, other.token())).status_code == 200, "limits are per device"
    server.store.ensure_group("default", limits={"device_per_minute": 100})
    # refused requests do not count: 3 keys so far, 2 more fit in the daily quota of 5
    assert (await post(url, identity.token())).status_code == 200
    assert (await post(url, identity.token())).status_code == 200
    assert (await post(url, identity.token())).status_code == 429, "daily quota of 5"
    with pytest.raises(RateLimited) as caught:
        await ProvisioningKeySource(identity).get_key()
    assert caught.value.retry_after is not None
    assert caught.value.retry_after > 60


async def test_group_limit_spans_devices(server: ProvisioningServer, tmp_path: Path) -> None:
    server.store.ensure_group("default", limits={"group_per_minute": 2})
    a, b = await enrolled(server, tmp_path, "a"), await enrolled(server, tmp_path, "b")
    url = f"{server.base_url}/v1/realtime/keys"
    assert [(await post(url, d.token())).status_code for d in (a, b, a)] == [200, 200, 429]


async def test_key_rotation_with_overlap(server: ProvisioningServer, tmp_path: Path) -> None:
    from appliance.identity import rotate

    old = await enrolled(server, tmp_path)
    url = f"{server.base_url}/v1/realtime/keys"
    assert (await post(url, old.token())).status_code == 200  # the server now caches old's key
    new = await rotate(old, tmp_path / "kitchen")
    assert new.device_id == old.device_id
    assert (
        Identity.load(tmp_path / "kitchen").private_key.public_key() == new.private_key.public_key()
    )
    assert (await post(url, new.token())).status_code == 200
    assert (await post(url, old.token())).status_code == 200, "old key works during the overlap"
    with server.store.session.begin() as db:
        db.get_one(Device, old.device_id).previous_until = time.time() - 1
    assert (await post(url, old.token())).status_code == 401, "and not after it"
    assert (await post(url, new.token())).status_code == 200


async def test_concurrent_mints_are_counted_exactly(
    server: ProvisioningServer, tmp_path: Path
) -> None:
    """Mints are admitted in batches (one transaction for many requests): the limit holds
    exactly within a batch, and a JWT sent twice at once is a replay the second time."""
    server.store.ensure_group("default", limits={"device_per_minute": 7})
    identity = await enrolled(server, tmp_path)
    url = f"{server.base_url}/v1/realtime/keys"
    async with httpx.AsyncClient() as http:

        async def one(token: str) -> int:
            headers = {"Authorization": f"Bearer {token}"}
            return (await http.post(url, json={}, headers=headers)).status_code

        statuses = await asyncio.gather(*(one(identity.token()) for _ in range(30)))
        assert sorted(statuses) == [200] * 7 + [429] * 23
        server.store.ensure_group("default", limits={"device_per_minute": 100})
        token = identity.token()
        assert sorted(await asyncio.gather(one(token), one(token))) == [200, 401]
    await server.app.state.ledger.flush()
    with server.store.session() as db:
        outcomes = [
            a.detail["outcome"] for a in db.scalars(select(Audit)) if a.action == "key.mint"
        ]
    assert outcomes.count("ok") == 8
    assert outcomes.count("limited") == 23


async def test_a_failing_database_gives_503_and_keeps_the_audit(
    server: ProvisioningServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    logwatch: LogWatch,
) -> None:
    identity = await enrolled(server, tmp_path)
    url = f"{server.base_url}/v1/realtime/keys"
    with server.store.engine.begin() as conn:
        conn.execute(text("ALTER TABLE audit RENAME TO audit_away"))
    assert (await post(url, identity.token())).status_code == 200  # its audit row cannot land
    await logwatch.wait_for("mint ledger: database unavailable")  # the ledger tried
    refused = await post(url, identity.token())  # admitted with that row: the transaction fails
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "database_unavailable"
    assert int(refused.headers["retry-after"]) >= 1
    assert "database unavailable" in caplog.text
    with server.store.engine.begin() as conn:
        conn.execute(text("ALTER TABLE audit_away RENAME TO audit"))
    # (a request during the ledger's back-off after a failure waits for the next batch)
    assert (await post(url, identity.token())).status_code == 200
    await server.app.state.ledger.flush()
    with server.store.session() as db:
        rows = [a for a in db.scalars(select(Audit)) if a.action == "key.mint"]
    assert [a.detail["outcome"] for a in rows] == ["ok", "ok"], "nothing lost, the 503 not minted"


async def test_expired_counters_and_jwt_ids_are_purged(
    server: ProvisioningServer, tmp_path: Path
) -> None:
    identity = await enrolled(server, tmp_path)
    old = time.time() - 90000
    with server.store.session.begin() as db:
        db.add(UsedJti(jti="gone", expires_at=old))
        db.add(MintCounter(key="q:dev_gone", bucket=int(old), count=3, expires=int(old) + 1))
    server.app.state.ledger.purge_every_s = 0
    assert (await post(f"{server.base_url}/v1/realtime/keys", identity.token())).status_code == 200
    with server.store.session() as db:
        assert db.get(UsedJti, "gone") is None
        assert (
            db.scalars(select(MintCounter).where(MintCounter.key == "q:dev_gone")).first() is None
        )
        assert db.scalars(select(UsedJti)).first() is not None, "the fresh JWT id stays"


async def test_a_bug_in_the_ledger_is_a_503_with_its_traceback(
    server: ProvisioningServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    identity = await enrolled(server, tmp_path)

    def broken(*_args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(server.app.state.ledger._sql, "devices", broken)
    response = await post(f"{server.base_url}/v1/realtime/keys", identity.token())
    assert response.status_code == 503
    assert "boom" not in response.text, "no internals in the answer"
    assert "batch failed" in caplog.text
    assert "RuntimeError: boom" in caplog.text, "the log has the traceback"
