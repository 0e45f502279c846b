"""Which Realtime model each group uses, and when the models shut down (docs/models.md).

The server knows each model's announced shutdown date: the table below (from the ``openai``
package's docstrings and OpenAI's deprecations page), overridden by what the upstream's
``GET /v1/models`` says (``shutdown_date``), overridden in turn by the operator's
``PROVISIONING_MODEL_SHUTDOWN_DATES``. A group whose model shuts down within
``PROVISIONING_MODEL_WARN_DAYS`` (60) is shown in ``provisioning group list``, the dashboard,
``/metrics`` and the log. A mint for a model already past its shutdown date gets the
model's replacement instead (``PROVISIONING_RETIRED_MODEL=substitute``, the default) or is
refused (``refuse``); either way it is logged and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from appliance_common.models import (
    DEFAULT_MODEL,
    REPLACEMENTS,
    SHUTDOWN_DATES,
)
from provisioning.errors import ProvisioningError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from provisioning.store import Store
    from provisioning.upstream import Upstream

log = logging.getLogger(__name__)

WARN_DAYS = 60
"""Warn about a group whose model shuts down within this many days."""

RETIRED_POLICIES = ("substitute", "refuse")


class SettingsError(ProvisioningError, ValueError):
    """A bad setting: names the environment variable (the CLI exits 78)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


def parse_dates(
    raw: str, key: str = "PROVISIONING_MODEL_SHUTDOWN_DATES"
) -> dict[str, dt.date | None]:
    """``{"model": "YYYY-MM-DD" | null, …}`` as dates."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise SettingsError(key, f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise SettingsError(key, 'must be a JSON object {"model": "YYYY-MM-DD" or null}')
    return {str(model): _date(value, key) for model, value in data.items()}


def _date(value: Any, key: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise SettingsError(key, f"{value!r} is not a YYYY-MM-DD date") from None


def parse_models_list(data: Any) -> dict[str, dt.date | None]:
    """``GET /v1/models``'s body → shutdown date by model id (entries without a readable
    ``shutdown_date`` count as none announced)."""
    out: dict[str, dt.date | None] = {}
    entries = data.get("data") if isinstance(data, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            continue
        try:
            out[entry["id"]] = _date(entry.get("shutdown_date"), "shutdown_date")
        except SettingsError:
            out[entry["id"]] = None
    return out


@dataclass(frozen=True, slots=True)
class Finding:
    """A model of a group's profile with a shutdown date within the warning window."""

    field: str
    """``model`` or ``transcription``."""
    model: str
    shutdown: dt.date
    days_left: int
    """Days from today to the shutdown date (0 or less: already shut down)."""
    replacement: str | None

    @property
    def retired(self) -> bool:
        return self.days_left <= 0

    def describe(self, group: str) -> str:
        when = (
            f"shut down on {self.shutdown} ({-self.days_left} days ago)"
            if self.retired
            else f"shuts down on {self.shutdown} (in {self.days_left} days)"
        )
        fix = f"; move it: {move_command(group, self)}" if self.replacement else ""
        return f"group {group!r}: {self.field} {self.model} {when}{fix}"

    def as_json(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "model": self.model,
            "shutdown_date": self.shutdown.isoformat(),
            "days_left": self.days_left,
            "retired": self.retired,
            "replacement": self.replacement,
        }


def move_command(group: str, finding: Finding) -> str:
    flag = "--model" if finding.field == "model" else "--transcription-model"
    return f"provisioning group set {group} {flag} {finding.replacement}"


