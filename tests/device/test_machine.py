"""The state machine as a table: (state, mode, event) -> (new state, effects)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from appliance import machine as m
from appliance.machine import Mode, State, TimerName

S = m.Snapshot()
M = m.Machine()
T = M.timings


def snap(state: State, mode: Mode = Mode.NONE, **kw: object) -> m.Snapshot:
    return replace(S, state=state, mode=mode, epoch=5, **kw)  # type: ignore[arg-type]


TABLE = [
    # activation
    (
        snap(State.IDLE),
        m.ButtonPressed(),
        State.CONNECTING,
        Mode.PRESSED,
        (m.PlayCue("wake"), m.OpenSession(), m.StartTimer(TimerName.CONNECT, T.connect_s, 6)),
    ),
    (
        snap(State.IDLE, session_open=True),
        m.ButtonPressed(),
        State.LISTENING,
        Mode.PRESSED,
        (m.PlayCue("wake"), m.OpenUplink(), m.StartTimer(TimerName.MAX_TURN, T.max_turn_s, 6)),
    ),
    (
        snap(State.IDLE),
        m.WakeDetected("okay_nabu"),
        State.CONNECTING,
        Mode.HANDS_FREE,
        (m.PlayCue("wake"), m.OpenSession(), m.StartTimer(TimerName.CONNECT, T.connect_s, 6)),
    ),
    (
        snap(State.OFFLINE),
        m.ButtonPressed(),
        State.CONNECTING,
        Mode.PRESSED,
        (m.PlayCue("wake"), m.OpenSession(), m.StartTimer(TimerName.CONNECT, T.connect_s, 6)),
    ),
    (
        snap(State.CONNECTING, Mode.PRESSED),
        m.ButtonHeld(),
        State.CONNECTING,
        Mode.PUSH_TO_TALK,
        (m.SetTurnDetection(server_vad=False),),
    ),
    (
        snap(State.CONNECTING, Mode.PRESSED),
        m.ButtonReleased(),
        State.CONNECTING,
        Mode.HANDS_FREE,
        (),
    ),
    (
        snap(State.CONNECTING, Mode.PUSH_TO_TALK),
        m.ButtonReleased(),
        State.IDLE,
        Mode.NONE,
        (m.CloseSession(),),
    ),
    (
        snap(State.LISTENING, Mode.PUSH_TO_TALK, session_open=True),
        m.ButtonReleased(),
        State.THINKING,
        Mode.NONE,
        (
            m.CloseUplink(),
            m.CommitInput(),
            m.RequestResponse(),
            m.StartTimer(TimerName.REPLY, T.reply_s, 6),
        ),
    ),
    # session
    (
        snap(State.CONNECTING, Mode.HANDS_FREE),
        m.SessionUp(),
        State.LISTENING,
        Mode.HANDS_FREE,
        (m.OpenUplink(), m.StartTimer(TimerName.NO_SPEECH, T.no_speech_s, 6)),
    ),
    (
        snap(State.CONNECTING, Mode.PRESSED),
        m.SessionFailed("down", offline=True),
        State.OFFLINE,
        Mode.NONE,
        (m.PlayCue("offline"), m.StartTimer(TimerName.RETRY, 1.0, 6)),
    ),
    (
        snap(State.CONNECTING, Mode.PRESSED),
        m.SessionFailed("revoked"),
        State.ERROR,
        Mode.NONE,
        (m.PlayCue("error"), m.StartTimer(TimerName.ERROR_HOLD, T.error_hold_s, 6)),
    ),
    (
        snap(State.SPEAKING, session_open=True),
        m.SessionLost("closed"),
        State.OFFLINE,
        Mode.NONE,
        (
            m.CloseUplink(),
            m.CloseSession(),
            m.PlayCue("offline"),
            m.StartTimer(TimerName.RETRY, 1.0, 6),
        ),
    ),
    (
        snap(State.CONNECTING, Mode.PRESSED),
        m.SessionLost("peer connection closed"),
        State.OFFLINE,
        Mode.NONE,
        (m.CloseSession(), m.PlayCue("offline"), m.StartTimer(TimerName.RETRY, 1.0, 6)),
    ),
    (
        snap(State.IDLE, session_open=True),
        m.ReplyAudioStarted("r9"),
        State.SPEAKING,
        Mode.NONE,
        (m.StartTimer(TimerName.REPLY, T.reply_s, 6),),
    ),
    (snap(State.IDLE, session_open=True), m.SessionLost("closed"), State.IDLE, Mode.NONE, ()),
    # conversation
    (
        snap(State.LISTENING, Mode.HANDS_FREE),
        m.SpeechStarted(),
        State.LISTENING,
        Mode.HANDS_FREE,
        (m.StartTimer(TimerName.MAX_TURN, T.max_turn_s, 6),),
    ),
    (
        snap(State.LISTENING, Mode.HANDS_FREE),
        m.SpeechStopped(),
        State.THINKING,
        Mode.NONE,
        (m.CloseUplink(), m.StartTimer(TimerName.REPLY, T.reply_s, 6)),
    ),
    (
        snap(State.LISTENING, Mode.PUSH_TO_TALK),
        m.SpeechStopped(),
        State.LISTENING,
        Mode.PUSH_TO_TALK,
        (),
    ),
    (
        snap(State.THINKING),
        m.ReplyAudioStarted("r1"),
        State.SPEAKING,
        Mode.NONE,
        (m.StartTimer(TimerName.REPLY, T.reply_s, 6),),
    ),
    (
        snap(State.SPEAKING, session_open=True),
        m.ReplyAudioStopped("r1"),
        State.IDLE,
        Mode.NONE,
        (m.CloseUplink(), m.StartTimer(TimerName.SESSION_IDLE, T.session_idle_s, 6)),
    ),
    (
        snap(State.SPEAKING, session_open=True, manual_turns=True),
        m.ReplyAudioStopped("r1"),
        State.IDLE,
        Mode.NONE,
        (
            m.CloseUplink(),
            m.SetTurnDetection(server_vad=True),
            m.StartTimer(TimerName.SESSION_IDLE, T.session_idle_s, 6),
        ),
    ),
    (
        snap(State.SPEAKING),
        m.SpeechStarted(),
        State.LISTENING,
        Mode.HANDS_FREE,
        (m.CancelReply(), m.OpenUplink(), m.StartTimer(TimerName.NO_SPEECH, T.no_speech_s, 6)),
    ),
    (
        snap(State.SPEAKING),
        m.ButtonPressed(),
        State.LISTENING,
        Mode.PRESSED,
        (
            m.CancelReply(),
            m.PlayCue("wake"),
            m.OpenUplink(),
            m.StartTimer(TimerName.MAX_TURN, T.max_turn_s, 6),
        ),
    ),
    (
        snap(State.THINKING),
        m.ResponseDone("r1", "completed"),
        State.IDLE,
        Mode.NONE,
        (m.CloseUplink(),),
    ),
    # tools
    (
        snap(State.THINKING),
        m.ToolCallRequested("c1", "get_time", "{}"),
        State.THINKING,
        Mode.NONE,
        (m.RunTool("c1", "get_time", "{}"),),
    ),
    (
        snap(State.THINKING, pending_tools=1),
        m.ResponseDone("r1", "completed"),
        State.THINKING,
        Mode.NONE,
        (),
    ),
    (
        snap(State.THINKING, pending_tools=1),
        m.ToolFinished("c1", "{}"),
        State.THINKING,
        Mode.NONE,
        (
            m.SendToolOutput("c1", "{}"),
            m.RequestResponse(),
            m.StartTimer(TimerName.REPLY, T.reply_s, 6),
        ),
    ),
    (
        snap(State.THINKING, awaiting_reply=True),
        m.ResponseDone("r1", "completed"),
        State.THINKING,
        Mode.NONE,
        (),
    ),
    # timers
    # no session in time is network-shaped: OFFLINE, not red ERROR (issue 14)
    (
        snap(State.CONNECTING),
        m.TimerFired(TimerName.CONNECT, 5),
        State.OFFLINE,
        Mode.NONE,
        (m.CloseSession(), m.PlayCue("offline"), m.StartTimer(TimerName.RETRY, 1.0, 6)),
    ),
    # a tap on a warm session: the no-speech timer runs, not the 30 s turn cap
    (
        snap(State.LISTENING, Mode.PRESSED, session_open=True),
        m.ButtonReleased(),
        State.LISTENING,
        Mode.HANDS_FREE,
        (m.StartTimer(TimerName.NO_SPEECH, T.no_speech_s, 6),),
    ),
    # unreachable while idle: OFFLINE (never the LED off), probe after the back-off
    (
        snap(State.IDLE),
        m.Unreachable("DNS"),
        State.OFFLINE,
        Mode.NONE,
        (m.PlayCue("offline"), m.StartTimer(TimerName.RETRY, 1.0, 6)),
    ),
    (snap(State.IDLE, session_open=True), m.Unreachable("DNS"), State.IDLE, Mode.NONE, ()),
    (
        snap(State.OFFLINE),
        m.TimerFired(TimerName.RETRY, 5),
        State.OFFLINE,
        Mode.NONE,
        (m.Probe(), m.StartTimer(TimerName.RETRY, 0.0, 6)),
    ),
    (snap(State.OFFLINE), m.Reachable(), State.IDLE, Mode.NONE, ()),
    # a refused device (revoked, its clock): ERROR stays until the user tries again
    (
        snap(State.CONNECTING, Mode.PRESSED),
        m.SessionFailed("device refused: 401 revoked", lasting=True),
        State.ERROR,
        Mode.NONE,
        (m.PlayCue("error"), m.StartTimer(TimerName.ERROR_HOLD, T.error_hold_s, 6)),
    ),
    (
        snap(State.ERROR, refused=True),
        m.TimerFired(TimerName.ERROR_HOLD, 5),
        State.ERROR,
        Mode.NONE,
        (),
    ),
    (
        snap(State.ERROR, refused=True),
        m.ButtonPressed(),
        State.CONNECTING,
        Mode.PRESSED,
        (m.PlayCue("wake"), m.OpenSession(), m.StartTimer(TimerName.CONNECT, T.connect_s, 6)),
    ),
    (snap(State.OFFLINE, resume=True), m.Reachable(), State.OFFLINE, Mode.NONE, ()),
    (snap(State.CONNECTING), m.TimerFired(TimerName.CONNECT, 4), State.CONNECTING, Mode.NONE, ()),
    (
        snap(State.LISTENING, Mode.HANDS_FREE),
        m.TimerFired(TimerName.NO_SPEECH, 5),
        State.IDLE,
        Mode.NONE,
        (m.CloseUplink(), m.PlayCue("end")),
    ),
    (snap(State.ERROR), m.TimerFired(TimerName.ERROR_HOLD, 5), State.IDLE, Mode.NONE, ()),
    (
        snap(State.IDLE, session_open=True),
        m.TimerFired(TimerName.SESSION_IDLE, 5),
        State.IDLE,
        Mode.NONE,
        (m.CloseSession(),),
    ),
    # mute
    (
        snap(State.SPEAKING, session_open=True),
        m.MuteToggled(),
        State.MUTED,
        Mode.NONE,
        (m.CloseUplink(), m.CancelReply(), m.CloseSession()),
    ),
    (snap(State.MUTED), m.ButtonPressed(), State.MUTED, Mode.NONE, ()),
    (snap(State.MUTED), m.MuteToggled(), State.IDLE, Mode.NONE, ()),
    # unknown pairs change nothing
    (snap(State.IDLE), m.SpeechStopped(), State.IDLE, Mode.NONE, ()),
    (snap(State.IDLE), m.ReplyAudioStarted("r"), State.IDLE, Mode.NONE, ()),
    (snap(State.ERROR), m.ToolFinished("c", "{}"), State.ERROR, Mode.NONE, ()),
]


@pytest.mark.parametrize(("before", "event", "state", "mode", "effects"), TABLE)
def test_transition(
    before: m.Snapshot, event: m.Event, state: State, mode: Mode, effects: tuple[m.Effect, ...]
) -> None:
    after, out = M.step(before, event)
    assert (after.state, after.mode, out) == (state, mode, effects)


def test_every_state_change_bumps_the_epoch_and_timers_carry_it() -> None:
    after, effects = M.step(snap(State.IDLE), m.ButtonPressed())
    assert after.epoch == 6
    timers = [e for e in effects if isinstance(e, m.StartTimer)]
    assert timers == [m.StartTimer(TimerName.CONNECT, T.connect_s, 6)]


def test_unknown_pair_returns_the_same_snapshot() -> None:
    before = snap(State.SPEAKING)
    assert M.step(before, m.WakeDetected("x"))[0].state is State.LISTENING
    assert M.step(before, m.SessionUp()) == (before, ())


def test_offline_backs_off_exponentially_and_honours_retry_after() -> None:
    s = m.Snapshot()
    waits = []
    for _ in range(8):
        s, _ = M.step(s, m.ButtonPressed())
        s, effects = M.step(s, m.SessionFailed("server down", offline=True))
        assert s.state is State.OFFLINE
        (timer,) = [e for e in effects if isinstance(e, m.StartTimer)]
        waits.append(timer.seconds)
        s, effects = M.step(s, m.TimerFired(TimerName.RETRY, timer.epoch))
        assert s.state is State.OFFLINE, "OFFLINE until the server is seen again"
        assert m.Probe() in effects
        s, _ = M.step(s, m.Reachable())
        assert s.state is State.IDLE
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60]
    s, _ = M.step(s, m.ButtonPressed())
    s, effects = M.step(s, m.SessionFailed("429", offline=True, retry_after=90))
    assert [e.seconds for e in effects if isinstance(e, m.StartTimer)] == [90]
    s, _ = M.step(s, m.ButtonPressed())
    s, _ = M.step(s, m.SessionUp())
    assert s.failures == 0, "a good session resets the back-off"


def test_a_whole_push_to_talk_turn() -> None:
    s = m.Snapshot()
    seen = []
    events: list[m.Event] = [
        m.ButtonPressed(),
        m.ButtonHeld(),
        m.SessionUp(),
        m.ButtonReleased(),
        m.ResponseStarted("r1"),
        m.ReplyAudioStarted("r1"),
        m.ResponseDone("r1", "completed", True),
        m.ReplyAudioStopped("r1"),
    ]
    for event in events:
        s, _ = M.step(s, event)
        seen.append(s.state)
    assert seen == [
        State.CONNECTING,
        State.CONNECTING,
        State.LISTENING,
        State.THINKING,
        State.THINKING,
        State.SPEAKING,
        State.SPEAKING,
        State.IDLE,
    ]
    assert s.session_open
    assert not s.manual_turns


def test_status_text_says_what_the_device_is_doing() -> None:
    from appliance.app import App
    from appliance.audio.base import AudioFormat
    from appliance.audio.wav import WavSink, WavSource
    from appliance.config import Config
    from appliance.realtime.keys import EphemeralKey, StaticKeySource
    from appliance.realtime.tools import builtin_registry

    app = App(
        Config(),
        source=WavSource(None, AudioFormat()),
        sink=WavSink(None, AudioFormat()),
        keys=StaticKeySource(EphemeralKey("ek_x", 0, "http://x")),
        tools=builtin_registry(),
    )
    assert app.status_text() == "idle, press the button to talk"
    app.snapshot, _ = M.step(app.snapshot, m.ButtonPressed())
    app.last_error = "provisioning server unreachable"
    app.snapshot, _ = M.step(app.snapshot, m.SessionFailed("x", offline=True, retry_after=8))
    assert app.status_text() == "offline: provisioning server unreachable, retry in 8 s"


def test_a_conversation_cut_off_reconnects_on_its_own_and_announces_it() -> None:
    s = snap(State.SPEAKING, session_open=True, pending_tools=1)
    s, effects = M.step(s, m.SessionLost("peer connection closed"))
    assert s.state is State.OFFLINE
    assert s.resume
    assert s.pending_tools == 0
    assert m.PlayCue("offline") in effects
    # the first retry reconnects by itself (no button), with the back-off's timer
    (timer,) = [e for e in effects if isinstance(e, m.StartTimer)]
    assert timer.seconds == 1
    s, effects = M.step(s, m.TimerFired(TimerName.RETRY, timer.epoch))
    assert s.state is State.CONNECTING
    assert m.OpenSession() in effects
    assert m.PlayCue("wake") not in effects, "nobody pressed anything"
    # still down: back off, still resuming
    s, effects = M.step(s, m.SessionFailed("unreachable", offline=True))
    assert s.state is State.OFFLINE
    assert s.resume
    assert s.retry_s == 2
    s, _ = M.step(s, m.TimerFired(TimerName.RETRY, s.epoch))
    s, effects = M.step(s, m.SessionUp())
    assert s.state is State.IDLE
    assert s.session_open
    assert not s.resume
    assert s.failures == 0
    assert m.Announce("reconnected") in effects
    # the announcement plays as SPEAKING, then back to IDLE
    s, _ = M.step(s, m.ReplyAudioStarted("r1"))
    assert s.state is State.SPEAKING
    s, _ = M.step(s, m.ReplyAudioStopped("r1"))
    assert s.state is State.IDLE


def test_resuming_gives_up_after_the_attempt_limit_and_a_press_wins() -> None:
    s = snap(State.LISTENING, Mode.HANDS_FREE, session_open=True)
    s, _ = M.step(s, m.SessionLost("closed"))
    for _ in range(m.MAX_RESUME_ATTEMPTS):
        s, _ = M.step(s, m.TimerFired(TimerName.RETRY, s.epoch))
        assert s.state is State.CONNECTING
        s, _ = M.step(s, m.TimerFired(TimerName.CONNECT, s.epoch))  # connect deadline
        assert s.state is State.OFFLINE
    s, _ = M.step(s, m.TimerFired(TimerName.RETRY, s.epoch))
    assert s.state is State.IDLE
    assert not s.resume
    # a press during a resume starts a normal turn (no announcement when it comes up)
    s = snap(State.OFFLINE, resume=True, failures=2)
    s, _ = M.step(s, m.ButtonPressed())
    assert s.state is State.CONNECTING
    assert not s.resume
    s, effects = M.step(s, m.SessionUp())
    assert s.state is State.LISTENING
    assert not any(isinstance(e, m.Announce) for e in effects)


def test_a_long_push_to_talk_question_is_not_the_mute_gesture() -> None:
    s = snap(State.LISTENING, Mode.PUSH_TO_TALK, session_open=True)
    muted, _ = M.step(s, m.MuteToggled())
    assert muted.state is State.MUTED, "a silent long hold mutes"
    s, effects = M.step(s, m.SpeechStarted())  # the local gate heard the user
    assert s.heard_user
    assert effects == ()
    assert M.step(s, m.MuteToggled()) == (s, ())
    s, _ = M.step(s, m.ButtonReleased())
    assert s.state is State.THINKING
    s, _ = M.step(snap(State.IDLE, session_open=True, heard_user=True), m.ButtonPressed())
    assert not s.heard_user, "each turn starts afresh"


def test_a_vanished_audio_device_shows_error_until_it_is_back() -> None:
    s = snap(State.SPEAKING, session_open=True)
    s, effects = M.step(s, m.AudioFault("capture stalled"))
    assert s.state is State.ERROR
    assert s.audio_fault
    assert effects == (
        m.CloseUplink(),
        m.CancelReply(),
        m.CloseSession(),
        m.PlayCue("error"),
        m.StartTimer(TimerName.ERROR_HOLD, T.error_hold_s, 6),
    )
    held = M.step(s, m.TimerFired(TimerName.ERROR_HOLD, s.epoch))
    assert held == (s, ()), "no timeout: the fault is shown as long as it lasts"
    assert M.step(s, m.ButtonPressed()) == (s, ()), "nothing to talk with"
    s, _ = M.step(s, m.AudioRestored())
    assert s.state is State.IDLE
    assert not s.audio_fault
    muted, _ = M.step(snap(State.MUTED), m.AudioFault("gone"))
    assert muted.state is State.MUTED
    assert muted.audio_fault


def test_a_hands_free_user_who_keeps_talking_gets_the_turn_cap_not_the_no_speech_timer() -> None:
    s = snap(State.LISTENING, Mode.HANDS_FREE, session_open=True)
    s, effects = M.step(s, m.SpeechStarted())
    (timer,) = [e for e in effects if isinstance(e, m.StartTimer)]
    assert timer.name is TimerName.MAX_TURN


def test_dictation_keeps_listening_until_silence_or_a_press() -> None:
    dictation = m.Machine(policy=m.Policy.DICTATION)
    s = snap(State.LISTENING, Mode.HANDS_FREE, session_open=True)
    s, _ = dictation.step(s, m.SpeechStarted())
    s, effects = dictation.step(s, m.SpeechStopped())
    assert s.state is State.LISTENING, "a pause is not the end of a dictation"
    (timer,) = [e for e in effects if isinstance(e, m.StartTimer)]
    assert timer.name is TimerName.NO_SPEECH
    idle = m.StartTimer(TimerName.SESSION_IDLE, T.session_idle_s, s.epoch + 1)
    s2, effects = dictation.step(s, m.TimerFired(TimerName.NO_SPEECH, s.epoch))
    assert s2.state is State.IDLE
    assert effects == (m.CloseUplink(), m.PlayCue("end"), idle), "no response is asked for"
    s3, effects = dictation.step(s, m.ButtonPressed())
    assert s3.state is State.IDLE
    assert effects == (m.CloseUplink(), m.PlayCue("end"), idle)
    long, _ = dictation.step(s, m.SpeechStarted())
    long, effects = dictation.step(long, m.TimerFired(TimerName.MAX_TURN, long.epoch))
    assert long.state is State.LISTENING
    timer = m.StartTimer(TimerName.MAX_TURN, T.max_turn_s, long.epoch)
    assert effects == (m.CommitInput(), timer), "a long dictation is committed"
    released, effects = dictation.step(replace(s, mode=Mode.PUSH_TO_TALK), m.ButtonReleased())
    assert released.state is State.IDLE
    assert effects == (m.CloseUplink(), m.CommitInput(), m.PlayCue("end"), idle)
    # the same events under the conversation policy end the turn and ask for a reply
    s, effects = M.step(snap(State.LISTENING, Mode.HANDS_FREE), m.SpeechStopped())
    assert s.state is State.THINKING


def run(s: m.Snapshot, events: list[m.Event]) -> tuple[m.Snapshot, list[State], list[m.Effect]]:
    """Feed ``events``; return the last snapshot, the state after each, and all effects."""
    states: list[State] = []
    effects: list[m.Effect] = []
    for event in events:
        s, out = M.step(s, event)
        states.append(s.state)
        effects.extend(e for e in out if not isinstance(e, m.StartTimer))
    return s, states, effects


WARM_THINKING = snap(State.THINKING, session_open=True)


def test_parallel_tool_calls_run_together_then_one_response_create() -> None:
    s, states, effects = run(
        WARM_THINKING,
        [
            m.ResponseStarted("r1"),
            m.ToolCallRequested("c1", "get_time", "{}"),
            m.ToolFinished("c1", '{"time": "10:42"}'),  # before the second call even arrives
            m.ToolCallRequested("c2", "list_timers", "{}"),
            m.ToolFinished("c2", '{"timers": []}'),
            m.ResponseDone("r1", "completed"),
        ],
    )
    assert effects == [
        m.RunTool("c1", "get_time", "{}"),
        m.SendToolOutput("c1", '{"time": "10:42"}'),
        m.RunTool("c2", "list_timers", "{}"),
        m.SendToolOutput("c2", '{"timers": []}'),
        m.RequestResponse(),
    ]
    assert set(states) == {State.THINKING}
    assert s.awaiting_reply
    assert not s.outputs_due


def test_the_response_is_asked_for_after_the_last_tool_when_the_response_is_done() -> None:
    s, _, effects = run(
        WARM_THINKING,
        [
            m.ResponseStarted("r1"),
            m.ToolCallRequested("c1", "a", "{}"),
            m.ToolCallRequested("c2", "b", "{}"),
            m.ResponseDone("r1", "completed"),
            m.ToolFinished("c2", "{}"),
        ],
    )
    assert m.RequestResponse() not in effects
    s, out = M.step(s, m.ToolFinished("c1", "{}"))
    timer = m.StartTimer(TimerName.REPLY, T.reply_s, s.epoch)
    assert out == (m.SendToolOutput("c1", "{}"), m.RequestResponse(), timer)
    assert s.state is State.THINKING


@pytest.mark.parametrize("stopped_first", [False, True], ids=["done-then-stopped", "stopped-first"])
def test_a_spoken_preamble_before_a_tool_call_does_not_end_the_reply(stopped_first: bool) -> None:
    """ "Let me check" plays, then a tool runs: the turn stays THINKING/SPEAKING until the
    answer after the tool has played, in either order of ``response.done`` and the end
    of the preamble's audio."""
    end_of_preamble: list[m.Event] = [
        m.ResponseDone("r1", "completed", True),
        m.ReplyAudioStopped("r1"),
    ]
    if stopped_first:
        end_of_preamble.reverse()
    s, states, effects = run(
        WARM_THINKING,
        [
            m.ResponseStarted("r1"),
            m.ReplyAudioStarted("r1"),
            m.ToolCallRequested("c1", "get_time", "{}"),
            *end_of_preamble,
            m.ToolFinished("c1", "{}"),
        ],
    )
    assert State.IDLE not in states
    assert effects == [
        m.RunTool("c1", "get_time", "{}"),
        m.SendToolOutput("c1", "{}"),
        m.RequestResponse(),
    ]
    assert s.state is State.THINKING
    s, states, _ = run(
        s,
        [
            m.ResponseStarted("r2"),
            m.ReplyAudioStarted("r2"),
            m.ResponseDone("r2", "completed", True),
            m.ReplyAudioStopped("r2"),
        ],
    )
    assert states == [State.THINKING, State.SPEAKING, State.SPEAKING, State.IDLE]


