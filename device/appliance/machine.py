"""The device's decisions, as a pure function: ``step(snapshot, event) -> (snapshot, effects)``.

Functional core: nothing here does I/O, reads a clock or touches asyncio. ``appliance.app`` feeds
events in (button, wake word, data-channel events, timers, tool results, errors) and performs
the effects that come out. Events are past-tense facts; effects are imperative verbs.

Timers are tied to the snapshot's ``epoch``: every state change bumps the epoch, so a timer
started in an earlier state carries a stale epoch and its ``TimerFired`` changes nothing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace


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
    lasting: bool = False
    """The server refused the device itself (revoked, disabled, its clock): ERROR stays
    shown until the user tries again, instead of going dark after a few seconds."""


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
class InputTimedOut:
    """``input_audio_buffer.timeout_triggered``: the service's idle timeout committed the
    silence and is answering on its own (e.g. "are you still there?")."""


@dataclass(frozen=True, slots=True)
class AnnouncementDue:
    """Something must be said out of band (a timer fired): connect if needed, then say it
    once the device is idle."""


@dataclass(frozen=True, slots=True)
class AudioFault:
    """The microphone or speaker vanished (e.g. a USB device unplugged)."""

    reason: str


@dataclass(frozen=True, slots=True)
class AudioRestored:
    """The audio device is back."""


@dataclass(frozen=True, slots=True)
class Unreachable:
    """The provisioning server did not answer (at boot, a heartbeat, a probe) while no
    conversation runs: show OFFLINE and probe again with back-off."""

    reason: str
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Reachable:
    """A probe (or a heartbeat) reached the provisioning server again."""


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
    | InputTimedOut
    | AnnouncementDue
    | AudioFault
    | AudioRestored
    | Unreachable
    | Reachable
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
class Announce:
    """An out-of-band spoken notice (``conversation: "none"``), e.g. ``reconnected``."""

    kind: str


@dataclass(frozen=True, slots=True)
class Probe:
    """Check whether the provisioning server answers (``Reachable`` / ``Unreachable``)."""


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
    | Announce
    | Probe
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
    dictation: bool = False
    """Transcription-only session: the device listens and transcribes, the model never
    answers. A turn lasts until the user stops talking for ``no_speech_s`` or presses."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the machine knows. Immutable; ``step`` returns a new one."""

    state: State = State.IDLE
    mode: Mode = Mode.NONE
    session_open: bool = False
    """A configured session exists (``SessionUp`` seen, not yet lost/closed)."""
    pending_tools: int = 0
    manual_turns: bool = False
    """Server VAD was switched off for push-to-talk; switch it back on when the turn ends."""
    failures: int = 0
    """Sessions that failed in a row (drives the OFFLINE back-off)."""
    retry_s: float = 0.0
    """How long OFFLINE waits before going back to IDLE (from back-off or ``Retry-After``)."""
    awaiting_reply: bool = False
    """A ``response.create`` was asked for and its ``response.created`` has not come yet."""
    responding: bool = False
    """A response is under way (``response.created`` seen, its ``response.done`` not yet):
    its audio may pause (a spoken preamble before a tool call) without the reply being over."""
    outputs_due: bool = False
    """Tool outputs were sent that still need their one ``response.create``: it goes out
    once every tool of the response has answered and the response is done."""
    reply_heard: bool = False
    """The current response's audio has started (so a done response is not waiting for it)."""
    follow_up: bool = False
    """The service spoke up on its own (idle timeout): after its reply, listen hands-free
    so the user can answer without pressing."""
    nudged: bool = False
    """The service's idle timeout already asked once and nobody has spoken since: the next
    one closes the session instead of asking again (nobody is there)."""
    audio_fault: bool = False
    """The mic/speaker is gone: ERROR is shown until it is back, activations are ignored."""
    refused: bool = False
    """The server refused this device: ERROR is shown until an activation tries again."""
    heard_user: bool = False
    """The user has spoken in this turn (a long hold while talking is push-to-talk, not
    the mute gesture)."""
    announcing: bool = False
    """Connecting only to say queued announcements."""
    resume: bool = False
    """A conversation was cut off: reconnect on our own (OFFLINE → CONNECTING) and carry
    it over, instead of waiting for the user."""
    epoch: int = 0
    timings: Timings = Timings()


Result = tuple[Snapshot, tuple[Effect, ...]]
ACTIVE = (State.LISTENING, State.THINKING, State.SPEAKING)
MAX_RESUME_ATTEMPTS = 8
"""Reconnect on our own this many times (≈ 2 min of back-off), then wait for the user."""


