"""Logging: journald with structured fields under systemd, plain stderr otherwise.

Fields passed with ``extra=`` (``state``, ``call_id``, ``event_type``, ``latency_ms`` …) become
journal fields (``STATE=``, ``CALL_ID=`` …). ``Redact`` scrubs anything that looks like a
secret — API keys, ephemeral keys, enrollment tokens, JWTs, bearer headers — from every
record before any handler sees it.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping

SECRET = re.compile(
    r"(?:sk-[A-Za-z0-9_\-]{8,}|ek_[A-Za-z0-9]{8,}|enr_[A-Za-z0-9_\-]{8,}"
    r"|eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+|(?i:bearer)\s+[A-Za-z0-9._\-]{8,})"
)


def redact(text: str) -> str:
    return SECRET.sub("[REDACTED]", text)


class Redact(logging.Filter):
    """Formats the message once, redacted, so no handler can print the raw arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, ()
        return True


def under_systemd(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return "INVOCATION_ID" in env or "JOURNAL_STREAM" in env


def setup(
    level: str = "INFO",
    environ: Mapping[str, str] | None = None,
    identifier: str = "appliance",
) -> logging.Handler:
    """Configure the root logger once; returns the handler in use. ``identifier`` is the
    journal's ``SYSLOG_IDENTIFIER`` (the device daemon or the provisioning server)."""
    root = logging.getLogger()
    root.setLevel(level)
    handler: logging.Handler
    if under_systemd(environ):
        try:
            from systemd.journal import JournalHandler

            handler = JournalHandler(SYSLOG_IDENTIFIER=identifier)
        except ImportError:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    handler.addFilter(Redact())
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    return handler
