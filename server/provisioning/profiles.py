"""A group's session profile, checked against the ``openai`` package's own session types.

The profile is sent as ``session`` to ``POST /v1/realtime/client_secrets`` on every mint, so a
mistake in it (a typo such as ``"modle"``, a string where a number goes) would otherwise
surface later as every mint of the group failing. ``provisioning group set`` checks it first
with ``RealtimeSessionCreateRequest`` (``type: "realtime"``) or
``RealtimeTranscriptionSessionCreateRequest`` (``type: "transcription"``). Those pydantic
models accept unknown keys (``extra="allow"``), so unknown keys are found by walking
``model_extra`` at every level. Importing the types costs about a second (docs/server.md);
only ``group set`` pays it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from typing import Any

from provisioning.errors import ProvisioningError


class ProfileError(ProvisioningError, ValueError):
    """``field`` is the dotted path of the offending field (``"profile"`` for the whole)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


_TAG = re.compile(r"[a-z_]+\[.*|int|str|float|bool|list|dict|none|function-.*")
"""Parts of a pydantic error location that name a union branch or a type, not a field."""


def validate(profile: Any) -> None:
    """Raises ``ProfileError`` naming the first bad field."""
    import pydantic
    from openai.types.realtime import (
        RealtimeSessionCreateRequest,
        RealtimeTranscriptionSessionCreateRequest,
    )

    if not isinstance(profile, dict):
        raise ProfileError("profile", "must be a JSON object")
    if profile.get("type") == "live":  # GPT-Live: checked against openai.types.live
        from provisioning.live_relay import check_live_profile

        try:
            check_live_profile(profile)
        except ValueError as exc:
            raise ProfileError("profile", f"Live profile: {exc}") from None
        return
    kinds: dict[str, type[pydantic.BaseModel]] = {
        "realtime": RealtimeSessionCreateRequest,
        "transcription": RealtimeTranscriptionSessionCreateRequest,
    }
    model = kinds.get(profile.get("type"))  # type: ignore[arg-type]  # any JSON value
    if model is None:
        raise ProfileError("type", f"must be one of {', '.join(map(repr, kinds))}")
    try:
        parsed = model.model_validate(profile)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        parts: list[str] = []
        for part in first["loc"]:
            if isinstance(part, str) and _TAG.fullmatch(part):
                break
            parts.append(str(part))
        raise ProfileError(".".join(parts) or "profile", first["msg"]) from None
    for where, known in _unknown(parsed, ""):
        field = where.rsplit(".", 1)[-1].split("[", 1)[0]
        near = difflib.get_close_matches(field, known, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ProfileError(where, f"unknown field{hint}")


def _unknown(value: Any, path: str) -> Iterator[tuple[str, list[str]]]:
    """(dotted path, known field names there) of every key the models did not know."""
    import pydantic

    if isinstance(value, pydantic.BaseModel):
        known = list(type(value).model_fields)
        for key in value.model_extra or {}:
            yield f"{path}{key}", known
        for name in type(value).model_fields:
            yield from _unknown(getattr(value, name), f"{path}{name}.")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _unknown(item, f"{path.rstrip('.')}[{i}].")
