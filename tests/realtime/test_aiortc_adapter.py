"""aiortc's private parts that ``appliance.realtime.aiortc_adapter`` relies on are still there,
with the shape it expects: on a real receiver of a real peer connection. A failure here means
aiortc changed under the exact pin in pyproject.toml: check the adapter against it."""

from __future__ import annotations

import asyncio
import inspect
from importlib.metadata import version
from typing import Any

from aiortc import RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack
from aiortc.rtcrtpreceiver import RemoteStreamTrack, RTCRtpReceiver

from appliance.realtime import aiortc_adapter

PINNED = f"aiortc=={aiortc_adapter.AIORTC_VERSION} (appliance/realtime/aiortc_adapter.py)"


def test_the_installed_aiortc_is_the_pinned_one() -> None:
    assert version("aiortc") == aiortc_adapter.AIORTC_VERSION, (
        f"aiortc {version('aiortc')} is installed; the adapter was checked against {PINNED}"
    )


async def _receiver() -> tuple[RTCPeerConnection, RTCRtpReceiver]:
    pc = RTCPeerConnection()
    return pc, pc.addTransceiver("audio", direction="recvonly").receiver


async def test_an_audio_receiver_has_a_replaceable_jitter_buffer_with_add() -> None:
    pc, receiver = await _receiver()
    try:
        buffer = getattr(receiver, aiortc_adapter.JITTER_BUFFER, None)
        assert buffer is not None, f"RTCRtpReceiver has no {aiortc_adapter.JITTER_BUFFER}: {PINNED}"
        assert list(inspect.signature(buffer.add).parameters) == ["packet"], PINNED

        class Buffer:
            def add(self, packet: Any) -> tuple[bool, None]:
                return False, None

        replacement = Buffer()
        assert aiortc_adapter.replace_jitter_buffer(receiver, replacement)
        assert getattr(receiver, aiortc_adapter.JITTER_BUFFER) is replacement
    finally:
        await pc.close()


async def test_a_remote_track_has_the_frame_queue_its_recv_reads() -> None:
    track = RemoteStreamTrack(kind="audio")
    queue = aiortc_adapter.frame_queue(track)
    assert queue is not None, f"RemoteStreamTrack has no {aiortc_adapter.FRAME_QUEUE}: {PINNED}"
    marker = object()
    queue.put_nowait(marker)
    frame = await asyncio.wait_for(track.recv(), 5)
    assert frame is marker, f"recv() reads another queue: {PINNED}"


async def test_receive_runs_the_hook_with_the_track_then_feeds_the_replaced_buffer() -> None:
    """The order the adapter relies on, over a real loopback connection: by ``receive`` the
    receiver knows its remote track, and the packets aiortc receives afterwards go to the
    replaced buffer's ``add``."""
    sender, listener = RTCPeerConnection(), RTCPeerConnection()
    sender.addTrack(AudioStreamTrack())  # 20 ms frames of silence, Opus-encoded
    tracks: list[object] = []
    listener.on("track", tracks.append)
    hooked: list[object] = []
    arrived = asyncio.Event()
    added: list[int] = []

    class Buffer:
        def add(self, packet: Any) -> tuple[bool, None]:
            added.append(packet.sequence_number)
            arrived.set()
            return False, None

    def hook(receiver: Any, parameters: Any) -> None:
        if receiver in [t.receiver for t in listener.getTransceivers()]:
            hooked.append(receiver.track)
            assert aiortc_adapter.replace_jitter_buffer(receiver, Buffer())

    aiortc_adapter.hook_receive(hook)
    aiortc_adapter.hook_receive(hook)  # idempotent
    assert aiortc_adapter._hooks.count(hook) == 1
    try:
        await sender.setLocalDescription(await sender.createOffer())
        await listener.setRemoteDescription(sender.localDescription)
        await listener.setLocalDescription(await listener.createAnswer())
        await sender.setRemoteDescription(listener.localDescription)
        await asyncio.wait_for(arrived.wait(), 20)
        assert tracks, "the listener got a remote track"
        assert hooked == tracks, f"receive() ran before the remote track existed: {PINNED}"
        assert added, f"aiortc's receive path no longer calls the jitter buffer: {PINNED}"
    finally:
        aiortc_adapter._hooks.remove(hook)
        await sender.close()
        await listener.close()


def test_the_hooked_method_keeps_its_signature() -> None:
    original = aiortc_adapter._original_receive or RTCRtpReceiver.receive
    assert list(inspect.signature(original).parameters) == ["self", "parameters"], PINNED
