"""Building the parts the config asks for: audio, front end, GPIO, the machine, the parts the
dispatcher drives (session runner, mic pump, announcements) and the device's tools."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from appliance import announce
from appliance import machine as m
from appliance.audio.base import AudioFormat, AudioSink, AudioSource
from appliance.audio.frontend import DSP_FORMAT, FrontEnd
from appliance.camera import Camera, data_url, jpeg_budget, jpeg_that_fits, make_camera
from appliance.config import Config
from appliance.devicetools import GainSink, Timers, Volume, register_device_tools
from appliance.errors import ConfigError
from appliance.leds import LedDriver
from appliance.micpump import AudioDevices, GuardedSink, MicPump
from appliance.realtime import messages as msg
from appliance.realtime.keys import KeySource
from appliance.realtime.live import LiveRelay, LiveSession
from appliance.realtime.tools import Tool, ToolRegistry
from appliance.realtime.webrtc import RealtimeSession
from appliance.session_runner import SessionRunner
from appliance.tasks import Spawn
from appliance.telemetry import Stats

log = logging.getLogger(__name__)


def make_audio(config: Config) -> tuple[AudioSource, AudioSink]:
    """The mic and speaker the config asks for (``AudioDeviceError`` if they are missing)."""
    cap = AudioFormat(rate=config.audio.capture_rate)
    play = AudioFormat(rate=config.audio.playback_rate)
    if config.audio.backend == "wav":
        from appliance.audio.wav import WavSink, WavSource

        return WavSource(config.audio.wav_input, cap), WavSink(config.audio.wav_output, play)
    from appliance.audio.alsa import AlsaSink, AlsaSource

    return (
        AlsaSource(config.audio.input_device, cap),
        AlsaSink(config.audio.output_device, play),
    )


def make_frontend(config: Config, capture: AudioFormat) -> FrontEnd:
    """Echo suppression (``audio.aec``), the speech gate and the wake word, as configured."""
    return FrontEnd(config, capture)


def make_machine(config: Config, frontend: FrontEnd | None) -> m.Machine:
    """The machine with the config's timers, turn policy and full duplex setting."""
    s = config.session
    timings = m.Timings(
        connect_s=s.connect_s,
        no_speech_s=s.no_speech_s,
        max_turn_s=s.max_turn_s,
        reply_s=s.reply_s,
        session_idle_s=s.idle_close_s,
    )
    dictation = config.realtime.mode == "transcription"
    return m.Machine(
        timings,
        m.Policy.DICTATION if dictation else m.Policy.CONVERSATION,
        # the mic stays open behind a converged echo canceller only (the model must not
        # hear itself), so the service's VAD hears a voice barge-in
        keep_listening=frontend is not None and config.activation.barge_in,
    )


@dataclass(frozen=True)
class Parts:
    """What the dispatcher drives."""

    devices: AudioDevices
    speaker: GuardedSink
    """The speaker as the device gave it, guarded (recovered when it vanishes)."""
    sink: AudioSink
    """What plays: the guarded speaker behind the front end's tap and the volume."""
    sessions: SessionRunner
    pump: MicPump
    announcements: announce.Announcements
    timers: Timers


def make_parts(
    config: Config,
    *,
    source: AudioSource,
    sink: AudioSink,
    keys: KeySource,
    tools: ToolRegistry,
    frontend: FrontEnd | None,
    relay: LiveRelay | None,
    post: Callable[[m.Event], None],
    state: Callable[[], m.State],
    stats: Stats,
    spawn: Spawn,
    status: Callable[[], dict[str, Any]],
) -> Parts:
    """Connect the parts: events go to ``post``, counters to ``stats``; ``state`` is the
    machine's current state and ``status`` the device's health (for the status tool)."""
    devices = AudioDevices(post, stats)
    volume = Volume(config.device.state_dir / "volume.json")
    speaker = GuardedSink(sink, devices, spawn)
    tapped = frontend.tap(speaker) if frontend is not None else speaker
    playing = GainSink(tapped, volume)  # the tap hears the volume too
    mic_format = DSP_FORMAT if frontend is not None else source.format
    sessions = SessionRunner(
        config,
        keys=keys,
        tools=tools,
        relay=relay,
        sink=playing,
        mic_format=mic_format,
        post=post,
        spawn=spawn,
        stats=stats,
    )
    pump = MicPump(
        source,
        frontend,
        devices,
        post,
        stats,
        state=state,
        uplink=sessions.uplink,
        mic_format=mic_format,
        barge_in=config.activation.barge_in,
    )
    announcements = announce.Announcements(post)
    timers = Timers(lambda label: announcements.add("timer", announce.timer_up(label), state()))
    register_tools(
        config,
        tools,
        volume=volume,
        timers=timers,
        status=status,
        camera=make_camera(config.device.camera),
        session=lambda: sessions.session,
    )
    return Parts(devices, speaker, playing, sessions, pump, announcements, timers)


def make_gpio(config: Config, post: Callable[[m.Event], None]) -> tuple[LedDriver | None, Any]:
    """LEDs and the button of the configured board, through gpiozero's pin factory
    (``GPIOZERO_PIN_FACTORY``: lgpio on a Pi, ``mock`` for fakes). Returns (leds, button);
    the button's events go to ``post``."""
    from gpiozero import Button
    from gpiozero.exc import GPIOZeroError

    from appliance.boards import PROFILES, make_leds
    from appliance.button import ButtonEvents

    board = PROFILES[config.device.board]
    leds: LedDriver | None = None
    button: Any = None
    try:
        leds = make_leds(board)
        if config.activation.button and board.button_pin is not None:
            gz = Button(board.button_pin, hold_time=config.activation.hold_s)
            mute_s = config.activation.mute_s or None
            button = ButtonEvents(gz, asyncio.get_running_loop(), post, mute_s)
    except GPIOZeroError as exc:  # restarting will not free a pin: exit 78, named
        raise ConfigError(
            "device.board", f"GPIO setup failed on board {board.name}: {exc}"
        ) from exc
    return leds, button


def register_tools(
    config: Config,
    tools: ToolRegistry,
    *,
    volume: Volume,
    timers: Timers,
    status: Callable[[], dict[str, Any]],
    camera: Camera | None,
    session: Callable[[], RealtimeSession | None],
) -> None:
    """The device's own tools (volume, timers, status; ``look`` with a camera), when
    ``realtime.tools`` is on; ``session`` gives the open session, if any."""
    if not config.realtime.tools:
        return
    register_device_tools(tools, volume=volume, timers=timers, status=status)
    if camera is None:
        return

    async def look() -> dict[str, Any]:
        current = session()
        if current is None:
            raise RuntimeError("no open session or no camera")
        rgb = await asyncio.to_thread(camera.capture)
        budget = jpeg_budget(current.max_message_size)
        jpeg, width, height = await asyncio.to_thread(jpeg_that_fits, rgb, budget)
        if isinstance(current, LiveSession):
            current.send_image(data_url(jpeg))
        else:
            current.send(msg.user_image(data_url(jpeg)))
        log.info("photo sent: %dx%d, %d bytes", width, height, len(jpeg))
        return {"photo": f"{width}x{height} JPEG added to the conversation"}

    tools.register(
        Tool(
            "look",
            "Take a photo with the device's camera to see what is in front of it; "
            "the photo is added to the conversation.",
            look,
            timeout_s=15.0,
        )
    )