def _go(snap: Snapshot, state: State, *effects: Effect, **changes: object) -> Result:
    """Enter ``state``: bump the epoch (invalidating every running timer), apply ``changes``,
    then start the timers the new state needs."""
    new = replace(snap, state=state, epoch=snap.epoch + 1, **changes)  # type: ignore[arg-type]
    return new, (*effects, *_timers(new))


def _timers(snap: Snapshot) -> tuple[Effect, ...]:
    t, e = snap.timings, snap.epoch
    match snap.state:
        case State.CONNECTING:
            return (StartTimer(TimerName.CONNECT, t.connect_s, e),)
        case State.LISTENING if snap.mode is Mode.HANDS_FREE and not snap.heard_user:
            return (StartTimer(TimerName.NO_SPEECH, t.no_speech_s, e),)
        case State.LISTENING:
            return (StartTimer(TimerName.MAX_TURN, t.max_turn_s, e),)
        case State.THINKING | State.SPEAKING:
            return (StartTimer(TimerName.REPLY, t.reply_s, e),)
        case State.ERROR:
            return (StartTimer(TimerName.ERROR_HOLD, t.error_hold_s, e),)
        case State.OFFLINE:
            return (StartTimer(TimerName.RETRY, snap.retry_s, e),)
        case State.IDLE if snap.session_open:
            return (StartTimer(TimerName.SESSION_IDLE, t.session_idle_s, e),)
    return ()


def _stay(snap: Snapshot, *effects: Effect, **changes: object) -> Result:
    return replace(snap, **changes), effects  # type: ignore[arg-type]


def _end_turn(snap: Snapshot) -> Result:
    """Back to IDLE after a reply; the session stays warm for a while. After a reply the
    service started on its own (idle timeout), listen hands-free for the user's answer."""
    if snap.follow_up and snap.session_open:
        return _go(
            snap,
            State.LISTENING,
            OpenUplink(),
            mode=Mode.HANDS_FREE,
            heard_user=False,
            follow_up=False,
        )
    if snap.manual_turns:
        return _go(
            snap,
            State.IDLE,
            CloseUplink(),
            SetTurnDetection(server_vad=True),
            mode=Mode.NONE,
            manual_turns=False,
        )
    return _go(snap, State.IDLE, CloseUplink(), mode=Mode.NONE)


def _new_turn(snap: Snapshot, mode: Mode) -> Result:
    """Start a user turn: straight to LISTENING on a warm session, else connect first."""
    fresh = {
        "mode": mode,
        "resume": False,
        "heard_user": False,
        "announcing": False,
        "nudged": False,
        "refused": False,
    }
    if snap.session_open:
        return _go(snap, State.LISTENING, PlayCue("wake"), OpenUplink(), **fresh)
    return _go(snap, State.CONNECTING, PlayCue("wake"), OpenSession(), **fresh)


def _vad_back(snap: Snapshot) -> tuple[tuple[Effect, ...], dict[str, object]]:
    """A hands-free turn needs the service's VAD: switch it back on if push-to-talk had
    switched it off (effects, snapshot changes)."""
    if snap.manual_turns:
        return (SetTurnDetection(server_vad=True),), {"manual_turns": False}
    return (), {}


def _reply_over(snap: Snapshot) -> bool:
    """Nothing more is coming for this turn: no response under way, no tool running, no
    tool output or response request waiting."""
    return not (snap.responding or snap.pending_tools or snap.outputs_due or snap.awaiting_reply)


_QUIET = {
    "pending_tools": 0,
    "awaiting_reply": False,
    "responding": False,
    "outputs_due": False,
    "follow_up": False,
}
"""Nothing in flight any more (a session closed or was lost)."""


def _hang_up(snap: Snapshot) -> tuple[Effect, ...]:
    """Stop everything at once (mute, a vanished audio device): close the mic, cut a reply
    that is playing, close a session that is open or opening."""
    effects: tuple[Effect, ...] = (CloseUplink(),)
    if snap.state in ACTIVE:
        effects += (CancelReply(),)
    if snap.session_open or snap.state is State.CONNECTING:
        effects += (CloseSession(),)
    return effects


