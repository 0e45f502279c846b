"""The tasks a stand-in session runs (listening, replies, timers' work): closing it cancels
them."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class Tasks:
    """A session's running tasks."""

    def __init__(self) -> None:
        self._running: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return task

    def cancel(self, keep: asyncio.Task[Any] | None = None) -> None:
        """Cancel every task but ``keep`` (the one that is closing the session)."""
        for task in list(self._running):
            if task is not keep:
                task.cancel()
