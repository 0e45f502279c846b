"""The wire of a stand-in session: server events out, client events in.

A ``Wire`` sends each server event on the session's data channel (WebRTC) and to every
attached outlet (a WebSocket, the sideband), keeping a copy in ``sent``; it parses each client
event, keeps it in ``received`` and hands it to the handler for its ``type``. What is wrong
with a client event (not JSON, not an object, an unknown type, a missing field) comes back as
an ``error`` event; the session goes on. ``send_raw`` puts text on the data channel as it is,
for tests that need what the stand-in would never send itself.

The Realtime error shape is the default; ``live.LiveWire`` changes the shapes for GPT-Live.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from standin import events as ev

if TYPE_CHECKING:
    from standin.server import Faults

log = logging.getLogger(__name__)
JSON = dict[str, Any]
Handler = Callable[[JSON, "str | None"], None]
"""A client event's handler: the event and its ``event_id`` (``None`` when it has none)."""
Outlet = Callable[[JSON], None]


class Wire:
    """Server events out and client events in, for the session ``session_id`` (logged as
    ``label`` and the id, at ``level``)."""

    def __init__(
        self, session_id: str, faults: Faults, *, label: str = "call", level: int = logging.INFO
    ) -> None:
        self.session_id = session_id
        self.name = f"{label} {session_id}"
        self.faults = faults
        self.level = level
        self.sent: list[JSON] = []
        self.received: list[JSON] = []
        self.handlers: Mapping[str, Handler] = {}
        self.channel: Any = None
        """The ``oai-events`` data channel, once the peer opened it."""
        self.open = True
        self._outlets: list[Outlet] = []

    # ------------------------------------------------------------------ out

    def bind(self, channel: Any) -> None:
        """Carry events on ``channel`` (an aiortc data channel) from now on."""
        self.channel = channel
        channel.on("message", self.receive)

    def attach(self, outlet: Outlet) -> None:
        """Send every later server event to ``outlet`` too."""
        self._outlets.append(outlet)

    def detach(self, outlet: Outlet) -> None:
        if outlet in self._outlets:
            self._outlets.remove(outlet)

    def shut(self) -> None:
        """Send nothing more (the session is closing) and forget the outlets."""
        self.open = False
        self._outlets.clear()

    def send(self, event: JSON) -> None:
        """Send a server event (dropped while the ``stall_events`` fault is on or once shut)."""
        if self.faults.stall_events or not self.open:
            return
        self.sent.append(event)
        log.log(
            self.level,
            "%s out: %s %s",
            self.name,
            event["type"],
            event.get("event_id"),
            extra={
                "call_id": self.session_id,
                "event_type": event["type"],
                "event_id": event.get("event_id"),
                "direction": "out",
            },
        )
        if self.channel is not None and self.channel.readyState == "open":
            self.channel.send(json.dumps(event))
        for outlet in list(self._outlets):
            outlet(event)

    def send_raw(self, text: str) -> None:
        """Put ``text`` on the data channel unchanged and unrecorded: malformed or unknown
        events for tests. ``RuntimeError`` while no channel is open."""
        if self.channel is None or self.channel.readyState != "open":
            raise RuntimeError(f"{self.name}: no open data channel")
        self.channel.send(text)

    def error(
        self, message: str, code: str, event_id: str | None = None, param: str | None = None
    ) -> None:
        self.send(self.error_event(message, code, event_id, param))

    def error_event(self, message: str, code: str, event_id: str | None, param: str | None) -> JSON:
        """The ``error`` event this wire sends (the Realtime shape)."""
        return ev.error(message, code=code, param=param, event_id=event_id)

    # ------------------------------------------------------------------ in

    def receive(self, message: str | bytes) -> None:
        """One client event (a data-channel message or a WebSocket text frame)."""
        try:
            data = json.loads(message)
            if not isinstance(data, dict):
                raise ValueError("event is not an object")
        except ValueError as exc:
            self.error(f"Invalid JSON: {exc}", "invalid_json")
            return
        self.received.append(data)
        kind = str(data.get("type"))
        event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
        log.log(
            self.level,
            "%s in: %s %s",
            self.name,
            kind,
            event_id,
            extra={
                "call_id": self.session_id,
                "event_type": kind,
                "event_id": event_id,
                "direction": "in",
            },
        )
        if not self.admits(kind, event_id):
            return
        handler = self.handlers.get(kind)
        if handler is None:
            self.unknown(kind, event_id)
            return
        try:
            handler(data, event_id)
        except (KeyError, TypeError, ValueError) as exc:
            self.error(f"Invalid event: {exc}", "invalid_value", event_id)

    def admits(self, kind: str, event_id: str | None) -> bool:
        """Whether this session takes ``kind`` at all (no: the error is sent here)."""
        return True

    def unknown(self, kind: str, event_id: str | None) -> None:
        self.error(
            f"Invalid value: '{kind}'. Supported values are: {', '.join(sorted(self.handlers))}.",
            "invalid_value",
            event_id,
            param="type",
        )
