"""Soak benchmark: back-to-back sessions (RSS, fds, threads) and frames played under loss.

Soak: ``SOAK_SESSIONS`` sessions one after the other against the stand-in (in its own
process, so the figures are the device's): mint a key, connect, play a few frames of the
call's audio, close. RSS, open fds and threads are read after ``WARMUP`` sessions (first
calls fill caches, the thread pool, lazy imports) and at the end.

Loss: ``python -m appliance_dev.bench.soak loss LEVEL… [--modes conceal,default]`` runs inside a
private network namespace (``unshare --net``: loopback only) with the stand-in in the same
process. For each level, nftables drops that share of the RTP audio packets going to the
device (``numgen random``, only packets that look like RTP with the negotiated Opus payload
type, so STUN, DTLS and the data channel are untouched) while the stand-in speaks a reply.
Frames played = frames the device wrote to its sink / RTP packets the stand-in sent, over a
window from before the loss starts to one second after it stops (both counters then lag by
the same steady hold, so the lag cancels). ``conceal`` is this appliance's jitter buffer
(Opus PLC/FEC), ``default`` is aiortc's own. ``measure_loss`` runs that subprocess and
returns its JSON; the loss test uses it too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from appliance import machine as m
from appliance.audio.base import AudioFormat
from appliance.audio.frames import rms_dbfs
from appliance.audio.wav import WavSink
from appliance.realtime import jitter
from appliance.realtime.media import MicTrack
from appliance.realtime.webrtc import RealtimeSession
from appliance_dev.bench.session import KEY, _mint, _rss_mib, _session, _standin_process

ROOT = Path(__file__).resolve().parents[2]
SOAK_SESSIONS = 200
WARMUP = 20
LOSS_LEVELS = (1, 5, 10)
REPLY = (
    "Say: the kitchen timer is set for twelve minutes, the oven is already warm, and "
    "the bread should rise for one more hour before it goes in, so there is plenty of time"
)
VOICED_DBFS = -50.0
NFT_TABLE = "appliance_loss"


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _trimmed_rss_mib() -> float:
    """RSS after glibc hands its free heap back (``malloc_trim``): what is really in use."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return _rss_mib()


# ---------------------------------------------------------------------------- soak


async def _soak(sessions: int) -> list[tuple[str, str]]:
    fmt = AudioFormat(16_000)
    half = sessions // 2
    marks: dict[int, tuple[float, int, int]] = {}
    trimmed: dict[int, float] = {}
    durations: list[float] = []
    async with _standin_process() as base:
        for i in range(sessions + 1):
            if i in (0, WARMUP, half, sessions):
                gc.collect()
                marks[i] = (_rss_mib(), _open_fds(), threading.active_count())
                trimmed[i] = _trimmed_rss_mib()
            if i == sessions:
                break
            started = time.perf_counter()
            sink = WavSink(None, AudioFormat(48_000))
            session = _session(await _mint(base), MicTrack(fmt), sink, [])
            await session.connect()
            deadline = time.monotonic() + 5
            while len(sink.frames) < 5 and time.monotonic() < deadline:  # noqa: ASYNC110  # polls the sink
                await asyncio.sleep(0.01)
            await session.close()
            if len(sink.frames) < 5:
                raise RuntimeError(f"session {i}: no audio played")
            durations.append(time.perf_counter() - started)
    rss0, fd0, th0 = marks[0]
    rss1, fd1, th1 = marks[WARMUP]
    rss_half = marks[half][0]
    rss2, fd2, th2 = marks[sessions]
    slope_kib = 1024 * (rss2 - rss_half) / (sessions - half)
    return [
        (
            f"{sessions} back-to-back sessions (connect, play audio, close)",
            f"{sum(durations):.1f} s, {1000 * sum(durations) / len(durations):.0f} ms each",
        ),
        (
            f"device RSS after {WARMUP} → after {sessions} sessions",
            f"{rss1:.1f} → {rss2:.1f} MiB ({100 * (rss2 - rss1) / rss1:+.1f}%; "
            f"before the first: {rss0:.1f} MiB)",
        ),
        (
            f"RSS slope over sessions {half}–{sessions}",
            f"{slope_kib:.1f} KiB per session",
        ),
        (
            "  the same after malloc_trim (memory in use)",
            f"{trimmed[WARMUP]:.1f} → {trimmed[sessions]:.1f} MiB "
            f"({100 * (trimmed[sessions] - trimmed[WARMUP]) / trimmed[WARMUP]:+.1f}%), "
            f"{1024 * (trimmed[sessions] - trimmed[half]) / (sessions - half):.1f} KiB per session",
        ),
        (
            f"open fds after {WARMUP} → after {sessions} sessions",
            f"{fd1} → {fd2} ({100 * (fd2 - fd1) / fd1:+.1f}%; before the first: {fd0})",
        ),
        (f"threads after {WARMUP} → after {sessions} sessions", f"{th1} → {th2} (before: {th0})"),
    ]


