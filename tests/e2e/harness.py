"""Run the whole device (``App``) against a stand-in, with the mic fed from WAV files.

Used by the fault scenarios: they drive the button by posting the machine events gpiozero
would produce, and read what happened from the stand-in's calls and the app's stats.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from appliance import machine as m
from appliance.app import App
from appliance.audio.base import AudioFormat, AudioSink, AudioSource
from appliance.audio.wav import WavSink, WavSource
from appliance.config import (
    ActivationConfig,
    AudioConfig,
    Config,
    DeviceConfig,
    RealtimeConfig,
    SessionConfig,
)
from appliance.realtime.keys import CachedKeySource, EphemeralKey, KeySource
from appliance.realtime.tools import ToolRegistry, builtin_registry
from appliance.wiring import make_frontend
from appliance_dev.demo import asset
from standin import StandIn
from tests.standin.conftest import mint
from tests.waiting import Changes


class StandInKeys:
    """A key source that mints a fresh key from the stand-in for every session (what the
    provisioning server does, minus the server)."""

    def __init__(self, standin: StandIn, session: dict[str, object] | None = None) -> None:
        self.standin = standin
        self.session = session
        self.minted = 0
        self.asked = Changes()
        """Notified at every key asked for (every session the device tries to open)."""

    async def get_key(self) -> EphemeralKey:
        self.minted += 1
        self.asked.notify()
        value = await mint(self.standin.base_url, self.session)
        return EphemeralKey(value, time.time() + 600, self.standin.base_url)


@dataclass
class Device:
    app: App
    source: Any
    sink: Any
    keys: StandInKeys
    changed: Changes
    """Notified by the app's ``on_state`` callback at every state change."""

    def states(self) -> list[m.State]:
        return [state for _, state in self.app.stats.states]

    async def _until(self, done: Callable[[], bool], what: str, within: float) -> None:
        """Wait (on state changes, not on a clock) until ``done()``."""
        try:
            await self.changed.until(done, what, within)
        except AssertionError as exc:
            seen = [state.name for state in self.states()]
            raise AssertionError(f"{exc}; states {seen}") from None

    async def wait(self, wanted: m.State, within: float = 20.0) -> float:
        """Wait for ``wanted``; returns when it was entered (monotonic)."""
        await self._until(lambda: self.app.snapshot.state is wanted, f"no {wanted.name}", within)
        return self.app.stats.states[-1][0]

    async def seen(self, wanted: m.State, since: int = 0, within: float = 20.0) -> int:
        """Wait until ``wanted`` has been entered at or after state change number ``since``
        (however briefly); returns its number."""

        def found() -> bool:
            return wanted in self.states()[since:]

        await self._until(found, f"no {wanted.name} after change {since}", within)
        return self.states().index(wanted, since)

    async def push_to_talk(self, question: str = "question-moon.wav") -> None:
        """Hold the button, say ``question``, release."""
        self.app.post(m.ButtonPressed())
        self.app.post(m.ButtonHeld())
        await self.wait(m.State.LISTENING)
        self.source.queue(asset(question))
        await self.source.until_played()
        # ten frames of trailing silence on the mic's own clock carry the question's end through
        await self.source.until_read(self.source.frames_read + 10)
        self.app.post(m.ButtonReleased())


def client_events(standin: StandIn) -> list[dict[str, Any]]:
    calls = standin.finished_calls + list(standin.calls.values())
    return [event for call in calls for event in call.received]


@asynccontextmanager
async def device(
    standin: StandIn,
    tmp: Path,
    audio: AudioConfig | None = None,
    source: AudioSource | None = None,
    sink: AudioSink | None = None,
    activation: ActivationConfig | None = None,
    camera: str = "",
    realtime: RealtimeConfig | None = None,
    tools: ToolRegistry | None = None,
    cache_keys: bool = False,
    **session: Any,
) -> AsyncIterator[Device]:
    """The device on WAV files (or ``source``/``sink``), with its real audio front end.
    ``cache_keys``: reuse a key for several calls, as the daemon does."""
    config = Config(
        device=DeviceConfig(name="test", state_dir=tmp, board="mock", camera=camera),
        audio=audio or AudioConfig(backend="wav"),
        activation=activation or ActivationConfig(),
        realtime=realtime or RealtimeConfig(),
        session=replace(SessionConfig(), **session),
    )
    source = source or WavSource(None, AudioFormat(config.audio.capture_rate))
    sink = sink or WavSink(None, AudioFormat(config.audio.playback_rate))
    # the key carries the session type, as the provisioning server's group profile does
    keys = StandInKeys(
        standin,
        {"type": "transcription"} if realtime and realtime.mode == "transcription" else None,
    )
    changed = Changes()
    used: KeySource = CachedKeySource(keys) if cache_keys else keys
    app = App(
        config,
        source=source,
        sink=sink,
        keys=used,
        tools=tools or builtin_registry(),
        frontend=make_frontend(config, source.format),
        on_state=changed.notify,
    )
    stop = asyncio.Event()
    runner = asyncio.create_task(app.run(stop))
    try:
        yield Device(app, source, sink, keys, changed)
    finally:
        stop.set()
        await runner
