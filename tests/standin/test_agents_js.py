"""The official browser client, ``@openai/agents-realtime`` (its shipped ES-module bundle, as
npm installs it under tests/js), runs in headless Chromium against the stand-in: a page on
another origin (so CORS is exercised), an ephemeral key from ``client_secrets``, the
``OpenAIRealtimeWebRTC`` transport pointed at the stand-in with ``baseUrl``, and nothing else
changed. It hears a question (Chromium's fake mic), is interrupted, calls a tool, and every
event on both sides validates against the ``openai`` package's types."""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

from appliance_common.serving import Served
from standin import StandIn
from tests.browser import CHROMIUM, chromium_args
from tests.conftest import require
from tests.speech import speech
from tests.standin.conftest import mint
from tests.wire import validate_client, validate_server

BUNDLE = (
    Path(__file__).parents[1] / "js/node_modules/@openai/agents-realtime/dist/bundle"
).resolve()
MODEL = "gpt-realtime-2.1"  # the client's default model, which the key is minted for

PAGE = """<!doctype html><meta charset="utf-8"><title>agents-realtime against the stand-in</title>
<script type="module">
import { RealtimeAgent, RealtimeSession, OpenAIRealtimeWebRTC, tool }
  from "/bundle/openai-realtime-agents.mjs";

window.sent = []; window.received = []; window.toolCalls = []; window.errors = [];
// record what the client sends on the data channel (instrumentation only)
const send = RTCDataChannel.prototype.send;
RTCDataChannel.prototype.send = function (data) {
  window.sent.push(JSON.parse(data));
  return send.call(this, data);
};
const getTime = tool({
  name: "get_time",
  description: "The current local time.",
  parameters: {type: "object", properties: {}, required: [], additionalProperties: false},
  strict: true,
  execute: async (args) => {
    window.toolCalls.push(args);
    return JSON.stringify({time: "twelve o'clock"});
  },
});
window.start = async (key, baseUrl) => {
  const agent = new RealtimeAgent({
    name: "Helper", instructions: "Answer briefly.", tools: [getTime],
  });
  const transport = new OpenAIRealtimeWebRTC({baseUrl});
  const session = new RealtimeSession(agent, {transport});
  session.transport.on("*", (event) => window.received.push(event));
  session.on("error", (error) => window.errors.push(String(error?.error?.message ?? error)));
  window.session = session;
  await session.connect({apiKey: key});
  window.callId = transport.callId;
};
window.ready = true;
</script>"""


def write_question(path: Path) -> None:
    """What Chromium's fake mic plays, in a loop: a question, then time for the answer."""
    samples = speech("what is the weather like on the moon", pad_s=6.0)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(48_000)
        wav.writeframes(samples.tobytes())


def page_app() -> FastAPI:
    app = FastAPI()
    app.add_api_route("/", lambda: HTMLResponse(PAGE), methods=["GET"])
    app.mount("/bundle", StaticFiles(directory=BUNDLE), name="bundle")
    return app


def types(events: list[dict[str, Any]]) -> list[str]:
    return [str(e["type"]) for e in events]


@pytest.mark.chromium
async def test_the_official_browser_client_talks_calls_a_tool_and_is_interrupted(
    standin: StandIn, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    require(BUNDLE.is_dir(), "npm packages of tests/js (run `npm ci` in tests/js)")
    mic = tmp_path / "question.wav"
    write_question(mic)
    key = await mint(standin.base_url, {"type": "realtime", "model": MODEL})
    async with Served(page_app()) as page_server, async_playwright() as pw:
        assert page_server.base_url != standin.base_url, "the page is on another origin"
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=chromium_args(mic))
        try:
            page = await browser.new_page()
            page.set_default_timeout(30_000)
            await page.goto(f"{page_server.base_url}/")
            await page.wait_for_function("window.ready === true")
            await page.evaluate(
                "([key, url]) => window.start(key, url)",
                [key, f"{standin.base_url}/v1/realtime/calls"],
            )
            # turn 1: the answer starts playing, and the user interrupts it
            await page.wait_for_function(
                "window.received.some(e => e.type === 'output_audio_buffer.started')"
            )
            await page.evaluate("window.session.interrupt()")
            await page.wait_for_function(
                "window.received.some(e => e.type === 'output_audio_buffer.cleared')"
            )
            # turn 2 ("what time is it"): the model calls the tool, the client runs it and
            # asks for the answer, which is spoken to the end
            await page.wait_for_function("window.toolCalls.length === 1")
            await page.wait_for_function(
                "window.received.filter(e => e.type === 'response.done'"
                " && e.response.status === 'completed').length >= 2"
            )
            sent: list[dict[str, Any]] = await page.evaluate("window.sent")
            received: list[dict[str, Any]] = await page.evaluate("window.received")
            errors: list[str] = await page.evaluate("window.errors")
            call_id: str = await page.evaluate("window.callId")
        finally:
            await browser.close()
    assert call_id.startswith("rtc_"), "Location was readable across origins"
    assert errors == [], errors
    call = next(c for c in [*standin.calls.values(), *standin.finished_calls] if c.id == call_id)

    # the client's first event configures the session, model included, and is accepted
    update = sent[0]
    assert update["type"] == "session.update"
    assert update["session"]["model"] == MODEL
    assert "session.updated" in types(received)
    assert "error" not in types(received)

    # the interrupt: response.cancel then output_audio_buffer.clear, as the client does it
    sent_types = types(sent)
    assert sent_types.index("response.cancel") < sent_types.index("output_audio_buffer.clear")
    cancelled = next(
        e
        for e in received
        if e["type"] == "response.done" and e["response"]["status"] == "cancelled"
    )
    assert cancelled["response"]["status_details"]["reason"] == "client_cancelled"

    # the tool round trip: a function call, its output from the client, then a spoken answer
    call_done = next(e for e in received if e["type"] == "response.function_call_arguments.done")
    assert call_done["name"] == "get_time"
    output = next(
        e
        for e in sent
        if e["type"] == "conversation.item.create" and e["item"]["type"] == "function_call_output"
    )
    assert output["item"]["call_id"] == call_done["call_id"]
    assert "twelve o'clock" in output["item"]["output"]
    spoken = [
        e["transcript"] for e in received if e["type"] == "response.output_audio_transcript.done"
    ]
    assert any("twelve o'clock" in said for said in spoken), spoken

    # every event, both directions, seen from both ends
    assert len(sent) == len(call.received)
    for event in sent + call.received:
        validate_client(event)
    for event in received + call.sent:
        validate_server(event)
