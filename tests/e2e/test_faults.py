"""Issue 14's fault table, row by row: the whole device (``App``) against the stand-in, with
each fault injected. Every test here failed on the code before the fix. Where a fault is
shown, the LED is checked on gpiozero's MockFactory: OFFLINE for anything network-shaped,
ERROR for local faults, never off while the device cannot serve (docs/faults.md)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from gpiozero import PWMLED
from gpiozero.pins.mock import MockFactory

from appliance import machine as m
from appliance.audio.base import AudioFormat
from appliance.audio.wav import WavSink, WavSource
from appliance.errors import AudioDeviceError, ConfigError
from appliance.heartbeat import health, send
from appliance.identity import Identity
from appliance.leds import PATTERNS, GpioLeds, Kind
from appliance.realtime.keys import EphemeralKey
from appliance.realtime.provisioning_keys import ProvisioningKeySource
from appliance.wiring import make_gpio
from appliance_dev.demo import asset
from standin import StandIn, StandInConfig
from standin.call import Call
from tests.e2e.harness import Device as Dev
from tests.e2e.harness import client_events, device
from tests.fakehttp import Fixed, fixed_reply
from tests.standin.conftest import API_KEY
from tests.waiting import LogWatch

pytestmark = pytest.mark.slow  # a whole device in real time against the stand-in


@pytest.fixture
async def standin() -> AsyncIterator[StandIn]:
    async with StandIn(StandInConfig(api_key=API_KEY)) as server:
        yield server


@pytest.fixture
def leds(mock_pins: MockFactory) -> Iterator[GpioLeds]:
    driver = GpioLeds(PWMLED(25))
    yield driver
    driver.close()


def showing(leds: GpioLeds, state: m.State) -> bool:
    return leds.shown == PATTERNS[state] and PATTERNS[state].kind is not Kind.OFF


def call_of(standin: StandIn, dev: Dev) -> Call:
    session = dev.app.session
    assert session is not None, "no open session"
    return standin.calls[str(session.call_id)]


def inject(standin: StandIn, dev: Dev, event: dict[str, Any]) -> None:
    """The stand-in sends ``event`` on the live call's data channel."""
    call_of(standin, dev).wire.send(event)


async def one_turn(dev: Dev, question: str = "question-moon.wav") -> None:
    await dev.push_to_talk(question)
    await dev.wait(m.State.SPEAKING, 20)
    await dev.wait(m.State.IDLE, 20)


class KeysFor:
    """Keys whose Realtime base is ``base`` (a fake service)."""

    def __init__(self, base: str) -> None:
        self.base = base

    async def get_key(self) -> EphemeralKey:
        return EphemeralKey("ek_fake", time.time() + 600, self.base)


async def test_a_malformed_event_is_logged_once_and_the_call_stays_up(
    standin: StandIn, tmp_path: Path, caplog: pytest.LogCaptureFixture, logwatch: LogWatch
) -> None:
    caplog.set_level(logging.INFO)
    async with device(standin, tmp_path) as dev:
        await one_turn(dev)
        session = dev.app.session
        assert session is not None
        seen = session.server_events
        limits = [{"name": "requests", "limit": 100, "remaining": "abc", "reset_seconds": 1}]
        inject(
            standin,
            dev,
            {"type": "rate_limits.updated", "event_id": "ev_rl", "rate_limits": limits},
        )
        inject(standin, dev, {"type": "response.created", "event_id": "ev_bad", "response": "x"})
        await logwatch.wait_for("event_id ev_bad")  # read (the channel is ordered), noted
        assert session.server_events >= seen + 2
        assert dev.app.session is session, "the call survived"
        assert session.accepting_audio
        await one_turn(dev, "question-time.wav")  # and it still answers
        assert dev.app.session is session
    assert m.State.OFFLINE not in dev.states()
    bad = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("appliance") and "ev_bad" in r.getMessage()
    ]
    assert len(bad) == 1, bad
    assert "response.created" in bad[0]


async def test_a_service_that_restarted_mid_reply_gets_a_fresh_key_and_the_conversation(
    standin: StandIn, tmp_path: Path
) -> None:
    async with device(standin, tmp_path, cache_keys=True) as dev:
        standin.faults.drop_after_audio_ms = 600
        await dev.push_to_talk()
        await dev.wait(m.State.SPEAKING)
        standin.keys.clear()  # the service restarts: it has forgotten every key it minted
        await dev.wait(m.State.OFFLINE, 10)
        standin.faults.drop_after_audio_ms = None
        await dev.wait(m.State.CONNECTING, 5)
        await dev.wait(m.State.SPEAKING, 15)  # "the connection dropped and is back"
        await dev.wait(m.State.IDLE, 20)
        transcripts = dict(dev.app.stats.transcripts)
    assert m.State.ERROR not in dev.states()
    assert dev.keys.minted == 2, "the refused key was dropped and one fresh key minted"
    calls = standin.finished_calls + list(standin.calls.values())
    assert len(calls) == 2
    carried = [e for e in calls[1].received if e["type"] == "conversation.item.create"]
    assert any(transcripts["user"] in str(e) for e in carried), "conversation carried over"


