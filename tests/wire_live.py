"""Validate GPT-Live events against ``openai.types.live`` (``openai`` >= 3.63), strictly.

The package's models accept unknown fields (``extra="allow"``); the Live service does not (its
config "rejects unknown fields"), so these validators also refuse any field the types do not
name, at any depth. Free-form fields the types declare as ``Dict[str, object]`` (the nested
Responses event of ``response.event``, JSON schemas) are left as they are.
"""

from __future__ import annotations

import json
from typing import Any

from openai.types.live import ClientEvent, LiveCreateResponse, ServerEvent
from openai.types.live.live_create_params import LiveCreateParams
from pydantic import BaseModel, TypeAdapter

CLIENT: TypeAdapter[Any] = TypeAdapter(ClientEvent)
SERVER: TypeAdapter[Any] = TypeAdapter(ServerEvent)
CREATE: TypeAdapter[Any] = TypeAdapter(LiveCreateParams)


class StrictnessError(ValueError):
    pass


def _no_extras(value: Any, where: str) -> None:
    if isinstance(value, BaseModel):
        extra = value.model_extra or {}
        if extra:
            raise StrictnessError(f"{where}: fields the types do not know: {sorted(extra)}")
        for name in type(value).model_fields:
            _no_extras(getattr(value, name), f"{where}.{name}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _no_extras(item, f"{where}[{i}]")


def _strict(adapter: TypeAdapter[Any], event: dict[str, Any] | str) -> Any:
    data = json.loads(event) if isinstance(event, str) else event
    model = adapter.validate_python(data)
    _no_extras(model, str(data.get("type", "?")))
    return model


def validate_live_client(event: dict[str, Any] | str) -> Any:
    """Raise unless ``event`` is a valid ``openai.types.live.ClientEvent`` (no extra fields)."""
    return _strict(CLIENT, event)


def validate_live_server(event: dict[str, Any] | str) -> Any:
    """Raise unless ``event`` is a valid ``openai.types.live.ServerEvent`` (no extra fields)."""
    return _strict(SERVER, event)


def validate_create_request(body: dict[str, Any]) -> Any:
    """Raise unless ``body`` is a valid ``LiveCreateParams`` (a TypedDict: pydantic forbids
    keys it does not declare only when asked, so unknown keys are checked by hand)."""
    CREATE.validate_python(body)
    allowed = set(LiveCreateParams.__annotations__)
    if set(body) - allowed:
        raise StrictnessError(f"unknown create fields: {sorted(set(body) - allowed)}")
    return body


def validate_create_response(body: dict[str, Any]) -> LiveCreateResponse:
    model = LiveCreateResponse.model_validate(body)
    _no_extras(model, "LiveCreateResponse")
    return model
