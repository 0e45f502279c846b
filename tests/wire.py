"""Validate events on the wire against the ``openai`` package's GA types (reference §7).

``openai`` is a test-only dependency: importing its realtime types takes ~1.3 s.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
from pydantic import Field, TypeAdapter

CLIENT: TypeAdapter[Any] = TypeAdapter(Annotated[RealtimeClientEvent, Field(discriminator="type")])
SERVER: TypeAdapter[Any] = TypeAdapter(Annotated[RealtimeServerEvent, Field(discriminator="type")])


def validate_client(event: dict[str, Any] | str) -> Any:
    """Raise ``pydantic.ValidationError`` unless ``event`` is a valid GA client event."""
    data = json.loads(event) if isinstance(event, str) else event
    return CLIENT.validate_python(data)


def validate_server(event: dict[str, Any] | str) -> Any:
    """Raise ``pydantic.ValidationError`` unless ``event`` is a valid GA server event."""
    data = json.loads(event) if isinstance(event, str) else event
    return SERVER.validate_python(data)
