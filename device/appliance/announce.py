"""Out-of-band announcements: things the device says on its own (a timer is up, it is back).

Queued until the device is idle; then the machine hears ``AnnouncementDue`` and decides when
to say them (connecting first if needed), and the app hands them to the session.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from appliance import machine as m

ANNOUNCEMENTS = {
    "reconnected": (
        "In one short sentence, in the language of the conversation so far, tell the user "
        "the connection dropped for a moment and is back, so they can go on."
    ),
}
"""Instructions for out-of-band announcements, by kind."""


def instructions(kind: str) -> str:
    """What the model is told to say for an announcement of ``kind``."""
    return ANNOUNCEMENTS.get(kind, kind)


def timer_up(label: str) -> str:
    return f"Tell the user, in one short sentence, that their timer is up: {label}."


class Announcements:
    """The queue of announcements waiting for an idle moment."""

    def __init__(self, post: Callable[[m.Event], None]) -> None:
        self._post = post
        self._queue: deque[tuple[str, str]] = deque()

    def add(self, kind: str, instructions: str, state: m.State) -> None:
        self._queue.append((kind, instructions))
        self.entered(state)

    def entered(self, state: m.State) -> None:
        """The device is now in ``state``: tell the machine if something waits to be said."""
        if self._queue and state is m.State.IDLE:
            self._post(m.AnnouncementDue())

    def next(self) -> tuple[str, str] | None:
        """The oldest waiting announcement (kind, instructions), taken off the queue."""
        return self._queue.popleft() if self._queue else None
