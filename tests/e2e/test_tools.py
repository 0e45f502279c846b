"""Device tools: volume (persisted, applied to what the speaker plays), timers that speak up
out of band when they fire, device status, and user tools from entry points."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from appliance import machine as m
from appliance.audio.base import AudioFormat
from appliance.audio.wav import WavSink
from appliance.devicetools import GainSink, Volume, load_entry_point_tools
from appliance.realtime.tools import ToolRegistry
from standin import StandIn, StandInConfig
from tests.e2e.harness import client_events, device
from tests.standin.conftest import API_KEY
from tests.wire import validate_client

pytestmark = pytest.mark.slow  # a whole device in real time against the stand-in


@pytest.fixture
async def standin() -> AsyncIterator[StandIn]:
    async with StandIn(StandInConfig(api_key=API_KEY)) as server:
        yield server


async def test_volume_is_a_tool_persisted_and_applied_to_the_speaker(tmp_path: Path) -> None:
    path = tmp_path / "volume.json"
    volume = Volume(path)
    sink = WavSink(None, AudioFormat(48_000))
    gain = GainSink(sink, volume)
    registry = ToolRegistry()
    from appliance.devicetools import Timers, register_device_tools

    register_device_tools(registry, volume=volume, timers=Timers(lambda _: None), status=dict)
    assert json.loads(await registry.call("set_volume", '{"level": 40}')) == {"level": 40}
    assert json.loads(await registry.call("set_volume", '{"level": 140}')) == {"level": 100}
    assert json.loads(await registry.call("set_volume", '{"level": 40}')) == {"level": 40}
    assert Volume(path).level == 40, "survives a restart"
    frame = (np.sin(np.arange(960) / 5) * 10_000).astype("<i2").tobytes()
    await gain.write(frame)
    played = sink.samples().astype(np.float64)
    ratio_db = 20 * np.log10(np.sqrt(np.mean(played**2)) / (10_000 / np.sqrt(2)))
    assert ratio_db == pytest.approx((40 - 100) * 0.3, abs=0.2)
    assert json.loads(await registry.call("set_volume", "{}"))["error"].startswith("missing")
    path.write_text("not json")
    assert Volume(path).level == 80, "a corrupt file falls back to the default"


async def test_a_timer_speaks_up_out_of_band_connecting_first(
    standin: StandIn, tmp_path: Path
) -> None:
    async with device(standin, tmp_path) as dev:
        assert "set_timer" in dev.app.tools.names()
        out = json.loads(await dev.app.tools.call("set_timer", '{"seconds": 1, "label": "tea"}'))
        assert out["label"] == "tea"
        listed = json.loads(await dev.app.tools.call("list_timers", "{}"))
        assert [t["label"] for t in listed["timers"]] == ["tea"]
        await dev.wait(m.State.CONNECTING, 5)  # nobody pressed anything
        await dev.wait(m.State.SPEAKING, 15)
        await dev.wait(m.State.IDLE, 20)
        status = json.loads(await dev.app.tools.call("device_status", "{}"))
        assert status["state"] == "idle"
        assert "last_turn" not in status, "no transcripts in the status tool"
        said = dict(dev.app.stats.transcripts)
    events = client_events(standin)
    for event in events:
        validate_client(event)
    timers = [
        e
        for e in events
        if e["type"] == "response.create"
        and e.get("response", {}).get("metadata") == {"kind": "timer"}
    ]
    assert len(timers) == 1
    assert timers[0]["response"]["conversation"] == "none"
    assert "tea" in timers[0]["response"]["instructions"]
    assert "announcement" in said
    assert m.State.LISTENING not in dev.states(), "an announcement opens no user turn"


async def test_a_timer_waits_while_the_user_is_talking(standin: StandIn, tmp_path: Path) -> None:
    async with device(standin, tmp_path) as dev:
        await dev.app.tools.call("set_timer", '{"seconds": 1, "label": "eggs"}')
        await dev.push_to_talk()  # ~3.5 s of speech: the timer fires meanwhile
        await dev.wait(m.State.SPEAKING, 20)
        await dev.wait(m.State.IDLE, 20)
        await dev.wait(m.State.SPEAKING, 10)  # then the announcement
        await dev.wait(m.State.IDLE, 20)
    states = dev.states()
    assert states.count(m.State.SPEAKING) == 2
    assert states.index(m.State.LISTENING) < states.index(m.State.SPEAKING)


@pytest.fixture
def plugin_path(tmp_path: Path) -> Iterator[Path]:
    """An installed distribution with two entry points: a good tool and a broken one."""
    (tmp_path / "kitchen_tools.py").write_text(
        "from appliance.realtime.tools import Tool\n"
        "def shopping_list():\n"
        "    return Tool('shopping_list', 'Read the shopping list.', lambda: {'items': ['tea']})\n"
        "def broken():\n"
        "    raise RuntimeError('plugin bug')\n"
    )
    info = tmp_path / "kitchen_tools-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kitchen-tools\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[appliance.tools]\nshopping = kitchen_tools:shopping_list\nbroken = kitchen_tools:broken\n"
    )
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    sys.modules.pop("kitchen_tools", None)


async def test_user_tools_come_from_entry_points_and_a_broken_one_is_skipped(
    plugin_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = ToolRegistry()
    with caplog.at_level(logging.ERROR):
        added = load_entry_point_tools(registry)
    assert added == ["shopping_list"]
    assert json.loads(await registry.call("shopping_list", "{}")) == {"items": ["tea"]}
    assert any(
        "broken" in r.getMessage() and "plugin bug" in r.getMessage() for r in caplog.records
    )
