"""Property: whatever a server event holds, the call stays up and the state machine stays
consistent (issue 14's error boundary).

For every event type in the ``openai`` package's ``RealtimeServerEvent`` union, Hypothesis
builds valid events from the type's JSON schema, mutates them (wrong types, missing and extra
fields, huge strings, NaN and infinities, deep nesting) and the stand-in sends each one over
the data channel of one live call to the whole device (``App``). After each, the device must
have read it, still be on the same call, and its snapshot must make sense. A last test then
has a normal conversation on that call.

The live call runs on its own event loop in a thread; Hypothesis drives it from the test's
thread. ``FUZZ_EXAMPLES`` sets the examples per event type (default 20).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import typing
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from openai.types.realtime import RealtimeServerEvent
from pydantic import ValidationError

from appliance import machine as m
from appliance.realtime.webrtc import RealtimeSession
from standin import StandIn, StandInConfig
from tests.e2e.harness import Device, device
from tests.standin.conftest import API_KEY
from tests.waiting import LogWatch
from tests.wire import validate_server

# The live call's thread uses the global ``random`` (aiortc's RTCP intervals, the retry
# jitter) while Hypothesis draws in this one; Hypothesis's own generation is unaffected.
pytestmark = [
    pytest.mark.slow,  # a live call, fuzzed
    pytest.mark.filterwarnings(
        "ignore:Do not use the `random` module inside strategies"
        ":hypothesis.errors.HypothesisDeprecationWarning"
    ),
]
T = TypeVar("T")
JSON = dict[str, Any]
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "20"))
DEEP = "__deeply_nested__"
"""Stands for a value nested thousands of levels deep (written into the JSON text directly:
``json.dumps`` itself would hit the recursion limit)."""


def _members() -> dict[str, type[Any]]:
    union = typing.get_args(RealtimeServerEvent)[0]  # Annotated[Union[...], discriminator]
    models: dict[str, type[Any]] = {}
    for model in typing.get_args(union):
        (kind,) = typing.get_args(model.model_fields["type"].annotation)
        models[str(kind)] = model
    return models


MODELS = _members()

# ------------------------------------------------------------------ valid events, from schemas

LEAF = st.one_of(st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.text(max_size=12))


def from_schema(schema: JSON, defs: JSON, depth: int = 0) -> st.SearchStrategy[Any]:
    """Values that satisfy a (pydantic-made) JSON schema; nesting is kept shallow."""
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        return st.deferred(lambda: from_schema(target, defs, depth + 1))
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = schema[key] if key != "allOf" else schema[key][:1]
            return st.one_of([from_schema(option, defs, depth + 1) for option in options])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema({**schema, "type": k}, defs, depth) for k in kind])
    match kind:
        case "object":
            props: JSON = schema.get("properties", {})
            required = set(schema.get("required", []))
            if not props:
                extra = schema.get("additionalProperties")
                values = from_schema(extra, defs, depth + 1) if isinstance(extra, dict) else LEAF
                return st.dictionaries(st.text(max_size=8), values, max_size=2)
            if depth <= 3:  # near the top every field is there, so there is more to mutate
                required = set(props)
            shallow = depth > 6
            return st.fixed_dictionaries(
                {k: from_schema(v, defs, depth + 1) for k, v in props.items() if k in required},
                optional={}
                if shallow
                else {
                    k: from_schema(v, defs, depth + 1)
                    for k, v in props.items()
                    if k not in required
                },
            )
        case "array":
            items = from_schema(schema.get("items", {}), defs, depth + 1)
            # near the top, something to mutate inside; deep down, short
            return st.lists(items, min_size=int(depth <= 3), max_size=0 if depth > 6 else 2)
        case "string":
            return st.text(max_size=20)
        case "integer":
            low, high = schema.get("minimum", -(10**6)), schema.get("maximum", 10**6)
            return st.integers(int(low), int(high))
        case "number":
            return st.floats(
                schema.get("minimum", -1e6),
                schema.get("maximum", 1e6),
                allow_nan=False,
                allow_infinity=False,
            )
        case "boolean":
            return st.booleans()
        case "null":
            return st.none()
    return LEAF


def valid_events(kind: str) -> st.SearchStrategy[JSON]:
    schema = MODELS[kind].model_json_schema()
    return typing.cast(st.SearchStrategy[JSON], from_schema(schema, schema.get("$defs", {})))


# ------------------------------------------------------------------ mutations

WEIRD = st.one_of(
    LEAF,
    st.just(float("nan")),
    st.sampled_from([float("inf"), float("-inf"), -0.0, 1e308, 2**64, -(2**63)]),
    st.text(min_size=1000, max_size=40_000),  # huge strings
    st.lists(LEAF, max_size=5),
    st.dictionaries(st.text(max_size=8), LEAF, max_size=4),
    st.just(DEEP),
    st.just("\x00\ud800"),  # a NUL and a lone surrogate (escaped by json.dumps)
)


def other_type(value: Any) -> st.SearchStrategy[Any]:
    """A value of another JSON type than ``value`` (e.g. ``"remaining": "abc"``)."""
    if isinstance(value, bool) or value is None:
        return st.one_of(st.text(max_size=5), st.integers(), st.lists(LEAF, max_size=2))
    if isinstance(value, int | float):
        return st.one_of(st.sampled_from(["abc", "", "12abc", "NaN"]), st.none(), st.just([]))
    if isinstance(value, str):
        return st.one_of(st.integers(), st.floats(), st.dictionaries(st.text(max_size=3), LEAF))
    if isinstance(value, list):
        return st.one_of(st.text(max_size=5), st.dictionaries(st.text(max_size=3), LEAF))
    return st.one_of(st.text(max_size=5), st.lists(LEAF, max_size=2), st.integers())


def spray(value: Any, data: st.DataObject, top: bool = False) -> Any:
    """Everywhere at once: each field kept, given another type, or dropped."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            action = (
                "keep"
                if top and key == "type"
                else data.draw(st.sampled_from(["keep", "keep", "retype", "drop"]))
            )
            if action == "retype":
                out[key] = data.draw(other_type(item))
            elif action == "keep":
                out[key] = spray(item, data)
        return out
    if isinstance(value, list):
        return [spray(item, data) for item in value]
    return value


