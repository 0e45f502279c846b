"""Session benchmark: cold connect, device-added latency both ways, CPU and RSS.

Runs the real stand-in in a subprocess and a device session over loopback WebRTC in this
process; latency figures come from timestamps taken inside the device's own tracks.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np

from appliance import machine as m
from appliance.audio.base import AudioFormat
from appliance.audio.wav import WavSink
from appliance.realtime.keys import EphemeralKey, StaticKeySource
from appliance.realtime.media import MicTrack
from appliance.realtime.webrtc import RealtimeSession

KEY = "sk-standin-bench"
CONVERSATION_S = 30.0


async def _mint(base: str) -> EphemeralKey:
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{base}/v1/realtime/client_secrets",
            headers={"Authorization": f"Bearer {KEY}"},
            json={"session": {"type": "realtime"}},
        )
    data = r.json()
    return EphemeralKey(data["value"], data["expires_at"], base, data["session"])


def _ms(values: list[float]) -> str:
    if len(values) < 2:
        return "n/a"
    q = statistics.quantiles(values, n=100)
    return f"p50 {statistics.median(values) * 1000:.2f} ms, p99 {q[98] * 1000:.2f} ms"


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


@contextlib.asynccontextmanager
async def _standin_process() -> AsyncIterator[str]:
    """The stand-in in its own process, so the CPU figures are the device's alone."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "standin", "--port", str(port), "--api-key", KEY,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(300):
                try:
                    await http.get(f"{base}/")
                    break
                except httpx.HTTPError:
                    await asyncio.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        await proc.wait()


def _session(
    key: EphemeralKey, mic: MicTrack, sink: WavSink, events: list[m.Event]
) -> RealtimeSession:
    return RealtimeSession(
        keys=StaticKeySource(key),
        session={"type": "realtime", "audio": {"input": {"turn_detection": None}}},
        mic=mic,
        sink=sink,
        on_event=events.append,
    )


async def _run() -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    fmt = AudioFormat(16_000)
    async with _standin_process() as base:
        connects: list[float] = []
        for _ in range(5):
            session = _session(
                await _mint(base), MicTrack(fmt), WavSink(None, AudioFormat(48_000)), []
            )
            await session.connect()
            connects.append(session.timings["created_s"])
            await session.close()
        rows.append(("cold connect: key in hand → session.created (5 runs)", _ms(connects)))

        # a 30 s conversation: mic frames paced in real time, a reply every 5 s
        mic = MicTrack(fmt)
        sink = WavSink(None, AudioFormat(48_000))
        session = _session(await _mint(base), mic, sink, [])
        await session.connect()
        mic.uplink_open = True
        rss0 = _rss_mib()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        noise = np.random.default_rng(1).normal(0, 300, fmt.frame_samples).astype("<i2").tobytes()
        next_at = time.monotonic()
        for i in range(int(CONVERSATION_S * 1000 / fmt.frame_ms)):
            mic.push(noise)
            if i % 250 == 100:
                session.request_response(
                    instructions="Say: this is a benchmark reply of a few words"
                )
            next_at += fmt.frame_ms / 1000
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0
        rss = _rss_mib()
        await session.close()
    rows += [
        ("uplink: mic frame → Opus encoder (device-added)", _ms(list(mic.latencies))),
        (
            "downlink: decoded frame → sink write (device-added)",
            _ms(list(session.playout.latencies)),
        ),
        ("device CPU during a 30 s conversation", f"{100 * cpu / wall:.1f}% of one core"),
        ("device RSS", f"{rss:.0f} MiB (before the conversation: {rss0:.0f} MiB)"),
        ("reply frames played to the sink", f"{len(sink.frames)}"),
    ]
    return rows


def run() -> list[tuple[str, str]]:
    from appliance_common.ice import allow_loopback

    allow_loopback()
    result: list[tuple[str, str]] = asyncio.run(_run())
    return result
