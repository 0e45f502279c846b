"""Persistence: SQLAlchemy 2 tables. SQLite (WAL) by default, PostgreSQL by URL.

Secrets are never stored in the clear: enrollment tokens as SHA-256 hashes (they are long
random strings, so a fast hash is enough), devices as Ed25519 public keys.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    create_engine,
    event,
    false,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from appliance_common.models import DEFAULT_MODEL
from provisioning.errors import ProvisioningError

log = logging.getLogger(__name__)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
"""Named constraints, so later migrations can alter them (SQLite batch mode needs names)."""


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


DEFAULT_LIMITS = {"device_per_minute": 20, "device_per_day": 2000, "group_per_minute": 1000}


class Group(Base):
    __tablename__ = "groups"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    profile: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """The ``session`` sent upstream when minting (model, voice, instructions, tools, …)."""
    limits: Mapped[dict[str, int]] = mapped_column(JSON, default=lambda: dict(DEFAULT_LIMITS))
    """Mint limits: ``device_per_minute``, ``device_per_day`` (rolling 24 h),
    ``group_per_minute``."""
    report_transcripts: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """Whether the words of the last turn may leave the group's devices in their heartbeats
    (off: the server drops them and tells the devices to stop sending them)."""


class MintCounter(Base):
    """Mints per time bucket, the shared counters behind rate limits and quotas, so every
    worker process sees the same numbers. ``key`` is ``d:<device>`` (1 s buckets, per-minute
    limit), ``q:<device>`` (10 min buckets, daily quota) or ``g:<group>`` (1 s buckets)."""

    __tablename__ = "mint_counters"
    key: Mapped[str] = mapped_column(String(80), primary_key=True)
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True)
    """Start of the bucket, in whole seconds since the epoch."""
    count: Mapped[int] = mapped_column(Integer)
    expires: Mapped[int] = mapped_column(Integer, index=True)
    """When the bucket has left its window and can be deleted."""


class HeartbeatBucket(Base):
    """A device's heartbeats summarised over ``span`` seconds from ``bucket`` (see
    ``server/provisioning/history.py``, which writes them)."""

    __tablename__ = "heartbeat_buckets"
    __table_args__ = (
        Index("ix_heartbeat_buckets_device", "device_id", "span", "bucket"),
        # SQLite: rows stored in key order, so the fleet's last hour is one contiguous read
        # (through a separate index it was one lookup a row: docs/console.md)
        {"sqlite_with_rowid": False},
    )
    span: Mapped[int] = mapped_column(Integer, primary_key=True)
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    beats: Mapped[int] = mapped_column(Integer, default=0)
    latency_n: Mapped[int] = mapped_column(Integer, default=0)
    latency_sum: Mapped[float] = mapped_column(Float, default=0.0)
    latency_max: Mapped[float] = mapped_column(Float, default=0.0)
    lat_h0: Mapped[int] = mapped_column(Integer, default=0)
    lat_h1: Mapped[int] = mapped_column(Integer, default=0)
    lat_h2: Mapped[int] = mapped_column(Integer, default=0)
    lat_h3: Mapped[int] = mapped_column(Integer, default=0)
    lat_h4: Mapped[int] = mapped_column(Integer, default=0)
    lat_h5: Mapped[int] = mapped_column(Integer, default=0)
    lat_h6: Mapped[int] = mapped_column(Integer, default=0)
    lat_h7: Mapped[int] = mapped_column(Integer, default=0)
    reconnects: Mapped[int] = mapped_column(Integer, default=0)
    wakes: Mapped[int] = mapped_column(Integer, default=0)
    false_wakes: Mapped[int] = mapped_column(Integer, default=0)
    self_interruptions: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[int] = mapped_column(Integer, default=0)
    erle_sum: Mapped[float] = mapped_column(Float, default=0.0)
    erle_n: Mapped[int] = mapped_column(Integer, default=0)
    session_sum: Mapped[float] = mapped_column(Float, default=0.0)
    session_n: Mapped[int] = mapped_column(Integer, default=0)


class EnrollmentToken(Base):
    __tablename__ = "enrollment_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    group: Mapped[str] = mapped_column(ForeignKey("groups.name"))
    max_uses: Mapped[int] = mapped_column(Integer, default=1)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[float] = mapped_column(Float)
    label: Mapped[str] = mapped_column(String(128), default="")


class Device(Base):
    __tablename__ = "devices"
    __table_args__ = (Index("ix_devices_group", "group"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    """Unique and never empty: the CLI takes a name or an id wherever a device is meant."""
    group: Mapped[str] = mapped_column(ForeignKey("groups.name"))
    public_key: Mapped[str] = mapped_column(String(64), unique=True)
    """base64url raw Ed25519 public key; no two devices share one."""
    previous_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """The key before the last rotation, accepted until ``previous_until``."""
    previous_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float | None] = mapped_column(Float, nullable=True)
    health: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    enrolled_with: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """The enrollment token (its id) it enrolled with: a retry with the same token and key
    gets this device back instead of a refusal."""
    offline_after: Mapped[float] = mapped_column(Float, default=750.0, server_default="750")
    """Seconds without a request after which the device counts as offline (2.5 of its
    reported heartbeat intervals), kept from its last heartbeat for the console's counts."""
    state: Mapped[str | None] = mapped_column(String(32), nullable=True)
    """The state its last heartbeat reported (``health["state"]``), for the console's counts."""
    in_error: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """Whether its last heartbeat reported state ``error`` or a last error."""
    rotate_requested_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    """When an admin asked it to rotate its key; cleared by the rotation (the heartbeat's
    answer tells the device until then)."""


