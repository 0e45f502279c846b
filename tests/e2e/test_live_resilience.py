"""The whole device on the GPT-Live backend against the stand-in, with faults: a session cut
mid-reply reconnects by itself and carries the conversation over; an expired session is
noticed; privacy mute closes the session. Every event the device sends is strict Live wire."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance import machine as m
from appliance.app import App
from appliance.audio.base import AudioFormat
from appliance.audio.wav import WavSink, WavSource
from appliance.config import AudioConfig, Config, DeviceConfig
from appliance.realtime.live import LiveSession
from appliance.realtime.tools import builtin_registry
from appliance.wiring import make_frontend
from standin import StandIn, StandInConfig
from tests.e2e.harness import Device, StandInKeys
from tests.standin.conftest import API_KEY
from tests.waiting import Changes, LogWatch
from tests.wire_live import validate_live_client

pytestmark = pytest.mark.slow  # a whole device in real time against the stand-in


class StandInRelay:
    """What the provisioning server's relay does, minus the server: the device's offer goes to
    the stand-in with the project key and the test's Live config."""

    def __init__(self, standin: StandIn, session: dict[str, Any]) -> None:
        self.standin = standin
        self.session = session
        self.opened = 0

    async def open_live(self, sdp: str, tools: list[dict[str, Any]]) -> tuple[str, str]:
        self.opened += 1
        async with httpx.AsyncClient() as http:
            response = await http.post(
                f"{self.standin.base_url}/v1/live/sessions",
                headers={"Authorization": f"Bearer {API_KEY}"},
                json={"session": self.session, "transport": {"type": "webrtc", "sdp": sdp}},
            )
        response.raise_for_status()
        data = response.json()
        return str(data["session"]["id"]), str(data["transport"]["sdp"])


@asynccontextmanager
async def live_device(
    standin: StandIn, tmp: Path, session: dict[str, Any] | None = None
) -> AsyncIterator[tuple[Device, StandInRelay]]:
    config = Config(
        device=DeviceConfig(name="test", state_dir=tmp, board="mock"),
        audio=AudioConfig(backend="wav"),
    )
    source = WavSource(None, AudioFormat(config.audio.capture_rate))
    sink = WavSink(None, AudioFormat(config.audio.playback_rate))
    relay = StandInRelay(standin, session or {"model": "gpt-live-1"})
    changed = Changes()
    app = App(
        config,
        source=source,
        sink=sink,
        keys=StandInKeys(standin),
        tools=builtin_registry(),
        frontend=make_frontend(config, source.format),
        relay=relay,
        on_state=changed.notify,
    )
    app.sessions.backend = "live"
    stop = asyncio.Event()
    runner = asyncio.create_task(app.run(stop))
    try:
        yield Device(app, source, sink, StandInKeys(standin), changed), relay
    finally:
        stop.set()
        await runner


def received(standin: StandIn) -> list[dict[str, Any]]:
    sessions = standin.live.finished + list(standin.live.open.values())
    return [event for session in sessions for event in session.received]


@pytest.fixture
async def standin() -> AsyncIterator[StandIn]:
    async with StandIn(StandInConfig(api_key=API_KEY)) as server:
        yield server


async def test_a_session_cut_mid_reply_reconnects_and_carries_over(
    standin: StandIn, tmp_path: Path
) -> None:
    async with live_device(standin, tmp_path) as (dev, relay):
        standin.faults.drop_after_audio_ms = 600
        await dev.push_to_talk()
        await dev.wait(m.State.SPEAKING)
        assert isinstance(dev.app.session, LiveSession)
        first = dev.app.session.call_id
        await dev.wait(m.State.OFFLINE, 10)
        standin.faults.drop_after_audio_ms = None
        await dev.wait(m.State.CONNECTING, 5)  # by itself
        await dev.wait(m.State.SPEAKING, 15)  # the reconnect announcement
        await dev.wait(m.State.IDLE, 20)
        assert dev.app.session is not None
        assert dev.app.session.call_id != first
        assert relay.opened == 2
        transcripts = dict(dev.app.stats.transcripts)
    events = received(standin)
    for event in events:
        validate_live_client(event)
    carried = [e["content"] for e in events if e["type"] == "session.instructions.append"]
    assert len(carried) == 1
    assert transcripts["user"] in carried[0]
    assert "assistant: On the" in carried[0]
    assert carried[0].endswith(" …")
    assert "announcement" in transcripts, "logged as an announcement, not carried over"
    assert "assistant" not in transcripts, "the broken reply never completed"


async def test_an_expired_session_is_noticed(tmp_path: Path, logwatch: LogWatch) -> None:
    logwatch.debug("appliance.app")  # a record at every step of the state machine
    async with (
        StandIn(StandInConfig(api_key=API_KEY, max_session_s=2.0)) as standin,
        live_device(standin, tmp_path) as (dev, _relay),
    ):
        await dev.push_to_talk()
        await dev.wait(m.State.IDLE, 30)
        await logwatch.until(lambda: not dev.app.snapshot.session_open, "the expiry noticed")
        assert "expired" in dev.app.last_error


async def test_privacy_mute_mutes_the_input_and_closes_the_session(
    standin: StandIn, tmp_path: Path
) -> None:
    async with live_device(standin, tmp_path) as (dev, _relay):
        dev.app.post(m.ButtonPressed())
        dev.app.post(m.ButtonReleased())
        await dev.wait(m.State.LISTENING)
        (live,) = standin.live.open.values()
        dev.app.post(m.MuteToggled())
        await dev.wait(m.State.MUTED)
        await asyncio.wait_for(live.closed.wait(), 10)
    kinds = [e["type"] for e in live.received]
    assert kinds[-2:] == ["session.input_audio.mute", "session.close"]
    assert live.sent[-1]["type"] == "session.closed"
    assert live.sent[-1]["reason"] == "close_requested"