def profile_models(profile: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """``(field, model)`` for the models a session profile names."""
    model = profile.get("model")
    if isinstance(model, str):
        yield "model", model
    audio = profile.get("audio")
    inp = audio.get("input") if isinstance(audio, dict) else None
    tr = inp.get("transcription") if isinstance(inp, dict) else None
    if isinstance(tr, dict) and isinstance(tr.get("model"), str):
        yield "transcription", tr["model"]


def with_models(
    profile: Mapping[str, Any], model: str | None = None, transcription: str | None = None
) -> dict[str, Any]:
    """A copy of ``profile`` naming these models (``None``: keep). The speech model goes
    only into realtime profiles; the transcription model only where transcription is on."""
    out: dict[str, Any] = json.loads(json.dumps(profile))
    if model is not None and out.get("type", "realtime") == "realtime":
        out["model"] = model
    tr = ((out.get("audio") or {}).get("input") or {}).get("transcription")
    if transcription is not None and isinstance(tr, dict):
        tr["model"] = transcription
    return out


class Guarded(NamedTuple):
    """What the mint path does with a profile: mint ``profile`` (maybe substituted), or
    refuse (``refused`` is the finding that made it). A tuple: made on every mint, and a
    frozen dataclass costs five times as much to make."""

    profile: dict[str, Any]
    substituted: tuple[Finding, ...] = ()
    refused: Finding | None = None


class ModelLifecycle:
    """Shutdown dates (built-in < upstream ``/v1/models`` < operator overrides) and what
    follows from them for a profile, judged against ``clock`` (injectable for tests)."""

    def __init__(
        self,
        overrides: Mapping[str, dt.date | None] | None = None,
        warn_days: int = WARN_DAYS,
        policy: str = "substitute",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if policy not in RETIRED_POLICIES:
            raise SettingsError("PROVISIONING_RETIRED_MODEL", f"{policy!r}: substitute or refuse")
        self.overrides = dict(overrides or {})
        self.upstream: dict[str, dt.date | None] = {}
        """What the last ``GET /v1/models`` said (empty until a refresh)."""
        self.warn_days, self.policy, self.clock = warn_days, policy, clock
        self._retired: tuple[int, frozenset[str]] | None = None
        """(day, models past their shutdown date on that day): the mint path's lookup."""

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], clock: Callable[[], float] = time.time
    ) -> ModelLifecycle:
        raw = env.get("PROVISIONING_MODEL_SHUTDOWN_DATES", "")
        overrides = parse_dates(raw) if raw.strip() else {}
        days = env.get("PROVISIONING_MODEL_WARN_DAYS", str(WARN_DAYS))
        try:
            warn_days = int(days)
            if warn_days < 0:
                raise ValueError
        except ValueError:
            raise SettingsError(
                "PROVISIONING_MODEL_WARN_DAYS", f"{days!r} is not a whole number of days"
            ) from None
        policy = env.get("PROVISIONING_RETIRED_MODEL", "substitute")
        return cls(overrides, warn_days, policy, clock)

    def today(self) -> dt.date:
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC).date()

    def shutdown_date(self, model: str) -> dt.date | None:
        for table in (self.overrides, self.upstream, SHUTDOWN_DATES):
            if model in table:
                return table[model]
        return None

    def known(self, model: str) -> bool:
        return any(model in t for t in (self.overrides, self.upstream, SHUTDOWN_DATES))

    def update_from_upstream(self, dates: Mapping[str, dt.date | None]) -> list[str]:
        """Take ``GET /v1/models``'s dates; returns the models whose date changed."""
        changed = [
            m for m, d in dates.items() if self.shutdown_date(m) != d and m not in self.overrides
        ]
        self.upstream = dict(dates)
        self._retired = None
        return changed

    def findings(self, profile: Mapping[str, Any], today: dt.date | None = None) -> list[Finding]:
        """The profile's models that shut down within the warning window (or already did)."""
        today = today or self.today()
        out = []
        for field, model in profile_models(profile):
            shutdown = self.shutdown_date(model)
            if shutdown is None:
                continue
            days_left = (shutdown - today).days
            if days_left <= self.warn_days:
                out.append(Finding(field, model, shutdown, days_left, REPLACEMENTS.get(model)))
        return out

    def _retired_now(self) -> frozenset[str]:
        """The models past their shutdown date today, worked out once a (UTC) day: the mint
        path pays one clock read and a comparison."""
        epoch_day = int(self.clock() // 86400)
        if self._retired is None or self._retired[0] != epoch_day:
            today = self.today()
            tables = (SHUTDOWN_DATES, self.upstream, self.overrides)
            models = {m for t in tables for m in t}
            gone = frozenset(
                m for m in models if (d := self.shutdown_date(m)) is not None and d <= today
            )
            self._retired = (epoch_day, gone)
        return self._retired[1]

    def guard(self, profile: dict[str, Any]) -> Guarded:
        """The mint path's check: a profile naming no model past its shutdown date passes
        as it is (two set lookups); otherwise substitute or refuse, by policy. A realtime
        profile naming no model gets ``DEFAULT_MODEL``, not whatever the service defaults to."""
        retired = self._retired_now()
        model = profile.get("model")
        if model is None and profile.get("type", "realtime") == "realtime":
            profile = {**profile, "model": DEFAULT_MODEL}
        audio = profile.get("audio")
        tr_model = None
        if isinstance(audio, dict) and isinstance(audio.get("input"), dict):
            tr = audio["input"].get("transcription")
            tr_model = tr.get("model") if isinstance(tr, dict) else None
        if not isinstance(model, str):
            model = None  # not a model name: the upstream will say what it thinks of it
        if not isinstance(tr_model, str):
            tr_model = None
        if model not in retired and tr_model not in retired:
            return Guarded(profile)
        gone = [f for f in self.findings(profile) if f.retired]
        stuck = [f for f in gone if self.policy == "refuse" or f.replacement is None]
        if stuck:
            return Guarded(profile, refused=stuck[0])
        new = {f.field: f.replacement for f in gone}
        return Guarded(
            with_models(profile, new.get("model"), new.get("transcription")), tuple(gone)
        )


# ---------------------------------------------------------------------- groups in the store


def group_findings(store: Store, lifecycle: ModelLifecycle) -> dict[str, list[Finding]]:
    """Every group's findings (groups without any are left out), by group name."""
    from sqlalchemy import select

    from provisioning.store import Group

    today = lifecycle.today()
    with store.session() as db:
        rows = [(g.name, g.profile) for g in db.scalars(select(Group).order_by(Group.name))]
    out = {}
    for name, profile in rows:
        found = lifecycle.findings(profile or {}, today)
        if found:
            out[name] = found
    return out


def move_groups(
    store: Store,
    names: Iterable[str] | None,
    model: str | None = None,
    transcription: str | None = None,
) -> list[str]:
    """Point the groups ``names`` (``None``: every group) at these models, in one
    transaction; returns the groups changed. ``KeyError`` names a missing group."""
    from sqlalchemy import select

    from provisioning.store import Group

    changed = []
    with store.session.begin() as db:
        if names is None:
            groups = list(db.scalars(select(Group).order_by(Group.name)))
        else:
            groups = []
            for name in names:
                group = db.get(Group, name)
                if group is None:
                    raise KeyError(name)
                groups.append(group)
        for group in groups:
            before = group.profile or {"type": "realtime"}
            after = with_models(before, model, transcription)
            if after != before:
                group.profile = after
                old = dict(profile_models(before))
                store.audit(
                    db,
                    "group.model",
                    group=group.name,
                    before=old,
                    after=dict(profile_models(after)),
                )
                changed.append(group.name)
    return changed


class ModelWatch:
    """The server's side of the guard: refreshes the dates from the upstream's
    ``GET /v1/models``, logs a warning for every group whose model shuts down within the
    window (at start, then every ``every_s``), counts retired-model mints and exports the
    findings to ``/metrics``."""

    def __init__(
        self,
        store: Store,
        lifecycle: ModelLifecycle,
        upstream: Upstream | None,
        registry: CollectorRegistry,
        every_s: float = 6 * 3600,
    ) -> None:
        from prometheus_client import Counter

        self.store, self.lifecycle, self.upstream, self.every_s = (
            store,
            lifecycle,
            upstream,
            every_s,
        )
        self.retired_mints = Counter(
            "provisioning_retired_model_mints",
            "Mints for a profile naming a model past its shutdown date, by outcome",
            ["model", "outcome"],
            registry=registry,
        )
        registry.register(_FindingsCollector(self))
        self.refreshed_at = 0.0
        """When the dates were last read from the upstream (0: never)."""
        self._task: asyncio.Task[None] | None = None
        self._told: dict[tuple[str, str], float] = {}
        """When each (group, model) was last logged by the mint path."""

    async def refresh(self) -> bool:
        """Dates from the upstream; ``False`` (the table stays) if it cannot say."""
        from provisioning.upstream import UpstreamError

        if self.upstream is None:
            return False
        try:
            dates = await self.upstream.shutdown_dates()
        except UpstreamError as exc:
            log.warning("model shutdown dates not refreshed: %s", exc)
            return False
        changed = self.lifecycle.update_from_upstream(dates)
        self.refreshed_at = time.time()
        log.info(
            "model shutdown dates refreshed from the upstream: %d models, %d changed%s",
            len(dates),
            len(changed),
            f" ({', '.join(sorted(changed))})" if changed else "",
        )
        return True

    def check(self) -> dict[str, list[Finding]]:
        """Log every group's findings (a warning each); returns them."""
        found = group_findings(self.store, self.lifecycle)
        for group, findings in found.items():
            for f in findings:
                log.warning(
                    "%s",
                    f.describe(group),
                    extra={"group": group, "model": f.model, "shutdown_date": str(f.shutdown)},
                )
        return found

    def guard(self, group: str, profile: dict[str, Any]) -> Guarded:
        """The mint path: ``ModelLifecycle.guard``, counted, and logged (at most once a
        minute per group and model, so a fleet's mints do not flood the log)."""
        guarded = self.lifecycle.guard(profile)
        if guarded.refused is None and not guarded.substituted:
            return guarded
        now = self.lifecycle.clock()
        for f in guarded.substituted or (guarded.refused,):
            assert f is not None
            outcome = "refused" if guarded.refused is not None else "substituted"
            self.retired_mints.labels(f.model, outcome).inc()
            if now - self._told.get((group, f.model), -1e18) >= 60:
                self._told[(group, f.model)] = now
                action = (
                    "refusing the mint"
                    if guarded.refused is not None
                    else f"minting {f.replacement} instead"
                )
                log.error(
                    "%s: %s", f.describe(group), action, extra={"group": group, "model": f.model}
                )
        return guarded

    async def run(self) -> None:
        from starlette.concurrency import run_in_threadpool

        while True:
            await self.refresh()
            try:
                await run_in_threadpool(self.check)
            except Exception as exc:  # the database may be away: next round
                log.warning("model check failed: %s", type(exc).__name__)
            await asyncio.sleep(self.every_s)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="model-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class _FindingsCollector:
    """``/metrics``: the groups whose model shuts down within the window (read from the
    database at most every ``ttl_s``)."""

    def __init__(self, watch: ModelWatch, ttl_s: float = 30.0) -> None:
        self.watch, self.ttl_s = watch, ttl_s
        self._cache: tuple[float, dict[str, list[Finding]]] | None = None

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        now = time.monotonic()
        if self._cache is None or now - self._cache[0] > self.ttl_s:
            self._cache = (now, group_findings(self.watch.store, self.watch.lifecycle))
        found = self._cache[1]
        days = GaugeMetricFamily(
            "provisioning_group_model_shutdown_days",
            "Days until the shutdown of a model a group uses, for models shutting down within "
            "the warning window (0 or less: already shut down)",
            labels=["group", "field", "model", "replacement"],
        )
        for group, findings in found.items():
            for f in findings:
                days.add_metric([group, f.field, f.model, f.replacement or ""], f.days_left)
        yield days
        yield GaugeMetricFamily(
            "provisioning_groups_on_retiring_models",
            "Groups whose model shuts down within the warning window",
            value=len(found),
        )
        yield GaugeMetricFamily(
            "provisioning_model_dates_refreshed_timestamp_seconds",
            "When the shutdown dates were last read from the upstream's /v1/models (0: never)",
            value=self.watch.refreshed_at,
        )
