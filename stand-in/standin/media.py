"""The model's voice out of a stand-in call: on an RTP track (WebRTC) or as base64
``response.output_audio.delta`` events (WebSocket).

Both are a ``ReplyAudio``: the call queues 48 kHz mono samples and reads back how much was
played; only the WebRTC one paces itself by the clock. On RTP the track sends Opus that it
encoded itself, with in-band FEC (``REPLY_BITRATE``, ``REPLY_EXPECTED_LOSS_PCT``), as the
service's answer SDP promises (``useinbandfec=1``); ``answer_codecs`` shapes that answer.
"""

from __future__ import annotations

import asyncio
import base64
import fractions
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCRtpCodecCapability, RTCRtpSender

from appliance_common.opus import OpusPacketEncoder
from appliance_common.pcm import Pcm, Resampler
from standin import events as ev

if TYPE_CHECKING:
    from standin.server import Faults

RATE = 48_000
FRAME = 960  # 20 ms at 48 kHz
WIRE_RATE = 24_000
"""``audio/pcm`` on a WebSocket: 16-bit little-endian mono at 24 kHz (the only rate)."""
G711 = {"audio/pcmu": "pcm_mulaw", "audio/pcma": "pcm_alaw"}
"""The G.711 formats (8 kHz, one byte a sample) by their FFmpeg codec."""
REPLY_BITRATE = 32_000
"""Opus bitrate of the model's voice (bit/s): wideband speech, mono."""
REPLY_EXPECTED_LOSS_PCT = 10
"""Loss the reply's in-band FEC is planned for."""
SERVICE_CODECS = ("audio/opus", "audio/PCMU", "audio/PCMA")
"""What the service's answers offer, in its order (reference §1.1: ``111 0 8``)."""


def answer_codecs() -> list[RTCRtpCodecCapability]:
    """Codec preferences for the call's audio transceiver: Opus first, then G.711, nothing
    else (aiortc would also answer G.722, which the service never does)."""
    capabilities = RTCRtpSender.getCapabilities("audio").codecs
    return [
        codec
        for name in SERVICE_CODECS
        for codec in capabilities
        if codec.mimeType.lower() == name.lower()
    ]


class ReplyAudio(Protocol):
    """Where a call's reply audio goes."""

    played_samples: int
    """48 kHz samples of model audio delivered so far."""
    drained: asyncio.Event
    """Set while nothing queued is still waiting to be delivered."""
    sent: list[Pcm]

    def begin(self, response_id: str, item_id: str) -> None:
        """A reply's audio starts (what the next ``enqueue`` belongs to)."""

    def enqueue(self, samples: Pcm) -> None: ...

    def end(self) -> None:
        """The reply's audio is complete."""

    def pending(self) -> int: ...

    def clear(self) -> int: ...


class ReplyTrack:
    """Outbound audio: whatever is queued, else silence, paced by real time.

    ``make_track`` wraps it in an aiortc track.
    ``played_samples`` counts model audio actually sent on the wire.
    """

    def __init__(self) -> None:
        self._queue: Pcm = np.zeros(0, dtype=np.int16)
        self._pts = 0
        self._start: float | None = None
        self.played_samples = 0
        self.drained = asyncio.Event()
        self.drained.set()
        self.sent: list[Pcm] = []
        """Every non-silent chunk sent, for tests that correlate what the device heard."""
        self.opus = True
        """Send Opus packets with in-band FEC (else frames, for the negotiated G.711)."""

    def begin(self, response_id: str, item_id: str) -> None:
        pass  # RTP carries no ids

    def end(self) -> None:
        pass  # the track plays silence once the queue is empty

    def enqueue(self, samples: Pcm) -> None:
        self._queue = np.concatenate([self._queue, samples])
        if self._queue.size:
            self.drained.clear()

    def pending(self) -> int:
        return int(self._queue.size)

    def clear(self) -> int:
        dropped = int(self._queue.size)
        self._queue = np.zeros(0, dtype=np.int16)
        self.drained.set()
        return dropped

    async def next_frame(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self._pts / RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.5:  # fell far behind (loop stall): resynchronise instead of bursting
            self._start = time.monotonic() - self._pts / RATE
        if self._queue.size:
            chunk = self._queue[:FRAME]
            self._queue = self._queue[FRAME:]
            self.played_samples += chunk.size
            self.sent.append(chunk)
            if chunk.size < FRAME:
                chunk = np.concatenate([chunk, np.zeros(FRAME - chunk.size, dtype=np.int16)])
            if not self._queue.size:
                self.drained.set()
        else:
            chunk = np.zeros(FRAME, dtype=np.int16)
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, RATE)
        self._pts += FRAME
        return frame


class _Track(MediaStreamTrack):
    kind = "audio"

    def __init__(self, source: ReplyTrack) -> None:
        super().__init__()
        self._source = source
        self._encoder = OpusPacketEncoder(REPLY_BITRATE, REPLY_EXPECTED_LOSS_PCT)
        self._packets: list[av.Packet[Any]] = []

    async def recv(self) -> av.AudioFrame | av.Packet[Any]:
        if not self._source.opus:  # G.711 negotiated: aiortc encodes the frames
            return await self._source.next_frame()
        while not self._packets:
            frame = await self._source.next_frame()
            samples = frame.to_ndarray().reshape(-1).astype(np.int16, copy=False)
            self._packets = self._encoder.encode(samples, RATE)
        return self._packets.pop(0)


