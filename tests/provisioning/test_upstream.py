"""The upstream client: the one place the standard key is sent, so where it may go matters."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.types import Receive, Scope, Send

from appliance_common.serving import Served
from provisioning.upstream import Upstream, UpstreamError
from standin import StandIn, StandInConfig
from tests.waiting import HANG_S

KEY = "sk-standin-upstream-test"
PROFILE = {"type": "realtime", "model": "gpt-realtime-2.1"}


def _self_signed(tmp_path: Path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 that no trust store knows."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_file), str(key_file)


async def _refused(base_url: str, timeout_s: float = 5.0) -> UpstreamError:
    """The error a mint through ``base_url`` ends in."""
    upstream = Upstream(base_url, KEY, ttl_s=60, timeout_s=timeout_s)
    try:
        with pytest.raises(UpstreamError) as caught:
            await upstream.mint("dev_1", PROFILE)
    finally:
        await upstream.close()
    return caught.value


@pytest.fixture
async def standin() -> AsyncIterator[StandIn]:
    async with StandIn(StandInConfig(api_key=KEY)) as s:
        yield s


async def test_mints_through_the_standin(standin: StandIn) -> None:
    upstream = Upstream(standin.base_url, KEY, ttl_s=60)
    try:
        minted = await upstream.mint("dev_1", PROFILE)
    finally:
        await upstream.close()
    assert minted.value in standin.keys
    assert minted.session["model"] == "gpt-realtime-2.1"
    assert "ek_" not in repr(minted), "the key value stays out of logs and reprs"


async def test_an_upstream_with_an_untrusted_certificate_is_refused(
    standin: StandIn, tmp_path: Path
) -> None:
    """TLS is verified against the system's trust store: a certificate it does not know ends
    the handshake before the standard key is sent."""
    async with Served(standin.asgi, tls=_self_signed(tmp_path)) as tls:
        assert tls.base_url.startswith("https://")
        assert (await _refused(tls.base_url)).status == 0
    assert standin.keys == {}, "no request reached the upstream"


async def test_redirects_are_not_followed() -> None:
    """An upstream that redirects would carry the standard key to wherever it points."""
    seen: list[str] = []

    async def elsewhere(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async with Served(elsewhere) as thief:

        async def redirecting(scope: Scope, receive: Receive, send: Send) -> None:
            location = f"{thief.base_url}/steal".encode()
            headers = [(b"location", location), (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 307, "headers": headers})
            await send({"type": "http.response.body", "body": b""})

        async with Served(redirecting) as upstream_server:
            assert (await _refused(upstream_server.base_url)).status == 307
    assert seen == []


@pytest.mark.parametrize(
    "body", [b"not json", b"[1, 2]", b'{"value": "ek_x"}', b'{"value": "ek_x", "expires_at": "x"}']
)
async def test_a_garbled_answer_is_an_upstream_error(body: bytes) -> None:
    async def garbled(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async with Served(garbled) as served:
        assert (await _refused(served.base_url)).status in (0, 502)


async def test_an_upstream_that_never_answers_times_out() -> None:
    answer = asyncio.Event()

    async def silent(scope: Scope, receive: Receive, send: Send) -> None:
        await answer.wait()  # far too late: the client gave up long ago
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async with Served(silent) as served:
        # the upstream never answers before ``answer`` is set: only the client's own
        # timeout can end this request (the bound catches a hang, it is not measured)
        refused = await asyncio.wait_for(_refused(served.base_url, timeout_s=0.3), HANG_S)
        assert refused.status == 0, "the request gave up at its timeout"
        answer.set()


async def test_a_huge_answer_is_refused_without_reading_it_all() -> None:
    """A 200 MB answer (no Content-Length) is given up on past the client's bound; the
    upstream is left with most of it unsent."""
    chunk, chunks = b" " * (1 << 20), 200
    sent: list[int] = []

    async def flood(scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch())
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for i in range(chunks):
            await asyncio.sleep(0)  # the watcher's turn: a send after a hang-up returns at once
            if gone.is_set():  # the client hung up
                break
            sent.append(i)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"{}"})
        watcher.cancel()

    async with Served(flood) as served:
        assert (await _refused(served.base_url)).status == 0
    assert len(sent) < chunks / 4, "the answer was not read to its end"


@pytest.mark.parametrize(
    ("header", "expected"),
    [("inf", 300.0), ("1e300", 300.0), ("9" * 32, 2.0), ("nan", 2.0), ("-3", 1.0), ("7", 7.0)],
)
async def test_retry_after_is_clamped(header: str, expected: float) -> None:
    async def limited(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"retry-after", header.encode()), (b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async with Served(limited) as served:
        assert (await _refused(served.base_url)).retry_after == expected
