"""The stand-in's media face: an SDP answer shaped like the service's, and Opus replies with
real in-band FEC that the device's jitter buffer recovers lost packets from."""

from __future__ import annotations

import asyncio
import re

import av
import httpx
import numpy as np
from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.rtp import RtpPacket

from appliance.realtime.jitter import ConcealingReceiver
from standin import StandIn
from standin.media import ReplyTrack, make_track
from tests.realtime.test_loss import decode_with_loss, error_db
from tests.speech import speech
from tests.standin.conftest import mint


def audio_codecs(sdp: str) -> list[tuple[str, str]]:
    """(payload type, codec name) of the audio m-line, in its order."""
    section = sdp.split("m=audio", 1)[1].split("\nm=", 1)[0]
    payload_types = section.split("\n", 1)[0].split()[2:]
    names = dict(re.findall(r"^a=rtpmap:(\d+) ([^/\s]+)", section, re.MULTILINE))
    return [(pt, names[pt]) for pt in payload_types]


async def answer_to(standin: StandIn, codec_order: list[str] | None) -> str:
    """The stand-in's answer to an aiortc offer listing these codecs in this order
    (``None``: aiortc's own list, Opus, G.722, PCMU, PCMA)."""
    pc = RTCPeerConnection()
    transceiver = pc.addTransceiver("audio", direction="sendrecv")
    if codec_order is not None:
        capabilities = RTCRtpSender.getCapabilities("audio").codecs
        transceiver.setCodecPreferences(
            [next(c for c in capabilities if c.mimeType.lower() == n.lower()) for n in codec_order]
        )
    pc.createDataChannel("oai-events")
    await pc.setLocalDescription(await pc.createOffer())
    try:
        async with httpx.AsyncClient() as http:
            response = await http.post(
                f"{standin.base_url}/v1/realtime/calls",
                headers={
                    "Authorization": f"Bearer {await mint(standin.base_url)}",
                    "Content-Type": "application/sdp",
                },
                content=pc.localDescription.sdp,
            )
    finally:
        await pc.close()
    assert response.status_code == 201, response.text
    return response.text


async def test_the_answer_puts_opus_first_with_fec_and_offers_only_the_services_codecs(
    standin: StandIn,
) -> None:
    answer = await answer_to(standin, ["audio/PCMU", "audio/G722", "audio/opus", "audio/PCMA"])
    codecs = audio_codecs(answer)
    assert [name for _, name in codecs] == ["opus", "PCMU", "PCMA"], codecs
    opus_pt = codecs[0][0]
    fmtp = re.search(rf"^a=fmtp:{opus_pt} (.*?)\r?$", answer, re.MULTILINE)
    assert fmtp is not None, answer
    assert "useinbandfec=1" in fmtp.group(1).split(";")
    assert "a=setup:active" in answer
    (call,) = standin.calls.values()
    assert isinstance(call.track, ReplyTrack)
    assert call.track.opus, "Opus negotiated: the track sends its own FEC-carrying packets"


async def test_a_g711_only_offer_is_answered_in_g711(standin: StandIn) -> None:
    answer = await answer_to(standin, ["audio/PCMU"])
    assert [name for _, name in audio_codecs(answer)] == ["PCMU"]
    assert "useinbandfec" not in answer
    (call,) = standin.calls.values()
    assert isinstance(call.track, ReplyTrack)
    assert not call.track.opus, "aiortc encodes G.711 from frames"


async def reply_packets(count: int) -> tuple[list[bytes], np.ndarray]:
    """What the stand-in's reply track sends for a spoken reply (aiortc sends these bytes as
    they are), and the reply's samples."""
    source = ReplyTrack()
    said = speech("on the moon it is very cold at night", pad_s=1.0)
    source.enqueue(said)
    track = make_track(source)
    packets = []
    for _ in range(count):
        packet = await track.recv()
        assert isinstance(packet, av.Packet), "Opus packets, not frames for aiortc's encoder"
        packets.append(bytes(packet))
    track.stop()
    return packets, said


async def test_the_reply_carries_in_band_fec_that_the_device_recovers_from() -> None:
    packets, _ = await reply_packets(80)
    lost = set(range(20, 70, 6))  # inside the speech
    clean = decode_with_loss(packets, set(), use_fec=False)
    plc = decode_with_loss(packets, lost, use_fec=False)
    fec = decode_with_loss(packets, lost, use_fec=True)
    frames = sorted(lost)
    # libopus falls back to PLC when the next packet has no FEC data: these must differ,
    # and the FEC copy must be much closer to what was sent
    assert error_db(fec, clean, frames) < error_db(plc, clean, frames) - 3

    # the device's jitter buffer, fed the same packets with one lost, recovers it from FEC
    queue: asyncio.Queue[av.AudioFrame] = asyncio.Queue()
    receiver = ConcealingReceiver(queue, depth=2, idle_flush_s=5.0)
    receiver.opus_payload_types = {111}
    gap = 40
    for i, payload in enumerate(packets):
        if i != gap:
            receiver.add(RtpPacket(payload_type=111, sequence_number=1000 + i, payload=payload))
    played = np.concatenate(
        [queue.get_nowait().to_ndarray().reshape(-1) for _ in range(queue.qsize())]
    )
    receiver.close()
    assert receiver.stats.recovered == 1
    assert receiver.stats.concealed == 0
    one_lost = decode_with_loss(packets, {gap}, use_fec=True)
    window = slice(gap * 960, (gap + 1) * 960)
    assert np.array_equal(played[window], one_lost[window]), "decoded from the FEC data"
    assert not np.array_equal(
        played[window], decode_with_loss(packets, {gap}, use_fec=False)[window]
    ), "not a PLC guess"


async def test_a_default_offer_gets_the_same_codecs(standin: StandIn) -> None:
    answer = await answer_to(standin, None)
    assert [name for _, name in audio_codecs(answer)] == ["opus", "PCMU", "PCMA"]
