from __future__ import annotations

import logging
from typing import Any

import pytest

from appliance_common.logging_setup import Redact, redact, setup, under_systemd

SECRETS = [
    "sk-proj-AbCdEf0123456789",
    "ek_68af0123456789abcdef",
    "enr_Zx9_-abcdefghijklmnop",
    "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJkZXZfMSJ9.c2lnbmF0dXJlLXZhbHVl",
]


@pytest.mark.parametrize("secret", SECRETS)
def test_secrets_are_redacted(secret: str) -> None:
    assert secret not in redact(f"calling with {secret} now")
    assert "[REDACTED]" in redact(f"Authorization: Bearer {secret}")


def test_the_filter_scrubs_arguments_before_any_handler(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("appliance.test.redact")
    scrub = Redact()
    caplog.handler.addFilter(scrub)
    try:
        logger.warning("minted %s for %s", SECRETS[1], "dev_1", extra={"call_id": "rtc_1"})
    finally:
        caplog.handler.removeFilter(scrub)
    record = caplog.records[-1]
    assert SECRETS[1] not in record.getMessage()
    assert record.args == ()
    assert "dev_1" in record.getMessage()
    assert record.call_id == "rtc_1"  # type: ignore[attr-defined]  # structured field kept


def _journal_fields(handler: logging.Handler) -> dict[str, Any]:
    """The fields a ``JournalHandler`` sends for one record, through its public sender
    (``sender_function``, the ``send`` attribute), not to journald."""
    sent: list[dict[str, Any]] = []

    def send(text: str, /, **fields: Any) -> None:  # the record's own fields include "message"
        sent.append(fields)

    handler.send = send  # type: ignore[attr-defined]
    handler.handle(logging.makeLogRecord({"name": "t", "msg": "hello", "levelno": logging.INFO}))
    assert len(sent) == 1
    return sent[0]


def test_journald_under_systemd_stderr_otherwise() -> None:
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        plain = setup("INFO", environ={})
        assert type(plain).__name__ == "StreamHandler"
        journal = setup("DEBUG", environ={"INVOCATION_ID": "abc", "JOURNAL_STREAM": "8:1"})
        assert type(journal).__name__ == "JournalHandler"
        assert _journal_fields(journal)["SYSLOG_IDENTIFIER"] == "appliance"
        server = setup("INFO", environ={"INVOCATION_ID": "abc"}, identifier="provisioning")
        assert _journal_fields(server)["SYSLOG_IDENTIFIER"] == "provisioning"
        assert under_systemd({"INVOCATION_ID": "x"})
        assert not under_systemd({})
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