def _offline(
    snap: Snapshot, *effects: Effect, retry_after: float | None = None, **changes: object
) -> Result:
    """Unreachable: show OFFLINE and back off exponentially (1, 2, 4 … 60 s, or longer if
    the server said ``Retry-After``)."""
    failures = snap.failures + 1
    backoff = min(60.0, 2.0 ** (failures - 1))
    return _go(
        snap,
        State.OFFLINE,
        *effects,
        PlayCue("offline"),
        mode=Mode.NONE,
        manual_turns=False,
        session_open=False,
        announcing=False,
        failures=failures,
        **_QUIET,
        retry_s=max(backoff, retry_after or 0.0),
        **changes,
    )


def step(snap: Snapshot, event: Event) -> Result:
    """Decide. Unknown (state, event) pairs change nothing."""
    state, mode = snap.state, snap.mode
    match state, event:
        # ---------------------------------------------------------- timers
        case _, TimerFired(epoch=epoch) if epoch != snap.epoch:
            return snap, ()  # stale: started in an earlier state
        # ---------------------------------------------------------- dictation
        case State.LISTENING, SpeechStopped() if snap.timings.dictation:
            # the silence that follows ends the dictation (no-speech timer) unless it resumes
            return _go(snap, State.LISTENING, mode=Mode.HANDS_FREE, heard_user=False)
        case State.LISTENING, TimerFired(name=TimerName.MAX_TURN) if snap.timings.dictation:
            return _go(snap, State.LISTENING, CommitInput(), mode=Mode.HANDS_FREE)
        case State.LISTENING, ButtonReleased() if (
            snap.timings.dictation and mode is Mode.PUSH_TO_TALK
        ):
            return _go(
                snap, State.IDLE, CloseUplink(), CommitInput(), PlayCue("end"), mode=Mode.NONE
            )
        case State.LISTENING, ButtonPressed() if snap.timings.dictation:
            return _go(snap, State.IDLE, CloseUplink(), PlayCue("end"), mode=Mode.NONE)

        case State.CONNECTING, TimerFired(name=TimerName.CONNECT):
            # no session in time: a partition or a slow service, not a fault of the device
            return _offline(snap, CloseSession())
        case State.LISTENING, TimerFired(name=TimerName.NO_SPEECH):
            return _go(snap, State.IDLE, CloseUplink(), PlayCue("end"), mode=Mode.NONE)
        case State.LISTENING, TimerFired(name=TimerName.MAX_TURN):
            return _go(
                snap,
                State.THINKING,
                CloseUplink(),
                CommitInput(),
                RequestResponse(),
                mode=Mode.NONE,
                awaiting_reply=True,
            )
        case State.THINKING | State.SPEAKING, TimerFired(name=TimerName.REPLY):
            return _go(snap, State.ERROR, CancelReply(), PlayCue("error"), mode=Mode.NONE, **_QUIET)
        case State.ERROR, TimerFired(name=TimerName.ERROR_HOLD) if snap.audio_fault or snap.refused:
            return snap, ()  # stays until the device is back, or the user tries again
        case State.ERROR, TimerFired(name=TimerName.ERROR_HOLD):
            return _go(snap, State.IDLE)
        case State.OFFLINE, TimerFired(name=TimerName.RETRY) if snap.resume:
            if snap.failures > MAX_RESUME_ATTEMPTS:
                return _go(snap, State.IDLE, resume=False)  # give up; the user can try again
            return _go(snap, State.CONNECTING, OpenSession(), mode=Mode.NONE)
        case State.OFFLINE, TimerFired(name=TimerName.RETRY):
            # stay OFFLINE until a probe says the server answers (the LED keeps telling)
            return _go(snap, State.OFFLINE, Probe())
        case State.OFFLINE, Reachable() if not snap.resume:
            return _go(snap, State.IDLE)  # the back-off resets only when a session works
        case State.IDLE | State.OFFLINE, Unreachable() if not (snap.resume or snap.session_open):
            return _offline(snap, retry_after=event.retry_after)
        case State.IDLE, TimerFired(name=TimerName.SESSION_IDLE):
            return _stay(snap, CloseSession(), session_open=False, **_QUIET)

        # ---------------------------------------------------------- audio device
        case State.MUTED, AudioFault():
            return _stay(snap, audio_fault=True)
        case _, AudioFault():
            return _go(
                snap,
                State.ERROR,
                *_hang_up(snap),
                PlayCue("error"),
                mode=Mode.NONE,
                session_open=False,
                resume=False,
                audio_fault=True,
                **_QUIET,
            )
        case State.ERROR, AudioRestored() if snap.audio_fault:
            return _go(snap, State.IDLE, audio_fault=False)
        case _, AudioRestored():
            return _stay(snap, audio_fault=False)
        case State.ERROR, ButtonPressed() | WakeDetected() if snap.audio_fault:
            return snap, ()

        # ---------------------------------------------------------- mute
        case State.MUTED, MuteToggled():
            return _go(snap, State.IDLE)
        case State.LISTENING, MuteToggled() if mode is Mode.PUSH_TO_TALK and snap.heard_user:
            return snap, ()  # a long question, not the mute gesture
        case _, MuteToggled():
            return _go(
                snap,
                State.MUTED,
                *_hang_up(snap),
                mode=Mode.NONE,
                session_open=False,
                **_QUIET,
            )
        case State.MUTED, _:
            return snap, ()

        # ---------------------------------------------------------- activation
        case State.IDLE | State.ERROR | State.OFFLINE, ButtonPressed():
            return _new_turn(snap, Mode.PRESSED)
        case State.IDLE | State.ERROR | State.OFFLINE, WakeDetected():
            return _new_turn(snap, Mode.HANDS_FREE)
        case State.CONNECTING | State.LISTENING, ButtonHeld() if mode is Mode.PRESSED:
            return _stay(
                snap, SetTurnDetection(server_vad=False), mode=Mode.PUSH_TO_TALK, manual_turns=True
            )
        case State.CONNECTING, ButtonReleased() if mode is Mode.PRESSED:
            vad, changes = _vad_back(snap)  # a tap: server VAD ends the turn
            return _stay(snap, *vad, mode=Mode.HANDS_FREE, **changes)
        case State.LISTENING, ButtonReleased() if mode is Mode.PRESSED:
            # a tap on a warm session: the no-speech timer, not the turn cap, runs from now
            vad, changes = _vad_back(snap)
            return _go(snap, State.LISTENING, *vad, mode=Mode.HANDS_FREE, **changes)
        case State.CONNECTING, ButtonReleased() if mode is Mode.PUSH_TO_TALK:
            return _go(snap, State.IDLE, CloseSession(), mode=Mode.NONE)  # let go before it was up
        case State.LISTENING, ButtonReleased() if mode is Mode.PUSH_TO_TALK:
            return _go(
                snap,
                State.THINKING,
                CloseUplink(),
                CommitInput(),
                RequestResponse(),
                mode=Mode.NONE,
                awaiting_reply=True,
            )
        case State.THINKING | State.SPEAKING, ButtonPressed() | WakeDetected():
            # interrupt the model and start a new user turn at once
            # (a press may turn into a tap: the release switches server VAD back on then)
            hands_free = isinstance(event, WakeDetected)
            vad, changes = _vad_back(snap) if hands_free else ((), {})
            return _go(
                snap,
                State.LISTENING,
                CancelReply(),
                *vad,
                PlayCue("wake"),
                OpenUplink(),
                mode=Mode.HANDS_FREE if hands_free else Mode.PRESSED,
                heard_user=False,
                **{**_QUIET, "responding": snap.responding, **changes},
            )

        # ---------------------------------------------------------- session
        case State.CONNECTING, SessionUp() if snap.announcing and not snap.resume:
            return _go(
                snap,
                State.IDLE,
                Announce("queued"),
                session_open=True,
                failures=0,
                announcing=False,
            )
        case State.IDLE, AnnouncementDue() if snap.session_open:
            return _stay(snap, Announce("queued"))
        case State.IDLE, AnnouncementDue():
            return _go(snap, State.CONNECTING, OpenSession(), mode=Mode.NONE, announcing=True)
        case State.CONNECTING, SessionUp() if snap.resume:
            # back after a cut: the conversation was carried over; say so, then wait
            return _go(
                snap,
                State.IDLE,
                Announce("reconnected"),
                session_open=True,
                failures=0,
                resume=False,
            )
        case State.CONNECTING, SessionUp():
            return _go(snap, State.LISTENING, OpenUplink(), session_open=True, failures=0)
        case State.CONNECTING, SessionFailed(offline=True):
            return _offline(snap, retry_after=event.retry_after)
        case State.CONNECTING, SessionFailed():
            return _go(
                snap,
                State.ERROR,
                PlayCue("error"),
                mode=Mode.NONE,
                session_open=False,
                announcing=False,
                resume=False,
                refused=event.lasting,
            )
        case State.IDLE, SessionLost():
            return _stay(snap, session_open=False, **_QUIET)
        case State.CONNECTING, SessionLost():
            return _offline(snap, CloseSession())
        case State.LISTENING | State.THINKING | State.SPEAKING, SessionLost():
            # cut off mid-conversation (network, peer closed, session cap): reconnect on our
            # own and carry the conversation over
            return _offline(snap, CloseUplink(), CloseSession(), resume=True)

        # ---------------------------------------------------------- the conversation
        case State.LISTENING, SpeechStarted() if mode is Mode.HANDS_FREE:
            # user is talking: no-speech timer → turn cap
            return _go(snap, State.LISTENING, heard_user=True, nudged=False)
        case State.LISTENING, SpeechStarted():
            return _stay(snap, heard_user=True, nudged=False)
        case State.LISTENING, SpeechStopped() if mode is Mode.HANDS_FREE:
            return _go(snap, State.THINKING, CloseUplink(), mode=Mode.NONE)
        case State.LISTENING, ResponseStarted() if mode is not Mode.PUSH_TO_TALK:
            return _go(
                snap,
                State.THINKING,
                CloseUplink(),
                mode=Mode.NONE,
                awaiting_reply=False,
                responding=True,
                reply_heard=False,
            )
        case State.IDLE, InputTimedOut() if snap.session_open and snap.nudged:
            # asked once already and nobody answered: stop, rather than ask forever
            return _stay(snap, CloseSession(), session_open=False, **_QUIET)
        case State.IDLE, InputTimedOut() if snap.session_open:
            # the service answers the silence on its own; let the user reply afterwards
            return _go(snap, State.THINKING, mode=Mode.NONE, follow_up=True, nudged=True)
        case State.LISTENING, InputTimedOut() if mode is Mode.HANDS_FREE:
            return _go(snap, State.THINKING, CloseUplink(), mode=Mode.NONE, follow_up=True)
        case _, ResponseStarted():
            return _stay(snap, awaiting_reply=False, responding=True, reply_heard=False)
        case State.THINKING, ReplyAudioStarted():
            return _go(snap, State.SPEAKING, reply_heard=True)
        case State.IDLE, ReplyAudioStarted() if snap.session_open:
            return _go(snap, State.SPEAKING, reply_heard=True)  # an announcement (timer, …)
        case State.SPEAKING, SpeechStarted():
            # barge-in detected by the service (or locally): stop talking, listen
            vad, changes = _vad_back(snap)
            return _go(
                snap,
                State.LISTENING,
                CancelReply(),
                *vad,
                OpenUplink(),
                mode=Mode.HANDS_FREE,
                heard_user=False,
                **{**_QUIET, "responding": snap.responding, **changes},
            )
        case State.SPEAKING, ReplyAudioStopped():
            if _reply_over(snap):
                return _end_turn(snap)
            # a preamble ("let me check") before a tool call, or more to come
            return _go(snap, State.THINKING)
        case _, ResponseDone():
            return _response_done(snap, event)
        case State.THINKING | State.SPEAKING | State.LISTENING, ToolCallRequested():
            call = RunTool(event.call_id, event.name, event.arguments)
            return _stay(snap, call, pending_tools=snap.pending_tools + 1)
        case State.THINKING | State.SPEAKING, ToolFinished():
            pending = max(0, snap.pending_tools - 1)
            output = SendToolOutput(event.call_id, event.output)
            if pending or snap.responding:
                # parallel calls: answer each now, ask for the reply once, after the last
                return _stay(snap, output, pending_tools=pending, outputs_due=True)
            asked = {"pending_tools": 0, "outputs_due": False, "awaiting_reply": True}
            if state is State.THINKING:
                return _go(snap, State.THINKING, output, RequestResponse(), **asked)
            return _stay(snap, output, RequestResponse(), **asked)
    return snap, ()


def _response_done(snap: Snapshot, event: ResponseDone) -> Result:
    """``response.done``: ask for the answer to tool outputs now if the response was the
    last thing they waited for; end a turn whose audio already finished."""
    snap = replace(snap, responding=False)
    if snap.state not in (State.THINKING, State.SPEAKING):
        return snap, ()
    if snap.outputs_due and not snap.pending_tools:
        asked = {"outputs_due": False, "awaiting_reply": True}
        if snap.state is State.THINKING:
            return _go(snap, State.THINKING, RequestResponse(), **asked)
        return _stay(snap, RequestResponse(), **asked)
    audio_to_come = event.had_audio and not snap.reply_heard
    if snap.state is State.THINKING and _reply_over(snap) and not audio_to_come:
        return _end_turn(snap)  # no audio (text-only, failed), or it already finished
    return snap, ()
