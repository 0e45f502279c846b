"""Groups off models with an announced shutdown: ``gpt-realtime`` and ``gpt-realtime-mini``
(and their snapshots) shut down on 2027-01-20, ``whisper-1`` and the ``gpt-4o*-transcribe``
models on 2027-02-26. Each group's profile is moved to the recommended replacement, and a
realtime profile that named no model (the service's default) is given the default, so the
server, not the service, decides. Every move is written to the audit log (``group.model``,
``by: migration``) and logged as a warning. ``gpt-4o-transcribe-diarize`` has no drop-in
replacement: such groups are left alone and logged (``provisioning group list`` warns).

The mapping is written out here, not imported, so this revision does the same thing
whenever it runs. Downgrade restores nothing (the audit rows say what each group had).

Revision ID: models_1
Revises: 0002
Create Date: 2026-12-05 08:00:00
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "models_1"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")

DEFAULT = "gpt-realtime-2.1"
MOVES = {
    "gpt-realtime": DEFAULT,
    "gpt-realtime-2025-08-28": DEFAULT,
    "gpt-realtime-mini": "gpt-realtime-2.1-mini",
    "gpt-realtime-mini-2025-12-15": "gpt-realtime-2.1-mini",
    "gpt-audio-mini": "gpt-realtime-2.1-mini",
    "gpt-audio-mini-2025-12-15": "gpt-realtime-2.1-mini",
}
TRANSCRIPTION_MOVES = dict.fromkeys(
    (
        "whisper-1",
        "gpt-4o-transcribe",
        "gpt-4o-mini-transcribe",
        "gpt-4o-mini-transcribe-2025-12-15",
    ),
    "gpt-realtime-whisper",
)
LEFT_ALONE = {"gpt-4o-transcribe-diarize"}


def moved(profile: dict[str, Any]) -> dict[str, Any]:
    """The profile with its models replaced (a copy; equal to it when nothing moves)."""
    out: dict[str, Any] = json.loads(json.dumps(profile))
    model = out.get("model")
    if out.get("type", "realtime") == "realtime" and (model is None or isinstance(model, str)):
        out["model"] = DEFAULT if model is None else MOVES.get(model, model)
    audio = out.get("audio")
    inp = audio.get("input") if isinstance(audio, dict) else None
    tr = inp.get("transcription") if isinstance(inp, dict) else None
    if isinstance(tr, dict) and isinstance(tr.get("model"), str):
        tr["model"] = TRANSCRIPTION_MOVES.get(tr["model"], tr["model"])
    return out


def _models(profile: dict[str, Any]) -> dict[str, Any]:
    audio = profile.get("audio")
    inp = audio.get("input") if isinstance(audio, dict) else None
    tr = inp.get("transcription") if isinstance(inp, dict) else None
    found = {"model": profile.get("model")}
    if isinstance(tr, dict):
        found["transcription"] = tr.get("model")
    return {k: v for k, v in found.items() if isinstance(v, str)}


def upgrade() -> None:
    conn = op.get_bind()
    groups = sa.table("groups", sa.column("name"), sa.column("profile", sa.JSON))
    audit = sa.table(
        "audit",
        sa.column("at", sa.Float),
        sa.column("action"),
        sa.column("device_id"),
        sa.column("detail", sa.JSON),
    )
    rows = conn.execute(sa.select(groups.c.name, groups.c.profile)).all()
    for name, profile in rows:
        before = profile if isinstance(profile, dict) else json.loads(profile or "{}")
        after = moved(before)
        stuck = LEFT_ALONE & set(_models(after).values())
        if stuck:
            log.warning(
                "group %r keeps %s: no replacement; move it by hand", name, ", ".join(stuck)
            )
        if after == before:
            continue
        conn.execute(groups.update().where(groups.c.name == name).values(profile=after))
        detail = {"group": name, "before": _models(before), "after": _models(after)}
        conn.execute(
            audit.insert().values(
                at=time.time(),
                action="group.model",
                device_id=None,
                detail={**detail, "by": "migration"},
            )
        )
        log.warning("group %r moved from %s to %s", name, detail["before"], detail["after"])


def downgrade() -> None:
    """Nothing: the models before are in the audit log, and a group moved back would only
    stop working at the shutdown date."""
