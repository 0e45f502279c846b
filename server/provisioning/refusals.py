"""The server's error replies, shared by its routes and the Live relay (which the server
imports, so these cannot live in the server module)."""

from __future__ import annotations

import logging
from typing import Any

from pydantic_core import to_json

from appliance_common.serving import Reply
from provisioning.auth import AuthError
from provisioning.ledger import Refused

log = logging.getLogger(__name__)


def error_reply(
    status: int,
    code: str,
    message: str,
    retry_after: float | None = None,
    server_time: float | None = None,
) -> Reply:
    """The server's error shape, ``{"error": {"code", "message"}}`` (with ``server_time``
    for ``clock_skew``), with ``Retry-After``."""
    headers = () if retry_after is None else ((b"retry-after", b"%d" % max(1, round(retry_after))),)
    detail: dict[str, Any] = {"code": code, "message": message}
    if server_time is not None:
        detail["server_time"] = server_time
    return Reply(status, to_json({"error": detail}), headers)


def refusal(exc: AuthError | Refused) -> Reply:
    """A refused device request as its reply."""
    if isinstance(exc, AuthError):
        return error_reply(exc.status, exc.code, str(exc), server_time=exc.server_time)
    return error_reply(exc.status, exc.code, exc.message, exc.retry_after, exc.server_time)


def refused_early(exc: AuthError) -> Reply:
    """A device JWT refused before the ledger (no or a malformed token): logged with the
    reason, never the token."""
    log.info("device JWT refused: %s (%s)", exc.code, exc, extra={"reason": exc.code})
    return refusal(exc)
