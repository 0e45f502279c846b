"""Transcription-only mode: a dictation appliance that transcribes and posts what it hears."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from appliance import machine as m
from appliance.config import RealtimeConfig
from appliance_dev.demo import asset
from standin import StandIn, StandInConfig
from tests.e2e.harness import client_events, device
from tests.standin.conftest import API_KEY
from tests.waiting import Recorded
from tests.wire import validate_client

pytestmark = pytest.mark.slow  # a whole device in real time against the stand-in


@pytest.fixture
async def standin() -> AsyncIterator[StandIn]:
    async with StandIn(StandInConfig(api_key=API_KEY)) as server:
        yield server


async def webhook() -> tuple[asyncio.Server, Recorded[dict[str, Any]]]:
    """A minimal HTTP endpoint on loopback that records JSON bodies."""
    received: Recorded[dict[str, Any]] = Recorded()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        received.append(json.loads(await reader.readexactly(length)))
        writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), received


async def test_dictation_transcribes_posts_and_never_answers(
    standin: StandIn, tmp_path: Path
) -> None:
    server, received = await webhook()
    port = server.sockets[0].getsockname()[1]
    realtime = RealtimeConfig(mode="transcription", transcript_url=f"http://127.0.0.1:{port}/t")
    async with server, device(standin, tmp_path, realtime=realtime, no_speech_s=2.0) as dev:
        dev.app.post(m.ButtonPressed())
        dev.app.post(m.ButtonReleased())  # a tap: dictate until the user stops talking
        await dev.wait(m.State.LISTENING)
        dev.source.queue(asset("question-moon.wav"))
        await received.until(bool, "a posted transcript")
        assert dev.app.snapshot.state is m.State.LISTENING, "still listening after a sentence"
        await dev.wait(m.State.IDLE, 10)  # the silence ends the dictation
    assert [r["text"] for r in received] == ["what is the weather like on the moon"]
    assert received[0]["device"] == "test"
    events = client_events(standin)
    for event in events:
        validate_client(event)
    assert events[0]["type"] == "session.update"
    assert events[0]["session"]["type"] == "transcription"
    assert not any(e["type"] == "response.create" for e in events), "a dictation never answers"
    assert m.State.THINKING not in dev.states()
    assert m.State.SPEAKING not in dev.states()
