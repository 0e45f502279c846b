"""The server under attack (issue 15), its clock-skew leeway (issue 14) and idempotent
enrollment (issue 17): one test per finding, on SQLite and PostgreSQL where a database is
involved."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from starlette.types import Receive, Scope, Send

from appliance.identity import Identity, public_key_b64, rotate
from appliance_common import serving
from appliance_common.serving import Served
from provisioning.server import ProvisioningServer, Settings
from provisioning.store import Audit, Device, hash_token
from standin import StandIn
from tests.provisioning import test_server
from tests.provisioning.conftest import enrolled
from tests.provisioning.test_server import forged, post

server = test_server.server


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _raw_jwt(header: str, claims: dict[str, Any] | None = None) -> str:
    """A JWT with ``header`` as its raw JSON text (escapes kept as written)."""
    return f"{_b64(header.encode())}.{_b64(json.dumps(claims or {}).encode())}.{_b64(b'x' * 64)}"


def _key() -> str:
    return public_key_b64(Ed25519PrivateKey.generate())


async def _enroll(base: str, token: str, public_key: str, name: Any = None) -> httpx.Response:
    """Names are unique: by default each key enrolls under a name of its own."""
    name = f"d-{public_key[:12]}" if name is None else name
    async with httpx.AsyncClient() as http:
        return await http.post(
            f"{base}/v1/devices/enroll",
            json={"token": token, "public_key": public_key, "name": name},
        )


def _uses(server: ProvisioningServer, token: str) -> tuple[int, int]:
    state = server.store.token_state(hash_token(token))
    assert state is not None
    return state[0], state[1]


def _code(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


# --- isolation: a malformed request is its own 4xx, never its batch's 503 -----------------


async def test_malformed_jwts_are_refused_alone_and_spare_their_batch(
    server: ProvisioningServer, tmp_path: Path
) -> None:
    identity = await enrolled(server, tmp_path)
    url = f"{server.base_url}/v1/realtime/keys"
    now = int(time.time())
    malformed = [
        _raw_jwt('{"alg":"EdDSA","kid":"\\ud800"}'),  # a lone surrogate
        _raw_jwt('{"alg":"EdDSA","kid":"dev_\\u0000"}'),  # NUL
        _raw_jwt('{"alg":"EdDSA","kid":["dev_1"]}'),
        forged(identity, iat=str(now), exp=str(now + 30)),  # numeric strings, signed
        forged(identity, jti="j" * 65),  # longer than the column
        forged(identity, jti=5),
        forged(identity, exp=True),
    ]
    good = [identity.token() for _ in range(10)]
    replies = await asyncio.gather(*(post(url, t) for t in [*malformed, *good, *malformed]))
    bad = replies[: len(malformed)] + replies[len(malformed) + len(good) :]
    assert [_code(r) for r in bad] == [(401, "invalid_token")] * len(bad)
    assert [r.status_code for r in replies[len(malformed) : len(malformed) + len(good)]] == [
        200
    ] * len(good)


async def test_a_batch_that_fails_is_retried_request_by_request(
    server: ProvisioningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request that breaks its batch's transaction (here: a heartbeat whose write fails)
    is answered 503 alone; the others in its batch go through."""
    server.store.ensure_group("default", limits={"device_per_minute": 1000})
    identity = await enrolled(server, tmp_path)
    ledger = server.app.state.ledger
    real = ledger._sql.health

    def health(cur: Any, reports: list[tuple[str, dict[str, Any]]]) -> None:
        if any(report.get("poison") for _, report in reports):
            raise ledger._db_errors[-1]("this one request's write failed")
        real(cur, reports)

    monkeypatch.setattr(ledger._sql, "health", health)
    other = await enrolled(server, tmp_path, "other")
    mint = f"{server.base_url}/v1/realtime/keys"
    beat = f"{server.base_url}/v1/devices/heartbeat"
    for _round in range(5):  # until the poisoned heartbeat shares a batch with mints
        replies = await asyncio.gather(
            post(beat, other.token(), {"poison": True}),
            *(post(mint, identity.token()) for _ in range(8)),
        )
        assert replies[0].status_code == 503
        assert [r.status_code for r in replies[1:]] == [200] * 8


# --- atomic single use, idempotent retry ---------------------------------------------------


