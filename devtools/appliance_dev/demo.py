"""``make demo``: the whole system on this machine, no hardware, no OpenAI account.

Starts the Realtime stand-in and the provisioning server on loopback (SQLite in a temp dir),
enrolls a demo device, then runs the daemon on fake hardware: WAV clips as the microphone,
gpiozero's mock pins as the button and LED. Two turns: hold-to-talk, then a tap (hands-free,
with a tool call). Prints the transcript, LED states and latencies; writes the speaker output
to ``demo-out/answer.wav``. Exits 0 when both turns were answered.

``--backend live`` (``make demo BACKEND=live``) puts the demo group on GPT-Live: the device
opens its session through the server's Live relay and the stand-in's ``/v1/live/sessions``; the
tool call is a Responses-delegation function call answered on the data channel.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from gpiozero import Device
from gpiozero.pins.mock import MockFactory, MockPWMPin

from appliance import machine as m  # pin factory must be chosen first
from appliance.app import App
from appliance.audio.base import AudioFormat
from appliance.audio.frames import Pcm
from appliance.audio.wav import WavSink, WavSource
from appliance.config import (
    ActivationConfig,
    AudioConfig,
    Config,
    DeviceConfig,
)
from appliance.identity import enroll
from appliance.leds import PATTERNS
from appliance.realtime.keys import CachedKeySource
from appliance.realtime.live import LiveSession
from appliance.realtime.provisioning_keys import ProvisioningKeySource
from appliance.realtime.tools import builtin_registry
from appliance.telemetry import Stats
from appliance.wiring import make_frontend, make_gpio
from appliance_common.models import DEFAULT_TRANSCRIPTION_MODEL
from provisioning.live_relay import live_profile
from provisioning.server import ProvisioningServer, Settings, profile_for
from standin import StandIn, StandInConfig

STANDIN_KEY = "sk-standin-demo"  # the stand-in's made-up "standard key"


def asset(name: str) -> Path:
    return Path(str(resources.files("appliance") / "assets" / name))


class Printer:
    def __init__(self, quiet: bool = False) -> None:
        self.t0 = time.monotonic()
        self.quiet = quiet

    def __call__(self, what: str) -> None:
        if not self.quiet:
            print(f"[{time.monotonic() - self.t0:6.2f}s] {what}", flush=True)


async def wait_state(app: App, wanted: m.State, within: float) -> None:
    deadline = time.monotonic() + within
    while app.snapshot.state is not wanted:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"no {wanted.name} within {within:g} s (now {app.snapshot.state.name})"
            )
        await asyncio.sleep(0.02)


def speaking(app: App) -> bool:
    return app.snapshot.state is m.State.SPEAKING


def playing(source: WavSource) -> bool:
    return source.playing


@dataclass
class Report:
    """What a demo run saw, for the end-to-end test."""

    stats: Stats
    spoken: list[Pcm] = field(default_factory=list)
    """Reply audio the stand-in sent, 48 kHz."""
    played: Pcm | None = None
    """What reached the device's speaker, 48 kHz."""
    client_events: list[dict[str, Any]] = field(default_factory=list)
    server_events: list[dict[str, Any]] = field(default_factory=list)
    connect_s: float = 0.0
    """Cold connect of the first session as the user waits for it: CONNECTING → LISTENING
    (on GPT-Live this includes the mint's 409 that moves the device to the Live relay)."""
    turn_s: list[float] = field(default_factory=list)
    """Per turn: from the end of the user's audio (button release; the clip's end hands-free)
    to the first reply audio (SPEAKING)."""
    ok: bool = False


LIVE_DELEGATION = {
    "type": "responses",
    "responses": {
        "model": "gpt-5.5",
        "instructions": "Use the device's tools for anything about the device or the time.",
    },
}


