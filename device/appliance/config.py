"""Settings: frozen, documented dataclasses. ``load(path, environ)`` reads the TOML file, then
``APPLIANCE_<SECTION>_<KEY>`` environment overrides. Any bad value raises
``ConfigError("section.key", why)``; the CLI turns that into exit code 78.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from appliance.errors import ConfigError
from appliance_common.models import DEFAULT_TRANSCRIPTION_MODEL

DEFAULT_PATH = Path("/etc/appliance/appliance.toml")


def _choice(*values: str) -> dict[str, Any]:
    return {"choices": values}


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    name: str = "appliance"
    """A human name for this device (shown on the dashboard)."""
    state_dir: Path = Path("/var/lib/appliance")
    """Where the device key (``device.key``) and identity (``device.json``) live."""
    board: str = field(
        default="generic",
        metadata=_choice(
            "generic", "generic-rgb", "respeaker-2mic", "respeaker-4mic", "aiy-voice", "mock"
        ),
    )
    """Hardware profile (see ``hw/``): pins for the button and LEDs."""
    camera: str = ""
    """``picamera`` (Pi camera via picamera2), a path to an image file, or empty (no camera:
    the model gets no ``look`` tool)."""


@dataclass(frozen=True, slots=True)
class ProvisioningConfig:
    server: str = ""
    """Base URL of the provisioning server, e.g. ``https://prov.example.com``."""
    timeout_s: float = 10.0
    """HTTP timeout for provisioning requests."""
    heartbeat_s: float = 60.0
    """How often the device reports its health to the server (0: never); the console counts a
    device offline after 2.5 intervals without one."""
    report_transcripts: bool = False
    """Include a short summary of the last turn's words in the heartbeat. Off by default; the
    server also drops them unless the device's group opts in (docs/console.md)."""


