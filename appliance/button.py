"""The push button: gpiozero callbacks (its own thread) become machine events on the loop.

Press → ``ButtonPressed``; still down after ``hold_s`` → ``ButtonHeld`` (push-to-talk);
release → ``ButtonReleased``. The machine decides what a tap or a hold means.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from appliance import machine as m


class ButtonEvents:
    def __init__(
        self,
        button: Any,
        loop: asyncio.AbstractEventLoop,
        post: Callable[[m.Event], None],
    ) -> None:
        """``button`` is a ``gpiozero.Button`` whose ``hold_time`` is the hold threshold."""
        self.button = button
        self._loop = loop
        self._post = post
        button.when_pressed = lambda: self._hand_over(m.ButtonPressed())
        button.when_held = lambda: self._hand_over(m.ButtonHeld())
        button.when_released = lambda: self._hand_over(m.ButtonReleased())

    def _hand_over(self, event: m.Event) -> None:
        self._loop.call_soon_threadsafe(self._post, event)

    def close(self) -> None:
        self.button.close()
