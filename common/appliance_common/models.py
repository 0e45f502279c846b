"""The model catalogue every part agrees on: defaults, announced shutdowns, replacements.

The provisioning server's lifecycle guard (``provisioning.models``), the device's config
defaults and the stand-in's ``GET /v1/models`` all read these, so one edit moves them together.
"""

from __future__ import annotations

import datetime as dt

DEFAULT_MODEL = "gpt-realtime-2.1"
"""The Realtime model a group gets unless its profile names another."""
DEFAULT_MINI_MODEL = "gpt-realtime-2.1-mini"
DEFAULT_TRANSCRIPTION_MODEL = "gpt-realtime-whisper"
"""Input transcription: natively streaming, made for Realtime sessions (docs/models.md)."""

_REALTIME_SHUTDOWN = dt.date(2027, 1, 20)
"""``RealtimeSessionCreateRequest.model`` docstring, openai 3.63."""
_TRANSCRIPTION_SHUTDOWN = dt.date(2027, 2, 26)
"""``AudioTranscription.model`` docstring, openai 3.63."""

SHUTDOWN_DATES: dict[str, dt.date | None] = {
    # speech-to-speech (session.model)
    "gpt-realtime-2.1": None,
    "gpt-realtime-2.1-mini": None,
    "gpt-realtime-2": None,
    "gpt-realtime-1.5": None,
    "gpt-realtime-mini-2025-10-06": None,
    "gpt-audio-1.5": None,
    "gpt-audio-mini-2025-10-06": None,
    "gpt-realtime": _REALTIME_SHUTDOWN,
    "gpt-realtime-2025-08-28": _REALTIME_SHUTDOWN,
    "gpt-realtime-mini": _REALTIME_SHUTDOWN,
    "gpt-realtime-mini-2025-12-15": _REALTIME_SHUTDOWN,
    "gpt-audio-mini": _REALTIME_SHUTDOWN,
    "gpt-audio-mini-2025-12-15": _REALTIME_SHUTDOWN,
    # input transcription (audio.input.transcription.model)
    "gpt-realtime-whisper": None,
    "gpt-transcribe": None,
    "gpt-live-transcribe": None,
    "whisper-1": _TRANSCRIPTION_SHUTDOWN,
    "gpt-4o-transcribe": _TRANSCRIPTION_SHUTDOWN,
    "gpt-4o-mini-transcribe": _TRANSCRIPTION_SHUTDOWN,
    "gpt-4o-mini-transcribe-2025-12-15": _TRANSCRIPTION_SHUTDOWN,
    "gpt-4o-transcribe-diarize": _TRANSCRIPTION_SHUTDOWN,
}
"""Models this server knows, with their announced shutdown date (``None``: none announced)."""

REPLACEMENTS: dict[str, str] = {
    "gpt-realtime": DEFAULT_MODEL,
    "gpt-realtime-2025-08-28": DEFAULT_MODEL,
    "gpt-realtime-mini": DEFAULT_MINI_MODEL,
    "gpt-realtime-mini-2025-12-15": DEFAULT_MINI_MODEL,
    "gpt-audio-mini": DEFAULT_MINI_MODEL,
    "gpt-audio-mini-2025-12-15": DEFAULT_MINI_MODEL,
    "whisper-1": DEFAULT_TRANSCRIPTION_MODEL,
    "gpt-4o-transcribe": DEFAULT_TRANSCRIPTION_MODEL,
    "gpt-4o-mini-transcribe": DEFAULT_TRANSCRIPTION_MODEL,
    "gpt-4o-mini-transcribe-2025-12-15": DEFAULT_TRANSCRIPTION_MODEL,
}
"""The recommended replacement of each model with a shutdown date (diarize has none here)."""
