"""The device's decisions, as a pure function: ``step(snapshot, event) -> (snapshot, effects)``.

Functional core: nothing here does I/O, reads a clock or touches asyncio. ``appliance.app`` feeds
events in (button, wake word, data-channel events, timers, tool results, errors) and performs
the effects that come out. Events are past-tense facts; effects are imperative verbs.

Timers are tied to the snapshot's ``epoch``: every state change bumps the epoch, so a timer
started in an earlier state carries a stale epoch and its ``TimerFired`` changes nothing.

VOCABULARY ONLY IN THIS REVISION: ``step`` is implemented by the device-core work (see tests).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class State(enum.Enum):
    IDLE = "idle"
    """Waiting for the button or the wake word. A warm session may still be open."""
    CONNECTING = "connecting"
    """Fetching a key / opening the call / waiting for ``session.updated``."""
    LISTENING = "listening"
    """Uplink open: the user is talking (or about to)."""
    THINKING = "thinking"
    """User turn ended; waiting for the model (or a tool) to answer."""
    SPEAKING = "speaking"
    """The model's audio is playing."""
    ERROR = "error"
    """A fault the user should see (shown for a while, then back to IDLE)."""
    OFFLINE = "offline"
    """The network, provisioning server or Realtime service is unreachable; retrying."""
    MUTED = "muted"
    """Privacy mute: no audio leaves the device."""


class Mode(enum.Enum):
    """How the current user turn ends."""

    NONE = "none"
    PRESSED = "pressed"
    """Button is down; not yet known whether it is a tap or a hold."""
    PUSH_TO_TALK = "push_to_talk"
    """Held: releasing the button ends the turn (commit + response)."""
    HANDS_FREE = "hands_free"
    """Tap or wake word: server VAD ends the turn."""


class TimerName(enum.Enum):
    CONNECT = "connect"
    """Deadline for CONNECTING."""
    NO_SPEECH = "no_speech"
    """Hands-free turn opened but the user never spoke."""
    MAX_TURN = "max_turn"
    """Cap on the length of a user turn."""
    REPLY = "reply"
    """Deadline for the model to start answering (THINKING) or to finish (SPEAKING)."""
    ERROR_HOLD = "error_hold"
    """How long ERROR is shown before going back to IDLE."""
    SESSION_IDLE = "session_idle"
    """Close a warm session after this long in IDLE (cost control)."""
    RETRY = "retry"
    """OFFLINE: when to try again."""


# ---------------------------------------------------------------- events (past-tense facts)


@dataclass(frozen=True, slots=True)
class ButtonPressed:
    pass


@dataclass(frozen=True, slots=True)
class ButtonHeld:
    """The button has been down for ``activation.hold_seconds``: push-to-talk."""


@dataclass(frozen=True, slots=True)
class ButtonReleased:
    pass


@dataclass(frozen=True, slots=True)
class WakeDetected:
    model: str


@dataclass(frozen=True, slots=True)
class MuteToggled:
    pass


@dataclass(frozen=True, slots=True)
class SessionUp:
    """The call is connected and configured (``session.updated`` or the 5 s gate)."""


@dataclass(frozen=True, slots=True)
class SessionFailed:
    """Opening a session failed. ``offline`` when the network/server is unreachable
    (retry later), otherwise a hard error (e.g. revoked device)."""

    reason: str
    offline: bool = False
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class SessionLost:
    """An open session died (peer closed, liveness lost, ``session_expired``)."""

    reason: str


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """``input_audio_buffer.speech_started`` (server VAD) or local barge-in detection."""


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    """``input_audio_buffer.speech_stopped``."""


@dataclass(frozen=True, slots=True)
class ResponseStarted:
    """``response.created``."""

    response_id: str


@dataclass(frozen=True, slots=True)
class ReplyAudioStarted:
    """``output_audio_buffer.started``: the model's voice is on its way."""

    response_id: str


@dataclass(frozen=True, slots=True)
class ReplyAudioStopped:
    """``output_audio_buffer.stopped`` or ``.cleared``: no more model audio for now."""

    response_id: str


@dataclass(frozen=True, slots=True)
class ResponseDone:
    """``response.done``; ``status`` is completed/cancelled/failed/incomplete."""

    response_id: str
    status: str
    had_audio: bool = False


@dataclass(frozen=True, slots=True)
class ToolCallRequested:
    """A completed ``function_call`` item arrived."""

    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolFinished:
    call_id: str
    output: str


@dataclass(frozen=True, slots=True)
class TimerFired:
    name: TimerName
    epoch: int


Event = (
    ButtonPressed
    | ButtonHeld
    | ButtonReleased
    | WakeDetected
    | MuteToggled
    | SessionUp
    | SessionFailed
    | SessionLost
    | SpeechStarted
    | SpeechStopped
    | ResponseStarted
    | ReplyAudioStarted
    | ReplyAudioStopped
    | ResponseDone
    | ToolCallRequested
    | ToolFinished
    | TimerFired
)

# ---------------------------------------------------------------- effects (imperative verbs)


@dataclass(frozen=True, slots=True)
class OpenSession:
    pass


@dataclass(frozen=True, slots=True)
class CloseSession:
    pass


@dataclass(frozen=True, slots=True)
class OpenUplink:
    """Start sending mic frames on the RTP track."""


@dataclass(frozen=True, slots=True)
class CloseUplink:
    """Stop sending mic frames (send silence / disable the track)."""


@dataclass(frozen=True, slots=True)
class SetTurnDetection:
    """``session.update`` with server VAD (hands-free) or ``null`` (push-to-talk)."""

    server_vad: bool


@dataclass(frozen=True, slots=True)
class CommitInput:
    """``input_audio_buffer.commit``."""


@dataclass(frozen=True, slots=True)
class RequestResponse:
    """``response.create`` (held back by the session while a response is active)."""


@dataclass(frozen=True, slots=True)
class CancelReply:
    """``response.cancel`` + ``output_audio_buffer.clear`` (+ truncate), and flush playback."""


@dataclass(frozen=True, slots=True)
class RunTool:
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class SendToolOutput:
    """``conversation.item.create`` with a ``function_call_output``."""

    call_id: str
    output: str


@dataclass(frozen=True, slots=True)
class PlayCue:
    """Play an earcon: ``wake``, ``end``, ``error``, ``offline``."""

    name: str


@dataclass(frozen=True, slots=True)
class StartTimer:
    name: TimerName
    seconds: float
    epoch: int


Effect = (
    OpenSession
    | CloseSession
    | OpenUplink
    | CloseUplink
    | SetTurnDetection
    | CommitInput
    | RequestResponse
    | CancelReply
    | RunTool
    | SendToolOutput
    | PlayCue
    | StartTimer
)


@dataclass(frozen=True, slots=True)
class Timings:
    """Timer lengths the machine uses (from config)."""

    connect_s: float = 8.0
    no_speech_s: float = 8.0
    max_turn_s: float = 30.0
    reply_s: float = 15.0
    error_hold_s: float = 3.0
    session_idle_s: float = 30.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the machine knows. Immutable; ``step`` returns a new one."""

    state: State = State.IDLE
    mode: Mode = Mode.NONE
    session_open: bool = False
    """A configured session exists (``SessionUp`` seen, not yet lost/closed)."""
    pending_tools: int = 0
    epoch: int = 0
    timings: Timings = Timings()
