"""Interop with libwebrtc: headless Chromium plays the Realtime *service* and answers the
device's offer. Its fake microphone (a speech WAV) is the model's voice; it sends scripted GA
events on ``oai-events``. The daemon connects, walks its states and plays the audio."""

from __future__ import annotations

import asyncio
import time
import wave
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response

from appliance import machine as m
from appliance.app import App
from appliance.audio.base import AudioFormat
from appliance.audio.wav import WavSink, WavSource
from appliance.config import Config
from appliance.realtime.keys import EphemeralKey, StaticKeySource
from appliance.realtime.tools import builtin_registry
from appliance_common.serving import Served
from tests.browser import CHROMIUM, chromium_args
from tests.speech import speech
from tests.waiting import Changes
from tests.wire import validate_client, validate_server

PAGE = """<!doctype html><meta charset="utf-8"><title>fake Realtime service</title>
<script>
window.received = []; window.sent = [];
let n = 0;
function ev(type, fields) {
  return Object.assign({type, event_id: "event_chromium_" + (++n)}, fields);
}
async function answer(offer) {
  const pc = new RTCPeerConnection();
  const mic = await navigator.mediaDevices.getUserMedia({audio: true});
  pc.addTrack(mic.getAudioTracks()[0], mic);
  pc.ondatachannel = (e) => {
    const dc = e.channel;
    const send = (x) => { window.sent.push(x); dc.send(JSON.stringify(x)); };
    const session = {type: "realtime", object: "realtime.session", id: "sess_chromium",
                     model: "gpt-realtime-2.1", output_modalities: ["audio"], tools: [],
                     audio: {output: {voice: "marin"}}};
    dc.onopen = () => send(ev("session.created", {session}));
    if (dc.readyState === "open") send(ev("session.created", {session}));
    dc.onmessage = async (msg) => {
      const data = JSON.parse(msg.data); window.received.push(data);
      if (data.type !== "session.update") return;
      send(ev("session.updated", {session}));
      await new Promise(r => setTimeout(r, 500));
      const rid = "resp_chromium", iid = "item_chromium";
      const resp = (status) => ({id: rid, object: "realtime.response", status, output: [],
                                 conversation_id: "conv_1", output_modalities: ["audio"]});
      send(ev("response.created", {response: resp("in_progress")}));
      const item = {id: iid, object: "realtime.item", type: "message", role: "assistant",
                    status: "in_progress", content: []};
      send(ev("response.output_item.added", {response_id: rid, output_index: 0, item}));
      send(ev("output_audio_buffer.started", {response_id: rid}));
      send(ev("response.output_audio_transcript.done", {response_id: rid, item_id: iid,
            output_index: 0, content_index: 0, transcript: "hello from chromium"}));
      await new Promise(r => setTimeout(r, 2500));
      send(ev("response.done", {response: resp("completed")}));
      send(ev("output_audio_buffer.stopped", {response_id: rid}));
    };
  };
  await pc.setRemoteDescription({type: "offer", sdp: offer});
  await pc.setLocalDescription(await pc.createAnswer());
  await new Promise((r) => { if (pc.iceGatheringState === "complete") r();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && r(); });
  window.pc = pc;
  return pc.localDescription.sdp;
}
</script>"""


@pytest.mark.chromium
async def test_device_talks_to_libwebrtc(tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    voice = tmp_path / "model-voice.wav"
    with wave.open(str(voice), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(48_000)
        wav.writeframes(speech("the quick brown fox jumps over the lazy dog", pad_s=0.5).tobytes())
    args = chromium_args(voice)
    service = FastAPI()
    pages: list[object] = []

    @service.get("/")
    async def index() -> HTMLResponse:
        return HTMLResponse(PAGE)

    @service.post("/v1/realtime/calls")
    async def calls(request: Request) -> Response:
        assert request.headers["authorization"] == "Bearer ek_chromium"
        assert request.headers["content-type"] == "application/sdp"
        sdp = (await request.body()).decode()
        answer = await pages[0].evaluate("offer => answer(offer)", sdp)  # type: ignore[attr-defined]
        headers = {"Location": "/v1/realtime/calls/rtc_chromium"}
        return Response(answer, 201, media_type="application/sdp", headers=headers)

    async with Served(service) as served, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=args)
        page = await browser.new_page()
        pages.append(page)
        await page.goto(f"{served.base_url}/")
        key = EphemeralKey("ek_chromium", time.time() + 60, served.base_url)
        sink = WavSink(None, AudioFormat(48_000))
        changed = Changes()
        app = App(
            Config(),
            source=WavSource(None, AudioFormat(16_000)),
            sink=sink,
            keys=StaticKeySource(key),
            tools=builtin_registry(),
            on_state=changed.notify,
        )
        stop = asyncio.Event()
        runner = asyncio.create_task(app.run(stop))
        app.post(m.ButtonPressed())
        app.post(m.ButtonReleased())  # a tap: hands-free
        await changed.until(
            lambda: bool(app.stats.states) and app.stats.states[-1][1] is m.State.IDLE,
            "back to IDLE after the call opened",
        )
        assert app.session is not None
        assert app.session.call_id == "rtc_chromium"
        received = await page.evaluate("window.received")
        sent = await page.evaluate("window.sent")
        stop.set()
        await runner
        await browser.close()
    states = [s for _, s in app.stats.states]
    assert states == [
        m.State.CONNECTING,
        m.State.LISTENING,
        m.State.THINKING,
        m.State.SPEAKING,
        m.State.IDLE,
    ]
    assert ("assistant", "hello from chromium") in app.stats.transcripts
    played = sink.samples().astype(np.float64)
    assert np.sqrt(np.mean(played**2)) > 100, "the model's voice did not reach the speaker"
    assert received[0]["type"] == "session.update"
    for event in received:
        validate_client(event)
    for event in sent:
        validate_server(event)