# ---------------------------------------------------------------------------- loss


class TimedSink:
    """A sink that keeps, per written frame, when it was written and whether it was voiced."""

    def __init__(self, fmt: AudioFormat) -> None:
        self._format = fmt
        self.times: list[float] = []
        self.voiced: list[bool] = []

    @property
    def format(self) -> AudioFormat:
        return self._format

    async def start(self) -> None:
        return None

    async def write(self, frame: bytes) -> None:
        self.times.append(time.monotonic())
        self.voiced.append(rms_dbfs(frame) > VOICED_DBFS)

    def flush(self) -> None:
        return None

    async def close(self) -> None:
        return None


def _nft(*args: str) -> None:
    subprocess.run(["nft", *args], check=True, capture_output=True)


def _drop_rule(port: int, payload_type: int, loss_pct: int) -> None:
    _nft("add", "table", "inet", NFT_TABLE)
    _nft("add chain inet " + NFT_TABLE + " out { type filter hook output priority 0; }")
    _nft(
        "add rule inet " + NFT_TABLE + f" out udp dport {port} @th,64,2 2 "
        f"@th,73,7 {payload_type} numgen random mod 100 < {loss_pct} counter drop"
    )


def _device_port(session: RealtimeSession) -> int:
    transceiver = session.pc.getTransceivers()[0]
    candidates = transceiver.receiver.transport.transport.iceGatherer.getLocalCandidates()
    ports = {c.port for c in candidates}
    if len(ports) != 1:
        raise RuntimeError(f"expected one local candidate port in the namespace, got {ports}")
    return int(ports.pop())


async def _packets_sent(call: Any) -> int:
    total = 0
    for sender in call.pc.getSenders():
        if sender.track is None or sender.track.kind != "audio":
            continue
        report = await sender.getStats()
        total += sum(
            getattr(s, "packetsSent", 0) or 0
            for s in report.values()
            if getattr(s, "type", "") == "outbound-rtp"
        )
    return total


async def loss_trial(loss_pct: int, conceal: bool) -> dict[str, Any]:
    """One reply under ``loss_pct``% RTP loss to the device (run inside a namespace)."""
    from standin import StandIn, StandInConfig

    jitter.CONCEALMENT = conceal
    events: list[m.Event] = []
    sink = TimedSink(AudioFormat(48_000))
    async with StandIn(StandInConfig(api_key=KEY)) as standin:
        session = RealtimeSession(
            keys=_static(await _mint(standin.base_url)),
            session={"type": "realtime", "audio": {"input": {"turn_detection": None}}},
            mic=MicTrack(AudioFormat(16_000)),
            sink=sink,
            on_event=events.append,
            liveness_s=0,
        )
        await session.connect()
        call = standin.calls[session.call_id or ""]
        found = re.search(r"^a=rtpmap:(\d+) opus/48000", session.pc.remoteDescription.sdp, re.M)
        payload_type = int(found.group(1)) if found else 96
        await asyncio.sleep(0.5)  # the stream (silence) is flowing
        frames0, sent0 = len(sink.times), await _packets_sent(call)
        if loss_pct:
            _drop_rule(_device_port(session), payload_type, loss_pct)
        session.request_response(instructions=REPLY)
        deadline = time.monotonic() + 30
        while not any(isinstance(e, m.ResponseDone) for e in events):
            if time.monotonic() > deadline:
                raise RuntimeError("the reply did not finish")
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # the tail of the reply reaches the sink
        reply_end = len(sink.times)
        if loss_pct:
            _nft("delete", "table", "inet", NFT_TABLE)
        await asyncio.sleep(1.0)
        frames1, sent1 = len(sink.times), await _packets_sent(call)
        stats = session.playout.concealment.stats if session.playout.concealment else None
        decode_s = session.playout.concealment.decode_s if session.playout.concealment else 0.0
        await session.close()
    window = sink.times[frames0:reply_end]
    gaps = [b - a for a, b in itertools.pairwise(window)]
    played = frames1 - frames0
    sent = sent1 - sent0
    return {
        "loss_pct": loss_pct,
        "mode": "conceal" if conceal else "default",
        "sent": sent,
        "played": played,
        "played_ratio": played / sent if sent else 0.0,
        "max_gap_ms": 1000 * max(gaps, default=0.0),
        "voiced": sum(sink.voiced[frames0:reply_end]),
        "decoded": stats.decoded if stats else None,
        "recovered": stats.recovered if stats else None,
        "concealed": stats.concealed if stats else None,
        "late": stats.late if stats else None,
        "skipped": stats.skipped if stats else None,
        "discontinuities": stats.discontinuities if stats else None,
        "decode_us": 1e6 * decode_s / stats.played if stats and stats.played else None,
    }


