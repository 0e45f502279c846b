"""Audio under packet loss: the concealing jitter buffer, libopus PLC/FEC, the uplink encoder,
and a reply heard through 5% real packet loss (nftables in a private network namespace)."""

from __future__ import annotations

import fractions
import os
from collections.abc import Sequence

import av
import numpy as np
import pytest

from appliance.audio.base import AudioFormat
from appliance.realtime import jitter
from appliance.realtime.jitter import ConcealingJitterBuffer, OpusDecoder
from appliance.realtime.media import UPLINK_BITRATE, MicTrack
from appliance_dev.bench.soak import loss_available, measure_loss
from tests.conftest import require, require_tool
from tests.waiting import HANG_S


def kinds(steps: Sequence[tuple[str, bytes]]) -> list[str]:
    return [kind if kind != "decode" else payload.decode() for kind, payload in steps]


def feed(buffer: ConcealingJitterBuffer, seqs: list[int]) -> list[str]:
    out: list[str] = []
    for seq in seqs:
        out += kinds(buffer.add(seq, str(seq).encode()))
    return out


# ---------------------------------------------------------------- the buffer (pure)


def test_in_order_packets_come_out_in_order_after_a_constant_hold() -> None:
    buffer = ConcealingJitterBuffer(depth=2)
    assert feed(buffer, [10, 11]) == []
    assert feed(buffer, [12]) == ["10"]
    assert feed(buffer, [13, 14]) == ["11", "12"]
    assert buffer.held == 2
    assert kinds(buffer.flush()) == ["13", "14"]


def test_a_lost_packet_is_one_fec_frame_from_the_next_packet() -> None:
    buffer = ConcealingJitterBuffer(depth=2)
    out = feed(buffer, [1, 2, 4, 5, 6, 7])  # 3 never arrives
    assert out == ["1", "2", "fec", "4", "5"]
    buffer = ConcealingJitterBuffer(depth=2)
    steps = [s for seq in (1, 2, 4, 5) for s in buffer.add(seq, bytes([seq]))]
    assert ("fec", bytes([4])) in steps, "FEC decodes the packet after the gap"
    assert buffer.stats.recovered == 1


def test_a_burst_is_plc_then_fec_one_frame_per_sequence_number() -> None:
    buffer = ConcealingJitterBuffer(depth=2)
    out = feed(buffer, [1, 5, 6, 7, 8])
    assert out == ["1", "plc", "plc", "fec", "5", "6"]
    assert (buffer.stats.concealed, buffer.stats.recovered, buffer.stats.decoded) == (2, 1, 3)
    assert buffer.stats.played == 6


def test_reordering_within_the_hold_is_repaired_without_concealment() -> None:
    buffer = ConcealingJitterBuffer(depth=3)
    out = feed(buffer, [1, 3, 2, 5, 4, 6, 7, 8, 9])
    assert out == ["1", "2", "3", "4", "5", "6"]
    assert buffer.stats.concealed == buffer.stats.recovered == 0


def test_a_late_packet_is_dropped_and_widens_the_hold() -> None:
    buffer = ConcealingJitterBuffer(depth=1, max_depth=3)
    out = feed(buffer, [1, 3, 4, 2])  # 2 was concealed when 3 arrived
    assert out == ["1", "fec", "3"]
    assert buffer.stats.late == 1
    assert buffer.depth == 2
    assert feed(buffer, [5]) == [], "now holding two"
    assert feed(buffer, [6]) == ["4"]


def test_the_hold_narrows_again_after_a_quiet_stretch() -> None:
    buffer = ConcealingJitterBuffer(depth=3, min_depth=1, relax_after=10)
    feed(buffer, list(range(25)))
    assert buffer.depth == 1


def test_sequence_numbers_wrap() -> None:
    buffer = ConcealingJitterBuffer(depth=1)
    out = feed(buffer, [65534, 65535, 1, 2])  # 0 lost across the wrap
    assert out == ["65534", "65535", "fec", "1"]


def test_a_big_jump_is_a_discontinuity_not_a_second_of_concealment() -> None:
    buffer = ConcealingJitterBuffer(depth=2, max_gap=50)
    out = feed(buffer, [1, 2, 3, 500, 501, 502])
    assert out == ["1", "2", "3", "500"]
    assert buffer.stats.discontinuities == 1
    assert buffer.stats.concealed == buffer.stats.recovered == 0


