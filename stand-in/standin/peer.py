"""The stand-in's side of a WebRTC peer connection, shared by Realtime calls and Live sessions.

``answer_offer`` takes a client's SDP offer and returns the answer, after wiring the
connection's events (the data channel, the client's audio track, the connection going away);
``listen`` turns that audio track into 16 kHz samples for a VAD and ``VadFrames`` cuts them
into the 20 ms frames a WebRTC VAD takes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from aiortc import RTCRtpCodecCapability, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from appliance_common.ice import PeerConnection
from appliance_common.pcm import Pcm, Resampler
from standin.media import ReplyTrack, make_track

log = logging.getLogger(__name__)
VAD_RATE = 16_000
VAD_FRAME = 320  # 20 ms


async def answer_offer(
    pc: PeerConnection,
    name: str,
    offer_sdp: str,
    reply: ReplyTrack,
    *,
    on_channel: Callable[[Any], None],
    on_audio: Callable[[Any], object],
    on_lost: Callable[[], Awaitable[None]],
    codecs: list[RTCRtpCodecCapability] | None = None,
) -> str:
    """Answer ``offer_sdp`` on ``pc`` (of the session ``name`` in logs), sending ``reply``
    as its audio (with ``codecs``, in that order, when given) and both sending and receiving
    on every audio m-line.

    ``on_channel`` gets each data channel the client opens, ``on_audio`` each audio track,
    ``on_lost`` runs when the connection fails or closes. ``ValueError`` on a bad offer; on
    any failure (cancellation too) ``pc`` is closed.
    """
    sender = pc.addTrack(make_track(reply))
    if codecs is not None:
        for transceiver in pc.getTransceivers():
            if transceiver.sender is sender:
                transceiver.setCodecPreferences(codecs)
    pc.on("datachannel", on_channel)

    @pc.on("track")
    def _on_track(track: Any) -> None:
        if track.kind == "audio":
            on_audio(track)

    @pc.on("connectionstatechange")
    async def _on_state() -> None:
        log.info("%s: peer connection %s", name, pc.connectionState)
        if pc.connectionState in ("failed", "closed"):
            await on_lost()

    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
    except Exception as exc:
        await pc.close()
        raise ValueError(f"invalid SDP offer: {exc}") from exc
    if not any(t.kind == "audio" for t in pc.getTransceivers()):
        await pc.close()
        raise ValueError("the offer has no audio m-line")
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "audio":
            transceiver.direction = "sendrecv"
    try:
        await pc.setLocalDescription(await pc.createAnswer())
    except BaseException:  # the request went away: no session to close later
        await pc.close()
        raise
    return str(pc.localDescription.sdp)


async def listen(track: Any, hear: Callable[[Pcm], None]) -> None:
    """Hand ``track``'s audio to ``hear`` as mono ``VAD_RATE`` samples until it ends."""
    resampler = Resampler(VAD_RATE)
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        hear(resampler.frame(frame))


class VadFrames:
    """Collects ``VAD_RATE`` samples and hands out 20 ms frames as bytes."""

    def __init__(self) -> None:
        self._pending = np.zeros(0, dtype=np.int16)

    def push(self, samples: Pcm) -> list[bytes]:
        pending = np.concatenate([self._pending, samples])
        count = pending.size // VAD_FRAME
        frames = [pending[i * VAD_FRAME : (i + 1) * VAD_FRAME].tobytes() for i in range(count)]
        self._pending = pending[count * VAD_FRAME :]
        return frames
