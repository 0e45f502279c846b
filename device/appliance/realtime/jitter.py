"""Receive-side audio under packet loss: a jitter buffer that conceals lost Opus packets.

aiortc's audio receiver holds RTP in a 16-packet ``JitterBuffer`` (prefetch 4) and decodes
with FFmpeg's libopus wrapper, which has no way to say "this packet is lost". A lost packet
stalls that buffer until 16 newer ones have arrived and it then throws away whole runs of
good packets, and every gap is silence (or, with a real-time sink, an underrun). Figures:
docs/audio.md, "Incoming audio under packet loss".

This module replaces that path for the device's *incoming audio only*:

``ConcealingJitterBuffer`` (pure, no I/O)
    Orders packets by (unwrapped) RTP sequence number and releases sequence ``s`` once a
    packet at least ``depth`` numbers newer has arrived: a constant hold of ``depth``
    packets (default 2 = 40 ms; aiortc's default holds ~4). A sequence number still missing
    at its deadline is declared lost and released as a *gap step*: ``fec`` when packet
    ``s + 1`` is in hand (Opus in-band FEC carries a low-bitrate copy of ``s``), else
    ``plc``. Every release produces one frame per sequence number, so the output keeps the
    sender's clock: no stall, no burst, no time compression. A packet arriving after its
    deadline is counted ``late`` and widens ``depth`` by one (up to ``max_depth``); the
    hold narrows again after ``relax_after`` packets without one. A jump of more than
    ``max_gap`` sequence numbers (sender restart, long outage) is a discontinuity: nothing
    is concealed across it. Neither is a gap that spans a pause after which the buffer was
    flushed (``flush(restart=True)``): those frames' time has passed, and making them up
    afterwards would only add their length to the playout delay for good.

``OpusDecoder`` (ctypes over the real libopus)
    ``decode`` a packet, ``conceal`` with Opus PLC (``opus_decode`` with NULL data) or
    ``recover`` from the next packet's in-band FEC (``decode_fec=1``; libopus falls back
    to PLC itself when that packet carries no FEC data). Debian's ``libopus0`` is used when
    present, else the copy PyAV's wheel ships (``av.libs/libopus-*.so*``).

``ConcealingReceiver``
    Stands in for aiortc's audio jitter buffer object inside one ``RTCRtpReceiver``
    (same ``add(packet) -> (pli_flag, frame)`` method). It never hands a frame back to
    aiortc (so aiortc's FFmpeg decoder thread idles): it decodes the released steps itself
    on the event loop (its cost: docs/audio.md) and puts ``av.AudioFrame``s
    (s16 mono 48 kHz, the same shape aiortc produces, downmixed) on the remote track's
    queue. When the stream pauses it flushes what it holds after ``idle_flush_s``.

How it is put in place (``attach(track)``, through ``aiortc_adapter``):
    ``Playout`` calls ``attach`` when the remote track appears, which aiortc does before
    the receiver's ``receive``; a hook on ``RTCRtpReceiver.receive`` then finds the
    receiver's ``track`` among the attached ones and, when its negotiated codecs include
    Opus, replaces that receiver's jitter buffer with the ``ConcealingReceiver``. Receivers
    of tracks nobody attached (video, other peer connections in the process such as the
    stand-in's) are untouched. Everything else in aiortc's receive path still runs per
    packet: SSRC tracking, RTCP statistics (the liveness watch reads ``packetsReceived``),
    RTX unwrapping, depayloading. The aiortc internals this needs are all in
    ``aiortc_adapter`` (aiortc pinned exactly, checked by a test); if one is missing,
    ``attach`` returns ``None`` and aiortc's own path stays in place (logged once).

``CONCEALMENT`` switches the whole thing off (the soak bench measures both).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import fractions
import glob
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import av
import numpy as np
import numpy.typing as npt

from appliance.errors import ApplianceError
from appliance.realtime import aiortc_adapter

log = logging.getLogger(__name__)

CONCEALMENT = True
"""Conceal lost incoming audio (False: leave aiortc's own jitter buffer in place)."""

RATE = 48_000
"""Opus RTP clock and the rate we decode at."""
DEFAULT_FRAME = 960
"""20 ms at 48 kHz: the frame size assumed before the first packet says otherwise."""
MAX_FRAME = 5760
"""120 ms at 48 kHz: the longest Opus packet."""
TIME_BASE = fractions.Fraction(1, RATE)

Pcm = npt.NDArray[np.int16]
StepKind = Literal["decode", "fec", "plc"]


# ---------------------------------------------------------------------------- libopus


class OpusUnavailable(ApplianceError, ImportError):
    """No loadable libopus (Debian: apt install libopus0; PyAV's wheel also ships one)."""


_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()


def _candidates() -> list[str]:
    found = [c for c in (ctypes.util.find_library("opus"), "libopus.so.0") if c]
    av_libs = os.path.join(os.path.dirname(os.path.dirname(av.__file__)), "av.libs")
    return found + sorted(glob.glob(os.path.join(av_libs, "libopus*.so*")))


def load_library() -> ctypes.CDLL:
    """Load libopus once and declare the prototypes used here."""
    global _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        errors: list[str] = []
        for candidate in _candidates():
            try:
                lib = ctypes.CDLL(candidate)
                _declare(lib)
            except (OSError, AttributeError) as exc:
                errors.append(f"{candidate}: {exc}")
                continue
            _lib = lib
            log.debug("using %s", lib.opus_get_version_string().decode())
            return lib
        raise OpusUnavailable("libopus not found: " + ("; ".join(errors) or "no candidates"))


def _declare(lib: ctypes.CDLL) -> None:
    p, i, i32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int32
    lib.opus_get_version_string.argtypes = []
    lib.opus_get_version_string.restype = ctypes.c_char_p
    lib.opus_decoder_create.argtypes = [i32, i, ctypes.POINTER(i)]
    lib.opus_decoder_create.restype = p
    lib.opus_decoder_destroy.argtypes = [p]
    lib.opus_decoder_destroy.restype = None
    lib.opus_decode.argtypes = [p, ctypes.c_char_p, i32, ctypes.POINTER(ctypes.c_int16), i, i]
    lib.opus_decode.restype = i
    lib.opus_packet_get_nb_samples.argtypes = [ctypes.c_char_p, i32, i32]
    lib.opus_packet_get_nb_samples.restype = i


def libopus_version() -> str:
    return str(load_library().opus_get_version_string().decode())


class OpusDecoder:
    """One libopus decoder state (mono, 48 kHz): decode, conceal (PLC), recover (FEC)."""

    def __init__(self) -> None:
        self._lib = load_library()
        error = ctypes.c_int(0)
        self._state: int | None = self._lib.opus_decoder_create(RATE, 1, ctypes.byref(error))
        if not self._state or error.value != 0:
            raise OpusUnavailable(f"opus_decoder_create failed ({error.value})")
        self._pcm = np.zeros(MAX_FRAME, dtype=np.int16)
        self._ptr = self._pcm.ctypes.data_as(ctypes.POINTER(ctypes.c_int16))
        self.frame_samples = DEFAULT_FRAME
        """Duration of the last good packet: what a lost one is assumed to have been."""

    def _run(self, data: bytes | None, frame_size: int, fec: int) -> Pcm:
        if self._state is None:
            raise ValueError("decoder is closed")
        n = self._lib.opus_decode(
            self._state, data, len(data) if data else 0, self._ptr, frame_size, fec
        )
        if n < 0:
            # a corrupt packet: conceal it rather than stop the stream
            n = self._lib.opus_decode(self._state, None, 0, self._ptr, self.frame_samples, 0)
        return self._pcm[: max(n, 0)].copy()

    def decode(self, payload: bytes) -> Pcm:
        samples = self._lib.opus_packet_get_nb_samples(payload, len(payload), RATE)
        if 0 < samples <= MAX_FRAME:
            self.frame_samples = samples
        return self._run(payload, MAX_FRAME, 0)

    def conceal(self) -> Pcm:
        """Opus packet-loss concealment for one lost packet."""
        return self._run(None, self.frame_samples, 0)

    def recover(self, next_payload: bytes) -> Pcm:
        """The lost packet before ``next_payload``, from its in-band FEC (else PLC)."""
        return self._run(next_payload, self.frame_samples, 1)

    def close(self) -> None:
        if self._state is not None:
            self._lib.opus_decoder_destroy(self._state)
            self._state = None

    def __del__(self) -> None:
        self.close()


# ---------------------------------------------------------------------------- buffer


@dataclass
class JitterStats:
    received: int = 0
    decoded: int = 0
    """Frames decoded from their own packet."""
    recovered: int = 0
    """Lost frames decoded from the next packet's in-band FEC (PLC when it had none)."""
    concealed: int = 0
    """Lost frames made up by Opus PLC."""
    late: int = 0
    """Packets that arrived after their deadline (already concealed; dropped)."""
    duplicates: int = 0
    discontinuities: int = 0
    skipped: int = 0
    """Sequence numbers missing across a discontinuity or a pause: not played."""

    @property
    def played(self) -> int:
        return self.decoded + self.recovered + self.concealed


class ConcealingJitterBuffer:
    """Sequence-number reordering with a loss deadline; see the module docstring."""

    def __init__(
        self,
        depth: int = 2,
        *,
        min_depth: int = 1,
        max_depth: int = 8,
        max_gap: int = 50,
        relax_after: int = 1500,
    ) -> None:
        if not 1 <= min_depth <= depth <= max_depth:
            raise ValueError("need 1 <= min_depth <= depth <= max_depth")
        self.depth = depth
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.max_gap = max_gap
        self.relax_after = relax_after
        self.stats = JitterStats()
        self._packets: dict[int, bytes] = {}
        self._next: int | None = None
        self._highest = 0
        self._since_late = 0
        self._restart = False

    @property
    def held(self) -> int:
        return len(self._packets)

    def _unwrap(self, seq: int) -> int:
        delta = ((seq - self._highest) + 0x8000) % 0x10000 - 0x8000
        return self._highest + delta

    def add(self, seq: int, payload: bytes) -> list[tuple[StepKind, bytes]]:
        """Take packet ``seq`` (16-bit RTP sequence number); return what is due now."""
        self.stats.received += 1
        if self._next is None:
            self._next = self._highest = seq
        ext = self._unwrap(seq & 0xFFFF)
        steps: list[tuple[StepKind, bytes]] = []
        if ext - self._highest > self.max_gap or self._next - ext > self.max_gap:
            steps = self.flush()  # play out what we hold, then start over at this packet
            self.stats.discontinuities += 1
            self.stats.skipped += max(0, ext - self._next)
            self._next = self._highest = ext
        elif self._restart and ext >= self._next:
            self.stats.skipped += ext - self._next
            self._next = ext
        self._restart = False
        if ext < self._next:
            self.stats.late += 1
            self._since_late = 0
            self.depth = min(self.depth + 1, self.max_depth)
            return steps
        if ext in self._packets:
            self.stats.duplicates += 1
            return steps
        self._packets[ext] = payload
        self._highest = max(self._highest, ext)
        self._since_late += 1
        if self._since_late >= self.relax_after and self.depth > self.min_depth:
            self.depth -= 1
            self._since_late = 0
        steps += self._release(self._highest - self.depth)
        return steps

    def flush(self, *, restart: bool = False) -> list[tuple[StepKind, bytes]]:
        """Release everything held (gaps inside are concealed). ``restart``: the stream
        paused; do not conceal what is missing before the next packet to arrive."""
        self._restart = restart
        return self._release(self._highest)

    def _release(self, upto: int) -> list[tuple[StepKind, bytes]]:
        steps: list[tuple[StepKind, bytes]] = []
        if self._next is None:
            return steps
        while self._next <= upto:
            payload = self._packets.pop(self._next, None)
            if payload is not None:
                steps.append(("decode", payload))
                self.stats.decoded += 1
            elif (following := self._packets.get(self._next + 1)) is not None:
                steps.append(("fec", following))
                self.stats.recovered += 1
            else:
                steps.append(("plc", b""))
                self.stats.concealed += 1
            self._next += 1
        return steps


# ---------------------------------------------------------------------------- aiortc glue


class ConcealingReceiver:
    """Takes the place of aiortc's audio ``JitterBuffer`` in one ``RTCRtpReceiver``."""

    def __init__(
        self,
        queue: asyncio.Queue[Any],
        *,
        depth: int = 2,
        idle_flush_s: float = 0.12,
        on_frame: Callable[[av.AudioFrame], None] | None = None,
    ) -> None:
        self.buffer = ConcealingJitterBuffer(depth)
        self.decoder = OpusDecoder()
        self.opus_payload_types: set[int] = set()
        self.idle_flush_s = idle_flush_s
        self.decode_s = 0.0
        """Time spent decoding and concealing, for the bench."""
        self._queue = queue
        self._on_frame = on_frame
        self._pts = 0
        self._last_packet = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._foreign = 0
        self._closed = False

    @property
    def stats(self) -> JitterStats:
        return self.buffer.stats

    # aiortc calls this for every depayloaded packet; returning no frame keeps its own
    # decoder thread idle (it still ends the track when the receiver stops).
    def add(self, packet: Any) -> tuple[bool, None]:
        if self._closed:
            return False, None
        if packet.payload_type not in self.opus_payload_types:
            self._foreign += 1
            if self._foreign == 1:
                log.warning("dropping non-Opus audio (payload type %d)", packet.payload_type)
            return False, None
        self._emit(self.buffer.add(packet.sequence_number, bytes(packet.payload)))
        self._last_packet = time.monotonic()
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.idle_flush_s, self._idle)
        return False, None

    def _idle(self) -> None:
        self._timer = None
        if self._closed:
            return
        quiet = time.monotonic() - self._last_packet
        if quiet >= self.idle_flush_s:
            self._emit(self.buffer.flush(restart=True))
        else:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.idle_flush_s - quiet, self._idle)

    def _emit(self, steps: list[tuple[StepKind, bytes]]) -> None:
        if not steps:
            return
        started = time.perf_counter()
        for kind, payload in steps:
            if kind == "decode":
                pcm = self.decoder.decode(payload)
            elif kind == "fec":
                pcm = self.decoder.recover(payload)
            else:
                pcm = self.decoder.conceal()
            if not pcm.size:
                continue
            frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = RATE
            frame.pts = self._pts
            frame.time_base = TIME_BASE
            self._pts += pcm.size
            self._queue.put_nowait(frame)
            if self._on_frame is not None:
                self._on_frame(frame)
        self.decode_s += time.perf_counter() - started

    def close(self) -> None:
        """Stop for good (idempotent): later packets are ignored, the decoder is freed."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.decoder.close()


_pending: weakref.WeakKeyDictionary[Any, ConcealingReceiver] = weakref.WeakKeyDictionary()
_warned = False


def _warn_once(why: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning("audio loss concealment unavailable (%s); using aiortc's jitter buffer", why)


def _before_receive(receiver: Any, parameters: Any) -> None:
    track = getattr(receiver, "track", None)
    concealer = _pending.pop(track, None) if track is not None else None
    if concealer is None:
        return
    opus = {
        codec.payloadType
        for codec in getattr(parameters, "codecs", [])
        if str(getattr(codec, "mimeType", "")).lower() == "audio/opus"
    }
    if opus:
        concealer.opus_payload_types = opus
    if not opus or not aiortc_adapter.replace_jitter_buffer(receiver, concealer):
        concealer.close()
        _warn_once("no Opus negotiated" if not opus else "aiortc internals changed")


def install() -> None:
    """Hook ``RTCRtpReceiver.receive`` once (see the module docstring)."""
    aiortc_adapter.hook_receive(_before_receive)


def attach(track: Any, *, depth: int = 2) -> ConcealingReceiver | None:
    """Conceal loss on this remote audio track (call before it starts receiving).

    Returns the receiver-side object (for its ``stats``), or ``None`` when concealment is
    off or cannot be used here, in which case aiortc's own path stays in place.
    """
    if not CONCEALMENT or getattr(track, "kind", None) != "audio":
        return None
    queue = aiortc_adapter.frame_queue(track)
    if queue is None:
        _warn_once("the remote track has no frame queue")
        return None
    try:
        concealer = ConcealingReceiver(queue, depth=depth)
    except OpusUnavailable as exc:
        _warn_once(str(exc))
        return None
    install()
    _pending[track] = concealer
    return concealer
