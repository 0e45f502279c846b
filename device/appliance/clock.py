"""Server time: the device signs its JWTs and judges key expiry by the provisioning server's
clock, not its own.

A Raspberry Pi has no real-time clock and boots before NTP has set the time, so its clock
can be minutes or years off. The server's answers carry an RFC 7231 ``Date`` header (one
second resolution) and, when it refuses a token for time, ``server_time`` in the body: each
one tells the device its offset. ``ServerClock.now()`` is the local clock plus that offset.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime

log = logging.getLogger(__name__)

RESYNC_NOTICE_S = 5.0
"""Log when the offset moves by more than this (a clock that jumps: NTP caught up)."""


class ServerClock:
    """The local clock corrected by what the server's answers say the time is."""

    def __init__(self, local: Callable[[], float] = time.time) -> None:
        self._local = local
        self.offset_s = 0.0
        """Server time minus local time, in seconds (0 until the server has answered)."""
        self.synced = False

    def now(self) -> float:
        return self._local() + self.offset_s

    def local(self) -> float:
        return self._local()

    def learn(self, server_time: float, *, precise: bool = False) -> bool:
        """Take ``server_time`` (unix seconds, read as an answer arrived) as the truth.

        A ``Date`` header has one-second resolution, so it only moves the offset when
        the clocks disagree by more than that (``precise`` values always do). Returns
        whether the offset changed."""
        offset = server_time - self._local()
        if not precise and abs(offset - self.offset_s) < 1.0:
            self.synced = True
            return False
        changed = abs(offset - self.offset_s) >= 0.5
        if abs(offset - self.offset_s) > RESYNC_NOTICE_S:
            log.warning(
                "device clock is %+.1f s off the provisioning server's; using server time",
                -offset,
                extra={"clock_offset_s": round(offset, 1)},
            )
        self.offset_s = offset
        self.synced = True
        return changed

    def learn_from(self, headers: Mapping[str, str]) -> bool:
        """Learn from an HTTP answer's ``Date`` header (if any); see ``learn``."""
        stamp = headers.get("date")
        if not stamp:
            return False
        try:
            # the header truncates to the second: the middle of that second is the best guess
            server_time = parsedate_to_datetime(stamp).timestamp() + 0.5
        except (TypeError, ValueError, IndexError, OverflowError):
            return False
        return self.learn(server_time)
