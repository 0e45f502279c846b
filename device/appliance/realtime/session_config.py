"""The session config the device asks for in ``session.update``, from its settings.

Only what the device's config sets is sent: anything left empty keeps what the fleet's
group profile minted into the key (``client_secrets``). Shapes follow the ``openai``
package's ``RealtimeSessionCreateRequest`` (checked in tests/realtime/test_session_config.py).
"""

from __future__ import annotations

from typing import Any

from appliance.boards import PROFILES
from appliance.config import Config
from appliance_common.models import DEFAULT_TRANSCRIPTION_MODEL

JSON = dict[str, Any]


def turn_detection(config: Config) -> JSON:
    rt = config.realtime
    turn: JSON = {"type": rt.turn_detection}
    if rt.turn_detection == "server_vad":
        turn |= {
            "threshold": rt.vad_threshold,
            "silence_duration_ms": rt.silence_ms,
            "prefix_padding_ms": rt.prefix_padding_ms,
        }
        if rt.idle_timeout_ms:
            turn["idle_timeout_ms"] = rt.idle_timeout_ms
    else:
        turn["eagerness"] = rt.eagerness
    return turn


def noise_reduction(config: Config) -> JSON | None:
    """``{"type": near_field | far_field}`` or ``None`` (off); ``board`` asks the board."""
    wanted = config.realtime.noise_reduction
    if wanted == "board":
        board = PROFILES.get(config.device.board)
        wanted = board.mic_field if board is not None else "near_field"
    return None if wanted == "off" else {"type": wanted}


def truncation(config: Config) -> str | JSON | None:
    rt = config.realtime
    if rt.truncation != "retention_ratio":
        return rt.truncation or None
    out: JSON = {"type": "retention_ratio", "retention_ratio": rt.retention_ratio}
    if rt.truncation_token_limit:
        out["token_limits"] = {"post_instructions": rt.truncation_token_limit}
    return out


def build(config: Config, tools: list[JSON]) -> JSON:
    """The ``session`` of the device's ``session.update`` (``tools``: the tool schemas)."""
    rt = config.realtime
    audio_in: JSON = {"turn_detection": turn_detection(config)}
    audio_in["noise_reduction"] = noise_reduction(config)
    if rt.mode == "transcription":
        model = rt.transcription_model or DEFAULT_TRANSCRIPTION_MODEL
        audio_in["transcription"] = {"model": model}
        return {"type": "transcription", "audio": {"input": audio_in}}
    if rt.transcription_model:
        audio_in["transcription"] = {"model": rt.transcription_model}
    session: JSON = {
        "type": "realtime",
        "audio": {"input": audio_in, "output": {"voice": rt.voice}},
    }
    if rt.instructions:
        session["instructions"] = rt.instructions
    if rt.tools:
        session["tools"] = tools
    if rt.reasoning_effort:
        session["reasoning"] = {"effort": rt.reasoning_effort}
    if rt.parallel_tool_calls is not None:
        session["parallel_tool_calls"] = rt.parallel_tool_calls
    if rt.max_output_tokens:
        session["max_output_tokens"] = rt.max_output_tokens
    cut = truncation(config)
    if cut is not None:
        session["truncation"] = cut
    return session
