"""``appliance check``: a pass/fail table for installers and support.

Each step is a coroutine returning a ``Result``; a failed step does not stop the others
(except that no session is tried without a key).
"""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from appliance.audio.frames import rms_dbfs
from appliance.config import Config
from appliance.errors import ApplianceError


@dataclass(frozen=True)
class Result:
    name: str
    ok: bool
    detail: str


SILENT_DBFS = -70.0
"""Below this the mic is muted, unplugged or the wrong device (a quiet room is about -60)."""
CLIPPED_PERCENT = 1.0
"""At or above this share of full-scale samples the input gain is too high."""
TONE_HZ = 880.0
TONE_S = 0.5


@dataclass
class Context:
    config: Config
    wait_button_s: float = 10.0
    key: Any = None
    relay: Any = None
    """The provisioning server's Live relay, when the device's group uses GPT-Live."""
    offline: bool = False


def tone(rate: int, seconds: float = TONE_S, hz: float = TONE_HZ) -> bytes:
    """A sine at -12 dBFS with 10 ms fades (no clicks), 16-bit mono."""
    t = np.arange(int(rate * seconds)) / rate
    wave = 0.25 * np.sin(2 * np.pi * hz * t)
    fade = min(len(t) // 2, int(rate * 0.01))
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        wave[:fade] *= ramp
        wave[-fade:] *= ramp[::-1]
    return (wave * 32767).astype("<i2").tobytes()


def judge_capture(data: bytes) -> tuple[bool, str]:
    """PASS unless the recording is silent or clipped; the detail says which and why."""
    samples = np.frombuffer(data, dtype="<i2").astype(np.float64)
    level = rms_dbfs(data) if samples.size else float("-inf")
    clipped = float(np.mean(np.abs(samples) >= 32767)) * 100 if samples.size else 0.0
    detail = f"level {level:.1f} dBFS, clipping {clipped:.2f}%"
    if level < SILENT_DBFS:
        return False, f"{detail}: silent (mic muted, unplugged or the wrong audio.input_device?)"
    if clipped >= CLIPPED_PERCENT:
        return False, f"{detail}: clipped (lower the capture gain in alsamixer)"
    return True, detail


async def check_audio(ctx: Context) -> Result:
    from appliance.wiring import make_audio

    source, sink = make_audio(ctx.config)
    try:
        if ctx.config.audio.backend == "alsa":  # PortAudio's probe noise: the row says enough
            from appliance.audio.alsa import quiet_stderr

            with quiet_stderr():
                await sink.start()
                await source.start()
        else:
            await sink.start()
            await source.start()
        fmt = sink.format
        pcm = tone(fmt.rate)
        pcm += bytes(-len(pcm) % fmt.frame_bytes)
        for i in range(0, len(pcm), fmt.frame_bytes):
            await sink.write(pcm[i : i + fmt.frame_bytes])
        frames = []
        for _ in range(int(2000 / source.format.frame_ms)):
            frames.append(await source.read())
    finally:
        await source.close()
        await sink.close()
    ok, detail = judge_capture(b"".join(frames))
    return Result("audio", ok, f"played a {TONE_S:g} s {TONE_HZ:g} Hz tone; recorded 2 s: {detail}")


async def check_leds(ctx: Context) -> Result:
    from appliance.boards import PROFILES, make_leds
    from appliance.leds import PATTERNS

    board = PROFILES[ctx.config.device.board]
    leds = make_leds(board)
    if leds is None:
        return Result("leds", True, f"board {board.name} has no LEDs")
    try:
        for pattern in PATTERNS.values():
            leds.show(pattern)
            await asyncio.sleep(0.3)
    finally:
        leds.close()
    return Result("leds", True, f"showed all {len(PATTERNS)} state patterns on {board.name}")


async def check_button(ctx: Context) -> Result:
    from gpiozero import Button

    from appliance.boards import PROFILES

    board = PROFILES[ctx.config.device.board]
    if board.button_pin is None or not ctx.config.activation.button:
        return Result("button", True, "no button on this board/config")
    if ctx.wait_button_s <= 0:
        return Result("button", True, "not waited for (--no-button)")
    pressed = asyncio.Event()
    loop = asyncio.get_running_loop()
    button = Button(board.button_pin)
    button.when_pressed = lambda: loop.call_soon_threadsafe(pressed.set)
    print(f"press the button (GPIO{board.button_pin}) within {ctx.wait_button_s:g} s …", flush=True)
    try:
        await asyncio.wait_for(pressed.wait(), ctx.wait_button_s)
        return Result("button", True, f"GPIO{board.button_pin} pressed")
    except TimeoutError:
        return Result("button", False, f"no press on GPIO{board.button_pin}")
    finally:
        button.close()


async def check_provisioning(ctx: Context) -> Result:
    from appliance.identity import Identity
    from appliance.realtime.provisioning_keys import ProvisioningKeySource

    if ctx.offline:
        return Result("provisioning", True, "not tried (--offline)")
    try:
        identity = Identity.load(ctx.config.device.state_dir)
    except FileNotFoundError:
        return Result("provisioning", False, "not enrolled: run 'appliance enroll'")
    from appliance.errors import BackendMoved

    started = time.perf_counter()
    source = ProvisioningKeySource(identity)
    try:
        ctx.key = await source.get_key()
    except BackendMoved as exc:
        if exc.backend != "live":
            raise
        ctx.relay = source
        return Result("provisioning", True, f"{identity.server}: the group uses GPT-Live")
    ms = (time.perf_counter() - started) * 1000
    return Result("provisioning", True, f"{identity.server}: key minted in {ms:.0f} ms")


async def check_session(ctx: Context) -> Result:
    from appliance.audio.base import AudioFormat
    from appliance.audio.wav import WavSink
    from appliance.realtime.keys import StaticKeySource
    from appliance.realtime.live import LiveSession
    from appliance.realtime.media import MicTrack
    from appliance.realtime.webrtc import RealtimeSession

    if ctx.offline:
        return Result("session", True, "not tried (--offline)")
    session: RealtimeSession
    if ctx.relay is not None:
        session = LiveSession(
            relay=ctx.relay,
            tools=[],
            mic=MicTrack(AudioFormat()),
            sink=WavSink(None, AudioFormat(48_000)),
            on_event=lambda _e: None,
        )
    elif ctx.key is None:
        return Result("session", False, "skipped: no key")
    else:
        session = RealtimeSession(
            keys=StaticKeySource(ctx.key),
            session={"type": "realtime"},
            mic=MicTrack(AudioFormat()),
            sink=WavSink(None, AudioFormat(48_000)),
            on_event=lambda _e: None,
        )
    try:
        await asyncio.wait_for(session.connect(), ctx.config.session.connect_s)
        ms = session.timings["ready_s"] * 1000
        return Result("session", True, f"call {session.call_id} ready in {ms:.0f} ms, closed")
    finally:
        await session.close()


STEPS: list[tuple[str, Callable[[Context], Awaitable[Result]]]] = [
    ("audio", check_audio),
    ("leds", check_leds),
    ("button", check_button),
    ("provisioning", check_provisioning),
    ("session", check_session),
]


async def run_checks(ctx: Context) -> list[Result]:
    from gpiozero.exc import BadPinFactory, GPIOZeroError, PinFactoryFallback

    results = [Result("config", True, "valid")]
    for name, step in STEPS:
        try:
            with warnings.catch_warnings():  # one line per failed factory; the row says it
                warnings.simplefilter("ignore", PinFactoryFallback)
                results.append(await step(ctx))
        except BadPinFactory:
            why = "no GPIO pin factory: not a Raspberry Pi, or python3-lgpio is missing"
            results.append(Result(name, False, why))
        except (ApplianceError, GPIOZeroError, OSError, TimeoutError, ValueError) as exc:
            results.append(Result(name, False, f"{type(exc).__name__}: {exc}"))
    return results


def table(results: list[Result]) -> str:
    lines = [f"{'check':<14} {'result':<6} detail", f"{'-' * 14} {'-' * 6} {'-' * 40}"]
    lines += [f"{r.name:<14} {'PASS' if r.ok else 'FAIL':<6} {r.detail}" for r in results]
    return "\n".join(lines)


def main(config_path: Path | None, wait_button_s: float, offline: bool = False) -> int:
    from appliance import config as cfg

    config = cfg.load(config_path)  # ConfigError → exit 78 in the CLI
    results = asyncio.run(run_checks(Context(config, wait_button_s, offline=offline)))
    print(table(results))
    return 0 if all(r.ok for r in results) else 1
