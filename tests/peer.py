"""A minimal GA WebRTC client for tests: plays a clip as the mic, records what it hears.

Shared by the stand-in and device tests. It validates every event it sends against the
``openai`` package's client types and every event it receives against the server types.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import time
from dataclasses import dataclass, field
from typing import Any

import av
import httpx
import numpy as np
from aiortc import MediaStreamTrack, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from appliance.audio.frames import Pcm, Resampler
from appliance_common.ice import PeerConnection
from tests.waiting import Changes, Recorded
from tests.wire import validate_client, validate_server

RATE = 48_000
FRAME = 960


class ClipTrack(MediaStreamTrack):
    """Plays queued 48 kHz mono clips in real time, silence in between."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue: Pcm = np.zeros(0, dtype=np.int16)
        self._pts = 0
        self._start: float | None = None
        self.sent = Changes()
        """Notified at every frame handed to the peer connection."""

    def play(self, samples: Pcm) -> None:
        self._queue = np.concatenate([self._queue, samples])

    @property
    def busy(self) -> bool:
        return bool(self._queue.size)

    async def until_played(self) -> None:
        """Return once every queued clip has been sent to its last sample."""
        await self.sent.until(lambda: not self.busy, "the clip to be sent")

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self._pts / RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # the media clock: frames go out at real-time rate
        chunk = self._queue[:FRAME]
        self._queue = self._queue[FRAME:]
        self.sent.notify()
        if chunk.size < FRAME:
            chunk = np.concatenate([chunk, np.zeros(FRAME - chunk.size, dtype=np.int16)])
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, RATE)
        self._pts += FRAME
        return frame


@dataclass
class GaPeer:
    """Connects to ``{base}/v1/realtime/calls`` with a key, like a browser would."""

    base_url: str
    key: str
    events: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    heard: Recorded[Pcm] = field(default_factory=Recorded)
    call_id: str | None = None
    mic: ClipTrack = field(default_factory=ClipTrack)

    def __post_init__(self) -> None:
        self.pc = PeerConnection()
        self._new_event = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.channel: Any = None
        self.closed = asyncio.Event()

    async def connect(self, multipart_session: dict[str, Any] | None = None) -> httpx.Response:
        self.pc.addTransceiver(self.mic, direction="sendrecv")
        self.channel = self.pc.createDataChannel("oai-events")
        self.channel.on("message", self._on_message)
        self.channel.on("close", self.closed.set)

        @self.pc.on("track")
        def _on_track(track: Any) -> None:
            task = asyncio.ensure_future(self._listen(track))
            self._tasks.add(task)

        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with httpx.AsyncClient(timeout=10) as http:
            url = f"{self.base_url}/v1/realtime/calls"
            headers = {"Authorization": f"Bearer {self.key}"}
            if multipart_session is not None:
                files = {
                    "sdp": (None, self.pc.localDescription.sdp, "application/sdp"),
                    "session": (None, json.dumps(multipart_session), "application/json"),
                }
                response = await http.post(url, headers=headers, files=files)
            else:
                headers["Content-Type"] = "application/sdp"
                response = await http.post(
                    url, headers=headers, content=self.pc.localDescription.sdp
                )
        if response.status_code == 201:
            self.call_id = response.headers["location"].rsplit("/", 1)[-1]
            await self.pc.setRemoteDescription(RTCSessionDescription(response.text, "answer"))
        return response

    async def _listen(self, track: Any) -> None:
        resampler = Resampler(RATE)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.heard.append(resampler.frame(frame))

    def _on_message(self, message: str) -> None:
        data = json.loads(message)
        validate_server(data)
        self.events.append(data)
        self._new_event.set()

    def send(self, event: dict[str, Any]) -> str:
        event.setdefault("event_id", f"evt_test_{len(self.sent)}")
        validate_client(event)
        self.sent.append(event)
        self.channel.send(json.dumps(event))
        return str(event["event_id"])

    def ask(self, text: str, **response: Any) -> None:
        """A typed user message, then ``response.create`` (with ``response`` as its params)."""
        content = [{"type": "input_text", "text": text}]
        item = {"type": "message", "role": "user", "content": content}
        self.send({"type": "conversation.item.create", "item": item})
        self.send(
            {"type": "response.create", "response": response}
            if response
            else {"type": "response.create"}
        )

    def types(self) -> list[str]:
        return [str(e["type"]) for e in self.events]

    async def wait_for(self, kind: str, count: int = 1, within: float = 15.0) -> dict[str, Any]:
        """Wait until ``count`` events of type ``kind`` arrived; return the last one."""
        timeout = within
        deadline = time.monotonic() + timeout
        while True:
            matching = [e for e in self.events if e["type"] == kind]
            if len(matching) >= count:
                return matching[count - 1]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {kind} (#{count}) within {timeout} s; got {self.types()}")
            self._new_event.clear()
            try:
                await asyncio.wait_for(self._new_event.wait(), remaining)
            except TimeoutError:
                continue

    async def until_heard(self, frames: int) -> None:
        """Return once ``frames`` audio frames in all were received from the service."""
        await self.heard.until(lambda heard: len(heard) >= frames, f"{frames} frames heard")

    def heard_audio(self) -> Pcm:
        return np.concatenate(self.heard) if self.heard else np.zeros(0, dtype=np.int16)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.pc.close()