def mutate(value: Any, data: st.DataObject, top: bool = False) -> Any:
    """One mutation somewhere in ``value``: replace, delete or add a field, or go deeper."""
    if isinstance(value, dict) and value:
        keys = [k for k in value if not (top and k == "type")]
        action = data.draw(st.sampled_from(["replace", "delete", "extra", "deeper", "deeper"]))
        if action == "extra" or not keys:
            return {**value, data.draw(st.text(max_size=12)): data.draw(WEIRD)}
        key = data.draw(st.sampled_from(keys))
        if action == "delete":
            return {k: v for k, v in value.items() if k != key}
        if action == "replace":
            return {**value, key: data.draw(WEIRD)}
        return {**value, key: mutate(value[key], data)}
    if isinstance(value, list) and value:
        index = data.draw(st.integers(0, len(value) - 1))
        return [*value[:index], mutate(value[index], data), *value[index + 1 :]]
    return data.draw(WEIRD)


def to_text(event: Any, depth: int) -> str:
    text = json.dumps(event)  # NaN and infinities become NaN / Infinity, as a lax peer sends
    return text.replace(json.dumps(DEEP), "[" * depth + "]" * depth)


# ------------------------------------------------------------------ the live call


class LiveCall:
    """The device on a call to the stand-in, on an event loop in a thread of its own."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.loop: asyncio.AbstractEventLoop | None = None
        self.dev: Device | None = None
        self.standin: StandIn | None = None
        self.session: RealtimeSession | None = None
        self.ready = threading.Event()
        self.failed: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="live-call", daemon=True)
        self.read = LogWatch()
        """The session's "in: <event>" record for every server event the device read."""
        self._markers = 0

    def start(self) -> None:
        self._thread.start()
        assert self.ready.wait(60), "the live call did not come up"
        if self.failed is not None:
            raise self.failed

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _main(self) -> None:
        logger = logging.getLogger("appliance.realtime.webrtc")
        logger.addHandler(self.read)
        self.read.debug(logger.name)
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to the test thread
            self.failed = exc
            self.ready.set()
        finally:
            self.read.restore()
            logger.removeHandler(self.read)

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with (
            StandIn(StandInConfig(api_key=API_KEY)) as standin,
            device(standin, self.tmp, idle_close_s=3600.0, reply_s=5.0, no_speech_s=2.0) as dev,
        ):
            self.standin, self.dev = standin, dev
            await dev.push_to_talk()  # a real turn first: a warm session to fuzz
            await dev.wait(m.State.SPEAKING, 20)
            await dev.wait(m.State.IDLE, 20)
            self.session = dev.app.session
            self.ready.set()
            await self._stop.wait()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def deliver(self, text: str) -> None:
        """Send ``text`` then a marker on the data channel; return once the device read both
        (the channel is ordered)."""
        assert self.standin is not None
        assert self.session is not None
        session = self.session
        call = self.standin.calls.get(str(session.call_id))
        assert call is not None, "the stand-in closed the call"
        before = session.messages_in
        call.wire.send_raw(text)  # as it is: the stand-in's own send would re-encode it
        call.wire.send_raw(json.dumps({"type": "fuzz.marker", "event_id": "fuzz_marker"}))
        self._markers += 1
        await self.read.wait_for("in: fuzz.marker", self._markers, within=10)
        assert session.messages_in >= before + 2, "the device read both, in order"

    async def problems(self) -> list[str]:
        """What is wrong with the call or the snapshot now (empty: nothing)."""
        assert self.dev is not None
        app, snap = self.dev.app, self.dev.app.snapshot
        found = []
        if app.session is not self.session:
            found.append(f"the call was dropped ({app.last_error!r})")
        elif self.session is None or not self.session.accepting_audio:
            found.append("the call no longer carries audio")
        if not snap.session_open:
            found.append("the machine thinks no session is open")
        if snap.pending_tools < 0:
            found.append(f"pending_tools {snap.pending_tools}")
        if snap.state in (m.State.OFFLINE, m.State.CONNECTING, m.State.MUTED):
            found.append(f"state {snap.state.name}")
        if snap.mode is not m.Mode.NONE and snap.state is not m.State.LISTENING:
            found.append(f"mode {snap.mode.name} in {snap.state.name}")
        return found


class ErrorRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def errors() -> Iterator[ErrorRecords]:
    handler = ErrorRecords()
    logging.getLogger("appliance").addHandler(handler)
    yield handler
    logging.getLogger("appliance").removeHandler(handler)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, errors: ErrorRecords) -> Iterator[LiveCall]:
    call = LiveCall(tmp_path_factory.mktemp("fuzz"))
    call.start()
    yield call
    call.stop()


def test_the_generator_makes_valid_events_of_every_type() -> None:
    """The mutations start from valid events (else the fuzz would test rejects only)."""
    assert len(MODELS) >= 40
    invalid: dict[str, str] = {}

    def check(kind: str, event: JSON) -> None:
        try:
            validate_server(event)
        except ValidationError as exc:
            invalid.setdefault(kind, str(exc).splitlines()[1])

    def checker(kind: str) -> typing.Callable[[], None]:
        @settings(max_examples=5, database=None, deadline=None)
        @given(event=valid_events(kind))
        def make(event: JSON) -> None:
            check(kind, event)

        return make

    for kind in sorted(MODELS):
        checker(kind)()
    assert invalid == {}


@pytest.mark.parametrize("kind", sorted(MODELS))
@settings(
    max_examples=EXAMPLES,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_a_mutated_event_never_breaks_the_call(
    live: LiveCall, errors: ErrorRecords, kind: str, data: st.DataObject
) -> None:
    event = data.draw(valid_events(kind), label="valid event")
    if data.draw(st.booleans(), label="spray"):
        event = spray(event, data, top=True)
    for _ in range(data.draw(st.integers(0, 2), label="point mutations")):
        event = mutate(event, data, top=True)
    error = event.get("error") if isinstance(event, dict) else None
    assume(not (isinstance(error, dict) and error.get("code") == "session_expired"))
    text = to_text(event, data.draw(st.integers(2, 5000), label="nesting"))
    live.run(live.deliver(text))
    assert live.run(live.problems()) == []
    assert [r.getMessage() for r in errors.records] == []


def test_non_event_messages_never_break_the_call(live: LiveCall) -> None:
    for text in ["", "null", "[1, 2]", '"text"', "{", "\x00" * 100, '{"type": 7}', "[" * 100_000]:
        live.run(live.deliver(text[:60_000]))
    assert live.run(live.problems()) == []


def test_after_the_fuzz_the_call_still_holds_a_conversation(live: LiveCall) -> None:
    async def turn() -> None:
        assert live.dev is not None
        assert live.standin is not None
        assert live.session is not None
        call = live.standin.calls[str(live.session.call_id)]
        # the fuzz may have claimed a response that never ends; a real service ends it
        call.wire.send(
            {
                "type": "response.done",
                "event_id": "fuzz_end",
                "response": {"id": "x", "status": "completed"},
            }
        )
        dev = live.dev
        if dev.app.snapshot.state is not m.State.IDLE:
            await dev.wait(m.State.IDLE, 20)
        await dev.push_to_talk("question-time.wav")
        await dev.wait(m.State.SPEAKING, 20)
        await dev.wait(m.State.IDLE, 20)

    live.run(turn(), timeout=90)
    assert live.run(live.problems()) == []
