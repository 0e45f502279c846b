"""Headless Debian Chromium through playwright (no browser download: /usr/bin/chromium)."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from tests.conftest import require

CHROMIUM = "/usr/bin/chromium"


def chromium_args(fake_mic: Path) -> list[str]:
    require(shutil.which("chromium") is not None or Path(CHROMIUM).exists(), "Debian chromium")
    return [
        "--no-sandbox",
        "--headless",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={fake_mic}",
        "--autoplay-policy=no-user-gesture-required",
        "--allow-loopback-in-peer-connection",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
    ]


def silent_wav(folder: Path) -> Path:
    """An empty 16 kHz WAV for Chromium's fake microphone (pages that need no audio)."""
    path = folder / "silence.wav"
    path.write_bytes(
        b"RIFF$\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00\x80>\x00\x00"
        b"\x00}\x00\x00\x02\x00\x10\x00data\x00\x00\x00\x00"
    )
    return path


VOICE_CLIENT = """<!doctype html><meta charset="utf-8"><title>{title}</title>
<script>
window.log = []; window.sent = []; window.level = 0;
function send(dc, ev) {{ window.sent.push(ev); dc.send(JSON.stringify(ev)); }}
// A peer connection with the fake microphone as its track; the remote audio plays, and
// window.level keeps the highest totalAudioEnergy the inbound audio reached.
async function voicePeer() {{
  const pc = new RTCPeerConnection();
  const mic = await navigator.mediaDevices.getUserMedia({{audio: true}});
  pc.addTrack(mic.getAudioTracks()[0], mic);
  pc.ontrack = (e) => {{
    const audio = new Audio(); audio.srcObject = e.streams[0] || new MediaStream([e.track]);
    audio.play().catch(() => {{}});
    setInterval(async () => {{ (await pc.getStats()).forEach((r) => {{
      if (r.type === "inbound-rtp" && r.kind === "audio" && r.totalAudioEnergy !== undefined)
        window.level = Math.max(window.level, r.totalAudioEnergy); }}); }}, 100);
  }};
  return pc;
}}
{script}
</script>"""
"""A browser voice client page: ``script`` defines ``run(key)`` (with ``voicePeer()`` and
``send(dc, ev)``) and fills ``window.log`` with the events it receives, ``window.sent`` with
those it sends."""


async def run_voice_client(
    app: FastAPI,
    base_url: str,
    page_html: str,
    mic: Path,
    key: str,
    until: Sequence[tuple[str, int]],
) -> dict[str, Any]:
    """Serve ``page_html`` at ``/`` of ``app``, open it in headless Chromium with ``mic`` as
    its microphone, call ``run(key)``, wait for each JavaScript condition of ``until`` in turn
    (with its timeout in ms) and return the page's ``window`` globals ``log``, ``sent``,
    ``level`` and ``sessionId``."""
    from playwright.async_api import async_playwright

    args = chromium_args(mic)
    app.add_api_route("/", lambda: HTMLResponse(page_html), methods=["GET"])
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            page = await browser.new_page()
            await page.goto(f"{base_url}/")
            await page.evaluate("key => run(key)", key)
            for condition, timeout_ms in until:
                await page.wait_for_function(condition, timeout=timeout_ms)
            found: dict[str, Any] = await page.evaluate(
                "({log: window.log, sent: window.sent, level: window.level,"
                " sessionId: window.sessionId})"
            )
        finally:
            await browser.close()
    return found
