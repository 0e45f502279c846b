from __future__ import annotations

import logging

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


def test_journald_under_systemd_stderr_otherwise() -> None:
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        plain = setup("INFO", environ={})
        assert type(plain).__name__ == "StreamHandler"
        journal = setup("DEBUG", environ={"INVOCATION_ID": "abc", "JOURNAL_STREAM": "8:1"})
        assert type(journal).__name__ == "JournalHandler"
        assert journal._extra["SYSLOG_IDENTIFIER"] == "appliance"  # type: ignore[attr-defined]
        server = setup("INFO", environ={"INVOCATION_ID": "abc"}, identifier="provisioning")
        assert server._extra["SYSLOG_IDENTIFIER"] == "provisioning"  # type: ignore[attr-defined]
        assert under_systemd({"INVOCATION_ID": "x"})
        assert not under_systemd({})
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
