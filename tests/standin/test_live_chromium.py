"""Headless Chromium (libwebrtc) drives the stand-in's GPT-Live endpoint with the browser flow
of OpenAI's Live WebRTC guide: offer → ``POST /v1/live/sessions`` → answer → wait for
``session.started`` → talk."""

from __future__ import annotations

from pathlib import Path

import pytest

from standin import StandIn
from tests.browser import VOICE_CLIENT, run_voice_client
from tests.standin.conftest import API_KEY
from tests.standin.test_chromium import write_wav
from tests.wire_live import validate_live_client, validate_live_server

# The page posts with the project key itself only because this is a test against a made-up
# key; a real browser hands its offer to a trusted server (our relay) that does this part.
PAGE = VOICE_CLIENT.format(
    title="stand-in Live browser client",
    script="""
async function run(key) {
  const pc = await voicePeer();
  const dc = pc.createDataChannel("oai-events");
  dc.onmessage = (e) => {
    const ev = JSON.parse(e.data); window.log.push(ev);
    if (ev.type === "session.started") {
      send(dc, {type: "session.input_audio.mute", event_id: "evt_browser_1"});
      send(dc, {type: "session.input_audio.unmute", event_id: "evt_browser_2"});
    }
  };
  await pc.setLocalDescription(await pc.createOffer());
  const r = await fetch("/v1/live/sessions", {method: "POST",
    headers: {"Authorization": "Bearer " + key, "Content-Type": "application/json"},
    body: JSON.stringify({session: {model: "gpt-live-1", audio: {output: {voice: "marin"}}},
                          transport: {type: "webrtc", sdp: pc.localDescription.sdp}})});
  if (r.status !== 200) throw new Error("create failed " + r.status);
  const created = await r.json();
  window.sessionId = created.session.id;
  await pc.setRemoteDescription({type: "answer", sdp: created.transport.sdp});
}""",
)


@pytest.mark.chromium
async def test_chromium_holds_a_live_turn_with_the_standin(
    standin: StandIn, tmp_path: Path
) -> None:
    mic = tmp_path / "question.wav"
    write_wav(mic)
    # the model's first words, then its voice on the track (not the end of its turn: a
    # starved machine can split the looping clip into more turns that interrupt it)
    first_words = "window.log.some(e => e.type === 'session.output_transcript.delta')"
    until = [(first_words, 45_000), ("window.level > 0.01", 15_000)]
    page = await run_voice_client(standin.app, standin.base_url, PAGE, mic, API_KEY, until)
    events, sent, level = page["log"], page["sent"], page["level"]
    session_id = page["sessionId"]
    types = [e["type"] for e in events]
    assert types[0] == "session.started"
    assert events[0]["session"]["id"] == session_id
    for kind in (
        "session.input_audio.muted",
        "session.input_audio.unmuted",
        "session.input_transcript.delta",
        "session.output_transcript.delta",
    ):
        assert kind in types
    said = "".join(e["delta"] for e in events if e["type"] == "session.output_transcript.delta")
    assert said.startswith("On"), said  # "On the moon …": the script's answer
    assert level > 0.01, f"no audio energy on the remote track (totalAudioEnergy {level})"
    for event in events:
        validate_live_server(event)
    for event in sent:
        validate_live_client(event)
