"""The device's session.update, from its settings: every field it may send is one the
``openai`` package's GA types define, with the shape they define."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from openai.types.realtime import RealtimeSessionCreateRequest

from appliance.config import Config, DeviceConfig, RealtimeConfig
from appliance.realtime import messages as msg
from appliance.realtime import session_config
from appliance.realtime.tools import builtin_registry
from tests.wire import extras, validate_client

TOOLS = builtin_registry().schemas()


def build(board: str = "generic", **realtime: Any) -> dict[str, Any]:
    config = Config(
        device=DeviceConfig(board=board), realtime=replace(RealtimeConfig(), **realtime)
    )
    session = session_config.build(config, TOOLS)
    event = validate_client(msg.session_update(session))
    assert extras(event) == [], "a field the GA types do not know"
    return session


def test_defaults_send_none_of_the_reasoning_model_settings() -> None:
    session = build()
    for key in ("reasoning", "parallel_tool_calls", "max_output_tokens", "truncation"):
        assert key not in session, f"{key}: left to the group profile"
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert "idle_timeout_ms" not in session["audio"]["input"]["turn_detection"]


@pytest.mark.parametrize("effort", ["minimal", "low", "medium", "high", "xhigh"])
def test_reasoning_effort(effort: str) -> None:
    session = build(reasoning_effort=effort, parallel_tool_calls=True)
    request = RealtimeSessionCreateRequest.model_validate(session)
    assert request.reasoning is not None
    assert request.reasoning.effort == effort
    assert request.parallel_tool_calls is True


@pytest.mark.parametrize(
    ("settings", "wanted"),
    [
        ({"truncation": "auto"}, "auto"),
        ({"truncation": "disabled"}, "disabled"),
        (
            {"truncation": "retention_ratio", "retention_ratio": 0.7},
            {"type": "retention_ratio", "retention_ratio": 0.7},
        ),
        (
            {
                "truncation": "retention_ratio",
                "retention_ratio": 0.5,
                "truncation_token_limit": 8000,
            },
            {
                "type": "retention_ratio",
                "retention_ratio": 0.5,
                "token_limits": {"post_instructions": 8000},
            },
        ),
    ],
)
def test_truncation(settings: dict[str, Any], wanted: object) -> None:
    session = build(**settings, max_output_tokens=512)
    assert session["truncation"] == wanted
    request = RealtimeSessionCreateRequest.model_validate(session)
    assert request.max_output_tokens == 512


@pytest.mark.parametrize("eagerness", ["low", "medium", "high", "auto"])
def test_semantic_vad_eagerness(eagerness: str) -> None:
    session = build(turn_detection="semantic_vad", eagerness=eagerness)
    turn = session["audio"]["input"]["turn_detection"]
    assert turn == {"type": "semantic_vad", "eagerness": eagerness}


def test_server_vad_idle_timeout() -> None:
    session = build(idle_timeout_ms=6000)
    assert session["audio"]["input"]["turn_detection"]["idle_timeout_ms"] == 6000


@pytest.mark.parametrize(
    ("board", "setting", "wanted"),
    [
        ("generic", "board", {"type": "near_field"}),
        ("respeaker-4mic", "board", {"type": "far_field"}),
        ("respeaker-2mic", "board", {"type": "far_field"}),
        ("aiy-voice", "board", {"type": "far_field"}),
        ("respeaker-4mic", "near_field", {"type": "near_field"}),
        ("generic", "off", None),
    ],
)
def test_noise_reduction_follows_the_board(board: str, setting: str, wanted: object) -> None:
    session = build(board, noise_reduction=setting)
    assert session["audio"]["input"]["noise_reduction"] == wanted


def test_a_transcription_session_gets_noise_reduction_too() -> None:
    session = build("respeaker-4mic", mode="transcription")
    assert session["type"] == "transcription"
    assert session["audio"]["input"]["noise_reduction"] == {"type": "far_field"}


def test_turn_detection_switched_back_on_keeps_its_settings() -> None:
    turn = session_config.turn_detection(
        Config(realtime=RealtimeConfig(turn_detection="semantic_vad", eagerness="low"))
    )
    event = validate_client(msg.turn_detection_update(turn))
    assert extras(event) == []
