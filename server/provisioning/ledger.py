"""The database side of every device request, group-committed: admission (device, JWT,
replay, and for a mint its limits), heartbeats' reports, and the mints' audit trail.

Every mint needs the device and its group, a used-JWT-id insert, three rate counters and an
audit row; a heartbeat the same JWT checks and an update. Heartbeats and key rotations are
authenticated here too, so a JWT is single use across all of them. One transaction per
request costs several statements and a commit each, all queued behind SQLite's single
writer on the event loop. The ledger instead runs the database work on
one thread, one transaction per *batch*: requests that arrive while a batch is being written
go into the next one. At low load a batch is one request (about a millisecond); under load it
holds tens, and the SQL per mint shrinks to microseconds. The event loop never waits on the
database.

It stays correct across worker processes: on SQLite every admission transaction starts with
``BEGIN IMMEDIATE`` (batches of different processes take turns holding the write lock); on
PostgreSQL it locks its device rows, then its group rows, each in sorted order (no deadlock
between workers), before reading the counters.

Limits are rolling windows counted in buckets (``MintCounter``): 1 s buckets for the
per-minute limits, 10 min buckets for the daily quota. A bucket counts while any part of it
is inside the window, so a limit is never exceeded; a mint stops counting at most one bucket
later than its exact expiry. Refused requests do not count.

The audit row of a minted key (with the upstream's request id) is written with the next batch,
milliseconds later; ``close()`` writes what is pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pydantic_core import from_json, to_json
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from provisioning.auth import (
    DISABLED,
    EXP_LEEWAY_S,
    INVALID_TOKEN,
    REPLAYED,
    REVOKED,
    UNKNOWN_KEY,
    AuthError,
    DeviceKeys,
    verify,
)
from provisioning.history import History, standing
from provisioning.store import DEFAULT_LIMITS, Device, Store, make_engine

log = logging.getLogger(__name__)

PURGE_EVERY_S = 0.2
PURGE_LIMIT = 500
"""Expired JWT ids deleted per purge, 2,500 a second at most: small steps, so a purge never
stalls a batch for long (what larger sweeps cost: docs/server.md, "What kept the tail long")."""
MAX_PENDING_RECORDS = 100_000
"""Audit rows kept while the database is unreachable; beyond this the oldest are dropped."""


@dataclass(frozen=True, slots=True)
class Window:
    limit: str
    """Name in the group's ``limits``."""
    prefix: str
    bucket_s: int
    window_s: int
    per_group: bool = False

    def key(self, device_id: str, group: str) -> str:
        return f"{self.prefix}:{group if self.per_group else device_id}"


WINDOWS = (
    Window("device_per_minute", "d", 1, 60),
    Window("device_per_day", "q", 600, 86400),
    Window("group_per_minute", "g", 1, 60, per_group=True),
)


@dataclass(frozen=True, slots=True)
class Admitted:
    device_id: str
    group: str
    profile: dict[str, Any]
    key: str = ""
    """The public key that verified the JWT."""
    current: bool = True
    """Whether that key is the device's current one (not the previous key of an overlap)."""
    charged: tuple[tuple[str, int], ...] = ()
    """The rate counters (key, bucket) a mint was counted in (see ``MintLedger.refund``)."""
    rotate: bool = False
    """Whether an admin asked the device to rotate its key (a heartbeat's reply says so)."""


@dataclass(frozen=True, slots=True)
class Refused:
    status: int
    code: str
    message: str
    retry_after: float | None = None
    server_time: float | None = None
    """For ``clock_skew``: the server's clock when it judged the JWT."""


Outcome = Admitted | Refused


@dataclass(slots=True)
class _Admit:
    token: str
    kid: str
    mint: bool = True
    """A mint (counted against the limits); else only the device is authenticated."""
    health: dict[str, Any] | None = None
    """A heartbeat's report, written with the device's last-seen time."""
    claims: dict[str, Any] | None = None
    key: str = ""
    outcome: Outcome | None = None