@dataclass(frozen=True, slots=True)
class RealtimeConfig:
    """The session as this device wants it. The model is not among these: the provisioning
    server picks it per group and mints it into the key (docs/models.md); a device that
    named one in ``session.update`` would have the whole update refused once its group
    moved to another model."""

    voice: str = field(
        default="marin",
        metadata=_choice(
            "alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"
        ),
    )
    """The model's voice (cannot change once it has spoken in a session)."""
    instructions: str = ""
    """Extra instructions sent in ``session.update`` (empty: keep the fleet profile's)."""
    turn_detection: str = field(
        default="server_vad", metadata=_choice("server_vad", "semantic_vad")
    )
    """How the service decides a hands-free turn ended."""
    vad_threshold: float = 0.5
    """server_vad threshold, 0–1: higher needs louder speech."""
    silence_ms: int = 500
    """server_vad silence that ends a turn, in ms."""
    prefix_padding_ms: int = 300
    """Audio kept before detected speech, in ms."""
    tools: bool = True
    """Offer the built-in tools (time, …) to the model."""
    mode: str = field(default="conversation", metadata=_choice("conversation", "transcription"))
    """``conversation`` (the model answers) or ``transcription`` (a dictation appliance: the
    device transcribes what it hears, logs it and posts it to ``transcript_url``)."""
    transcript_url: str = ""
    """With ``mode = "transcription"``: POST each transcript here as JSON (empty: log only)."""
    transcription_model: str = DEFAULT_TRANSCRIPTION_MODEL
    """Transcribe the user's speech with this model (journal, heartbeat, carry-over after a
    reconnect); empty disables input transcription. A group profile on the server that
    names a transcription model wins over this one."""
    eagerness: str = field(default="auto", metadata=_choice("auto", "low", "medium", "high"))
    """With ``turn_detection = "semantic_vad"``: how soon the model takes its turn (``low``
    waits up to 8 s for the user to go on, ``medium``/``auto`` 4 s, ``high`` 2 s)."""
    idle_timeout_ms: int = 0
    """With ``server_vad``: after a reply has played, if the user says nothing for this long
    (5000–30000 ms) the model speaks up on its own ("are you still there?") and the device
    listens for the answer; 0: never."""
    noise_reduction: str = field(
        default="board", metadata=_choice("board", "near_field", "far_field", "off")
    )
    """The service's input noise reduction: ``near_field`` (a mic close to the mouth),
    ``far_field`` (a mic across the room, e.g. a ReSpeaker array), ``off``, or ``board``:
    what ``device.board``'s profile says."""
    reasoning_effort: str = field(
        default="", metadata=_choice("", "minimal", "low", "medium", "high", "xhigh")
    )
    """Reasoning models (``gpt-realtime-2`` and later) only: how hard the model thinks before
    answering; empty keeps the fleet profile's (or the model's default, ``low``). Other
    models refuse the setting."""
    parallel_tool_calls: bool | None = None
    """Reasoning models only: may the model call several tools in one response (the device
    runs them together)? Unset keeps the fleet profile's."""
    max_output_tokens: int = 0
    """Cap on one reply, tool calls included (1–4096 tokens); 0 keeps the profile's (no cap)."""
    truncation: str = field(default="", metadata=_choice("", "auto", "disabled", "retention_ratio"))
    """What the service does when the conversation outgrows the context: ``auto`` (drop the
    oldest items), ``disabled`` (fail instead), ``retention_ratio`` (drop down to
    ``retention_ratio`` of the limit at once, which keeps the prompt cache longer); empty
    keeps the profile's."""
    retention_ratio: float = 0.8
    """With ``truncation = "retention_ratio"``: the fraction of the conversation kept, 0–1."""
    truncation_token_limit: int = 0
    """With ``truncation = "retention_ratio"``: truncate once the conversation after the
    instructions exceeds this many tokens (0: the model's own limit)."""

    def __post_init__(self) -> None:
        if self.idle_timeout_ms and not 5000 <= self.idle_timeout_ms <= 30000:
            raise ConfigError("realtime.idle_timeout_ms", "must be 0 or 5000–30000")
        if self.idle_timeout_ms and self.turn_detection != "server_vad":
            raise ConfigError("realtime.idle_timeout_ms", "works with server_vad only")
        if self.max_output_tokens > 4096:
            raise ConfigError("realtime.max_output_tokens", "must be 0 (no cap) or 1–4096")
        if not 0.0 <= self.retention_ratio <= 1.0:
            raise ConfigError("realtime.retention_ratio", "must be between 0 and 1")


@dataclass(frozen=True, slots=True)
class AudioConfig:
    backend: str = field(default="alsa", metadata=_choice("alsa", "wav"))
    """``alsa`` (PyAudio/PortAudio) on a Pi, ``wav`` to use files (demo, tests)."""
    input_device: str = ""
    """ALSA capture device name or index (empty: default)."""
    output_device: str = ""
    """ALSA playback device name or index (empty: default)."""
    capture_rate: int = field(default=16000, metadata=_choice("16000", "48000"))
    """Mic sample rate in Hz."""
    playback_rate: int = field(default=48000, metadata=_choice("16000", "24000", "48000"))
    """Speaker sample rate in Hz."""
    wav_input: Path | None = None
    """With ``backend = "wav"``: the WAV file played as the microphone."""
    wav_output: Path | None = None
    """With ``backend = "wav"``: where the speaker output is written."""
    aec: str = field(default="speex", metadata=_choice("speex", "webrtc", "half-duplex", "off"))
    """Echo suppression engine: ``speex`` (libspeexdsp AEC + residual-echo suppressor),
    ``webrtc`` (WebRTC AEC3 via pywebrtc-audio), ``half-duplex`` (mute the mic while the
    speaker plays), ``off``. Falls back to ``half-duplex`` when the engine cannot load."""
    aec_tail_ms: int = 300
    """Echo tail the canceller models, in ms: bulk delay plus the room reverberation it
    can remove (300: delays up to ~120 ms in reverberant rooms; docs/audio.md)."""
    aec_delay_ms: int = 0
    """Known extra delay between a playback write and its echo in the mic, in ms (0:
    measured by cross-correlating the mic with the speaker's signal, docs/audio.md)."""