def test_a_reply_whose_audio_pauses_mid_response_waits_for_the_response() -> None:
    s, states, _ = run(
        WARM_THINKING,
        [m.ResponseStarted("r1"), m.ReplyAudioStarted("r1"), m.ReplyAudioStopped("r1")],
    )
    assert states[-1] is State.THINKING, "the response is still under way"
    s, _ = M.step(s, m.ResponseDone("r1", "completed", True))
    assert s.state is State.IDLE


def ptt_reply() -> m.Snapshot:
    s, _, effects = run(
        m.Snapshot(session_open=True),
        [
            m.ButtonPressed(),
            m.ButtonHeld(),
            m.ButtonReleased(),
            m.ResponseStarted("r1"),
            m.ReplyAudioStarted("r1"),
        ],
    )
    assert s.state is State.SPEAKING
    assert s.manual_turns
    assert m.SetTurnDetection(server_vad=False) in effects
    return s


def test_a_local_barge_in_after_push_to_talk_switches_server_vad_back_on() -> None:
    s, out = M.step(ptt_reply(), m.SpeechStarted())
    assert (s.state, s.mode) == (State.LISTENING, Mode.HANDS_FREE)
    assert m.SetTurnDetection(server_vad=True) in out
    assert not s.manual_turns
    s, _, effects = run(s, [m.SpeechStarted(), m.SpeechStopped()])
    assert s.state is State.THINKING, "the service's VAD ended the hands-free turn"
    assert not any(isinstance(e, m.SetTurnDetection) for e in effects)


