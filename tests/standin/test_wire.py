"""The stand-in's wire on its own: client events in by type, errors the service's way, server
events out to every outlet; the Live wire's permissions and error shape."""

from __future__ import annotations

import json
from typing import Any

import pytest

from standin.live import LiveWire
from standin.server import Faults
from standin.wire import Wire
from tests.wire import validate_server
from tests.wire_live import validate_live_server

JSON = dict[str, Any]


def wire_with_outlet(wire: Wire) -> list[JSON]:
    out: list[JSON] = []
    wire.attach(out.append)
    return out


def test_client_events_reach_their_handler_and_are_kept() -> None:
    wire = Wire("rtc_test", Faults())
    handled: list[tuple[JSON, str | None]] = []
    wire.handlers = {"response.cancel": lambda data, event_id: handled.append((data, event_id))}
    wire.receive(json.dumps({"type": "response.cancel", "event_id": "evt_1"}))
    assert handled == [({"type": "response.cancel", "event_id": "evt_1"}, "evt_1")]
    assert wire.received == [{"type": "response.cancel", "event_id": "evt_1"}]


@pytest.mark.parametrize(
    ("message", "code", "event_id"),
    [
        ("{", "invalid_json", None),
        ("[1, 2]", "invalid_json", None),
        ('{"type": "nonsense.event", "event_id": "evt_2"}', "invalid_value", "evt_2"),
        ('{"type": "response.create", "event_id": "evt_3"}', "invalid_value", "evt_3"),
    ],
)
def test_a_bad_client_event_is_answered_with_an_error_and_the_wire_goes_on(
    message: str, code: str, event_id: str | None
) -> None:
    wire = Wire("rtc_test", Faults())

    def needs_a_field(data: JSON, event_id: str | None) -> None:
        data["response"]["instructions"]  # a missing field: KeyError

    wire.handlers = {"response.create": needs_a_field}
    out = wire_with_outlet(wire)
    wire.receive(message)
    (error,) = out
    validate_server(error)
    assert error["error"]["code"] == code
    assert error["error"]["event_id"] == event_id
    wire.receive('{"type": "also.unknown"}')
    assert len(out) == 2, "the wire still answers after an error"


def test_every_outlet_gets_each_event_until_the_wire_is_shut() -> None:
    wire = Wire("rtc_test", Faults())
    first, second = wire_with_outlet(wire), wire_with_outlet(wire)
    event = {"type": "input_audio_buffer.cleared", "event_id": "event_1"}
    wire.send(event)
    assert first == second == wire.sent == [event]
    wire.shut()
    wire.send({"type": "input_audio_buffer.cleared", "event_id": "event_2"})
    assert first == second == wire.sent == [event]


def test_the_stall_fault_sends_nothing() -> None:
    faults = Faults()
    wire = Wire("rtc_test", faults)
    out = wire_with_outlet(wire)
    faults.stall_events = True
    wire.send({"type": "input_audio_buffer.cleared", "event_id": "event_1"})
    assert out == wire.sent == []


def test_raw_text_needs_an_open_data_channel() -> None:
    with pytest.raises(RuntimeError, match="no open data channel"):
        Wire("rtc_test", Faults()).send_raw("{")


def test_a_live_channel_refuses_events_it_is_not_allowed_in_live_shape() -> None:
    config = {"client": {"data_channel": {"allowed_client_events": ["session.close"]}}}
    wire = LiveWire("live_test", Faults(), config)
    closed: list[str | None] = []
    wire.handlers = {
        "session.close": lambda data, event_id: closed.append(event_id),
        "session.update": lambda data, event_id: None,
    }
    out = wire_with_outlet(wire)
    wire.receive(json.dumps({"type": "session.update", "event_id": "evt_1", "session": {}}))
    wire.receive(json.dumps({"type": "session.close", "event_id": "evt_2"}))
    (error,) = out
    validate_live_server(error)
    assert error["error"]["code"] == "event_not_allowed"
    assert error["client_event_id"] == "evt_1"
    assert closed == ["evt_2"]