@dataclass(frozen=True, slots=True)
class ActivationConfig:
    button: bool = True
    """Use the board's push button (hold = push-to-talk, tap = hands-free)."""
    hold_s: float = 0.4
    """How long a press must last to count as hold-to-talk, in seconds."""
    mute_s: float = 3.0
    """Holding the button this long toggles the privacy mute (0 disables it)."""
    wake_word: str = ""
    """Wake-word model: ``alexa`` (recommended: the most robust across voices and noise,
    docs/audio.md), ``okay_nabu``, ``hey_jarvis``, ``hey_mycroft``; empty disables it."""
    wake_threshold: float = 0.0
    """Detection threshold 0–1 for the wake word (0: from the model's cut-off and
    ``wake_sensitivity``); a non-zero value overrides ``wake_sensitivity``."""
    wake_sensitivity: str = field(
        default="medium", metadata=_choice("low", "medium", "high", "max")
    )
    """How readily the wake word fires: ``medium`` is the model's own cut-off; ``low`` halves
    its margin below certainty (fewer false wakes, more misses), ``high`` doubles it and
    ``max`` triples it (``okay_nabu``: threshold 0.925 / 0.85 / 0.70 / 0.55; docs/audio.md)."""
    wake_refractory_s: float = 2.0
    """After a detection, ignore the wake word for this long."""
    wake_model_path: Path | None = None
    """A custom microWakeWord model (``.json`` next to its ``.tflite``), instead of a built-in."""
    vad_engine: str = field(default="webrtc", metadata=_choice("webrtc", "silero"))
    """Local speech gate: ``webrtc`` (webrtcvad, cheap) or ``silero`` (noisy rooms; needs
    the ``wake`` extra)."""
    vad_aggressiveness: int = field(default=2, metadata=_choice("0", "1", "2", "3"))
    """webrtcvad mode for the local speech gate (0 least, 3 most aggressive)."""
    barge_in: bool = True
    """Let the user's voice (heard after echo cancellation) interrupt the reply."""


@dataclass(frozen=True, slots=True)
class SessionConfig:
    connect_s: float = 8.0
    """Deadline to connect and configure a session."""
    no_speech_s: float = 8.0
    """Hands-free turn ends if the user says nothing for this long."""
    max_turn_s: float = 30.0
    """Cap on one user turn."""
    reply_s: float = 20.0
    """Deadline for the model to start or go on answering."""
    idle_close_s: float = 30.0
    """Close a warm session after this long without a turn (cost control)."""
    liveness_s: float = 5.0
    """A session with no audio and no events from the service for this long is dead:
    reconnect (0 disables the check)."""
    max_age_s: float = 3300.0
    """Roll a session over (between turns) once it is this old; the service ends sessions
    at 60 minutes."""
    carry_over_s: float = 300.0
    """A new session re-seeds the conversation if the last turn was within this many
    seconds (always after an unplanned reconnect)."""
    carry_items: int = 8
    """How many recent transcript items are carried over."""
    announce_reconnect: bool = True
    """After reconnecting mid-conversation, say so (an out-of-band response)."""


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = field(default="INFO", metadata=_choice("DEBUG", "INFO", "WARNING", "ERROR"))
    """Log level."""
    transcripts: str = field(default="INFO", metadata=_choice("DEBUG", "INFO", "OFF"))
    """Level at which user/assistant transcripts are logged (``OFF``: never)."""