@dataclass(slots=True)
class _Batch:
    admits: list[_Admit] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)
    refunds: list[tuple[str, int]] = field(default_factory=list)


class MintLedger:
    """``await admit(token, kid)`` → ``Admitted`` or ``Refused`` for a mint;
    ``await authenticate(...)`` the same for any other device request (a heartbeat's report is
    written in the same transaction); ``record(...)`` queues an audit row. Every device JWT is
    checked here, so replays are caught in one place. One per process; ``await close()``
    before the event loop ends."""

    def __init__(
        self,
        store: Store,
        on_transaction: Callable[[], None] | None = None,
        purge_every_s: float = PURGE_EVERY_S,
        history: History | None = None,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.history = history
        """Heartbeat history: summarises each batch's reports into buckets (console)."""
        self._on_refused = on_refused
        self.purge_every_s = purge_every_s
        """How often expired counters and JWT ids are deleted (with the next batch)."""
        self._on_transaction = on_transaction
        url = store.engine.url.render_as_string(hide_password=False)
        sqlite = store.engine.dialect.name == "sqlite"
        self.engine: Engine = (
            make_engine(url, immediate=True, autocheckpoint=store.autocheckpoint)
            if sqlite
            else store.engine
        )
        self._sql = _Sql(store.engine.dialect.name)
        self._db_errors: tuple[type[BaseException], ...] = (
            DBAPIError,
            self.engine.dialect.loaded_dbapi.Error,  # the hot path runs on the raw cursor
        )
        self._admits: list[tuple[_Admit, asyncio.Future[Outcome]]] = []
        self._audit: list[dict[str, Any]] = []
        self._refunds: list[tuple[str, int]] = []
        self._keys: dict[str, DeviceKeys] = {}
        """Verification keys by device id, refreshed from every batch's locked device rows.
        Only a hint: the transaction re-checks that the key that verified is still valid."""
        self._lock = threading.Condition()
        """Guards ``_admits`` and ``_audit`` between the event loop and the ledger thread."""
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._busy = False
        self._stopping = False
        self._next_purge = 0.0

    async def admit(self, token: str, kid: str) -> Outcome:
        """A mint: the device's JWT, then its limits (a mint counts once admitted)."""
        return await self._queue(_Admit(token, kid))

    async def authenticate(
        self, token: str, kid: str, health: dict[str, Any] | None = None
    ) -> Outcome:
        """Any other device request: its JWT (signature, replay, revoked, disabled), no
        limits; ``health`` (a heartbeat) is stored with the last-seen time."""
        return await self._queue(_Admit(token, kid, mint=False, health=health))

    async def _queue(self, admit: _Admit) -> Outcome:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._admits.append((admit, future))
            self._wake()
        return await future

    def record(self, action: str, device_id: str, **detail: str | int | float) -> None:
        """Queue an audit row; it is written with the next batch."""
        row = {"at": time.time(), "action": action, "device_id": device_id, "detail": detail}
        with self._lock:
            self._audit.append(row)
            if len(self._audit) > MAX_PENDING_RECORDS:
                del self._audit[: len(self._audit) - MAX_PENDING_RECORDS]
            self._wake()

    def refund(self, admitted: Admitted) -> None:
        """Take a mint back off the counters it was charged to (the upstream failed: the
        device got no key, so it is not held against its limits)."""
        with self._lock:
            self._refunds.extend(admitted.charged)
            self._wake()

    async def flush(self) -> None:
        """Return once everything queued so far is written (or was refused)."""
        while True:
            with self._lock:
                if not (self._admits or self._audit or self._refunds or self._busy):
                    return
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        """Write what is pending, then stop the ledger thread."""
        if self._thread is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), timeout=10)
        with self._lock:
            self._stopping = True
            self._lock.notify()
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self._thread = None
        if self._audit:
            log.warning("%d audit rows not written (database unavailable)", len(self._audit))
        if self.engine is not self.store.engine:
            self.engine.dispose()

    def _wake(self) -> None:
        """With the lock held: start the thread on first use, or nudge it."""
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._stopping = False
            self._thread = threading.Thread(target=self._main, name="mint-ledger", daemon=True)
            self._thread.start()
        self._lock.notify()

    def _deliver(self, admits: list[tuple[_Admit, asyncio.Future[Outcome]]]) -> None:
        """On the event loop: hand each request its outcome."""
        for admit, future in admits:
            if not future.done():  # not cancelled (the client went away)
                assert admit.outcome is not None
                future.set_result(admit.outcome)
            if self._on_refused is not None and isinstance(admit.outcome, Refused):
                self._on_refused(admit.outcome.code)

    # --- on the ledger thread ---

    def _main(self) -> None:
        """The ledger thread: take everything queued, write it as one batch, hand back the
        outcomes, and go straight on with what arrived meanwhile (the thread never waits for
        the event loop, so batches follow each other without a gap)."""
        assert self._loop is not None
        while True:
            with self._lock:
                while not (self._admits or self._audit or self._refunds or self._stopping):
                    self._busy = False
                    self._lock.wait()
                if self._stopping and not (self._admits or self._audit or self._refunds):
                    self._busy = False
                    return
                admits, self._admits = self._admits, []
                batch = _Batch([a for a, _ in admits], self._audit, self._refunds)
                self._audit, self._refunds = [], []
                self._busy = True
            try:
                self._write(batch)
            except Exception as exc:  # refuse the batch, keep its audit rows, back off
                if isinstance(exc, self._db_errors):  # down, locked, broken
                    first = (str(exc).splitlines() or [""])[0][:200]
                    log.warning(
                        "mint ledger: database unavailable (%s: %s)", type(exc).__name__, first
                    )
                else:  # a bug: say where
                    log.exception("mint ledger: batch failed")
                for admit in batch.admits:
                    if admit.outcome is None:  # refusals of bad JWTs stand
                        admit.outcome = Refused(
                            503, "database_unavailable", "try again shortly", retry_after=2
                        )
                with self._lock:
                    self._audit[:0] = batch.audit
                    self._refunds[:0] = batch.refunds
                if admits and not self._hand_back(admits):
                    return
                if self._stopping:
                    with self._lock:
                        self._busy = False
                    return
                time.sleep(0.5)
                continue
            if admits and not self._hand_back(admits):
                return

    def _hand_back(self, admits: list[tuple[_Admit, asyncio.Future[Outcome]]]) -> bool:
        """Deliver outcomes on the event loop; ``False`` if that loop is gone (then the
        thread ends: nobody is waiting any more)."""
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._deliver, admits)
        except RuntimeError:  # the loop was closed without close()
            with self._lock:
                self._busy = False
            return False
        return True

    def _write(self, batch: _Batch) -> None:
        """Admit the batch's requests and write the queued audit rows, in one transaction.
        Each request was checked on its own before (``_verify``), so only a database fault
        fails the transaction; then every request is tried again in a transaction of its own,
        and only if all of those fail too does the whole batch get 503."""
        now = time.time()
        self._verify(batch.admits, now)
        pending = [a for a in batch.admits if a.outcome is None]
        early = self._refusal_rows([a for a in batch.admits if a.outcome is not None], now)
        try:
            self._transact(pending, batch.audit + early, batch.refunds, now)
        except Exception as exc:
            if len(pending) <= 1:
                raise
            log.warning("mint ledger: a batch failed (%s); its requests one by one", _brief(exc))
            failed: list[BaseException] = []
            for admit in pending:
                try:
                    self._transact([admit], [], [], now)
                except Exception as alone:
                    failed.append(alone)
                    log.warning("mint ledger: a request failed alone (%s)", _brief(alone))
                    admit.outcome = Refused(
                        503, "database_unavailable", "try again shortly", retry_after=2
                    )
            if len(failed) == len(pending):
                raise failed[-1] from exc  # the database, not a request: back off
            self._transact([], batch.audit, batch.refunds, now)
        self._log_refusals(batch.admits)
        if batch.admits and self._on_transaction is not None:
            self._on_transaction()

    def _transact(
        self,
        admits: list[_Admit],
        queued: list[dict[str, Any]],
        refunds: list[tuple[str, int]],
        now: float,
    ) -> None:
        """One transaction: admit ``admits``, write the audit rows and refunds. If it fails,
        the outcomes it gave are taken back (the transaction rolled back)."""
        audit = list(queued)  # plus this transaction's refusals (kept apart for a retry)
        sql = self._sql
        try:
            with self.engine.begin() as conn:  # BEGIN IMMEDIATE on SQLite; rollback on error
                cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
                self._admit(cur, admits, now, audit)
                if refunds:
                    sql.refund(cur, sorted(refunds))
                audit += self._refusal_rows(admits, now)
                if audit:
                    sql.audit(cur, audit)
                if now >= self._next_purge or self.purge_every_s <= 0:
                    sql.purge(cur, now)
                    if self.history is not None:
                        self.history.purge(cur, now)
                    self._next_purge = now + self.purge_every_s
        except BaseException:
            for admit in admits:
                admit.outcome = None
            raise

    def _refusal_rows(self, admits: list[_Admit], now: float) -> list[dict[str, Any]]:
        """Audit rows of refused JWTs of known devices: the reason, never the token."""
        return [
            {
                "at": now,
                "action": "device.auth_refused",
                "device_id": a.kid,
                "detail": {"code": a.outcome.code},
            }
            for a in admits
            if isinstance(a.outcome, Refused) and a.outcome.status == 401 and a.kid in self._keys
        ]

    def _log_refusals(self, admits: list[_Admit]) -> None:
        for admit in admits:
            outcome = admit.outcome
            if isinstance(outcome, Refused) and outcome.status == 401:
                log.info(
                    "device JWT refused: %s (%s), kid %s",
                    outcome.code,
                    outcome.message,
                    admit.kid,
                    extra={"device_id": admit.kid, "reason": outcome.code},
                )

    def _verify(self, admits: list[_Admit], now: float) -> None:
        """Signatures, before the transaction (no lock is held while they are checked), with
        the cached keys; devices not cached or whose token fails with them are read afresh."""
        retry = self._check(admits, now, fresh=False)
        if not retry:
            return
        if len(self._keys) > 100_000:
            self._keys.clear()
        with self.store.engine.connect() as conn:
            rows = conn.execute(
                select(
                    Device.id, Device.public_key, Device.previous_key, Device.previous_until
                ).where(Device.id.in_({a.kid for a in retry}))
            ).all()
        for row in rows:
            self._keys[row.id] = DeviceKeys(*row)
        self._check(retry, now, fresh=True)

    def _check(self, admits: list[_Admit], now: float, fresh: bool) -> list[_Admit]:
        """Verify with the known keys; the admits worth another try with fresh keys."""
        retry: list[_Admit] = []
        for admit in admits:
            device = self._keys.get(admit.kid)
            if device is None:
                if fresh:
                    admit.outcome = Refused(401, UNKNOWN_KEY, "unknown device")
                else:
                    retry.append(admit)
                continue
            try:
                admit.claims, admit.key = verify(admit.token, device, now)
            except AuthError as exc:
                if fresh or exc.code != INVALID_TOKEN:
                    admit.outcome = Refused(exc.status, exc.code, str(exc), None, exc.server_time)
                else:
                    retry.append(admit)  # perhaps the device rotated its key elsewhere
            except Exception as exc:  # a bug, but this request's own: never the batch's
                log.exception("device JWT check failed")
                admit.outcome = Refused(401, INVALID_TOKEN, f"JWT rejected: {type(exc).__name__}")
        return retry

    def _admit(
        self, cur: Any, admits: list[_Admit], now: float, audit: list[dict[str, Any]]
    ) -> None:
        if not admits:
            return
        sql = self._sql
        rows = sql.devices(cur, sorted({a.kid for a in admits}))  # locked on PostgreSQL
        devices = {row.id: row for row in rows}
        for row in rows:  # fresh from the locked rows: the cache follows
            self._keys[row.id] = DeviceKeys(
                row.id, row.public_key, row.previous_key, row.previous_until
            )
        sql.lock_groups(cur, sorted({row.group for row in rows}))  # then groups, sorted
        fresh = self._new_jtis(cur, admits, devices)
        admitted: list[_Admit] = []
        seen: set[str] = set()
        for admit in admits:
            device = devices.get(admit.kid)
            if device is None:
                admit.outcome = Refused(401, UNKNOWN_KEY, "unknown device")
                continue
            if device.revoked:
                admit.outcome = Refused(401, REVOKED, "device is revoked")
                continue
            if admit.key not in self._keys[device.id].valid(now):
                admit.outcome = Refused(401, UNKNOWN_KEY, "JWT rejected: key was rotated")
                continue
            seen.add(device.id)  # a valid signature: the device was here
            if admit.claims is None or admit.claims["jti"] not in fresh:
                admit.outcome = Refused(401, REPLAYED, "JWT already used")
            elif not device.enabled:
                admit.outcome = Refused(401, DISABLED, "device is disabled")
            else:
                admitted.append(admit)
        if seen:  # rows this transaction has locked already
            sql.seen(cur, sorted(seen), now)
        reports = {a.kid: a.health for a in admitted if a.health is not None}
        if reports:  # the last report of each device in the batch
            if self.history is not None:  # before the store: it reads the previous reports
                self.history.record(cur, sorted(reports.items()), now)
            sql.health(cur, sorted(reports.items()))
        for admit in admitted:
            if not admit.mint:
                device = devices[admit.kid]
                current = admit.key == device.public_key
                admit.outcome = Admitted(
                    admit.kid, device.group, {}, admit.key, current, rotate=device.rotate
                )
        self._limit(cur, [a for a in admitted if a.mint], devices, now, audit)

    def _new_jtis(self, cur: Any, admits: list[_Admit], devices: dict[str, Any]) -> set[str]:
        """Insert the batch's JWT ids; the ones that were not already used."""
        rows: dict[str, float] = {}
        for admit in admits:
            if admit.claims is not None and admit.kid in devices:
                jti = str(admit.claims["jti"])
                if jti in rows:
                    admit.claims = None  # the same JWT twice in one batch: the second replays
                else:
                    rows[jti] = float(admit.claims["exp"]) + EXP_LEEWAY_S
        if not rows:
            return set()
        return self._sql.jtis(cur, list(rows.items()))

    def _limit(
        self,
        cur: Any,
        admits: list[_Admit],
        devices: dict[str, Any],
        now: float,
        refused: list[dict[str, Any]],
    ) -> None:
        if not admits:
            return
        plans: dict[str, tuple[list[tuple[Window, str, int]], dict[str, Any]]] = {}
        """Per device, once a batch: its windows with their counter key and limit, and the
        group's profile."""
        for admit in admits:
            if admit.kid not in plans:
                device = devices[admit.kid]
                limits = {**DEFAULT_LIMITS, **(device.limits or {})}
                windows = [(w, w.key(device.id, device.group), limits[w.limit]) for w in WINDOWS]
                plans[admit.kid] = (windows, device.profile or {"type": "realtime"})
        names = sorted({key for windows, _ in plans.values() for _, key, _ in windows})
        used = self._sql.used(cur, names, now)
        added: dict[tuple[str, int], int] = {}
        expires: dict[tuple[str, int], int] = {}
        second = int(now)
        for admit in admits:
            windows, profile = plans[admit.kid]
            over = next((w for w in windows if used.get(w[1], 0) >= w[2]), None)
            if over is not None:
                window, key, limit = over
                retry = self._retry_after(cur, window, key, limit, added, now)
                admit.outcome = Refused(
                    429, "rate_limited", f"limit reached: {window.limit}", retry_after=retry
                )
                refused.append(
                    {
                        "at": now,
                        "action": "key.mint",
                        "device_id": admit.kid,
                        "detail": {"outcome": "limited", "limit": window.limit},
                    }
                )
                continue
            charged = []
            for window, key, _limit in windows:
                used[key] = used.get(key, 0) + 1
                bucket = second - second % window.bucket_s
                added[(key, bucket)] = added.get((key, bucket), 0) + 1
                expires[(key, bucket)] = bucket + window.bucket_s + window.window_s
                charged.append((key, bucket))
            device = devices[admit.kid]
            current = admit.key == device.public_key
            admit.outcome = Admitted(
                admit.kid, device.group, dict(profile), admit.key, current, tuple(charged)
            )
        if added:
            rows = [(k, b, n, expires[(k, b)]) for (k, b), n in sorted(added.items())]
            self._sql.bump(cur, rows)

    def _retry_after(
        self,
        cur: Any,
        window: Window,
        key: str,
        limit: int,
        added: dict[tuple[str, int], int],
        now: float,
    ) -> float:
        """Seconds until enough of the window's oldest buckets expire for one more mint."""
        buckets = self._sql.buckets(cur, key, now)
        for (k, bucket), n in added.items():
            if k == key:
                buckets[bucket] = buckets.get(bucket, 0) + n
        remaining = sum(buckets.values())
        for bucket in sorted(buckets):
            remaining -= buckets[bucket]
            if remaining + 1 <= limit:
                return max(1.0, float(bucket + window.bucket_s + window.window_s - now))
        return float(window.window_s)


