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


def extras(value: Any, path: str = "") -> list[str]:
    """Dotted paths of the fields in a validated event (or model) that the types do not
    define: the ``openai`` models accept unknown fields, so a misspelt or invented field
    passes validation silently; this finds it."""
    from pydantic import BaseModel

    found: list[str] = []
    if isinstance(value, BaseModel):
        found += [f"{path}{name}" for name in value.model_extra or {}]
        for name in type(value).model_fields:
            found += extras(getattr(value, name), f"{path}{name}.")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found += extras(item, f"{path}{i}.")
    return found