@dataclass(frozen=True, slots=True)
class Config:
    device: DeviceConfig = DeviceConfig()
    provisioning: ProvisioningConfig = ProvisioningConfig()
    realtime: RealtimeConfig = RealtimeConfig()
    audio: AudioConfig = AudioConfig()
    activation: ActivationConfig = ActivationConfig()
    session: SessionConfig = SessionConfig()
    logging: LoggingConfig = LoggingConfig()


ENV_PREFIX = "APPLIANCE_"
MAY_BE_ZERO = frozenset(
    {
        "provisioning.heartbeat_s",
        "activation.mute_s",
        "activation.wake_refractory_s",
        "session.liveness_s",
        "session.carry_over_s",
    }
)
"""Durations (``*_s``) whose documentation gives 0 a meaning; every other one must be > 0."""


def _convert(key: str, hint: Any, value: Any) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(hint) if a is not type(None)]
        if value in (None, "") and type(None) in get_args(hint):
            return None
        return _convert(key, options[0], value)
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if hint is Path:
            if not isinstance(value, str | Path):
                raise ValueError
            return Path(value)
        if hint is str:
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(
            key, f"expected {getattr(hint, '__name__', hint)}, got {value!r}"
        ) from None
    raise ConfigError(key, f"unsupported type {hint}")


def _section(name: str, cls: type[Any], raw: Mapping[str, Any]) -> Any:
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            raise ConfigError(f"{name}.{key}", f"unknown setting (known: {', '.join(fields)})")
        converted = _convert(f"{name}.{key}", hints[key], value)
        choices = fields[key].metadata.get("choices")
        if choices and str(converted) not in choices:
            raise ConfigError(
                f"{name}.{key}", f"must be one of {', '.join(choices)}, not {converted!r}"
            )
        if isinstance(converted, float) and not math.isfinite(converted):
            raise ConfigError(f"{name}.{key}", f"must be a finite number, not {converted!r}")
        if isinstance(converted, int | float) and not isinstance(converted, bool) and converted < 0:
            raise ConfigError(f"{name}.{key}", "must not be negative")
        if key.endswith("_s") and converted == 0 and f"{name}.{key}" not in MAY_BE_ZERO:
            raise ConfigError(f"{name}.{key}", "a duration must be more than 0 seconds")
        values[key] = converted
    return cls(**values)


def load(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (if it exists, or if given explicitly), then apply env overrides."""
    environ = os.environ if environ is None else environ
    explicit = path is not None or ENV_PREFIX + "CONFIG" in environ
    path = path or Path(environ.get(ENV_PREFIX + "CONFIG", str(DEFAULT_PATH)))
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    elif explicit:
        raise ConfigError(str(path), "config file not found")
    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    hints = get_type_hints(Config)
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "CONFIG":
            continue
        rest = key[len(ENV_PREFIX) :].lower()
        section = next((s for s in sections if rest.startswith(s + "_")), None)
        if section is None:
            continue  # APPLIANCE_* variables of other tools (e.g. APPLIANCE_TEST_PG_URL)
        data.setdefault(section, {})[rest[len(section) + 1 :]] = value
    parts: dict[str, Any] = {}
    for name, raw in data.items():
        if name not in sections:
            raise ConfigError(name, f"unknown section (known: {', '.join(sections)})")
        if not isinstance(raw, dict):
            raise ConfigError(name, "must be a table")
        parts[name] = _section(name, hints[name], raw)
    config = Config(**parts)
    _check_activation(config)
    return config


def _check_activation(config: Config) -> None:
    """A device nobody can start a conversation with is a configuration error."""
    from appliance.boards import PROFILES

    board = PROFILES.get(config.device.board)
    act = config.activation
    has_button = act.button and board is not None and board.button_pin is not None
    if not has_button and not act.wake_word and act.wake_model_path is None:
        why = (
            f"board {config.device.board!r} has no button"
            if act.button
            else "the button is off (activation.button = false)"
        )
        raise ConfigError(
            "activation.wake_word", f"{why} and no wake word is set: set one (e.g. okay_nabu)"
        )