async def test_an_enrollment_retry_gets_the_same_device(
    server: ProvisioningServer, tmp_path: Path
) -> None:
    token = server.store.create_token("default")
    key = _key()
    first = await _enroll(server.base_url, token, key, "kitchen")
    again = await _enroll(server.base_url, token, key, "kitchen")
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert _code(await _enroll(server.base_url, token, _key())) == (409, "token_used")
    other = server.store.create_token("default")
    assert _code(await _enroll(server.base_url, other, key)) == (409, "key_in_use")
    assert _uses(server, token) == (1, 1)
    two = server.store.create_token("default", max_uses=2)
    k2 = _key()
    a, b = await _enroll(server.base_url, two, k2), await _enroll(server.base_url, two, k2)
    assert a.json() == b.json()
    assert (await _enroll(server.base_url, two, _key())).status_code == 201, "a retry uses none"
    with server.store.session() as db:
        assert len(db.scalars(select(Device)).all()) == 3


# --- rotation: only the current key, serialised, never to a key in use --------------------


async def test_a_superseded_key_cannot_rotate(server: ProvisioningServer, tmp_path: Path) -> None:
    a = await enrolled(server, tmp_path)
    b = await rotate(a, tmp_path / "kitchen")
    url = f"{server.base_url}/v1/devices/rotate"
    thief = Ed25519PrivateKey.generate()
    reply = await post(url, a.token(), {"public_key": public_key_b64(thief)})
    assert _code(reply) == (403, "key_superseded")
    c = Identity(a.device_id, a.server, thief)
    mint = f"{server.base_url}/v1/realtime/keys"
    assert (await post(mint, c.token())).status_code == 401
    assert (await post(mint, a.token())).status_code == 200, "A still authenticates (overlap)"
    assert (await post(mint, b.token())).status_code == 200


async def test_concurrent_rotations_have_one_winner(
    server: ProvisioningServer, tmp_path: Path
) -> None:
    device = await enrolled(server, tmp_path)
    url = f"{server.base_url}/v1/devices/rotate"
    keys = [Ed25519PrivateKey.generate() for _ in range(10)]
    replies = await asyncio.gather(
        *(post(url, device.token(), {"public_key": public_key_b64(k)}) for k in keys)
    )
    codes = [r.status_code for r in replies]
    assert codes.count(200) == 1, codes
    # a loser is refused at the write (409), or, once the winner's write is seen, at the JWT:
    # its key is no longer the current one (403)
    assert set(codes) - {200} <= {403, 409}, codes
    winner = keys[[r.status_code for r in replies].index(200)]
    mint = f"{server.base_url}/v1/realtime/keys"
    working = [
        k for k in keys if (await post(mint, Identity(device.device_id, "", k).token())).is_success
    ]
    assert working == [winner]


@pytest.mark.parametrize(
    "new_key",
    [
        _b64(bytes(32)),  # all zero
        _b64(bytes([1]) + bytes(31)),  # the identity point: small order
        _b64(bytes([0xEC]) + b"\xff" * 30 + b"\x7f"),  # (0, -1): order 2
        _b64(bytes([0xED]) + b"\xff" * 30 + b"\x7f"),  # y = p: not canonical
        "A" * 42 + "B",  # base64 whose padding bits are set: not canonical
        "!" * 43,
        _b64(bytes(33)),
    ],
)
@pytest.mark.slow  # a server per case, many cases
async def test_rotation_to_a_weak_or_junk_key_is_refused(
    server: ProvisioningServer, tmp_path: Path, new_key: str
) -> None:
    device = await enrolled(server, tmp_path)
    reply = await post(
        f"{server.base_url}/v1/devices/rotate", device.token(), {"public_key": new_key}
    )
    assert reply.status_code == 400


async def test_rotation_to_a_key_in_use_is_refused(
    server: ProvisioningServer, tmp_path: Path
) -> None:
    a = await enrolled(server, tmp_path, "a")
    b = await enrolled(server, tmp_path, "b")
    url = f"{server.base_url}/v1/devices/rotate"
    theirs = public_key_b64(b.private_key)
    assert _code(await post(url, a.token(), {"public_key": theirs})) == (409, "key_in_use")
    own = public_key_b64(a.private_key)
    assert _code(await post(url, a.token(), {"public_key": own})) == (409, "key_in_use")


# --- limits on every route -----------------------------------------------------------------