class UsedJti(Base):
    __tablename__ = "used_jti"
    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[float] = mapped_column(Float, index=True)


class AdminKey(Base):
    """Admin credentials: ``adm_<id>.<secret>``; only an scrypt hash of the secret is kept."""

    __tablename__ = "admin_keys"
    id: Mapped[str] = mapped_column(String(24), primary_key=True)
    salt: Mapped[str] = mapped_column(String(32))
    secret_hash: Mapped[str] = mapped_column(String(128))
    label: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[float] = mapped_column(Float)


def _scrypt(secret: str, salt: str) -> str:
    return hashlib.scrypt(secret.encode(), salt=bytes.fromhex(salt), n=2**14, r=8, p=1).hex()


_DUMMY_SALT, _DUMMY_HASH = "00" * 16, "00" * 64
"""What an unknown admin key id is checked against, so it costs the same scrypt as a known
one (key ids cannot be told apart by timing)."""
ADMIN_CREDENTIAL = re.compile(r"adm_([0-9a-f]{12})\.([A-Za-z0-9_-]{1,64})")


@dataclass(frozen=True, slots=True)
class Enrolled:
    """An enrollment's outcome: the device, and whether this request created it (``False``:
    a retry with the same token and key got the device the first attempt made)."""

    device_id: str
    group: str
    created: bool


class Audit(Base):
    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[float] = mapped_column(Float)
    action: Mapped[str] = mapped_column(String(32))
    device_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class _NameTakenError(ProvisioningError):
    """Inside ``Store.enroll``: another device has the name (the claim is rolled back)."""


def name_taken(db: Session, name: str, public_key: str) -> bool:
    """Whether another device (not the one holding ``public_key``) has this name."""
    other = select(Device.id).where(Device.name == name, Device.public_key != public_key)
    return db.scalars(other.limit(1)).first() is not None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _wal(cursor: Any) -> None:
    """Switch to WAL. Processes opening a new database at once can be refused ``database is
    locked`` at once, without the busy timeout (SQLite's deadlock avoidance): retry."""
    for attempt in itertools.count():
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt >= 100:
                raise
            time.sleep(0.05)


