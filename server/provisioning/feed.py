"""The console's live feed: fleet counts pushed to open consoles as Server-Sent Events.

What changes the fleet calls ``FleetFeed.changed``: a heartbeat, an enrollment or a key
rotation (``provisioning/server.py``), and every admin change (``AdminChanges``, in front of
the admin API). One task per process, running only while a console listens, then reads the
counts (``Fleet.summary``, a single SQL pass) and pushes them to every listener:

- at once (after ``COALESCE_S``, which gathers a burst) when the counts changed or an admin
  changed something;
- at most every ``QUIET_S`` when devices only beat without changing the counts (so a
  console's "last seen" column and a device page follow);
- when the next online device would go offline without a word (``Fleet.next_offline``): the
  sweep wakes then, so offline is pushed as it happens, not found by polling; and at least
  every ``MAX_SWEEP_S`` (other worker processes' heartbeats reach this one's consoles so).

Each listener holds only the newest event: a slow console skips to the latest counts. A
stream ends after ``STREAM_S`` (the console reconnects at once, and its credential is checked
again) or when the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from provisioning.console import Fleet

log = logging.getLogger(__name__)

JSON = dict[str, Any]
COALESCE_S = 0.2
QUIET_S = 5.0
MIN_SWEEP_S = 0.5
MAX_SWEEP_S = 10.0
STREAM_S = 300.0
MAX_IDS = 200
"""Device ids named in one event; beyond that the event names none (``devices: null``:
any device may have changed)."""


class FleetFeed:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self._listeners: set[asyncio.Queue[JSON | None]] = set()
        self._wake = asyncio.Event()
        self._reasons: set[str] = set()
        self._ids: set[str] | None = set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.pushed = 0
        """Events pushed so far (to any number of listeners)."""

    def changed(self, reason: str, device_id: str | None = None) -> None:
        """Something changed (on the event loop; cheap: the work is the feed task's)."""
        if not self._listeners:
            return
        self._note({reason}, set() if device_id is None else {device_id})
        self._wake.set()

    def _note(self, reasons: set[str], ids: set[str] | None) -> None:
        self._reasons |= reasons
        if self._ids is not None:
            self._ids = None if ids is None else self._ids | ids
            if len(self._ids or ()) > MAX_IDS:
                self._ids = None

    async def listen(self, lifetime_s: float = STREAM_S) -> AsyncIterator[JSON]:
        """The events for one console: the counts now, then each change, until the stream's
        lifetime is over or the feed closes."""
        queue: asyncio.Queue[JSON | None] = asyncio.Queue(maxsize=1)
        self._listeners.add(queue)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="console-feed")
        ends = time.monotonic() + lifetime_s
        try:
            summary = await run_in_threadpool(self.fleet.summary)
            yield {**summary, "reasons": ["hello"], "devices": None}
            while not self._closed:
                left = ends - time.monotonic()
                if left <= 0:
                    return
                try:
                    event = await asyncio.wait_for(queue.get(), left)
                except TimeoutError:
                    return
                if event is None:
                    return
                yield event
        finally:
            self._listeners.discard(queue)

    async def close(self) -> None:
        """End every stream and the feed task (the server is stopping)."""
        self._closed = True
        for queue in list(self._listeners):
            _offer(queue, None)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        last: tuple[Any, ...] | None = None
        last_push = 0.0
        while self._listeners and not self._closed:
            try:
                due = await run_in_threadpool(self.fleet.next_offline)
                wait = MAX_SWEEP_S
                if due is not None:
                    wait = min(wait, max(MIN_SWEEP_S, due - self.fleet.clock() + 0.05))
                if self._reasons:  # beats held back: pushed once QUIET_S has passed
                    wait = min(wait, max(MIN_SWEEP_S, last_push + QUIET_S - time.monotonic()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
                if self._wake.is_set():
                    await asyncio.sleep(COALESCE_S)  # a burst of changes: one push
                self._wake.clear()
                reasons, self._reasons = self._reasons, set()
                ids, self._ids = self._ids, set()
                summary = await run_in_threadpool(self.fleet.summary)
                key = (summary["counts"], summary["states"], summary["attention"])
                now = time.monotonic()
                if not (
                    key != last
                    or "admin" in reasons
                    or "rotate" in reasons
                    or (reasons and now - last_push >= QUIET_S)
                ):
                    self._note(reasons, ids)  # held for the next push
                    continue
                last, last_push = key, now
                event = {
                    **summary,
                    "reasons": sorted(reasons or {"sweep"}),
                    "devices": None if ids is None else sorted(ids),
                }
                self.pushed += 1
                for queue in list(self._listeners):
                    _offer(queue, event)
            except asyncio.CancelledError:
                raise
            except Exception:  # the database hiccuped: the next round tries again
                log.exception("console feed: reading the fleet failed")
                await asyncio.sleep(MAX_SWEEP_S)


def _offer(queue: asyncio.Queue[JSON | None], event: JSON | None) -> None:
    """Put ``event`` in a one-place queue, replacing what the listener has not taken yet."""
    with contextlib.suppress(asyncio.QueueEmpty):
        queue.get_nowait()
    queue.put_nowait(event)


class AdminChanges:
    """ASGI middleware: every admin request that changed something (not a GET, answered
    2xx) tells the feed, with the device it named, if any."""

    def __init__(self, app: ASGIApp, feed: FleetFeed) -> None:
        self.app, self.feed = app, feed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if (
            scope["type"] != "http"
            or scope["method"] in ("GET", "HEAD", "OPTIONS")
            or not path.startswith("/v1/admin/")
        ):
            await self.app(scope, receive, send)
            return
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        await self.app(scope, receive, sending)
        if 200 <= status < 300:
            parts = path.split("/")  # /v1/admin/devices/<id>/...
            device = parts[4] if len(parts) > 4 and parts[3] == "devices" else None
            self.feed.changed("admin", device)