class _Device(NamedTuple):
    id: str
    group: str
    public_key: str
    previous_key: str | None
    previous_until: float | None
    enabled: bool
    revoked: bool
    profile: dict[str, Any] | None
    limits: dict[str, int] | None
    rotate: bool


class _Sql:
    """The ledger's statements, run straight on the DBAPI cursor inside a SQLAlchemy
    transaction: SQLAlchemy's execution layer cost a batch several times more (docs/server.md,
    "How a mint is served"). They are plain SQL that SQLite (3.35 or
    newer, for RETURNING) and PostgreSQL both speak; only the placeholder and the row locks
    differ. The tables are the models' (``server/provisioning/store.py``)."""

    def __init__(self, dialect: str) -> None:
        self.pg = dialect == "postgresql"
        self.mark = "%s" if self.pg else "?"

    def text(self, template: str, **lists: int | tuple[int, int]) -> str:
        """``template`` with each ``{name}`` replaced by that many placeholders (or by
        ``(rows, width)`` rows of them) and ``?`` by the driver's placeholder. Only
        placeholders are ever put into the SQL; values always go as parameters."""
        marks = {}
        for name, size in lists.items():
            rows, width = size if isinstance(size, tuple) else (size, 0)
            one = "(" + ", ".join([self.mark] * width) + ")" if width else self.mark
            marks[name] = ", ".join([one] * rows)
        return template.replace("?", self.mark).format(**marks)

    def devices(self, cur: Any, ids: list[str]) -> list[_Device]:
        lock = " FOR UPDATE OF d" if self.pg else ""
        cur.execute(
            self.text(
                'SELECT d.id, d."group", d.public_key, d.previous_key, d.previous_until, '
                "d.enabled, d.revoked, g.profile, g.limits, d.rotate_requested_at "
                'FROM devices d LEFT OUTER JOIN groups g ON d."group" = g.name '
                "WHERE d.id IN ({ids}) ORDER BY d.id" + lock,
                ids=len(ids),
            ),
            ids,
        )
        return [
            _Device(
                id=row[0],
                group=row[1],
                public_key=row[2],
                previous_key=row[3],
                previous_until=row[4],
                enabled=bool(row[5]),
                revoked=bool(row[6]),
                profile=_json(row[7]),
                limits=_json(row[8]),
                rotate=row[9] is not None,
            )
            for row in cur.fetchall()
        ]

    def lock_groups(self, cur: Any, names: list[str]) -> None:
        if self.pg and names:
            cur.execute(
                self.text(
                    "SELECT name FROM groups WHERE name IN ({names}) ORDER BY name FOR UPDATE",
                    names=len(names),
                ),
                names,
            )

    def jtis(self, cur: Any, rows: list[tuple[str, float]]) -> set[str]:
        """Insert JWT ids; the ones that were new."""
        cur.execute(
            self.text(
                "INSERT INTO used_jti (jti, expires_at) VALUES {rows} "
                "ON CONFLICT (jti) DO NOTHING RETURNING jti",
                rows=(len(rows), 2),
            ),
            [value for row in rows for value in row],
        )
        return {str(row[0]) for row in cur.fetchall()}

    def seen(self, cur: Any, ids: list[str], now: float) -> None:
        cur.execute(
            self.text("UPDATE devices SET last_seen = ? WHERE id IN ({ids})", ids=len(ids)),
            [now, *ids],
        )

    def health(self, cur: Any, reports: list[tuple[str, dict[str, Any]]]) -> None:
        """Store each report, and what the console counts by (``standing``)."""
        cur.executemany(
            self.text(
                "UPDATE devices SET health = ?, offline_after = ?, state = ?, in_error = ? "
                "WHERE id = ?"
            ),
            [
                (to_json(report).decode(), *standing(report), device_id)
                for device_id, report in reports
            ],
        )

    def used(self, cur: Any, keys: list[str], now: float) -> dict[str, int]:
        """Mints per counter key over the buckets still inside their window."""
        cur.execute(
            self.text(
                'SELECT "key", SUM("count") FROM mint_counters '
                'WHERE "key" IN ({keys}) AND expires > ? GROUP BY "key"',
                keys=len(keys),
            ),
            [*keys, now],
        )
        return {str(key): int(total) for key, total in cur.fetchall()}

    def buckets(self, cur: Any, key: str, now: float) -> dict[int, int]:
        cur.execute(
            self.text('SELECT bucket, "count" FROM mint_counters WHERE "key" = ? AND expires > ?'),
            [key, now],
        )
        return {int(bucket): int(count) for bucket, count in cur.fetchall()}

    def bump(self, cur: Any, rows: list[tuple[str, int, int, int]]) -> None:
        """Add to counters (rows are ``(key, bucket, count, expires)``, each key once)."""
        cur.execute(
            self.text(
                'INSERT INTO mint_counters ("key", bucket, "count", expires) VALUES {rows} '
                'ON CONFLICT ("key", bucket) DO UPDATE '
                'SET "count" = mint_counters."count" + excluded."count"',
                rows=(len(rows), 4),
            ),
            [value for row in rows for value in row],
        )

    def refund(self, cur: Any, rows: list[tuple[str, int]]) -> None:
        """Take one mint off each ``(key, bucket)`` counter (a key may come several times)."""
        cur.executemany(
            self.text(
                'UPDATE mint_counters SET "count" = "count" - 1 '
                'WHERE "key" = ? AND bucket = ? AND "count" > 0'
            ),
            rows,
        )

    def audit(self, cur: Any, rows: list[dict[str, Any]]) -> None:
        cur.executemany(
            self.text("INSERT INTO audit (at, action, device_id, detail) VALUES (?, ?, ?, ?)"),
            [(r["at"], r["action"], r["device_id"], to_json(r["detail"]).decode()) for r in rows],
        )

    def purge(self, cur: Any, now: float) -> None:
        cur.execute(self.text("DELETE FROM mint_counters WHERE expires < ?"), [now])
        cur.execute(
            self.text(
                "DELETE FROM used_jti WHERE jti IN "
                "(SELECT jti FROM used_jti WHERE expires_at < ? LIMIT ?)"
            ),
            [now, PURGE_LIMIT],
        )


def _brief(exc: BaseException) -> str:
    """An exception's type and first line (a database error's SQL and parameters stay out)."""
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"


def _json(value: Any) -> Any:
    """A JSON column: text on SQLite, already decoded by psycopg."""
    return from_json(value) if isinstance(value, str) else value