async def test_oversized_bodies_and_headers_are_refused_unread(
    server: ProvisioningServer, tmp_path: Path
) -> None:
    identity = await enrolled(server, tmp_path)
    big = b'{"token": "' + b"x" * (2 * serving.MAX_BODY) + b'"}'

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield b" " * 4096

    async with httpx.AsyncClient(base_url=server.base_url) as http:
        enroll = await http.post("/v1/devices/enroll", content=big)
        assert _code(enroll) == (413, "request_too_large")
        streamed = await http.post("/v1/devices/enroll", content=chunks())  # no Content-Length
        assert _code(streamed) == (413, "request_too_large")
        headers = {"Authorization": f"Bearer {identity.token()}"}
        rotate_big = await http.post("/v1/devices/rotate", content=big, headers=headers)
        assert _code(rotate_big) == (413, "request_too_large")
        padded = {**headers, "X-Padding": "p" * 20_000}
        assert _code(await http.post("/v1/realtime/keys", headers=padded)) == (
            431,
            "headers_too_large",
        )
        long_token = {"Authorization": "Bearer " + "e" * 5000}
        assert _code(await http.post("/v1/realtime/keys", headers=long_token)) == (
            401,
            "invalid_token",
        )


async def _status_line(server: ProvisioningServer, request: bytes) -> bytes:
    """The status line the server answers ``request`` (raw bytes, sent as they are) with."""
    host, port = server.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(10):  # the server's answer is the event waited on
            return await reader.readline()
    finally:  # also when the server resets the connection mid-request
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@pytest.mark.parametrize("where", ["before", "after"])
async def test_a_padded_authorization_header_is_refused(
    server: ProvisioningServer, tmp_path: Path, where: str
) -> None:
    """Refused before the app: the server stops reading and closes (the client may see the
    431 or, with its request unsent, a reset); the JWT inside was never spent."""
    identity = await enrolled(server, tmp_path)
    padding = b" " * 8_000_000
    token = identity.token()
    value = b"Bearer " + (
        padding + token.encode() if where == "before" else token.encode() + padding
    )
    request = b"POST /v1/realtime/keys HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
    try:
        status = await _status_line(server, request + b"Authorization: " + value + b"\r\n\r\n")
    except ConnectionError:
        status = b"HTTP/1.1 431 (reset before it was read)"
    assert status.startswith(b"HTTP/1.1 431"), status
    assert (await post(f"{server.base_url}/v1/realtime/keys", token)).status_code == 200


async def test_a_slow_request_head_is_timed_out(
    server: ProvisioningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serving, "REQUEST_TIMEOUT_S", 0.3)
    status = await _status_line(server, b"POST /v1/realtime/keys HTTP/1.1\r\nHost: x\r\n")
    assert status.startswith(b"HTTP/1.1 408"), status


async def test_a_slow_body_is_timed_out(
    server: ProvisioningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serving, "REQUEST_TIMEOUT_S", 0.3)
    status = await _status_line(
        server,
        b"POST /v1/devices/enroll HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{",
    )
    assert status.startswith(b"HTTP/1.1 408"), status


@pytest.mark.parametrize(
    "raw_name",
    [
        '"\\ud800"',  # a lone surrogate
        '"a\\u0000b"',  # NUL
        '"\\u001b[31mred"',  # an ANSI escape
        '"\\u202eevil"',  # a right-to-left override
        '"two\\nlines"',
        '"' + "n" * 65 + '"',
        '""',
        "7",
        "[" * 20_000 + "]" * 20_000,  # nesting far past the JSON parser's bound
    ],
)
@pytest.mark.slow  # a server per case, many cases
async def test_bad_enrollment_names_are_refused(server: ProvisioningServer, raw_name: str) -> None:
    token = server.store.create_token("default")
    body = f'{{"token": "{token}", "public_key": "{_key()}", "name": {raw_name}}}'
    async with httpx.AsyncClient() as http:
        reply = await http.post(f"{server.base_url}/v1/devices/enroll", content=body)
    assert _code(reply) == (400, "bad_request")
    assert _uses(server, token) == (0, 1)


@pytest.mark.parametrize(
    "public_key",
    [_b64(bytes(32)), _b64(bytes([1]) + bytes(31)), "A" * 42 + "B", "?" * 43, "abc"],
)
@pytest.mark.slow  # a server per case, many cases
async def test_bad_enrollment_keys_are_refused(server: ProvisioningServer, public_key: str) -> None:
    token = server.store.create_token("default")
    reply = await _enroll(server.base_url, token, public_key)
    assert reply.status_code == 400


# --- the upstream ---------------------------------------------------------------------------


