"""The device's decisions: ``Machine(settings).step(snapshot, event) -> (snapshot, effects)``.

Functional core: nothing here does I/O, reads a clock or touches asyncio. ``appliance.app`` feeds
events in (button, wake word, data-channel events, timers, tool results, errors) and performs
the effects that come out. Events are past-tense facts; effects are imperative verbs. The
settings (timer lengths, the turn policy, full duplex) are fixed when the machine is built;
everything that changes at run time arrives as an event.

Timers are tied to the snapshot's ``epoch``: every state change bumps the epoch, so a timer
started in an earlier state carries a stale epoch and its ``TimerFired`` changes nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
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
class SessionAged:
    """The open session has reached ``session.max_age_s`` (short of the service's cap): it
    is rolled over at the next idle moment, invisibly, carrying the conversation over."""


@dataclass(frozen=True, slots=True)
class EchoConverged:
    """The echo canceller has (or no longer has) heard enough of the speaker to be trusted
    with an open mic while the model speaks."""

    converged: bool


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
    | SessionAged
    | EchoConverged
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


class Policy(enum.Enum):
    """What a user turn is for; chosen when the machine is built (``realtime.mode``)."""

    CONVERSATION = "conversation"
    """The model answers each turn."""
    DICTATION = "dictation"
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
    session_aged: bool = False
    """The open session is old (``SessionAged``): close it when the device is next idle."""
    echo_converged: bool = False
    """The echo canceller can be trusted with an open mic while the model speaks."""
    epoch: int = 0


Result = tuple[Snapshot, tuple[Effect, ...]]
Handler = Callable[[Snapshot, Event], Result | None]
"""One state's transitions; ``None``: the state has nothing to say about the event."""
ACTIVE = (State.LISTENING, State.THINKING, State.SPEAKING)
MAX_RESUME_ATTEMPTS = 8
"""Reconnect on our own this many times (≈ 2 min of back-off), then wait for the user."""

_QUIET = {
    "pending_tools": 0,
    "awaiting_reply": False,
    "responding": False,
    "outputs_due": False,
    "follow_up": False,
}
"""Nothing in flight any more (a session closed or was lost)."""


def _stay(snap: Snapshot, *effects: Effect, **changes: object) -> Result:
    return replace(snap, **changes), effects  # type: ignore[arg-type]


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


def _hang_up(snap: Snapshot) -> tuple[Effect, ...]:
    """Stop everything at once (mute, a vanished audio device): close the mic, cut a reply
    that is playing, close a session that is open or opening."""
    effects: tuple[Effect, ...] = (CloseUplink(),)
    if snap.state in ACTIVE:
        effects += (CancelReply(),)
    if snap.session_open or snap.state is State.CONNECTING:
        effects += (CloseSession(),)
    return effects


class Machine:
    """The device's decisions, built once from its settings; ``step`` is pure.

    ``step`` runs a short prelude shared by every state (stale timers, the audio device,
    mute, facts about the session and the echo canceller), then the handler of the current
    state, then the bookkeeping of response events that every state keeps."""

    def __init__(
        self,
        timings: Timings | None = None,
        policy: Policy = Policy.CONVERSATION,
        keep_listening: bool = False,
    ) -> None:
        self.timings = timings or Timings()
        self.policy = policy
        self.keep_listening = keep_listening
        """Leave the mic open while the model answers a hands-free turn, once the echo
        canceller has converged (``EchoConverged``): the service's VAD then hears a voice
        barge-in too. Set when voice barge-in is on and an echo canceller runs."""
        listening = self._dictating if policy is Policy.DICTATION else self._listening
        self._handlers: dict[State, Handler] = {
            State.IDLE: self._idle,
            State.CONNECTING: self._connecting,
            State.LISTENING: listening,
            State.THINKING: self._thinking,
            State.SPEAKING: self._speaking,
            State.ERROR: self._error,
            State.OFFLINE: self._offline_state,
            State.MUTED: self._muted,
        }

    def step(self, snap: Snapshot, event: Event) -> Result:
        """Decide. Unknown (state, event) pairs change nothing."""
        for decide in (self._prelude, self._handlers[snap.state], self._any_state):
            result = decide(snap, event)
            if result is not None:
                return result
        return snap, ()

    # ------------------------------------------------------------ building blocks

    def _go(self, snap: Snapshot, state: State, *effects: Effect, **changes: object) -> Result:
        """Enter ``state``: bump the epoch (invalidating every running timer), apply
        ``changes``, then start the timers the new state needs. An aged session is closed
        on the way into IDLE (rolled over between turns)."""
        new = replace(snap, state=state, epoch=snap.epoch + 1, **changes)  # type: ignore[arg-type]
        if new.state is State.IDLE and new.session_open and new.session_aged:
            new = replace(new, session_open=False, session_aged=False, **_QUIET)  # type: ignore[arg-type]
            effects = (*effects, CloseSession())
        return new, (*effects, *self._timers(new))

    def _timers(self, snap: Snapshot) -> tuple[Effect, ...]:
        t, e = self.timings, snap.epoch
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

    def _mic_off(self, snap: Snapshot) -> tuple[Effect, ...]:
        """The user's turn is over: close the uplink, unless full duplex keeps it open so
        the service's VAD hears a barge-in (never after push-to-talk)."""
        if self.keep_listening and snap.echo_converged and not snap.manual_turns:
            return ()
        return (CloseUplink(),)

    def _end_turn(self, snap: Snapshot) -> Result:
        """Back to IDLE after a reply; the session stays warm for a while. After a reply the
        service started on its own (idle timeout), listen hands-free for the user's answer."""
        if snap.follow_up and snap.session_open:
            return self._go(
                snap,
                State.LISTENING,
                OpenUplink(),
                mode=Mode.HANDS_FREE,
                heard_user=False,
                follow_up=False,
            )
        if snap.manual_turns:
            return self._go(
                snap,
                State.IDLE,
                CloseUplink(),
                SetTurnDetection(server_vad=True),
                mode=Mode.NONE,
                manual_turns=False,
            )
        return self._go(snap, State.IDLE, CloseUplink(), mode=Mode.NONE)

    def _new_turn(self, snap: Snapshot, mode: Mode) -> Result:
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
            return self._go(snap, State.LISTENING, PlayCue("wake"), OpenUplink(), **fresh)
        return self._go(snap, State.CONNECTING, PlayCue("wake"), OpenSession(), **fresh)

    def _activate(self, snap: Snapshot, event: Event) -> Result | None:
        """A press or the wake word while nothing runs (IDLE, ERROR, OFFLINE)."""
        match event:
            case ButtonPressed():
                return self._new_turn(snap, Mode.PRESSED)
            case WakeDetected():
                return self._new_turn(snap, Mode.HANDS_FREE)
        return None

    def _offline(
        self, snap: Snapshot, *effects: Effect, retry_after: float | None = None, **changes: object
    ) -> Result:
        """Unreachable: show OFFLINE and back off exponentially (1, 2, 4 … 60 s, or longer if
        the server said ``Retry-After``)."""
        failures = snap.failures + 1
        backoff = min(60.0, 2.0 ** (failures - 1))
        return self._go(
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

    def _think(self, snap: Snapshot, *effects: Effect, **changes: object) -> Result:
        """The user's turn is over (the service's VAD, a release, the turn cap)."""
        return self._go(snap, State.THINKING, *self._mic_off(snap), *effects, **changes)

    def _cut_off(self, snap: Snapshot) -> Result:
        """Cut off mid-conversation (network, peer closed, session cap): reconnect on our
        own and carry the conversation over."""
        return self._offline(snap, CloseUplink(), CloseSession(), resume=True)

    def _interrupt(self, snap: Snapshot, event: Event) -> Result | None:
        """A press or the wake word while the model answers: interrupt it and start a new
        user turn at once (a press may turn into a tap: the release switches server VAD
        back on then)."""
        if not isinstance(event, ButtonPressed | WakeDetected):
            return None
        hands_free = isinstance(event, WakeDetected)
        vad, changes = _vad_back(snap) if hands_free else ((), {})
        return self._go(
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

    def _tools(self, snap: Snapshot, event: Event) -> Result | None:
        """Tool calls while the model answers."""
        match event:
            case ToolCallRequested(call_id=call_id, name=name, arguments=arguments):
                call = RunTool(call_id, name, arguments)
                return _stay(snap, call, pending_tools=snap.pending_tools + 1)
            case ToolFinished():
                pending = max(0, snap.pending_tools - 1)
                output = SendToolOutput(event.call_id, event.output)
                if pending or snap.responding:
                    # parallel calls: answer each now, ask for the reply once, after the last
                    return _stay(snap, output, pending_tools=pending, outputs_due=True)
                asked = {"pending_tools": 0, "outputs_due": False, "awaiting_reply": True}
                if snap.state is State.THINKING:
                    return self._go(snap, State.THINKING, output, RequestResponse(), **asked)
                return _stay(snap, output, RequestResponse(), **asked)
        return None

    # ------------------------------------------------------------ shared by every state

    def _prelude(self, snap: Snapshot, event: Event) -> Result | None:
        match event:
            case TimerFired(epoch=epoch) if epoch != snap.epoch:
                return snap, ()  # stale: started in an earlier state
            case AudioFault() if snap.state is State.MUTED:
                return _stay(snap, audio_fault=True)
            case AudioFault():
                return self._go(
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
            case AudioRestored() if snap.state is State.ERROR and snap.audio_fault:
                return self._go(snap, State.IDLE, audio_fault=False)
            case AudioRestored():
                return _stay(snap, audio_fault=False)
            case MuteToggled() if snap.state is State.MUTED:
                return self._go(snap, State.IDLE)
            case MuteToggled() if (
                snap.state is State.LISTENING and snap.mode is Mode.PUSH_TO_TALK and snap.heard_user
            ):
                return snap, ()  # a long question, not the mute gesture
            case MuteToggled():
                return self._go(
                    snap,
                    State.MUTED,
                    *_hang_up(snap),
                    mode=Mode.NONE,
                    session_open=False,
                    **_QUIET,
                )
            case EchoConverged(converged=converged):
                return _stay(snap, echo_converged=converged)
            case SessionAged() if snap.session_open and snap.state is State.IDLE:
                return _stay(snap, CloseSession(), session_open=False, **_QUIET)
            case SessionAged() if snap.session_open:
                return _stay(snap, session_aged=True)  # closed when the turn is over
            case SessionAged():
                return snap, ()
        return None

    def _any_state(self, snap: Snapshot, event: Event) -> Result | None:
        """Response bookkeeping every state but MUTED keeps."""
        match event:
            case ResponseStarted():
                return _stay(snap, awaiting_reply=False, responding=True, reply_heard=False)
            case ResponseDone():
                return self._response_done(snap, event)
        return None

    def _response_done(self, snap: Snapshot, event: ResponseDone) -> Result:
        """``response.done``: ask for the answer to tool outputs now if the response was the
        last thing they waited for; end a turn whose audio already finished."""
        snap = replace(snap, responding=False)
        if snap.state not in (State.THINKING, State.SPEAKING):
            return snap, ()
        if snap.outputs_due and not snap.pending_tools:
            asked = {"outputs_due": False, "awaiting_reply": True}
            if snap.state is State.THINKING:
                return self._go(snap, State.THINKING, RequestResponse(), **asked)
            return _stay(snap, RequestResponse(), **asked)
        audio_to_come = event.had_audio and not snap.reply_heard
        if snap.state is State.THINKING and _reply_over(snap) and not audio_to_come:
            return self._end_turn(snap)  # no audio (text-only, failed), or it already finished
        return snap, ()

    # ------------------------------------------------------------ one handler per state

    def _idle(self, snap: Snapshot, event: Event) -> Result | None:
        match event:
            case TimerFired(name=TimerName.SESSION_IDLE):
                return _stay(snap, CloseSession(), session_open=False, **_QUIET)
            case Unreachable() if not (snap.resume or snap.session_open):
                return self._offline(snap, retry_after=event.retry_after)
            case ButtonPressed() | WakeDetected():
                return self._activate(snap, event)
            case AnnouncementDue() if snap.session_open:
                return _stay(snap, Announce("queued"))
            case AnnouncementDue():
                return self._go(
                    snap, State.CONNECTING, OpenSession(), mode=Mode.NONE, announcing=True
                )
            case SessionLost():
                return _stay(snap, session_open=False, **_QUIET)
            case InputTimedOut() if snap.session_open and snap.nudged:
                # asked once already and nobody answered: stop, rather than ask forever
                return _stay(snap, CloseSession(), session_open=False, **_QUIET)
            case InputTimedOut() if snap.session_open:
                # the service answers the silence on its own; let the user reply afterwards
                return self._go(snap, State.THINKING, mode=Mode.NONE, follow_up=True, nudged=True)
            case ReplyAudioStarted() if snap.session_open:
                return self._go(snap, State.SPEAKING, reply_heard=True)  # an announcement
        return None

    def _connecting(self, snap: Snapshot, event: Event) -> Result | None:
        mode = snap.mode
        match event:
            case TimerFired(name=TimerName.CONNECT):
                # no session in time: a partition or a slow service, not a fault of the device
                return self._offline(snap, CloseSession())
            case ButtonHeld() if mode is Mode.PRESSED:
                return _stay(
                    snap,
                    SetTurnDetection(server_vad=False),
                    mode=Mode.PUSH_TO_TALK,
                    manual_turns=True,
                )
            case ButtonReleased() if mode is Mode.PRESSED:
                vad, changes = _vad_back(snap)  # a tap: server VAD ends the turn
                return _stay(snap, *vad, mode=Mode.HANDS_FREE, **changes)
            case ButtonReleased() if mode is Mode.PUSH_TO_TALK:
                # let go before it was up
                return self._go(snap, State.IDLE, CloseSession(), mode=Mode.NONE)
            case SessionUp():
                return self._session_up(replace(snap, session_aged=False))
            case SessionFailed(offline=True):
                return self._offline(snap, retry_after=event.retry_after)
            case SessionFailed():
                return self._go(
                    snap,
                    State.ERROR,
                    PlayCue("error"),
                    mode=Mode.NONE,
                    session_open=False,
                    announcing=False,
                    resume=False,
                    refused=event.lasting,
                )
            case SessionLost():
                return self._offline(snap, CloseSession())
        return None

    def _session_up(self, snap: Snapshot) -> Result:
        if snap.announcing and not snap.resume:
            return self._go(
                snap,
                State.IDLE,
                Announce("queued"),
                session_open=True,
                failures=0,
                announcing=False,
            )
        if snap.resume:
            # back after a cut: the conversation was carried over; say so, then wait
            return self._go(
                snap,
                State.IDLE,
                Announce("reconnected"),
                session_open=True,
                failures=0,
                resume=False,
            )
        return self._go(snap, State.LISTENING, OpenUplink(), session_open=True, failures=0)

    def _listening(self, snap: Snapshot, event: Event) -> Result | None:
        mode = snap.mode
        match event:
            case TimerFired(name=TimerName.NO_SPEECH):
                return self._go(snap, State.IDLE, CloseUplink(), PlayCue("end"), mode=Mode.NONE)
            case TimerFired(name=TimerName.MAX_TURN):
                return self._think(
                    snap, CommitInput(), RequestResponse(), mode=Mode.NONE, awaiting_reply=True
                )
            case ButtonHeld() if mode is Mode.PRESSED:
                return _stay(
                    snap,
                    SetTurnDetection(server_vad=False),
                    mode=Mode.PUSH_TO_TALK,
                    manual_turns=True,
                )
            case ButtonReleased() if mode is Mode.PRESSED:
                # a tap on a warm session: the no-speech timer, not the turn cap, runs from now
                vad, changes = _vad_back(snap)
                return self._go(snap, State.LISTENING, *vad, mode=Mode.HANDS_FREE, **changes)
            case ButtonReleased() if mode is Mode.PUSH_TO_TALK:
                return self._think(
                    snap, CommitInput(), RequestResponse(), mode=Mode.NONE, awaiting_reply=True
                )
            case SessionLost():
                return self._cut_off(snap)
            case SpeechStarted() if mode is Mode.HANDS_FREE:
                # user is talking: no-speech timer → turn cap
                return self._go(snap, State.LISTENING, heard_user=True, nudged=False)
            case SpeechStarted():
                return _stay(snap, heard_user=True, nudged=False)
            case SpeechStopped() if mode is Mode.HANDS_FREE:
                return self._think(snap, mode=Mode.NONE)
            case ResponseStarted() if mode is not Mode.PUSH_TO_TALK:
                return self._think(
                    snap, mode=Mode.NONE, awaiting_reply=False, responding=True, reply_heard=False
                )
            case InputTimedOut() if mode is Mode.HANDS_FREE:
                return self._think(snap, mode=Mode.NONE, follow_up=True)
            case ToolCallRequested():
                return self._tools(snap, event)
        return None

    def _dictating(self, snap: Snapshot, event: Event) -> Result | None:
        """LISTENING under the dictation policy: pauses and the turn cap do not end the
        turn; the silence that follows it (no-speech timer) or a press does."""
        match event:
            case SpeechStopped():
                return self._go(snap, State.LISTENING, mode=Mode.HANDS_FREE, heard_user=False)
            case TimerFired(name=TimerName.MAX_TURN):
                return self._go(snap, State.LISTENING, CommitInput(), mode=Mode.HANDS_FREE)
            case ButtonReleased() if snap.mode is Mode.PUSH_TO_TALK:
                return self._go(
                    snap, State.IDLE, CloseUplink(), CommitInput(), PlayCue("end"), mode=Mode.NONE
                )
            case ButtonPressed():
                return self._go(snap, State.IDLE, CloseUplink(), PlayCue("end"), mode=Mode.NONE)
        return self._listening(snap, event)

    def _thinking(self, snap: Snapshot, event: Event) -> Result | None:
        match event:
            case TimerFired(name=TimerName.REPLY):
                return self._reply_timed_out(snap)
            case SessionLost():
                return self._cut_off(snap)
            case ReplyAudioStarted():
                return self._go(snap, State.SPEAKING, reply_heard=True)
        return self._interrupt(snap, event) or self._tools(snap, event)

    def _speaking(self, snap: Snapshot, event: Event) -> Result | None:
        match event:
            case TimerFired(name=TimerName.REPLY):
                return self._reply_timed_out(snap)
            case SessionLost():
                return self._cut_off(snap)
            case SpeechStarted():
                # barge-in detected by the service (or locally): stop talking, listen
                vad, changes = _vad_back(snap)
                return self._go(
                    snap,
                    State.LISTENING,
                    CancelReply(),
                    *vad,
                    OpenUplink(),
                    mode=Mode.HANDS_FREE,
                    heard_user=False,
                    **{**_QUIET, "responding": snap.responding, **changes},
                )
            case ReplyAudioStopped() if _reply_over(snap):
                return self._end_turn(snap)
            case ReplyAudioStopped():
                # a preamble ("let me check") before a tool call, or more to come
                return self._go(snap, State.THINKING)
        return self._interrupt(snap, event) or self._tools(snap, event)

    def _reply_timed_out(self, snap: Snapshot) -> Result:
        return self._go(
            snap, State.ERROR, CancelReply(), PlayCue("error"), mode=Mode.NONE, **_QUIET
        )

    def _error(self, snap: Snapshot, event: Event) -> Result | None:
        match event:
            case TimerFired(name=TimerName.ERROR_HOLD) if snap.audio_fault or snap.refused:
                return snap, ()  # stays until the device is back, or the user tries again
            case TimerFired(name=TimerName.ERROR_HOLD):
                return self._go(snap, State.IDLE)
            case ButtonPressed() | WakeDetected() if snap.audio_fault:
                return snap, ()  # nothing to talk with
        return self._activate(snap, event)

    def _muted(self, snap: Snapshot, event: Event) -> Result | None:
        """Privacy mute: only the prelude's events (unmute, the audio device) change it."""
        return snap, ()

    def _offline_state(self, snap: Snapshot, event: Event) -> Result | None:
        match event:
            case TimerFired(name=TimerName.RETRY) if snap.resume:
                if snap.failures > MAX_RESUME_ATTEMPTS:
                    return self._go(snap, State.IDLE, resume=False)  # give up; the user can
                return self._go(snap, State.CONNECTING, OpenSession(), mode=Mode.NONE)
            case TimerFired(name=TimerName.RETRY):
                # stay OFFLINE until a probe says the server answers (the LED keeps telling)
                return self._go(snap, State.OFFLINE, Probe())
            case Reachable() if not snap.resume:
                return self._go(snap, State.IDLE)  # the back-off resets only when a session works
            case Unreachable() if not (snap.resume or snap.session_open):
                return self._offline(snap, retry_after=event.retry_after)
        return self._activate(snap, event)
