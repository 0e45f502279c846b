from __future__ import annotations

import numpy as np
import pytest

from standin import StandIn
from tests.peer import GaPeer
from tests.speech import speech
from tests.standin.conftest import mint

pytestmark = pytest.mark.slow  # a WebRTC call in real time

TURN_ORDER = [
    "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped",
    "input_audio_buffer.committed",
    "conversation.item.added",
    "conversation.item.done",
    "response.created",
    "rate_limits.updated",
    "response.output_item.added",
    "conversation.item.added",
    "response.content_part.added",
    "output_audio_buffer.started",
    "response.output_audio_transcript.delta",
]
TURN_END = [
    "response.output_audio_transcript.done",
    "response.content_part.done",
    "response.output_item.done",
    "conversation.item.done",
    "response.done",
    "output_audio_buffer.stopped",
]


async def test_voice_turn_follows_the_ga_order(standin: StandIn) -> None:
    key = await mint(
        standin.base_url, {"type": "realtime", "audio": {"output": {"voice": "marin"}}}
    )
    peer = GaPeer(standin.base_url, key)
    response = await peer.connect()
    assert response.status_code == 201
    assert response.headers["location"].startswith("/v1/realtime/calls/rtc_")
    created = await peer.wait_for("session.created")
    assert created["session"]["audio"]["output"]["voice"] == "marin"
    peer.mic.play(speech("what is the weather like on the moon", pad_s=1.0))
    await peer.wait_for("output_audio_buffer.stopped", within=20)
    types = [t for t in peer.types() if t != "session.created"]
    assert types[: len(TURN_ORDER)] == TURN_ORDER
    tail = [t for t in types if t != "response.output_audio_transcript.delta"][-len(TURN_END) :]
    assert tail == TURN_END
    done = await peer.wait_for("response.done")
    assert done["response"]["status"] == "completed"
    transcript = (await peer.wait_for("response.output_audio_transcript.done"))["transcript"]
    assert "moon" in transcript
    heard = peer.heard_audio().astype(np.float64)
    assert np.sqrt(np.mean(heard**2)) > 100, "no audio energy on the remote track"
    await peer.close()