@pytest.mark.parametrize("retry_after", ["inf", "1e300", "9" * 32, "nan", "-3"])
async def test_an_upstream_retry_after_is_clamped(
    db_url: str, tmp_path: Path, retry_after: str
) -> None:
    async def limited(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"retry-after", retry_after.encode()), (b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": b"{}"})

    async with Served(limited) as upstream:
        settings = Settings(
            database_url=db_url, upstream_url=upstream.base_url, openai_api_key="sk-x", port=0
        )
        async with ProvisioningServer(settings) as srv:
            identity = await enrolled(srv, tmp_path)
            reply = await post(f"{srv.base_url}/v1/realtime/keys", identity.token())
    assert _code(reply) == (503, "upstream_unavailable")
    assert 1 <= int(reply.headers["retry-after"]) <= 300


async def test_failed_upstream_mints_are_not_charged(
    server: ProvisioningServer, standin: StandIn, tmp_path: Path
) -> None:
    server.store.ensure_group("default", limits={"device_per_minute": 2})
    identity = await enrolled(server, tmp_path)
    url = f"{server.base_url}/v1/realtime/keys"
    standin.faults.client_secrets_status = 500
    for _ in range(4):
        assert (await post(url, identity.token())).status_code == 503
    standin.faults.client_secrets_status = None
    assert [(await post(url, identity.token())).status_code for _ in range(3)] == [200, 200, 429]


# --- claims, admin, audit -------------------------------------------------------------------


async def test_issuer_and_audience_are_checked_exactly(
    server: ProvisioningServer, tmp_path: Path
) -> None:
    identity = await enrolled(server, tmp_path)
    url = f"{server.base_url}/v1/realtime/keys"
    for bad in [
        forged(identity, iss="dev_someone_else"),
        forged(identity, aud=["appliance-provisioning", "other"]),
    ]:
        assert _code(await post(url, bad)) == (401, "invalid_token")


async def test_unknown_admin_ids_cost_a_full_check(
    server: ProvisioningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[bytes] = []
    real = hashlib.scrypt

    def counting(password: bytes, **kwargs: Any) -> bytes:
        calls.append(password)
        return real(password, **kwargs)

    monkeypatch.setattr(hashlib, "scrypt", counting)
    admin = server.store.create_admin()
    key_id = admin[4:].split(".")[0]
    calls.clear()
    assert server.store.check_admin(f"adm_{'0' * 12}.{'s' * 32}") is None
    assert server.store.check_admin(admin) == key_id
    assert len(calls) == 2, "an unknown key id costs the same scrypt as a known one"


async def test_admin_guessing_is_locked_out_and_audited(
    server: ProvisioningServer, tmp_path: Path
) -> None:
    admin = server.store.create_admin()
    base = f"{server.base_url}/v1/admin"
    async with httpx.AsyncClient() as http:
        ok = await http.get(f"{base}/groups", headers={"Authorization": f"Bearer {admin}"})
        assert ok.status_code == 200
        guesses = [f"adm_{secrets.token_hex(6)}.{secrets.token_urlsafe(24)}" for _ in range(30)]
        replies = await asyncio.gather(
            *(http.get(f"{base}/groups", headers={"Authorization": f"Bearer {g}"}) for g in guesses)
        )
        codes = [r.status_code for r in replies]
        assert sorted(codes) == [401] * 19 + [429] * 11  # 20 checks a minute, 1 used
        assert all(int(r.headers["retry-after"]) >= 1 for r in replies if r.status_code == 429)
        # the admin who logged in before is not locked out by someone else's guessing
        token = await http.post(
            f"{base}/tokens", headers={"Authorization": f"Bearer {admin}"}, json={}
        )
        assert token.status_code == 201
        audit = (
            await http.get(f"{base}/audit", headers={"Authorization": f"Bearer {admin}"})
        ).json()["audit"]
    actions = [a["action"] for a in audit]
    assert actions.count("admin.refused") == 19
    assert not any(g in json.dumps(audit) for g in guesses), "never the credential"
    created = next(a for a in audit if a["action"] == "token.create")
    assert created["detail"]["admin"] == admin[4:].split(".")[0]


async def test_refused_jwts_are_logged_and_audited_with_their_reason(
    server: ProvisioningServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    identity = await enrolled(server, tmp_path)
    url = f"{server.base_url}/v1/realtime/keys"
    token = identity.token()
    assert (await post(url, token)).status_code == 200
    assert _code(await post(url, token)) == (401, "replayed")
    await server.app.state.ledger.flush()
    with server.store.session() as db:
        rows = db.scalars(select(Audit).where(Audit.action == "device.auth_refused")).all()
        assert [(r.device_id, r.detail) for r in rows] == [
            (identity.device_id, {"code": "replayed"})
        ]
    assert "device JWT refused: replayed" in caplog.text
    assert token not in caplog.text
    assert token.split(".")[2] not in caplog.text


# --- clock skew (issue 14): leeway, codes, server time, Date ------------------------------


async def test_clock_skew_is_tolerated_within_the_leeway_and_named_beyond_it(
    server: ProvisioningServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    identity = await enrolled(server, tmp_path)
    url = f"{server.base_url}/v1/realtime/keys"
    now = int(time.time())
    for ok in [
        forged(identity, iat=now + 30, exp=now + 60),  # device 30 s ahead
        forged(identity, iat=now + 3, exp=now + 33),  # the 3 s ahead
        forged(identity, iat=now - 32, exp=now - 2),  # expired 2 s ago: the leeway
    ]:
        assert (await post(url, ok)).status_code == 200
    for skewed in [
        forged(identity, iat=now + 90, exp=now + 120),
        forged(identity, iat=now - 60, exp=now - 30),
    ]:
        reply = await post(url, skewed)
        assert _code(reply) == (401, "clock_skew")
        assert reply.json()["error"]["server_time"] == pytest.approx(time.time(), abs=5)
    assert "device JWT refused: clock_skew" in caplog.text


async def test_refusal_codes_follow_the_contract(
    server: ProvisioningServer, tmp_path: Path
) -> None:
    identity = await enrolled(server, tmp_path)
    url = f"{server.base_url}/v1/realtime/keys"
    stranger = Identity("dev_0000000000000000", "", Ed25519PrivateKey.generate())
    assert _code(await post(url, stranger.token())) == (401, "unknown_key")
    assert _code(await post(url, forged(identity, key=Ed25519PrivateKey.generate()))) == (
        401,
        "invalid_token",
    )
    assert _code(await post(url, None)) == (401, "invalid_token")
    server.store.set_device_state(identity.device_id, "disable")
    assert _code(await post(url, identity.token())) == (401, "disabled")
    server.store.set_device_state(identity.device_id, "revoke")
    beat = f"{server.base_url}/v1/devices/heartbeat"
    assert _code(await post(beat, identity.token())) == (401, "revoked")


async def test_every_response_carries_a_date(server: ProvisioningServer, tmp_path: Path) -> None:
    identity = await enrolled(server, tmp_path)
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        auth = {"Authorization": f"Bearer {identity.token()}"}
        replies = [
            await http.post("/v1/realtime/keys", headers=auth),
            await http.post("/v1/realtime/keys"),
            await http.post("/v1/devices/heartbeat", headers={**auth}),
            await http.get("/healthz"),
            await http.post("/v1/devices/enroll", content=b"x" * (serving.MAX_BODY + 1)),
            await http.get("/nowhere"),
        ]
    for reply in replies:
        sent = email_date(reply.headers["date"])
        assert sent == pytest.approx(time.time(), abs=5), reply.request.url


def email_date(value: str) -> float:
    from email.utils import parsedate_to_datetime

    return parsedate_to_datetime(value).timestamp()


# --- HTML pages, fleet hosts ----------------------------------------------------------------


async def test_the_dashboard_sends_security_headers(server: ProvisioningServer) -> None:
    async with httpx.AsyncClient() as http:
        page = await http.get(f"{server.base_url}/dashboard")
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    csp = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp
    assert "'unsafe-inline'" not in csp
    script = page.text.split("<script>")[1].split("</script>")[0]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp, "the page's own script is allowed, by its hash"


def test_inventory_hosts_cannot_become_ssh_options(tmp_path: Path) -> None:
    from provisioning import fleet

    for bad in ["-oProxyCommand=touch /tmp/pwned", "pi@-oProxyCommand=x", "a b", "h:99999"]:
        with pytest.raises(fleet.PushError):
            fleet.parse_host(bad, "pi")
    inventory = tmp_path / "fleet.csv"
    inventory.write_text("name,host\nkitchen,-oProxyCommand=touch /tmp/pwned\n")
    with pytest.raises(fleet.InventoryError, match="bad host"):
        fleet.read_inventory(inventory)
