"""Headless Chromium (libwebrtc) drives the stand-in with the standard browser flow."""

from __future__ import annotations

import wave
from pathlib import Path

import pytest
from fastapi.responses import HTMLResponse

from standin import StandIn
from tests.browser import CHROMIUM, chromium_args
from tests.speech import speech
from tests.standin.conftest import mint
from tests.wire import validate_client, validate_server

PAGE = """<!doctype html><meta charset="utf-8"><title>stand-in browser client</title>
<script>
window.log = []; window.sent = []; window.level = 0;
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
  dc.onmessage = (e) => window.log.push(JSON.parse(e.data));
  dc.onopen = () => { const ev = {type: "session.update", event_id: "evt_browser_1",
    session: {type: "realtime", instructions: "Answer briefly."}};
    window.sent.push(ev); dc.send(JSON.stringify(ev)); };
  await pc.setLocalDescription(await pc.createOffer());
  const r = await fetch("/v1/realtime/calls", {method: "POST", body: pc.localDescription.sdp,
    headers: {"Authorization": "Bearer " + key, "Content-Type": "application/sdp"}});
  if (r.status !== 201) throw new Error("call failed " + r.status);
  await pc.setRemoteDescription({type: "answer", sdp: await r.text()});
}
</script>"""


def write_wav(path: Path, rate: int = 48_000) -> None:
    samples = speech("what is the weather like on the moon", rate=rate, pad_s=4.0)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.tobytes())


@pytest.mark.chromium
async def test_a_browser_completes_a_voice_turn(standin: StandIn, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    mic = tmp_path / "question.wav"
    write_wav(mic)
    args = chromium_args(mic)
    standin.app.add_api_route("/", lambda: HTMLResponse(PAGE), methods=["GET"])
    key = await mint(standin.base_url)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=args)
        page = await browser.new_page()
        await page.goto(f"{standin.base_url}/")
        await page.evaluate("key => run(key)", key)
        await page.wait_for_function(
            "window.log.some(e => e.type === 'output_audio_buffer.stopped')", timeout=30_000
        )
        events = await page.evaluate("window.log")
        sent = await page.evaluate("window.sent")
        level = await page.evaluate("window.level")
        await browser.close()
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
