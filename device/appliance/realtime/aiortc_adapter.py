"""The one place the device reaches into aiortc's private parts (for ``jitter.py``).

aiortc has no public way to replace an audio receiver's jitter buffer or to hand frames to
a remote track, and loss concealment needs both. So this module, and only this one, uses:

- ``RTCRtpReceiver._RTCRtpReceiver__jitter_buffer`` (name-mangled): the object whose
  ``add(packet) -> (pli_flag, frame)`` aiortc calls for every depayloaded RTP packet;
- ``RemoteStreamTrack._queue``: the ``asyncio.Queue`` of frames the track's ``recv`` reads;
- that aiortc calls ``RTCRtpReceiver.receive(parameters)`` (public) once the remote track
  exists and before the first packet, which ``hook_receive`` wraps.

aiortc is pinned to exactly ``AIORTC_VERSION`` in pyproject.toml because of them.
tests/realtime/test_aiortc_adapter.py checks each against the installed aiortc and fails
naming that version; if one is missing at run time the callers keep aiortc's own path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

AIORTC_VERSION = "1.16.0"
"""The aiortc release whose private names below were checked (pyproject.toml pins it)."""

JITTER_BUFFER = "_RTCRtpReceiver__jitter_buffer"
"""The name-mangled attribute of an ``RTCRtpReceiver`` holding its jitter buffer."""
FRAME_QUEUE = "_queue"
"""The attribute of a ``RemoteStreamTrack`` holding its frame queue."""

Receive = Callable[[Any, Any], Awaitable[None]]
Hook = Callable[[Any, Any], None]

_original_receive: Receive | None = None
_hooks: list[Hook] = []


def frame_queue(track: Any) -> asyncio.Queue[Any] | None:
    """The queue a remote track's ``recv`` reads frames from, or ``None`` if it has none."""
    queue = getattr(track, FRAME_QUEUE, None)
    return queue if isinstance(queue, asyncio.Queue) else None


def replace_jitter_buffer(receiver: Any, buffer: Any) -> bool:
    """Make ``buffer`` (with the jitter buffer's ``add``) receive ``receiver``'s packets;
    False, and nothing changed, if this aiortc has no such attribute."""
    if not hasattr(receiver, JITTER_BUFFER):
        return False
    setattr(receiver, JITTER_BUFFER, buffer)
    return True


async def _receive(self: Any, parameters: Any) -> None:
    assert _original_receive is not None
    for hook in _hooks:
        hook(self, parameters)
    await _original_receive(self, parameters)


def hook_receive(hook: Hook) -> None:
    """Call ``hook(receiver, parameters)`` at the start of every ``RTCRtpReceiver.receive``
    (idempotent per hook; aiortc's own ``receive`` runs after it)."""
    global _original_receive
    from aiortc.rtcrtpreceiver import RTCRtpReceiver

    if _original_receive is None:
        _original_receive = RTCRtpReceiver.receive
        RTCRtpReceiver.receive = _receive  # type: ignore[method-assign]
    if hook not in _hooks:
        _hooks.append(hook)
