"""Headless Chromium (libwebrtc) drives the stand-in's GPT-Live endpoint with the browser flow
of OpenAI's Live WebRTC guide: offer → ``POST /v1/live/sessions`` → answer → wait for
``session.started`` → talk."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.responses import HTMLResponse

from standin import StandIn
from tests.browser import CHROMIUM, chromium_args
from tests.standin.conftest import API_KEY
from tests.standin.test_chromium import write_wav
from tests.wire_live import validate_live_client, validate_live_server

# The page posts with the project key itself only because this is a test against a made-up
# key; a real browser hands its offer to a trusted server (our relay) that does this part.
PAGE = """<!doctype html><meta charset="utf-8"><title>stand-in Live browser client</title>
<script>
window.log = []; window.sent = []; window.level = 0;
function send(dc, ev) { window.sent.push(ev); dc.send(JSON.stringify(ev)); }
async function run(key) {
  const pc = new RTCPeerConnection();
  const mic = await navigator.mediaDevices.getUserMedia({audio: true});
  pc.addTrack(mic.getAudioTracks()[0], mic);
  pc.ontrack = (e) => {
    const audio = new Audio(); audio.srcObject = e.streams[0] || new MediaStream([e.track]);
    audio.play().catch(() => {});
    setInterval(async () => { (await pc.getStats()).forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind === "audio" && r.totalAudioEnergy !== undefined)
        window.level = Math.max(window.level, r.totalAudioEnergy); }); }, 100);
  };
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
}
</script>"""


@pytest.mark.chromium
async def test_chromium_holds_a_live_turn_with_the_standin(
    standin: StandIn, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    mic = tmp_path / "question.wav"
    write_wav(mic)
    standin.app.add_api_route("/", lambda: HTMLResponse(PAGE), methods=["GET"])
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=chromium_args(mic))
        page = await browser.new_page()
        await page.goto(f"{standin.base_url}/")
        await page.evaluate("key => run(key)", API_KEY)
        # the model's first words, then its voice on the track (not the end of its turn: a
        # starved machine can split the looping clip into more turns that interrupt it)
        await page.wait_for_function(
            "window.log.some(e => e.type === 'session.output_transcript.delta')", timeout=45_000
        )
        await page.wait_for_function("window.level > 0.01", timeout=15_000)
        events = await page.evaluate("window.log")
        sent = await page.evaluate("window.sent")
        level = await page.evaluate("window.level")
        session_id = await page.evaluate("window.sessionId")
        await browser.close()
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
