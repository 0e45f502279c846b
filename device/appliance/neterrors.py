"""Network failures in words: DNS, TLS, refused, timed out, reset, instead of "ConnectError".

``describe(exc)`` walks an ``httpx`` error's causes (httpx wraps httpcore, which wraps the
socket or ``ssl`` error) and names what actually went wrong, with the host. The words end up
in the log, in systemd's STATUS, in heartbeats and in ``appliance check``.
"""

from __future__ import annotations

import socket
import ssl

import httpx


def _causes(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _where(exc: httpx.HTTPError) -> str:
    try:
        url = exc.request.url
    except RuntimeError:  # an error raised without a request
        return ""
    return f"{url.host}:{url.port}" if url.port else str(url.host)


def describe(exc: httpx.HTTPError) -> str:
    """A short phrase for what went wrong on the way to a server."""
    where = _where(exc)
    at = f" ({where})" if where else ""
    host = where.rsplit(":", 1)[0] or "the host"
    for cause in _causes(exc):
        if isinstance(cause, socket.gaierror):
            return f"DNS lookup failed for {host}: {cause.strerror}"
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS certificate not trusted{at}: {cause.verify_message}"
        if isinstance(cause, ssl.SSLError):
            reason = cause.reason or type(cause).__name__
            return f"TLS handshake failed{at}: {reason} (is it an https port?)"
        if isinstance(cause, ConnectionRefusedError):
            return f"connection refused{at}"
        if isinstance(cause, ConnectionResetError):
            return f"connection reset{at}"
        if isinstance(cause, OSError) and cause.errno is not None:
            return f"network error{at}: {cause.strerror}"
    if isinstance(exc, httpx.ConnectTimeout):
        return f"timed out connecting{at}"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out waiting for an answer{at}"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"the server broke the connection{at}"
    text = str(exc)
    if "name" in text.lower() and "resol" in text.lower():  # anyio words some DNS failures
        return f"DNS lookup failed for {host}"
    return f"{type(exc).__name__}{at}{': ' + text if text else ''}"
