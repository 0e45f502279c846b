"""Headless Chromium (libwebrtc) drives the stand-in with the standard browser flow."""

from __future__ import annotations

import wave
from pathlib import Path

import pytest

from standin import StandIn
from tests.browser import VOICE_CLIENT, run_voice_client
from tests.speech import speech
from tests.standin.conftest import mint
from tests.wire import validate_client, validate_server

PAGE = VOICE_CLIENT.format(
    title="stand-in browser client",
    script="""
async function run(key) {
  const pc = await voicePeer();
  const dc = pc.createDataChannel("oai-events");
  dc.onmessage = (e) => window.log.push(JSON.parse(e.data));
  dc.onopen = () => send(dc, {type: "session.update", event_id: "evt_browser_1",
    session: {type: "realtime", instructions: "Answer briefly."}});
  await pc.setLocalDescription(await pc.createOffer());
  const r = await fetch("/v1/realtime/calls", {method: "POST", body: pc.localDescription.sdp,
    headers: {"Authorization": "Bearer " + key, "Content-Type": "application/sdp"}});
  if (r.status !== 201) throw new Error("call failed " + r.status);
  await pc.setRemoteDescription({type: "answer", sdp: await r.text()});
}""",
)


def write_wav(path: Path, rate: int = 48_000) -> None:
    samples = speech("what is the weather like on the moon", rate=rate, pad_s=4.0)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.tobytes())


@pytest.mark.chromium
async def test_a_browser_completes_a_voice_turn(standin: StandIn, tmp_path: Path) -> None:
    mic = tmp_path / "question.wav"
    write_wav(mic)
    key = await mint(standin.base_url)
    stopped = "window.log.some(e => e.type === 'output_audio_buffer.stopped')"
    page = await run_voice_client(
        standin.app, standin.base_url, PAGE, mic, key, [(stopped, 30_000)]
    )
    events, sent, level = page["log"], page["sent"], page["level"]
    types = [e["type"] for e in events]
    assert types[0] == "session.created"
    for kind in ("session.updated", "input_audio_buffer.speech_started", "response.done"):
        assert kind in types
    done = next(e for e in events if e["type"] == "response.done")
    assert done["response"]["status"] == "completed"
    assert level > 0.01, f"no audio energy on the remote track (totalAudioEnergy {level})"
    for event in events:
        validate_server(event)
    for event in sent:
        validate_client(event)
