"""Opus with in-band FEC at both ends of a call (the device's uplink, the stand-in's replies).

``OpusPacketEncoder`` encodes s16 mono with PyAV's libopus at a speech bitrate with in-band
FEC planned for an expected loss, and returns finished ``av.Packet``s stamped on the 48 kHz RTP
clock from 0. A track that returns them from ``recv`` makes aiortc send them as they are (its
``pack`` path), so aiortc's own 96 kbit/s stereo encoder, which has no FEC, is never used.

``ask_for_opus_fec`` adds ``a=fmtp:<pt> minptime=10;useinbandfec=1`` to an SDP that names Opus
without an ``fmtp`` line (aiortc writes none): the party saying it decodes FEC, which is what
makes libwebrtc senders add it, and what the service's answers say.
"""

from __future__ import annotations

import fractions
import re
from typing import Any

import av
import numpy as np
import numpy.typing as npt


class OpusPacketEncoder:
    """s16 mono samples in, Opus packets out (libopus through PyAV), one codec state."""

    def __init__(self, bitrate: int, expected_loss_pct: int) -> None:
        """``expected_loss_pct``: the loss libopus plans its in-band FEC for (0: no FEC)."""
        self.bitrate = bitrate
        self.expected_loss_pct = expected_loss_pct
        self._codec: Any = None
        self._pts = 0
        self._first_pts: int | None = None

    def _open(self, rate: int) -> Any:
        codec = av.CodecContext.create("libopus", "w")
        codec.bit_rate = self.bitrate
        codec.format = "s16"
        codec.layout = "mono"
        codec.sample_rate = rate
        codec.time_base = fractions.Fraction(1, rate)
        options = {"application": "voip"}
        if self.expected_loss_pct > 0:
            options |= {"fec": "1", "packet_loss": str(self.expected_loss_pct)}
        codec.options = options
        return codec

    def encode(self, samples: npt.NDArray[np.int16], rate: int) -> list[av.Packet[Any]]:
        """Encode ``samples`` (mono, at an Opus rate; the first call fixes the rate)."""
        if self._codec is None:
            self._codec = self._open(rate)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, rate)
        self._pts += samples.size
        packets: list[av.Packet[Any]] = list(self._codec.encode(frame))
        for packet in packets:
            # libopus starts at -pre-skip; RTP timestamps count from the first packet
            pts = packet.pts or 0
            if self._first_pts is None:
                self._first_pts = pts
            packet.pts = pts - self._first_pts
        return packets


def ask_for_opus_fec(sdp: str) -> str:
    """Advertise that we decode Opus in-band FEC (``useinbandfec=1``): senders such as
    libwebrtc only add FEC when the receiver asks. An SDP whose Opus already has an
    ``fmtp`` line, or that has no Opus, is returned as it is."""
    found = re.search(r"^a=rtpmap:(\d+) opus/48000(?:/2)?\r?$", sdp, re.MULTILINE)
    if found is None or re.search(rf"^a=fmtp:{found.group(1)} ", sdp, re.MULTILINE):
        return sdp
    line = found.group(0).rstrip("\r")
    fmtp = f"a=fmtp:{found.group(1)} minptime=10;useinbandfec=1"
    return sdp.replace(line, f"{line}\r\n{fmtp}", 1)