def make_track(source: ReplyTrack) -> MediaStreamTrack:
    """Wrap ``source`` in an aiortc ``MediaStreamTrack``: Opus packets with in-band FEC
    (sent by aiortc as they are) while ``source.opus``, else frames."""
    return _Track(source)


def sending_codec(answer_sdp: str) -> str:
    """The codec an answer sends audio with (its first audio payload type), e.g. ``opus``."""
    mline = re.search(r"^m=audio \S+ \S+ (\d+)", answer_sdp, re.MULTILINE)
    if mline is None:
        return ""
    rtpmap = re.search(rf"^a=rtpmap:{mline.group(1)} ([^/\s]+)", answer_sdp, re.MULTILINE)
    return rtpmap.group(1).lower() if rtpmap else ""


def wire_rate(format_type: str) -> int:
    """The sample rate of a session audio format (``audio/pcm``, ``audio/pcmu``, ``audio/pcma``)."""
    return 8_000 if format_type in G711 else WIRE_RATE


def _g711(format_type: str, mode: Literal["r", "w"]) -> Any:
    codec: Any = av.CodecContext.create(G711[format_type], mode)
    codec.sample_rate = 8_000
    codec.layout = "mono"
    if mode == "w":
        codec.format = "s16"
    return codec


def decode_wire(data: bytes, format_type: str) -> Pcm:
    """Audio bytes of a session format as s16 samples at ``wire_rate(format_type)``."""
    if format_type in G711:
        frames = _g711(format_type, "r").decode(av.Packet(data)) if data else []
        chunks = [f.to_ndarray().reshape(-1) for f in frames]
        return np.concatenate(chunks).astype(np.int16) if chunks else np.zeros(0, np.int16)
    return np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2").astype(np.int16)


def encode_wire(samples: Pcm, format_type: str) -> bytes:
    """s16 samples at ``wire_rate(format_type)`` as audio bytes of that session format."""
    if format_type in G711:
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 8_000
        return b"".join(bytes(p) for p in _g711(format_type, "w").encode(frame))
    return samples.astype("<i2").tobytes()


class DeltaAudio:
    """Reply audio as ``response.output_audio.delta`` events (the WebSocket transport), in the
    session's output format (``format_of()``, read as each reply begins).

    Audio is handed over as it is generated, faster than real time, as the service does: the
    client buffers and plays it, so nothing is ever pending here.
    """

    def __init__(
        self, send: Callable[[dict[str, Any]], None], format_of: Callable[[], str]
    ) -> None:
        self._send = send
        self._format_of = format_of
        self._format = "audio/pcm"
        self._resampler = Resampler(WIRE_RATE)
        self._ids: tuple[str, str] | None = None
        self.played_samples = 0
        self.drained = asyncio.Event()
        self.drained.set()
        self.sent: list[Pcm] = []

    def begin(self, response_id: str, item_id: str) -> None:
        self._ids = (response_id, item_id)
        self._format = self._format_of()
        self._resampler = Resampler(wire_rate(self._format))

    def _event(self, kind: str, **fields: Any) -> None:
        if self._ids is None:
            return
        response_id, item_id = self._ids
        self._send(
            ev.event(
                kind,
                response_id=response_id,
                item_id=item_id,
                output_index=0,
                content_index=0,
                **fields,
            )
        )

    def enqueue(self, samples: Pcm) -> None:
        self.sent.append(samples)
        self.played_samples += int(samples.size)
        pcm = self._resampler.pcm(samples, RATE)
        if pcm.size:
            data = encode_wire(pcm, self._format)
            self._event("response.output_audio.delta", delta=base64.b64encode(data).decode())

    def end(self) -> None:
        self._event("response.output_audio.done")
        self._ids = None

    def pending(self) -> int:
        return 0

    def clear(self) -> int:
        return 0


async def stream_speech(
    track: ReplyAudio,
    samples: Pcm,
    words: list[str],
    said: Callable[[str, int], None],
    faults: Faults,
    drop: Callable[[], None],
) -> None:
    """Queue ``samples`` (48 kHz) on ``track`` a little ahead of playback and return once
    they have played. ``said`` gets the transcript of ``words`` in step with the audio: each
    word as a delta (a space before all but the first) and the samples queued so far. Under
    the ``drop_after_audio_ms`` fault, ``drop`` runs after that much audio and this stalls."""
    lead = RATE // 5  # 200 ms generated ahead of what is played
    chunk = RATE // 10
    total = max(1, int(samples.size))
    pos = sent = 0
    drop_at = faults.drop_after_audio_ms
    while pos < samples.size:
        while track.pending() > lead:  # noqa: ASYNC110  # polls the playout position
            await asyncio.sleep(0.02)
        piece = samples[pos : pos + chunk]
        track.enqueue(piece)
        pos += piece.size
        due = round(len(words) * pos / total)
        while sent < due:
            said(("" if sent == 0 else " ") + words[sent], pos)
            sent += 1
        if drop_at is not None and pos * 1000 / RATE >= drop_at:
            drop()
            await asyncio.sleep(3600)
    await track.drained.wait()
