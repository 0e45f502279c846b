"""Shared test fixtures.

Tests that need a system part (chromium, espeak-ng, PostgreSQL, libspeexdsp…) call
``require(...)``: on a developer laptop a missing part skips the test with a reason; in
CI (``APPLIANCE_REQUIRE_ALL=1``) it fails loudly, so nothing is silently skipped there.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory, MockPWMPin

from appliance_common.ice import allow_loopback
from tests.waiting import LogWatch

REQUIRE_ALL = os.environ.get("APPLIANCE_REQUIRE_ALL") == "1"


def require(condition: bool, what: str) -> None:
    """Skip (laptop) or fail (CI) when a required system part is missing."""
    if condition:
        return
    if REQUIRE_ALL:
        pytest.fail(f"required part missing in CI: {what}")
    pytest.skip(f"missing: {what}")


def require_tool(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"executable {name!r}")
    assert path is not None
    return path


@pytest.fixture(autouse=True, scope="session")
def _loopback_ice() -> None:
    """Every WebRTC test in this suite connects over 127.0.0.1."""
    allow_loopback()


@pytest.fixture
def mock_pins() -> Iterator[MockFactory]:
    """gpiozero's own MockFactory (PWM-capable pins) as the pin factory, reset afterwards."""
    saved = Device.pin_factory
    Device.pin_factory = MockFactory(pin_class=MockPWMPin)
    yield Device.pin_factory
    Device.pin_factory.reset()
    Device.pin_factory = saved


@pytest.fixture
def logwatch() -> Iterator[LogWatch]:
    """Every log record (INFO and up) of the test, to wait on: ``await logwatch.wait_for(…)``."""
    watch = LogWatch()
    root = logging.getLogger()
    saved = root.level
    if saved > logging.INFO:
        root.setLevel(logging.INFO)
    root.addHandler(watch)
    yield watch
    watch.restore()
    root.removeHandler(watch)
    root.setLevel(saved)
