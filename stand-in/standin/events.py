"""Builders for the GA server events the stand-in sends, as plain dicts.

Shapes follow the reference (§3, §4.2) and validate against the ``openai`` package's
``RealtimeServerEvent`` (checked in tests/standin). Every event gets a fresh ``event_id``.
"""

from __future__ import annotations

import copy
import secrets
import time
from typing import Any

from appliance_common.models import DEFAULT_MODEL, DEFAULT_TRANSCRIPTION_MODEL

JSON = dict[str, Any]


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def event(kind: str, **fields: Any) -> JSON:
    return {"type": kind, "event_id": new_id("event"), **fields}


DEFAULT_TURN_DETECTION: JSON = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "idle_timeout_ms": None,
    "create_response": True,
    "interrupt_response": True,
}


def default_session(model: str = DEFAULT_MODEL) -> JSON:
    """The full session object a new realtime session starts with (reference §2)."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": new_id("sess"),
        "model": model,
        "output_modalities": ["audio"],
        "instructions": "You are a helpful voice assistant. Answer briefly.",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": 0,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": copy.deepcopy(DEFAULT_TURN_DETECTION),
            },
            "output": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "voice": "alloy",
                "speed": 1.0,
            },
        },
        "include": None,
    }


def default_transcription_session() -> JSON:
    return {
        "type": "transcription",
        "object": "realtime.transcription_session",
        "id": new_id("sess"),
        "expires_at": 0,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": {
                    "model": DEFAULT_TRANSCRIPTION_MODEL,
                    "language": None,
                    "prompt": "",
                },
                "noise_reduction": None,
                "turn_detection": copy.deepcopy(DEFAULT_TURN_DETECTION),
            }
        },
        "include": None,
    }


def error(
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    event_id: str | None = None,
    kind: str = "invalid_request_error",
) -> JSON:
    return event(
        "error",
        error={
            "type": kind,
            "code": code,
            "message": message,
            "param": param,
            "event_id": event_id,
        },
    )


def user_audio_item(item_id: str, transcript: str | None) -> JSON:
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": "completed",
        "role": "user",
        "content": [{"type": "input_audio", "transcript": transcript}],
    }


def assistant_item(item_id: str, status: str, transcript: str | None) -> JSON:
    content: list[JSON] = []
    if transcript is not None:
        content.append({"type": "output_audio", "transcript": transcript})
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def function_call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> JSON:
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def response_object(
    response_id: str,
    *,
    status: str,
    output: list[JSON],
    conversation_id: str | None,
    metadata: dict[str, str] | None,
    voice: str,
    modalities: list[str],
    status_reason: str | None = None,
    usage: JSON | None = None,
    max_output_tokens: int | str = "inf",
) -> JSON:
    obj: JSON = {
        "id": response_id,
        "object": "realtime.response",
        "status": status,
        "status_details": None,
        "output": output,
        "conversation_id": conversation_id,
        "output_modalities": modalities,
        "max_output_tokens": max_output_tokens,
        "audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": voice}},
        "usage": usage,
        "metadata": metadata,
    }
    if status_reason is not None:
        obj["status_details"] = {"type": status, "reason": status_reason, "error": None}
    return obj


def usage(input_tokens: int, output_text: int, output_audio: int) -> JSON:
    return {
        "total_tokens": input_tokens + output_text + output_audio,
        "input_tokens": input_tokens,
        "output_tokens": output_text + output_audio,
        "input_token_details": {
            "cached_tokens": 0,
            "text_tokens": input_tokens,
            "audio_tokens": 0,
            "image_tokens": 0,
            "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": output_text, "audio_tokens": output_audio},
    }


def rate_limits(tokens_reserved: int) -> JSON:
    return event(
        "rate_limits.updated",
        rate_limits=[
            {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
            {
                "name": "tokens",
                "limit": 400000,
                "remaining": 400000 - tokens_reserved,
                "reset_seconds": round(time.time() % 1, 3),
            },
        ],
    )