async def run_demo(
    out_dir: Path, work: Path, quiet: bool = False, backend: str = "realtime"
) -> Report:
    say = Printer(quiet)
    async with StandIn(StandInConfig(api_key=STANDIN_KEY)) as standin:
        settings = Settings(
            database_url=f"sqlite:///{work / 'provisioning.db'}",
            upstream_url=standin.base_url,
            openai_api_key=STANDIN_KEY,
            port=0,
        )
        async with ProvisioningServer(settings) as server:
            if backend == "live":
                profile = live_profile(
                    "gpt-live-1", voice="marin", delegation=LIVE_DELEGATION, standby_after_s=5
                )
            else:
                profile = profile_for(voice="marin")
                profile["audio"]["input"] = {
                    "transcription": {"model": DEFAULT_TRANSCRIPTION_MODEL}
                }
            server.store.ensure_group("default", profile)
            say(f"backend: {backend} (the demo group's profile chooses it)")
            say(
                f"stand-in on {standin.base_url} (voice: {standin.voice.engine}); "
                f"provisioning server on {server.base_url}; model {profile['model']}, "
                f"transcription {DEFAULT_TRANSCRIPTION_MODEL}"
            )
            token = server.store.create_token("default", label="demo")
            identity = await enroll(server.base_url, token, work / "state", "demo-device")
            say(f"enrolled as {identity.device_id} (Ed25519 key in {work / 'state'})")
            config = Config(
                device=DeviceConfig(name="demo", state_dir=work / "state", board="mock"),
                audio=AudioConfig(backend="wav", wav_output=out_dir / "answer.wav"),
                activation=ActivationConfig(hold_s=0.3),
            )
            source = WavSource(None, AudioFormat(config.audio.capture_rate))
            sink = WavSink(out_dir / "answer.wav", AudioFormat(config.audio.playback_rate))
            provisioning = ProvisioningKeySource(identity)
            keys = CachedKeySource(provisioning)

            def on_state(state: m.State) -> None:
                p = PATTERNS[state]
                say(f"state {state.name:<10} LED {p.kind.value} rgb{p.color}")

            # fake hardware: gpiozero's own mock pins (PWM-capable, for the LED)
            Device.pin_factory = MockFactory(pin_class=MockPWMPin)
            app = App(
                config,
                source=source,
                sink=sink,
                keys=keys,
                tools=builtin_registry(),
                on_state=on_state,
                frontend=make_frontend(config, source.format),
                relay=provisioning,
            )
            stop = asyncio.Event()
            runner = asyncio.create_task(app.run(stop))
            await asyncio.sleep(0.05)
            leds, button = make_gpio(config, app.post)
            app.leds = leds
            pin = button.button.pin

            def warnings_only(record: logging.LogRecord) -> bool:
                return record.levelno >= logging.WARNING

            chatty = [
                logging.getLogger(f"appliance.{name}")
                for name in ("app", "session_runner", "telemetry", "micpump")
            ]
            for logger in chatty:
                logger.addFilter(warnings_only)
            try:
                say("turn 1: hold the button and ask (push-to-talk)")
                pin.drive_low()
                await wait_state(app, m.State.LISTENING, 10)
                assert app.session is not None
                (connecting, _), (listening, _) = app.stats.states[:2]
                connect_s = listening - connecting  # what the user waits for, all included
                say(
                    f"cold connect (key fetch → session ready) "
                    f"{app.session.timings['ready_s'] * 1000:.0f} ms, call {app.session.call_id}"
                )
                source.queue(asset("question-moon.wav"))
                while source.playing:  # noqa: ASYNC110  # the fake mic has no "done" event
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.3)
                pin.drive_high()
                turn_ends = [time.monotonic()]
                await wait_state(app, m.State.SPEAKING, 15)
                await wait_state(app, m.State.IDLE, 30)
                say(f"turn 1 answered {app.stats.last_turn_latency_ms:.0f} ms after release")
                say("turn 2: tap the button and ask (hands-free; the model calls a tool)")
                pin.drive_low()
                await asyncio.sleep(0.1)
                pin.drive_high()
                await wait_state(app, m.State.LISTENING, 10)
                source.queue(asset("question-time.wav"))
                while playing(source) and not speaking(app):  # noqa: ASYNC110  # no "done" event
                    await asyncio.sleep(0.01)
                turn_ends.append(time.monotonic())
                await wait_state(app, m.State.SPEAKING, 20)
                await wait_state(app, m.State.IDLE, 30)
                say(f"turn 2 answered {app.stats.last_turn_latency_ms:.0f} ms after end of speech")
                if isinstance(app.session, LiveSession) and app.session.usage:
                    # GPT-Live bills active and standby (paused) seconds apart
                    say(f"Live session usage so far: {app.session.usage}")
            finally:
                for logger in chatty:  # the demo may run inside another program
                    logger.removeFilter(warnings_only)
                stop.set()
                await runner
                if button is not None:
                    button.close()
        report = Report(app.stats, played=sink.samples(), connect_s=connect_s)
        spoke = [t for t, state in app.stats.states if state is m.State.SPEAKING]
        report.turn_s = [start - end for start, end in zip(spoke, turn_ends, strict=False)]
        for call in standin.finished_calls + list(standin.calls.values()):
            report.spoken.extend(call.track.sent)
            report.client_events.extend(call.received)
            report.server_events.extend(call.sent)
        for live in standin.live.finished + list(standin.live.open.values()):
            report.spoken.extend(live.track.sent)
            report.client_events.extend(live.received)
            report.server_events.extend(live.sent)
    for role, text in app.stats.transcripts:
        say(f"transcript {role}: {text}")
    say(f"tool calls: {app.stats.tool_calls}; turns answered: {app.stats.turns}")
    report.ok = app.stats.turns >= 2 and app.stats.tool_calls >= 1
    say(f"speaker output written to {out_dir / 'answer.wav'}")
    say("demo OK" if report.ok else "demo FAILED")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance_dev.demo", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo-out"))
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument(
        "--backend",
        choices=("realtime", "live"),
        default="realtime",
        help="the demo group's backend: the Realtime API (default) or GPT-Live",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="appliance-demo-") as work:
        report = asyncio.run(run_demo(args.out, Path(work), backend=args.backend))
        return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
