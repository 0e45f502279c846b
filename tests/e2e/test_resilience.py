"""Conversations that do not break: the whole device against the stand-in, with faults."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from appliance import machine as m
from appliance.heartbeat import health
from standin import StandIn, StandInConfig
from tests.e2e.harness import client_events, device
from tests.standin.conftest import API_KEY
from tests.waiting import LogWatch
from tests.wire import validate_client

pytestmark = pytest.mark.slow  # a whole device in real time against the stand-in


@pytest.fixture
async def standin() -> AsyncIterator[StandIn]:
    async with StandIn(StandInConfig(api_key=API_KEY)) as server:
        yield server


def _items(events: list[dict[str, object]], role: str) -> list[str]:
    texts: list[str] = []
    for event in events:
        item = event.get("item")
        created = event["type"] == "conversation.item.create" and isinstance(item, dict)
        if created and isinstance(item, dict) and item.get("role") == role:
            texts.extend(str(c["text"]) for c in item["content"])
    return texts


async def test_a_call_dropped_mid_reply_reconnects_carries_over_and_says_so(
    standin: StandIn, tmp_path: Path
) -> None:
    async with device(standin, tmp_path) as dev:
        standin.faults.drop_after_audio_ms = 600
        await dev.push_to_talk()
        await dev.wait(m.State.SPEAKING)
        first_call = dev.app.session.call_id if dev.app.session else None
        await dev.wait(m.State.OFFLINE, 10)
        standin.faults.drop_after_audio_ms = None
        assert dev.app.snapshot.resume
        # nobody presses anything: the device reconnects by itself, then announces it
        await dev.wait(m.State.CONNECTING, 5)
        await dev.wait(m.State.SPEAKING, 15)
        await dev.wait(m.State.IDLE, 20)
        assert dev.app.session is not None
        assert dev.app.session.call_id != first_call
        assert dev.keys.minted == 2, "a fresh key for the new call"
        transcripts = dict(dev.app.stats.transcripts)
        report = health(dev.app, started=0.0)

    states = dev.states()
    cut = states.index(m.State.OFFLINE)
    assert states[cut - 1] is m.State.SPEAKING
    assert states[cut + 1 :][:4] == [
        m.State.CONNECTING,
        m.State.IDLE,
        m.State.SPEAKING,
        m.State.IDLE,
    ]
    events = client_events(standin)
    for event in events:
        validate_client(event)
    # the new call was seeded with what was said before the cut, including the part of the
    # broken reply the user heard …
    assert transcripts["user"] in _items(events, "user")
    (heard,) = _items(events, "assistant")
    assert heard.endswith(" …")
    assert heard.lower().startswith("on the")
    assert "assistant" not in transcripts, "the broken reply never completed"
    assert "announcement" in transcripts, "the announcement is logged, not carried over"
    # … and the announcement stayed out of the conversation
    announce = [
        e
        for e in events
        if e["type"] == "response.create"
        and e.get("response", {}).get("metadata") == {"kind": "reconnected"}
    ]
    assert len(announce) == 1
    assert announce[0]["response"]["conversation"] == "none"
    assert all(t.get_name() != "liveness" for t in asyncio.all_tasks()), "no leaked watchers"
    # the heartbeat tells the fleet about it, without secrets
    assert report["reconnects"] == 1
    assert report["last_turn"] == {"user": transcripts["user"]}
    assert report["state"] == "idle"
    assert "offline" not in report["status"]
    assert "ek_" not in str(report)


async def test_a_long_session_rolls_over_between_turns_and_keeps_the_conversation(
    standin: StandIn, tmp_path: Path, logwatch: LogWatch
) -> None:
    logwatch.debug("appliance.app")  # a record at every step of the state machine
    async with device(standin, tmp_path, max_age_s=0.5) as dev:
        await dev.push_to_talk()
        await dev.wait(m.State.SPEAKING)
        await dev.wait(m.State.IDLE, 20)
        await logwatch.until(  # the rollover closes the old session right after the turn
            lambda: dev.app.session is None and not dev.app.snapshot.session_open,
            "the old session closed",
        )
        assert dev.app.session is None
        assert not dev.app.snapshot.session_open
        assert dev.app.snapshot.state is m.State.IDLE, "a rollover is invisible"
        said = dict(dev.app.stats.transcripts)
        await dev.push_to_talk("question-time.wav")
        await dev.wait(m.State.SPEAKING, 20)
        await dev.wait(m.State.IDLE, 20)
    calls = standin.finished_calls + list(standin.calls.values())
    assert len(calls) == 2
    second = calls[1].received
    assert said["user"] in _items(second, "user")
    assert said["assistant"] in _items(second, "assistant")
    assert m.State.OFFLINE not in dev.states()
    assert m.State.ERROR not in dev.states()


async def test_the_service_refusing_calls_backs_off_and_recovers(
    standin: StandIn, tmp_path: Path
) -> None:
    async with device(standin, tmp_path) as dev:
        standin.faults.calls_status = 500
        dev.app.post(m.ButtonPressed())
        await dev.wait(m.State.OFFLINE, 10)
        assert "500" in dev.app.last_error
        assert dev.app.status_text().startswith("offline:")
        standin.faults.calls_status = None
        await dev.wait(m.State.IDLE, 5)  # the 1 s back-off ends; no session is kept
        await dev.push_to_talk()
        await dev.wait(m.State.SPEAKING, 20)
        await dev.wait(m.State.IDLE, 20)
    assert dev.app.snapshot.failures == 0
