"""systemd integration: ``Type=notify`` readiness, status text, watchdog, stopping.

Uses systemd-python's ``sd_notify``; outside systemd (no ``NOTIFY_SOCKET``) every call is a
no-op. The watchdog is only fed while the audio clock ticks (a mic frame arrived recently)
and the event loop is responsive, so a process that is alive but deaf gets restarted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.enabled = bool(env.get("NOTIFY_SOCKET"))
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_s: float | None = int(usec) / 1e6 if usec.isdigit() and mine else None
        self._last_status = ""

    def _send(self, message: str) -> None:
        if not self.enabled:
            return
        try:
            from systemd.daemon import notify
        except ImportError:  # pragma: no cover - systemd-python is in the [pi] extra
            log.warning("systemd-python missing: cannot notify systemd")
            self.enabled = False
            return
        notify(message)

    def ready(self, status: str) -> None:
        self._last_status = status
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, text: str) -> None:
        if text != self._last_status:
            self._last_status = text
            self._send(f"STATUS={text}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        self._send("STOPPING=1\nSTATUS=stopping")

    def reloading(self) -> None:
        """``RELOADING=1`` (with the ``MONOTONIC_USEC`` newer systemd wants); ``READY=1``
        from the re-executed process ends the reload."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading the configuration")


async def watchdog_loop(
    notifier: Notifier,
    last_audio: Callable[[], float],
    audio_stale_s: float = 2.0,
) -> None:
    """Feed the watchdog at half its interval, only while audio flows and the loop is live."""
    if notifier.watchdog_s is None:
        return
    interval = notifier.watchdog_s / 2
    while True:
        before = time.monotonic()
        await asyncio.sleep(interval)
        lag = time.monotonic() - before - interval
        audio_age = time.monotonic() - last_audio()
        if lag > interval:
            log.warning("event loop stalled %.1f s: not feeding the watchdog", lag)
        elif audio_age > audio_stale_s:
            log.warning("no audio for %.1f s: not feeding the watchdog", audio_age)
        else:
            notifier.watchdog()
