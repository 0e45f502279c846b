"""The real ALSA path without a sound card: PyAudio → PortAudio → alsa-lib → the ``file``
plugin, reading the mic from a raw file and writing the speaker to one.

Run as ``HOME=<dir> python -m tests.audio.alsa_scenario capture|playback <dir>`` with an
``.asoundrc`` in ``<dir>`` (alsa-lib reads its configuration once per process, so the test
runs this in a child process); it prints one JSON object. The ``file`` plugin runs as fast
as it can rather than in real time, which makes it a good test of the callback design:
capture outruns the reader, and every lost frame must be counted.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from appliance.audio.alsa import AlsaSink, AlsaSource, list_devices
from appliance.audio.base import AudioFormat
from appliance.errors import AudioDeviceError

CAPTURE = AudioFormat(rate=16_000)
PLAYBACK = AudioFormat(rate=48_000)


async def capture(folder: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"devices": [d["name"] for d in list_devices()]}
    source = AlsaSource("appliance_mic", CAPTURE, max_queue=20)
    await source.start()
    frames = []
    for i in range(60):
        frames.append(await source.read())
        if i >= 20:
            await asyncio.sleep(0.005)  # not a wait: the consumer's work, the plugin outruns it
    await source.close()
    data = (folder / "in.raw").read_bytes()
    size = CAPTURE.frame_bytes
    offsets = []
    for frame in frames:
        at = data.find(frame)
        offsets.append(at // size if at >= 0 and at % size == 0 else -1)
    out["offsets"] = offsets
    out["overruns"] = source.overruns
    missing = AlsaSource("no_such_mic", CAPTURE)
    try:
        await missing.start()
        out["missing"] = "opened"
    except AudioDeviceError as exc:
        out["missing"] = str(exc)
    return out


async def playback(folder: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sink = AlsaSink("appliance_speaker", PLAYBACK)
    await sink.start()
    tone = (bytes(range(256)) * (PLAYBACK.frame_bytes // 256 + 1))[: PLAYBACK.frame_bytes]
    for i in range(25):
        await sink.write(bytes([i]) * 2 + tone[2:])
    # a sink's queue full of silence behind them: once write() accepts the last of it, the
    # device's callback has taken every marked frame (and close() plays out what it took)
    for _ in range(10):  # AlsaSink's default max_frames
        await sink.write(bytes(PLAYBACK.frame_bytes))
    await sink.close()
    played = (folder / "out.raw").read_bytes()
    out["played_frames"] = len(played) // PLAYBACK.frame_bytes
    marks = [
        played[i * PLAYBACK.frame_bytes]
        for i in range(len(played) // PLAYBACK.frame_bytes)
        if played[i * PLAYBACK.frame_bytes + 2 : (i + 1) * PLAYBACK.frame_bytes] == tone[2:]
    ]
    out["played_marks"] = marks
    out["underruns"] = sink.underruns
    return out


def main() -> None:
    mode, folder = sys.argv[1], Path(sys.argv[2])
    print(json.dumps(asyncio.run((capture if mode == "capture" else playback)(folder))))


if __name__ == "__main__":
    main()
