"""``make demo BACKEND=live`` end to end over real loopback WebRTC: the same two turns with a
tool call as on the Realtime backend, every Live event both ways strictly valid."""

from __future__ import annotations

import asyncio
import json

import pytest

from appliance_dev.demo import STANDIN_KEY, Report, run_demo
from tests.e2e.test_demo import TWO_TURNS, states
from tests.wire_live import validate_live_client, validate_live_server

pytestmark = pytest.mark.slow  # a whole device in real time against the stand-in


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Report:
    work = tmp_path_factory.mktemp("demo-live")
    return asyncio.run(run_demo(work / "out", work, quiet=True, backend="live"))


def test_both_turns_walk_the_same_states_as_on_realtime(report: Report) -> None:
    assert report.ok
    assert states(report) == TWO_TURNS


def test_the_tool_result_went_back_on_the_data_channel(report: Report) -> None:
    assert report.stats.tool_calls == 1
    kinds = [e["type"] for e in report.client_events]
    outputs = [
        e
        for e in report.client_events
        if e["type"] == "response.item.create" and e["item"]["type"] == "function_call_output"
    ]
    assert len(outputs) == 1
    assert "time" in json.loads(outputs[0]["item"]["output"])
    assert kinds.index("response.create") > kinds.index("response.item.create")
    delegated = [e for e in report.server_events if e["type"] == "session.delegation.created"]
    assert [d["delegation"]["target"] for d in delegated] == ["responses"]


def test_transcripts_reach_the_journal(report: Report) -> None:
    roles = [(role, text[:12]) for role, text in report.stats.transcripts]
    assert roles == [
        ("user", "what is the "),
        ("assistant", "On the moon "),
        ("user", "what time is"),
        ("assistant", "It is " + report.stats.transcripts[-1][1][6:12]),
    ]


def test_every_event_is_valid_live_wire(report: Report) -> None:
    assert report.server_events[0]["type"] == "session.started", "nothing before session.started"
    for event in report.server_events:
        validate_live_server(event)
    for event in report.client_events:
        validate_live_client(event)
    sent = {e["type"] for e in report.client_events}
    assert {"session.input_audio.mute", "session.input_audio.unmute"} <= sent


def test_the_device_never_sees_the_project_key(report: Report) -> None:
    assert STANDIN_KEY not in json.dumps(report.server_events)
    assert STANDIN_KEY not in json.dumps(report.client_events)