async def test_a_201_that_is_not_sdp_is_offline_at_once_with_the_reason(
    standin: StandIn, tmp_path: Path, leds: GpioLeds, caplog: pytest.LogCaptureFixture
) -> None:
    reply = Fixed(201, b"<html>hello</html>", {"Content-Type": "text/html"})
    async with fixed_reply(reply) as fake, device(standin, tmp_path, connect_s=30.0) as dev:
        dev.app.sessions.keys = KeysFor(fake.base_url)
        dev.app.attach_leds(leds)
        dev.app.post(m.ButtonPressed())
        await dev.wait(m.State.OFFLINE, 5)  # not 30 s in CONNECTING
        assert showing(leds, m.State.OFFLINE)
        assert "without an SDP answer" in dev.app.last_error
        assert dev.app.status_text().startswith("offline: ")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "no task crashed"


async def test_a_service_that_never_answers_is_offline_not_error(
    standin: StandIn, tmp_path: Path, leds: GpioLeds
) -> None:
    async with (
        fixed_reply(Fixed(silent=True)) as fake,
        device(standin, tmp_path, connect_s=1.0) as dev,
    ):
        dev.app.sessions.keys = KeysFor(fake.base_url)
        dev.app.attach_leds(leds)
        dev.app.post(m.ButtonPressed())
        await dev.wait(m.State.OFFLINE, 10)
        assert showing(leds, m.State.OFFLINE)
        assert dev.app.last_error == "timed out: no session within 1 s"
        assert fake.requests == 1
    assert m.State.ERROR not in dev.states()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_unreachable_server_while_idle_shows_offline_until_it_answers(
    standin: StandIn, tmp_path: Path, leds: GpioLeds, logwatch: LogWatch
) -> None:
    port = free_port()
    identity = Identity("dev_test", f"http://127.0.0.1:{port}", Ed25519PrivateKey.generate())
    provisioning = ProvisioningKeySource(identity, timeout_s=2)
    logwatch.debug("appliance.app")
    async with device(standin, tmp_path) as dev:
        dev.app.probe = provisioning.probe
        dev.app.attach_leds(leds)
        assert not await send(provisioning, dev.app, time.monotonic())  # a heartbeat fails
        await dev.wait(m.State.OFFLINE)
        assert showing(leds, m.State.OFFLINE)
        assert "connection refused" in dev.app.status_text()
        assert health(dev.app, 0.0)["state"] == "offline"
        await logwatch.wait_for("OFFLINE + Unreachable -> OFFLINE")  # a probe failed
        assert dev.app.snapshot.failures >= 2
        assert dev.app.snapshot.state is m.State.OFFLINE
        async with fixed_reply(Fixed(200, b'{"status":"ok"}', port=port)) as server:
            await dev.wait(m.State.IDLE, 30)  # after the back-off under way (≤ 8 s by then)
            assert server.requests >= 1
        assert dev.app.last_error == ""
    states = dev.states()
    assert states[0] is m.State.OFFLINE
    assert set(states[: states.index(m.State.IDLE)]) == {m.State.OFFLINE}


async def test_no_microphone_at_start_shows_error_and_retries_until_it_is_there(
    standin: StandIn, tmp_path: Path, leds: GpioLeds
) -> None:
    wav = tmp_path / "mic.wav"
    source = WavSource(wav, AudioFormat(16_000))
    async with device(standin, tmp_path, source=source) as dev:
        dev.app.attach_leds(leds)
        await dev.wait(m.State.ERROR, 5)
        await asyncio.wait_for(dev.app.started.wait(), 5)  # the daemon sends READY now
        assert showing(leds, m.State.ERROR)
        report = health(dev.app, 0.0)
        assert report["state"] == "error"
        assert report["status"].startswith("error: microphone: cannot read")
        shutil.copy(asset("question-moon.wav"), wav)  # the card (file) appears
        await dev.wait(m.State.IDLE, 10)
        assert leds.shown == PATTERNS[m.State.IDLE]
        assert dev.app.last_error == ""