def test_after_a_pause_the_missed_frames_are_not_made_up_later() -> None:
    buffer = ConcealingJitterBuffer(depth=2)
    feed(buffer, [1, 2, 3])
    assert kinds(buffer.flush(restart=True)) == ["2", "3"]
    # 4..9 were lost during the pause: their time is gone, nothing is concealed for them
    assert feed(buffer, [10, 11, 12]) == ["10"]
    assert buffer.stats.skipped == 6
    assert buffer.stats.concealed == buffer.stats.recovered == 0
    # a plain flush (no pause) still conceals a gap that follows
    assert kinds(buffer.flush()) == ["11", "12"]
    assert feed(buffer, [14, 15, 16]) == ["fec", "14"]


def test_bad_depths_are_refused() -> None:
    with pytest.raises(ValueError, match="min_depth <= depth"):
        ConcealingJitterBuffer(depth=0)
    with pytest.raises(ValueError, match="min_depth <= depth"):
        ConcealingJitterBuffer(depth=9, max_depth=8)


# ---------------------------------------------------------------- libopus


def tone_packets(fec: bool, count: int = 100) -> tuple[list[bytes], np.ndarray]:
    codec = av.CodecContext.create("libopus", "w")
    codec.bit_rate = 32_000
    codec.format, codec.layout, codec.sample_rate = "s16", "mono", 48_000
    codec.time_base = fractions.Fraction(1, 48_000)
    codec.options = {"application": "voip", **({"fec": "1", "packet_loss": "20"} if fec else {})}
    t = np.arange(960 * count) / 48_000
    signal = (6000 * np.sin(2 * np.pi * 300 * t) * (1.2 + np.sin(2 * np.pi * 2 * t))).astype(
        np.int16
    )
    packets: list[bytes] = []
    for i in range(count):
        frame = av.AudioFrame.from_ndarray(
            signal[i * 960 : (i + 1) * 960].reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate, frame.pts, frame.time_base = 48_000, i * 960, codec.time_base
        packets += [bytes(p) for p in codec.encode(frame)]
    return packets, signal


def decode_with_loss(packets: list[bytes], lost: set[int], use_fec: bool) -> np.ndarray:
    decoder = OpusDecoder()
    out = []
    for i, packet in enumerate(packets):
        if i not in lost:
            out.append(decoder.decode(packet))
        elif use_fec and i + 1 < len(packets):
            out.append(decoder.recover(packets[i + 1]))
        else:
            out.append(decoder.conceal())
    decoder.close()
    return np.concatenate(out)


def error_db(got: np.ndarray, want: np.ndarray, frames: list[int]) -> float:
    """Mean error energy over the given 20 ms frames, relative to the signal (dB)."""
    idx = np.concatenate([np.arange(f * 960, (f + 1) * 960) for f in frames])
    err = got[idx].astype(float) - want[idx].astype(float)
    return float(10 * np.log10(np.mean(err**2) / np.mean(want[idx].astype(float) ** 2)))


def test_plc_fills_a_lost_frame_with_sound_and_fec_recovers_it_better() -> None:
    packets, signal = tone_packets(fec=True)
    lost = set(range(30, 90, 7))
    clean = decode_with_loss(packets, set(), use_fec=False)
    plc = decode_with_loss(packets, lost, use_fec=False)
    fec = decode_with_loss(packets, lost, use_fec=True)
    assert clean.size == plc.size == fec.size == signal.size, "one frame per packet, lost or not"
    frames = sorted(lost)

    def rms(x: np.ndarray, f: int) -> float:
        return float(np.sqrt(np.mean(x[f * 960 : (f + 1) * 960].astype(float) ** 2)))

    for f in frames:  # nothing falls silent: PLC carries the tone on (it fades slowly)
        assert rms(plc, f) > 0.3 * rms(clean, f)
    plc_err = error_db(plc, clean, frames)
    fec_err = error_db(fec, clean, frames)
    assert fec_err < plc_err - 3, (fec_err, plc_err)


def test_without_fec_data_recover_falls_back_to_plc() -> None:
    packets, _ = tone_packets(fec=False)
    lost = {40}
    plc = decode_with_loss(packets, lost, use_fec=False)
    fec = decode_with_loss(packets, lost, use_fec=True)
    assert np.array_equal(plc, fec)


async def test_the_receiver_side_puts_one_decoded_frame_per_packet_on_the_track_queue() -> None:
    import asyncio

    from aiortc.rtp import RtpPacket

    packets, _ = tone_packets(fec=True, count=20)
    queue: asyncio.Queue[av.AudioFrame] = asyncio.Queue()
    receiver = jitter.ConcealingReceiver(queue, depth=2, idle_flush_s=0.05)
    receiver.opus_payload_types = {111}
    for i, payload in enumerate(packets):
        if i != 7:  # lost on the way
            receiver.add(RtpPacket(payload_type=111, sequence_number=100 + i, payload=payload))
    receiver.add(RtpPacket(payload_type=0, sequence_number=200, payload=b"\xff" * 160))
    assert queue.qsize() == 18, "the last two are held"
    # the stream pauses: the hold is played out (after idle_flush_s of the receiver's clock)
    frames = [await asyncio.wait_for(queue.get(), HANG_S) for _ in range(20)]
    assert {(f.sample_rate, f.layout.name, f.samples) for f in frames} == {(48_000, "mono", 960)}
    assert [f.pts for f in frames] == [960 * i for i in range(20)]
    assert receiver.stats.recovered == 1
    receiver.close()
    receiver.close()
    receiver.add(RtpPacket(payload_type=111, sequence_number=120, payload=packets[0]))
    assert queue.empty(), "closed: later packets are ignored"


# ---------------------------------------------------------------- uplink encoder


async def test_the_mic_sends_speech_bitrate_opus_packets_with_rtp_clock_timestamps() -> None:
    mic = MicTrack(AudioFormat(16_000))
    mic.uplink_open = True
    t = np.arange(320 * 100) / 16_000
    speechy = (5000 * np.sin(2 * np.pi * 200 * t) * np.sin(2 * np.pi * 3 * t)).astype("<i2")
    for i in range(50):  # the queue holds 50
        mic.push(speechy[i * 320 : (i + 1) * 320].tobytes())
    packets = [await mic.recv() for _ in range(45)]
    mic.stop()
    assert all(isinstance(p, av.Packet) for p in packets)
    assert [p.pts for p in packets[:3]] == [0, 320, 640]
    rate = sum(len(bytes(p)) for p in packets) * 8 / (len(packets) * 0.020)
    assert 0.6 * UPLINK_BITRATE < rate < 1.4 * UPLINK_BITRATE, rate
    # aiortc packs them on its 48 kHz RTP clock
    from aiortc.codecs.opus import OpusEncoder

    payloads, timestamp = OpusEncoder().pack(packets[10])
    assert payloads == [bytes(packets[10])]
    assert timestamp == 9600


# ---------------------------------------------------------------- over the network


@pytest.mark.slow  # a call through a lossy network namespace
def test_a_reply_through_5_percent_loss_is_played_whole_and_without_gaps() -> None:
    require_tool("unshare")
    require_tool("nft")
    require_tool("ip")
    require(os.geteuid() == 0, "root (network namespaces and nftables)")
    assert loss_available() is None
    clean, lossy = measure_loss([0, 5], ["conceal"], timeout=60)
    assert clean["mode"] == lossy["mode"] == "conceal"
    # no loss: nothing regresses (every packet becomes one frame, no concealment)
    assert clean["played"] == pytest.approx(clean["sent"], abs=3)
    assert clean["concealed"] == clean["recovered"] == 0
    assert clean["skipped"] == clean["discontinuities"] == 0
    # 5% of the audio packets really were dropped on the way in ...
    lost = lossy["concealed"] + lossy["recovered"]
    assert lost >= 0.01 * lossy["sent"], lossy
    # ... yet every frame was played (concealed ones count) ...
    assert lossy["played_ratio"] >= 0.95, lossy
    # ... continuously: no run of audio thrown away to catch up after a stall (aiortc's
    # buffer stalls ~300 ms, then skips); the longest gap in ms is `make bench`'s figure
    assert lossy["skipped"] == lossy["discontinuities"] == 0, lossy
    # ... and the listener hears as much speech as without loss
    assert lossy["voiced"] >= 0.95 * clean["voiced"], (lossy, clean)


def test_concealment_can_be_switched_off() -> None:
    class Track:
        kind = "audio"

    saved = jitter.CONCEALMENT
    try:
        jitter.CONCEALMENT = False
        assert jitter.attach(Track()) is None
    finally:
        jitter.CONCEALMENT = saved
    assert jitter.attach(Track()) is None, "no frame queue: aiortc's path stays"
