"""A minimal GPT-Live WebRTC client for tests, like the browser flow in OpenAI's guide.

It creates the session itself with the project key (a trusted server would do that part),
waits for ``session.started``, and validates, strictly, every event it sends against
``openai.types.live.ClientEvent`` and every event it receives against ``ServerEvent``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiortc import RTCSessionDescription

from appliance_common.ice import PeerConnection
from tests.peer import ClipTrack
from tests.wire_live import (
    validate_create_request,
    validate_create_response,
    validate_live_client,
    validate_live_server,
)


@dataclass
class LivePeer:
    base_url: str
    key: str
    events: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    session_id: str | None = None
    mic: ClipTrack = field(default_factory=ClipTrack)

    def __post_init__(self) -> None:
        self.pc = PeerConnection()
        self._new_event = asyncio.Event()
        self.channel: Any = None

    async def connect(self, session: dict[str, Any]) -> httpx.Response:
        self.pc.addTransceiver(self.mic, direction="sendrecv")
        self.channel = self.pc.createDataChannel("oai-events")
        self.channel.on("message", self._on_message)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {
            "session": session,
            "transport": {"type": "webrtc", "sdp": self.pc.localDescription.sdp},
        }
        validate_create_request(body)
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(
                f"{self.base_url}/v1/live/sessions",
                headers={"Authorization": f"Bearer {self.key}"},
                json=body,
            )
        if response.status_code == 200:
            created = validate_create_response(response.json())
            self.session_id = created.session.id
            await self.pc.setRemoteDescription(
                RTCSessionDescription(created.transport.sdp, "answer")
            )
        return response

    def _on_message(self, message: str) -> None:
        data = json.loads(message)
        validate_live_server(data)
        self.events.append(data)
        self._new_event.set()

    def send(self, event: dict[str, Any]) -> str:
        event.setdefault("event_id", f"evt_test_{len(self.sent)}")
        validate_live_client(event)
        self.sent.append(event)
        self.channel.send(json.dumps(event))
        return str(event["event_id"])

    def types(self) -> list[str]:
        return [str(e["type"]) for e in self.events]

    def text(self, kind: str) -> str:
        return "".join(str(e["delta"]) for e in self.events if e["type"] == kind)

    async def wait_for(self, kind: str, count: int = 1, within: float = 15.0) -> dict[str, Any]:
        """Wait until ``count`` events of type ``kind`` arrived; return the last one."""
        return await self.wait_match(lambda e: e["type"] == kind, count, within, kind)

    async def wait_match(
        self,
        wanted: Callable[[dict[str, Any]], bool],
        count: int = 1,
        within: float = 15.0,
        what: str = "a matching event",
    ) -> dict[str, Any]:
        """Wait until ``count`` events ``wanted`` accepts arrived; return the last one."""
        deadline = time.monotonic() + within
        while True:
            matching = [e for e in self.events if wanted(e)]
            if len(matching) >= count:
                return matching[count - 1]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {what} (#{count}) within {within} s; got {self.types()}")
            self._new_event.clear()
            try:
                await asyncio.wait_for(self._new_event.wait(), remaining)
            except TimeoutError:
                continue

    async def close(self) -> None:
        await self.pc.close()