def _static(key: Any) -> Any:
    from appliance.realtime.keys import StaticKeySource

    return StaticKeySource(key)


async def _loss_runs(levels: list[int], modes: list[str]) -> list[dict[str, Any]]:
    results = []
    for level in levels:
        for mode in modes:
            results.append(await loss_trial(level, mode == "conceal"))
    return results


def loss_available() -> str | None:
    """Why the loss measurement cannot run here (``None``: it can)."""
    if os.geteuid() != 0:
        return "needs root (network namespace, nftables)"
    for tool in ("unshare", "nft", "ip"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


def measure_loss(
    levels: list[int], modes: list[str], timeout: float = 170.0
) -> list[dict[str, Any]]:
    """Run the loss trials in a fresh network namespace; return one dict per trial."""
    done = subprocess.run(
        [
            "unshare", "--net", sys.executable, "-m", "appliance_dev.bench.soak", "loss",
            *map(str, levels), "--modes", ",".join(modes),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"loss trials failed:\n{done.stderr[-3000:]}")
    result: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _loss_rows() -> list[tuple[str, str]]:
    why = loss_available()
    if why is not None:
        return [("frames played under loss", f"n/a ({why})")]
    results = measure_loss(list(LOSS_LEVELS), ["default", "conceal"])
    rows = []
    for level in LOSS_LEVELS:
        by = {r["mode"]: r for r in results if r["loss_pct"] == level}
        d, c = by["default"], by["conceal"]
        rows.append(
            (
                f"frames played at {level}% loss: aiortc default → PLC/FEC buffer",
                f"{100 * d['played_ratio']:.1f}% → {100 * c['played_ratio']:.1f}% "
                f"(longest gap {d['max_gap_ms']:.0f} → {c['max_gap_ms']:.0f} ms; "
                f"{c['recovered']} FEC + {c['concealed']} PLC of {c['sent']})",
            )
        )
    decode = [r["decode_us"] for r in results if r["decode_us"]]
    rows.append(
        (
            "PLC/FEC buffer: decode + frame per 20 ms, on the loop (stand-in in process)",
            f"{sum(decode) / len(decode):.0f} µs",
        )
    )
    return rows


def run() -> list[tuple[str, str]]:
    from appliance_common.ice import allow_loopback

    allow_loopback()
    rows: list[tuple[str, str]] = asyncio.run(_soak(SOAK_SESSIONS))
    return rows + _loss_rows()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m appliance_dev.bench.soak")
    sub = parser.add_subparsers(dest="command", required=True)
    loss = sub.add_parser("loss", help="loss trials; run inside `unshare --net` as root")
    loss.add_argument("levels", nargs="+", type=int)
    loss.add_argument("--modes", default="default,conceal")
    args = parser.parse_args(argv)
    from appliance_common.ice import allow_loopback

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    allow_loopback()
    results = asyncio.run(_loss_runs(args.levels, args.modes.split(",")))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