def test_a_wake_word_or_a_tap_over_a_push_to_talk_reply_switches_server_vad_back_on() -> None:
    s, out = M.step(ptt_reply(), m.WakeDetected("okay_nabu"))
    assert m.SetTurnDetection(server_vad=True) in out
    assert not s.manual_turns
    s, out = M.step(ptt_reply(), m.ButtonPressed())
    assert m.SetTurnDetection(server_vad=True) not in out, "a press may become a hold"
    s, out = M.step(s, m.ButtonReleased())
    # a tap runs the no-speech timer, not the turn cap
    timer = m.StartTimer(TimerName.NO_SPEECH, T.no_speech_s, s.epoch)
    assert (s.mode, out) == (Mode.HANDS_FREE, (m.SetTurnDetection(server_vad=True), timer))
    assert not s.manual_turns


TIMEOUT_REPLY: list[m.Event] = [
    m.InputTimedOut(),
    m.ResponseStarted("r1"),
    m.ReplyAudioStarted("r1"),
    m.ResponseDone("r1", "completed", True),
    m.ReplyAudioStopped("r1"),
]
"""The service's idle timeout fires and its reply plays."""


def test_an_idle_timeout_reply_is_followed_by_a_hands_free_turn() -> None:
    s, states, effects = run(
        m.Snapshot(session_open=True),
        TIMEOUT_REPLY,
    )
    assert states[:4] == [State.THINKING, State.THINKING, State.SPEAKING, State.SPEAKING]
    assert (s.state, s.mode) == (State.LISTENING, Mode.HANDS_FREE)
    assert effects[-1] == m.OpenUplink()
    s, _ = M.step(s, m.TimerFired(TimerName.NO_SPEECH, s.epoch))
    assert s.state is State.IDLE
    assert not s.follow_up