def make_engine(url: str, immediate: bool = False, autocheckpoint: bool = True) -> Engine:
    """An engine for ``url``. On SQLite: WAL, a busy timeout, foreign keys; with ``immediate``
    every transaction starts with ``BEGIN IMMEDIATE`` (it holds the write lock from its first
    statement, so what it reads cannot change before it writes); without ``autocheckpoint``
    its commits never checkpoint the WAL (a ``Checkpointer`` does)."""
    sqlite = url.startswith("sqlite")
    engine = create_engine(url, pool_pre_ping=not sqlite)
    if sqlite:

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn: Any, _record: Any) -> None:
            cursor = conn.cursor()
            cursor.execute("PRAGMA busy_timeout=5000")
            _wal(cursor)
            cursor.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, fast
            cursor.execute("PRAGMA foreign_keys=ON")
            if not autocheckpoint:
                cursor.execute("PRAGMA wal_autocheckpoint=0")
            cursor.close()
            if immediate:
                conn.isolation_level = None  # the driver's own BEGIN off: ours below

        if immediate:

            @event.listens_for(engine, "begin")
            def _begin_immediate(conn: Any) -> None:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class Store:
    def __init__(self, url: str, checkpoint_every_s: float | None = None) -> None:
        """``checkpoint_every_s`` (SQLite, the server): checkpoint the WAL on a thread of its
        own that often, instead of inside whichever commit crosses SQLite's threshold."""
        from provisioning.migrations import upgrade

        parsed = make_url(url)
        path = parsed.database if parsed.get_backend_name() == "sqlite" else None
        wal_file = path if path not in ("", ":memory:") else None
        """The SQLite database file (with a WAL next to it), if there is one."""
        self.autocheckpoint = wal_file is None or checkpoint_every_s is None
        """Whether commits checkpoint the WAL themselves (SQLite's default)."""
        self.engine = make_engine(url, autocheckpoint=self.autocheckpoint)
        upgrade(self.engine)  # Alembic: creates or upgrades the schema (see migrations/)
        self.session = sessionmaker(self.engine, expire_on_commit=False)
        self.checkpointer: Checkpointer | None = None
        if wal_file is not None and checkpoint_every_s is not None:
            self.checkpointer = Checkpointer(wal_file, checkpoint_every_s)

    def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.stop()
        self.engine.dispose()

    def audit(self, db: Session, action: str, device_id: str | None = None, **detail: Any) -> None:
        db.add(Audit(at=time.time(), action=action, device_id=device_id, detail=detail))

    def ensure_group(
        self,
        name: str,
        profile: dict[str, Any] | None = None,
        limits: dict[str, int] | None = None,
        actor: str = "",
    ) -> Group:
        """Create the group, or update what is given. Safe when several processes (server
        workers) create the same group at once: the loser of the race updates instead.
        ``actor``: the admin key id, for the audit log."""
        try:
            return self._ensure_group(name, profile, limits, actor)
        except IntegrityError:
            return self._ensure_group(name, profile, limits, actor)

    def _ensure_group(
        self,
        name: str,
        profile: dict[str, Any] | None,
        limits: dict[str, int] | None,
        actor: str,
    ) -> Group:
        with self.session.begin() as db:
            group = db.get(Group, name)
            if group is None:
                group = Group(
                    name=name,
                    profile=profile or {"type": "realtime", "model": DEFAULT_MODEL},
                    limits={**DEFAULT_LIMITS, **(limits or {})},
                )
                db.add(group)
                self.audit(db, "group.create", group=name, **_by(actor))
            elif profile is not None or limits is not None:
                if profile is not None:
                    group.profile = profile
                if limits is not None:
                    group.limits = {**DEFAULT_LIMITS, **group.limits, **limits}
                self.audit(db, "group.update", group=name, **_by(actor))
            return group

    def create_token(
        self,
        group: str,
        max_uses: int = 1,
        ttl_s: float = 86400,
        label: str = "",
        actor: str = "",
    ) -> str:
        """A new enrollment token, returned once (only its hash is stored)."""
        token = "enr_" + secrets.token_urlsafe(24)
        with self.session.begin() as db:
            if db.get(Group, group) is None:
                raise KeyError(f"no group {group!r}")
            db.add(
                EnrollmentToken(
                    token_hash=hash_token(token),
                    group=group,
                    max_uses=max_uses,
                    expires_at=time.time() + ttl_s,
                    label=label,
                )
            )
            self.audit(
                db, "token.create", group=group, max_uses=max_uses, label=label, **_by(actor)
            )
        return token

    def token_state(self, token_hash: str) -> tuple[int, int, float] | None:
        """``(uses, max_uses, expires_at)`` of the enrollment token with this ``hash_token``
        (callers keep the hash, not the token), ``None`` if unknown."""
        with self.session() as db:
            row = db.scalars(
                select(EnrollmentToken).where(EnrollmentToken.token_hash == token_hash)
            ).first()
            return None if row is None else (row.uses, row.max_uses, row.expires_at)

    def enroll(self, token: str, public_key: str, name: str) -> Enrolled | str:
        """Claim a use of ``token`` for a new device with ``public_key``: the device, or why
        not (``unknown_token``, ``token_expired``, ``token_used``, ``key_in_use``,
        ``name_taken``).

        The claim is one conditional ``UPDATE … WHERE uses < max_uses AND not expired``
        judged by the row it returns, so concurrent claims (several workers, SQLite or
        PostgreSQL) can never use a token more often than allowed. A retry with the same
        token and the same key (the device failed after the server answered) gets the same
        device back and uses nothing."""
        token_hash = hash_token(token)
        for _attempt in range(3):
            earlier = self._enrolled(token_hash, public_key)
            if earlier is not None:
                return earlier
            now = time.time()
            try:
                with self.session.begin() as db:  # the UPDATE first: no stale read on SQLite
                    claim = db.execute(
                        update(EnrollmentToken)
                        .where(
                            EnrollmentToken.token_hash == token_hash,
                            EnrollmentToken.uses < EnrollmentToken.max_uses,
                            EnrollmentToken.expires_at >= now,
                        )
                        .values(uses=EnrollmentToken.uses + 1)
                        .returning(EnrollmentToken.id, EnrollmentToken.group)
                    ).first()
                    if claim is None:
                        break
                    if name_taken(db, name, public_key):
                        raise _NameTakenError  # rolls the claim back: the token is not spent
                    device = Device(
                        id="dev_" + secrets.token_hex(8),
                        name=name,
                        group=claim.group,
                        public_key=public_key,
                        created_at=now,
                        enrolled_with=claim.id,
                    )
                    db.add(device)
                    db.flush()  # the unique key is checked here
                    self.audit(db, "device.enroll", device.id, name=name, group=claim.group)
                return Enrolled(device.id, device.group, created=True)
            except _NameTakenError:
                return "name_taken"
            except IntegrityError:  # the same key or name enrolled meanwhile: look again
                continue
        state = self.token_state(token_hash)
        if state is None:
            return "unknown_token"
        return "token_expired" if state[2] < time.time() else "token_used"

    def _enrolled(self, token_hash: str, public_key: str) -> Enrolled | str | None:
        """The device this token already enrolled with this key; ``key_in_use`` if another
        device has (or had, until its rotation overlap ends) the key; else ``None``."""
        with self.session() as db:
            row = db.execute(
                select(Device.id, Device.group, Device.enrolled_with, EnrollmentToken.token_hash)
                .outerjoin(EnrollmentToken, EnrollmentToken.id == Device.enrolled_with)
                .where(or_(Device.public_key == public_key, Device.previous_key == public_key))
            ).first()
        if row is None:
            return None
        if row.token_hash == token_hash:
            return Enrolled(row.id, row.group, created=False)
        return "key_in_use"

    def rotate(self, device_id: str, old_key: str, new_key: str, until: float) -> str:
        """Make ``new_key`` the device's key if ``old_key`` is still its current one:
        ``rotated``, ``key_in_use`` (any device's key, current or previous, its own too) or
        ``conflict`` (the device rotated meanwhile: concurrent rotations, one wins)."""
        with self.session() as db:
            taken = db.scalars(
                select(Device.id)
                .where(or_(Device.public_key == new_key, Device.previous_key == new_key))
                .limit(1)
            ).first()
        if taken is not None:
            return "key_in_use"
        try:
            with self.session.begin() as db:
                done = db.execute(
                    update(Device)
                    .where(Device.id == device_id, Device.public_key == old_key)
                    .values(
                        public_key=new_key,
                        previous_key=old_key,
                        previous_until=until,
                        rotate_requested_at=None,  # done, if an admin asked for it
                    )
                    .returning(Device.id)
                ).first()
                if done is None:
                    return "conflict"
                self.audit(db, "device.rotate", device_id)
        except IntegrityError:  # another device took the key meanwhile (unique)
            return "key_in_use"
        return "rotated"

    def request_rotation(self, device_id: str, actor: str = "") -> str:
        """Ask the device to rotate its key (its next heartbeat's reply tells it):
        ``requested``, ``missing`` or ``revoked``. ``actor``: the admin key id."""
        with self.session.begin() as db:
            device = db.get(Device, device_id)
            if device is None:
                return "missing"
            if device.revoked:
                return "revoked"
            device.rotate_requested_at = time.time()
            self.audit(db, "device.rotate_requested", device_id, **_by(actor))
        return "requested"

    def set_device_state(self, device_id: str, action: str, actor: str = "") -> bool:
        """``disable``, ``enable`` or ``revoke`` a device; effective on its next request.
        ``actor``: the admin key id, for the audit log."""
        with self.session.begin() as db:
            device = db.get(Device, device_id)
            if device is None:
                return False
            if action == "revoke":
                device.revoked = True
            else:
                device.enabled = action == "enable"
            self.audit(db, f"device.{action}", device_id, **_by(actor))
        return True

    def create_admin(self, label: str = "") -> str:
        """A new admin credential, returned once."""
        key_id, secret, salt = (
            secrets.token_hex(6),
            secrets.token_urlsafe(24),
            secrets.token_hex(16),
        )
        with self.session.begin() as db:
            db.add(
                AdminKey(
                    id=key_id,
                    salt=salt,
                    secret_hash=_scrypt(secret, salt),
                    label=label,
                    created_at=time.time(),
                )
            )
            self.audit(db, "admin.create", label=label)
        return f"adm_{key_id}.{secret}"

    def check_admin(self, credential: str) -> str | None:
        """The admin key id if ``credential`` is valid, else ``None``. A well-formed
        credential always costs one scrypt, whether its key id exists or not, and the hashes
        are compared in constant time."""
        match = ADMIN_CREDENTIAL.fullmatch(credential)
        if match is None:
            return None
        key_id, secret = match.groups()
        with self.session() as db:
            row = db.get(AdminKey, key_id)
        salt, stored = (_DUMMY_SALT, _DUMMY_HASH) if row is None else (row.salt, row.secret_hash)
        ok = secrets.compare_digest(_scrypt(secret, salt), stored)
        return key_id if ok and row is not None else None

    def delete_group(self, name: str, actor: str = "") -> str:
        """``deleted``, ``missing``, or ``in_use`` (devices still belong to it). Its unused
        enrollment tokens go with it."""
        try:
            with self.session.begin() as db:
                group = db.get(Group, name)
                if group is None:
                    return "missing"
                if db.scalars(select(Device.id).where(Device.group == name).limit(1)).first():
                    return "in_use"
                tokens = select(EnrollmentToken).where(EnrollmentToken.group == name)
                for token in db.scalars(tokens):
                    db.delete(token)
                db.delete(group)
                self.audit(db, "group.delete", group=name, **_by(actor))
        except IntegrityError:  # a device enrolled into it meanwhile (foreign key)
            return "in_use"
        return "deleted"

    def delete_device(self, device_id: str, actor: str = "") -> bool:
        with self.session.begin() as db:
            device = db.get(Device, device_id)
            if device is None:
                return False
            db.delete(device)
            self.audit(db, "device.delete", device_id, **_by(actor))
        return True