async def test_no_requests_left_with_a_far_reset_still_answers_when_the_limit_lifts(
    standin: StandIn, tmp_path: Path, caplog: pytest.LogCaptureFixture, logwatch: LogWatch
) -> None:
    caplog.set_level(logging.INFO, logger="appliance")
    async with device(standin, tmp_path) as dev:
        await one_turn(dev)
        session = dev.app.session
        assert session is not None
        logwatch.debug("appliance.realtime.webrtc")
        updates = logwatch.count("in: rate_limits.updated")
        limits = [{"name": "requests", "limit": 100, "remaining": 0, "reset_seconds": 1e9}]
        inject(
            standin, dev, {"type": "rate_limits.updated", "event_id": "e1", "rate_limits": limits}
        )
        await logwatch.wait_for("in: rate_limits.updated", count=updates + 1)
        assert session.rate_limits["requests"][0] == 0
        await dev.push_to_talk("question-time.wav")
        await dev.wait(m.State.THINKING, 10)
        (held,) = [r.getMessage() for r in caplog.records if "request limit" in r.getMessage()]
        wait = float(held.removeprefix("request limit reached; asking for the response in ")[:-2])
        assert 0 < wait <= 60, "a reset a billion seconds away is not believed"
        limits = [{"name": "requests", "limit": 100, "remaining": 99, "reset_seconds": 60}]
        inject(
            standin, dev, {"type": "rate_limits.updated", "event_id": "e2", "rate_limits": limits}
        )
        await dev.wait(m.State.SPEAKING, 10)  # the held response.create went out at once
        await dev.wait(m.State.IDLE, 20)
    assert m.State.ERROR not in dev.states()


async def test_a_flood_of_unknown_events_is_two_log_lines_with_a_count(
    standin: StandIn, tmp_path: Path, caplog: pytest.LogCaptureFixture, logwatch: LogWatch
) -> None:
    caplog.set_level(logging.INFO, logger="appliance")
    async with device(standin, tmp_path) as dev:
        await one_turn(dev)
        session = dev.app.session
        assert session is not None
        seen = session.server_events
        logwatch.debug("appliance.realtime.webrtc")
        for i in range(2000):
            inject(standin, dev, {"type": "response.telepathy.delta", "event_id": f"ev_{i}"})
        inject(standin, dev, {"type": "response.telepathy.done", "event_id": "ev_done"})
        await logwatch.wait_for("in: response.telepathy.done")  # the last one was read
        assert session.server_events >= seen + 2001
        assert dev.app.session is session
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("appliance") and "response.telepathy" in r.getMessage()
    ]
    assert len(lines) == 3, lines  # first delta, first done, and the count at close
    assert "response.telepathy.delta: 1999 more in the last" in lines[-1]


async def test_a_tap_on_a_warm_session_ends_on_the_no_speech_timer(
    standin: StandIn, tmp_path: Path
) -> None:
    async with device(standin, tmp_path, no_speech_s=1.0, max_turn_s=30.0) as dev:
        await one_turn(dev)
        assert dev.app.session is not None
        commits = len(
            [e for e in client_events(standin) if e["type"] == "input_audio_buffer.commit"]
        )
        dev.app.post(m.ButtonPressed())
        dev.app.post(m.ButtonReleased())  # a tap, and then the user says nothing
        await dev.wait(m.State.LISTENING, 5)
        await dev.wait(m.State.IDLE, 10)  # after 1 s of no speech, not the 30 s turn cap
        after = [e for e in client_events(standin) if e["type"] == "input_audio_buffer.commit"]
    assert len(after) == commits, "no silence was committed"
    states = dev.states()
    assert states[-2:] == [m.State.LISTENING, m.State.IDLE]


class MissingSpeaker(WavSink):
    """A speaker that is not there for its first ``missing_for`` opens."""

    def __init__(self, missing_for: int) -> None:
        super().__init__(None, AudioFormat(48_000))
        self.missing_for = missing_for

    async def start(self) -> None:
        if self.missing_for > 0:
            self.missing_for -= 1
            raise AudioDeviceError("cannot open playback device usb-speaker: No such device")
        await super().start()


async def test_no_speaker_at_start_shows_error_and_retries_until_it_is_there(
    standin: StandIn, tmp_path: Path, leds: GpioLeds
) -> None:
    async with device(standin, tmp_path, sink=MissingSpeaker(missing_for=2)) as dev:
        dev.app.attach_leds(leds)
        await dev.wait(m.State.ERROR, 5)
        assert showing(leds, m.State.ERROR)
        assert dev.app.status_text().startswith("error: speaker: cannot open playback device")
        await dev.wait(m.State.IDLE, 10)  # 1 s + 2 s of back-off
        await one_turn(dev)
    assert dev.app.stats.turns == 1


async def test_gpio_pins_already_taken_is_a_config_error_naming_the_board(
    standin: StandIn, tmp_path: Path, mock_pins: MockFactory
) -> None:
    async with device(standin, tmp_path) as dev:
        config = replace(dev.app.config, device=replace(dev.app.config.device, board="generic"))
        leds, button = make_gpio(config, dev.app.post)
        try:
            with pytest.raises(ConfigError) as caught:
                make_gpio(config, dev.app.post)  # the pins are taken (by the first, here)
        finally:
            button.close()
            assert leds is not None
            leds.close()
    assert caught.value.key == "device.board"