def test_a_second_idle_timeout_without_an_answer_closes_the_session() -> None:
    s, _, _ = run(
        m.Snapshot(session_open=True),
        TIMEOUT_REPLY,
    )
    s, _ = M.step(s, m.TimerFired(TimerName.NO_SPEECH, s.epoch))
    s, out = M.step(s, m.InputTimedOut())
    assert (s.state, out) == (State.IDLE, (m.CloseSession(),))
    assert not s.session_open
    answered, _, _ = run(
        replace(s, session_open=True, nudged=True),
        [m.ButtonPressed(), m.ButtonReleased(), m.SpeechStarted()],
    )
    assert not answered.nudged, "the user is back: the next timeout may ask again"


def test_full_duplex_keeps_the_mic_open_once_the_echo_canceller_has_converged() -> None:
    duplex = m.Machine(keep_listening=True)
    turn = snap(State.LISTENING, Mode.HANDS_FREE, session_open=True)
    _, effects = duplex.step(turn, m.SpeechStopped())
    assert m.CloseUplink() in effects, "not converged yet: the model must not hear itself"
    converged, effects = duplex.step(turn, m.EchoConverged(True))
    assert (converged.state, effects) == (State.LISTENING, ())
    s, effects = duplex.step(converged, m.SpeechStopped())
    assert (s.state, effects) == (State.THINKING, (m.StartTimer(TimerName.REPLY, T.reply_s, 6),))
    _, effects = duplex.step(converged, m.ResponseStarted("r1"))
    assert m.CloseUplink() not in effects
    # push-to-talk switched the service's VAD off: nothing would hear a barge-in
    ptt = replace(converged, mode=Mode.PUSH_TO_TALK, manual_turns=True)
    _, effects = duplex.step(ptt, m.ButtonReleased())
    assert effects[0] == m.CloseUplink()
    # the turn is over: the mic closes
    s, _ = duplex.step(s, m.ReplyAudioStarted("r1"))
    _, effects = duplex.step(s, m.ReplyAudioStopped("r1"))
    assert m.CloseUplink() in effects
    # without the setting, convergence changes nothing
    _, effects = M.step(converged, m.SpeechStopped())
    assert m.CloseUplink() in effects
    lost, _ = duplex.step(converged, m.EchoConverged(False))
    assert m.CloseUplink() in duplex.step(lost, m.SpeechStopped())[1]


def test_an_aged_session_is_rolled_over_when_the_turn_is_over() -> None:
    speaking = snap(State.SPEAKING, session_open=True)
    s, effects = M.step(speaking, m.SessionAged())
    assert (s.state, effects) == (State.SPEAKING, ()), "never in the middle of a reply"
    s, effects = M.step(s, m.ReplyAudioStopped("r1"))
    assert (s.state, effects) == (State.IDLE, (m.CloseUplink(), m.CloseSession()))
    assert not s.session_open
    assert not s.session_aged
    idle, effects = M.step(snap(State.IDLE, session_open=True), m.SessionAged())
    assert (idle.state, effects) == (State.IDLE, (m.CloseSession(),))
    assert not idle.session_open
    # the next press opens a new session; its SessionUp forgets the old one's age
    s, _ = M.step(idle, m.ButtonPressed())
    s, _ = M.step(replace(s, session_aged=True), m.SessionUp())
    assert (s.state, s.session_aged) == (State.LISTENING, False)
    assert M.step(snap(State.IDLE), m.SessionAged()) == (snap(State.IDLE), ())
