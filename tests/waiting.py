"""Waiting in tests: on something that happened, never on the clock.

Every wait here ends when an event arrives (a callback ran, an item was appended, a log
record was emitted). The ``within`` bound only turns a hang into a failure; it is generous
on purpose and never the thing a test checks.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any, SupportsIndex, TypeVar

T = TypeVar("T")

HANG_S = 30.0
"""How long a wait may take before the test counts it as a hang."""


class Changes:
    """Something that changes: callbacks call ``notify()`` (from any thread with
    ``notify_threadsafe()``), tests ``await until(done)``."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def notify(self, *_: object) -> None:
        self._event.set()

    def notify_threadsafe(self, *_: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._event.set)

    async def until(
        self, done: Callable[[], bool], what: str = "the condition", within: float = HANG_S
    ) -> None:
        """Return once ``done()`` holds, checking it at every change."""
        self._loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(within):
                while True:
                    self._event.clear()
                    if done():
                        return
                    await self._event.wait()
        except TimeoutError:
            raise AssertionError(f"{what}: not within {within:g} s (a hang)") from None


class Recorded(list[T]):
    """A list that wakes waiters when something is appended (pass ``.append`` as a callback;
    appends from other threads are fine)."""

    def __init__(self, items: Iterable[T] = ()) -> None:
        super().__init__(items)
        self.changes = Changes()
        self._watchers: list[Changes] = [self.changes]

    def watch(self, changes: Changes) -> None:
        self._watchers.append(changes)

    def unwatch(self, changes: Changes) -> None:
        self._watchers.remove(changes)

    def _notify(self) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # another thread (gpiozero's, the ledger's)
            for changes in list(self._watchers):
                changes.notify_threadsafe()
            return
        for changes in list(self._watchers):
            changes.notify()

    def append(self, item: T) -> None:
        super().append(item)
        self._notify()

    def extend(self, items: Iterable[T]) -> None:
        super().extend(items)
        self._notify()

    def insert(self, index: SupportsIndex, item: T) -> None:
        super().insert(index, item)
        self._notify()

    async def until(
        self, done: Callable[[list[T]], bool], what: str = "the item", within: float = HANG_S
    ) -> None:
        """Return once ``done(self)`` holds."""
        await self.changes.until(lambda: done(self), what, within)

    async def first(
        self, wanted: Callable[[T], bool], what: str = "a matching item", within: float = HANG_S
    ) -> T:
        """Return the first item ``wanted`` accepts, waiting for it to arrive."""
        await self.until(lambda items: any(wanted(i) for i in items), what, within)
        return next(i for i in self if wanted(i))


async def until(
    done: Callable[[], bool],
    *sources: Recorded[Any],
    what: str = "the condition",
    within: float = HANG_S,
) -> None:
    """Return once ``done()`` holds, checking it whenever any of ``sources`` grows."""
    changes = Changes()
    for source in sources:
        source.watch(changes)
    try:
        await changes.until(done, what, within)
    finally:
        for source in sources:
            source.unwatch(changes)


def observe(owner: object, name: str) -> Recorded[Any]:
    """Make ``owner.<name>`` (a public list some code appends to, e.g. the stand-in's
    ``Call.sent``, a ``WavSink``'s ``frames`` or gpiozero's ``MockPin.states``) a
    ``Recorded`` with the same items, so a test can wait on what is appended to it."""
    current = getattr(owner, name)
    if isinstance(current, Recorded):
        return current
    recorded: Recorded[Any] = Recorded(current)
    setattr(owner, name, recorded)
    return recorded


class LogWatch(logging.Handler):
    """Collects log records and wakes waiters on each (the ``logwatch`` fixture)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: Recorded[logging.LogRecord] = Recorded()
        self._levels: list[tuple[logging.Logger, int]] = []

    def debug(self, name: str) -> None:
        """Also collect ``name``'s DEBUG records (e.g. the session's "in: <event>" lines, one
        per server event read) until ``restore()``."""
        logger = logging.getLogger(name)
        self._levels.append((logger, logger.level))
        logger.setLevel(logging.DEBUG)

    def restore(self) -> None:
        for logger, level in reversed(self._levels):
            logger.setLevel(level)
        self._levels.clear()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def count(self, text: str) -> int:
        return sum(text in record.getMessage() for record in self.records)

    async def until(
        self, done: Callable[[], bool], what: str = "the condition", within: float = HANG_S
    ) -> None:
        """Return once ``done()`` holds, checking it at every record (with
        ``debug("appliance.app")``: at every step of the device's state machine)."""
        await until(done, self.records, what=what, within=within)

    async def wait_for(self, text: str, count: int = 1, within: float = HANG_S) -> None:
        """Return once ``count`` records containing ``text`` were logged."""
        await self.records.until(lambda _: self.count(text) >= count, repr(text), within)


async def any_pin_changes(pins: Iterable[object], within: float = HANG_S) -> None:
    """Return once any of gpiozero's mock ``pins`` changes state after this call."""
    recorded = [observe(pin, "states") for pin in pins]
    before = [len(states) for states in recorded]
    await until(
        lambda: [len(states) for states in recorded] != before,
        *recorded,
        what="a pin change",
        within=within,
    )


class OutputLines:
    """A subprocess's output pipe, copied to ``log`` line by line by a thread of its own;
    ``wait_for`` blocks until a line says something (a daemon's "listening" line)."""

    def __init__(self, stream: IO[bytes], log: Path) -> None:
        self.lines: list[str] = []
        self._ended = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._copy, args=(stream, log), daemon=True)
        self._thread.start()

    def _copy(self, stream: IO[bytes], log: Path) -> None:
        with stream, log.open("w") as out:
            for raw in stream:
                line = raw.decode(errors="replace")
                out.write(line)
                out.flush()
                with self._cond:
                    self.lines.append(line)
                    self._cond.notify_all()
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def join(self) -> None:
        """After the process ended: wait for the rest of its output to be copied."""
        self._thread.join(HANG_S)

    def count(self, text: str) -> int:
        with self._cond:
            return sum(text in line for line in self.lines)

    def wait_for(self, text: str, count: int = 1, within: float = HANG_S) -> bool:
        """``True`` once ``count`` lines contain ``text``; ``False`` if the output ended
        first (the process exited) or after ``within`` s (a hang)."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._ended or sum(text in line for line in self.lines) >= count, within
            )
        return self.count(text) >= count