def _by(actor: str) -> dict[str, str]:
    """An audit row's ``admin`` detail: the admin key id behind the change, if one was."""
    return {"admin": actor} if actor else {}


class Checkpointer:
    """Checkpoints a SQLite WAL every ``every_s`` on a thread of its own, with a connection of
    its own (the server's connections turn SQLite's automatic checkpoint off).

    The automatic checkpoint runs inside whichever commit takes the WAL past 1,000 pages: that
    commit, and every mint waiting on it, stalled (figures: docs/server.md, "What kept the
    tail long"). A round here
    is a ``PASSIVE`` checkpoint: it copies what the WAL holds without waiting for a writer or
    blocking one. Rounds every 0.1 s stay short, so one usually finishes between two commits
    and the next writer starts the WAL over from its beginning. Under writes so steady that
    this never happens (half-second rounds let the WAL grow without bound), a ``RESTART``
    follows once it holds ``restart_frames``: it holds writers back for the little the passive
    pass left, or for at most its connection's busy timeout (0.1 s) behind a long reader, then
    gives up until the next round. Several workers each run one; SQLite lets one checkpoint at
    a time."""

    def __init__(self, path: str, every_s: float, restart_frames: int = 4000) -> None:
        self.every_s, self.restart_frames = every_s, restart_frames
        self.rounds = 0
        """Rounds run so far."""
        self._conn = sqlite3.connect(path, timeout=0.1, check_same_thread=False)
        self._lock = threading.Lock()
        self._ran = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="wal-checkpoint", daemon=True)
        self._thread.start()

    def checkpoint(self) -> tuple[int, int]:
        """One round: ``(frames in the WAL, frames copied)`` after it."""
        with self._lock:
            _busy, frames, copied = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if frames >= self.restart_frames:
                sql = "PRAGMA wal_checkpoint(RESTART)"
                _busy, frames, copied = self._conn.execute(sql).fetchone()
            self.rounds += 1
            self._ran.notify_all()
        return int(frames), int(copied)

    def wait_for_rounds(self, count: int, timeout: float) -> bool:
        """Block until ``count`` rounds have run in all (``False`` after ``timeout`` s)."""
        with self._ran:
            return self._ran.wait_for(lambda: self.rounds >= count, timeout)

    @property
    def running(self) -> bool:
        """Whether the background thread still runs (``stop()`` ends it)."""
        return self._thread.is_alive()

    def stop(self) -> None:
        """Stop the thread, after one last round."""
        self._stop.set()
        self._thread.join()
        self._conn.close()

    def _main(self) -> None:
        while not self._stop.wait(self.every_s):
            self._round()
        self._round()

    def _round(self) -> None:
        try:
            self.checkpoint()
        except sqlite3.Error as exc:  # the next round tries again
            log.warning("WAL checkpoint failed: %s", (str(exc).splitlines() or [""])[0][:200])
