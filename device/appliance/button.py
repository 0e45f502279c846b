"""The push button: gpiozero callbacks (its own thread) become machine events on the loop.

Press → ``ButtonPressed``; still down after ``hold_s`` → ``ButtonHeld`` (push-to-talk);
release → ``ButtonReleased``; still down after ``mute_s`` → ``MuteToggled`` (privacy mute,
which closes the session at once). The machine decides what each of them means.
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
        mute_s: float | None = 3.0,
    ) -> None:
        """``button`` is a ``gpiozero.Button`` whose ``hold_time`` is the hold threshold.
        ``mute_s`` is the long press that toggles mute (``None``: no mute by button)."""
        self.button = button
        self._loop = loop
        self._post = post
        self._mute_s = mute_s
        self._mute_timer: asyncio.TimerHandle | None = None
        button.when_pressed = lambda: self._hand_over(m.ButtonPressed())
        button.when_held = lambda: self._hand_over(m.ButtonHeld())
        button.when_released = lambda: self._hand_over(m.ButtonReleased())

    def _hand_over(self, event: m.Event) -> None:
        self._loop.call_soon_threadsafe(self._on_loop, event)

    def _on_loop(self, event: m.Event) -> None:
        if self._mute_timer is not None:
            self._mute_timer.cancel()
            self._mute_timer = None
        if isinstance(event, m.ButtonPressed) and self._mute_s is not None:
            self._mute_timer = self._loop.call_later(self._mute_s, self._post, m.MuteToggled())
        if isinstance(event, m.ButtonHeld) and self._mute_s is not None:
            # keep the mute timer: ButtonHeld comes while the button is still down
            self._mute_timer = self._loop.call_later(
                max(0.0, self._mute_s - self.button.hold_time), self._post, m.MuteToggled()
            )
        self._post(event)

    def close(self) -> None:
        if self._mute_timer is not None:
            self._mute_timer.cancel()
        self.button.close()
