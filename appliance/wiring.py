"""Building the parts the config asks for: audio, front end, GPIO, the machine, the tools."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from appliance import machine as m
from appliance.audio.base import AudioFormat, AudioSink, AudioSource
from appliance.audio.frontend import FrontEnd
from appliance.camera import Camera, data_url, jpeg_budget, jpeg_that_fits
from appliance.config import Config
from appliance.devicetools import Timers, Volume, register_device_tools
from appliance.errors import ConfigError
from appliance.leds import LedDriver
from appliance.realtime import messages as msg
from appliance.realtime.live import LiveSession
from appliance.realtime.tools import Tool, ToolRegistry
from appliance.realtime.webrtc import RealtimeSession

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
