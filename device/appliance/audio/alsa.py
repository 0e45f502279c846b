"""ALSA through PyAudio (PortAudio): the real mic and speaker.

Callback design: PortAudio's thread hands each captured buffer to the event loop with
``call_soon_threadsafe`` and pulls playback frames from a deque, so nothing blocks the loop.
Overruns and underruns are counted and logged, never silent. A vanished device surfaces as
``AudioDeviceError`` from ``read``/``write``; the caller decides how to retry.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from appliance.audio.base import AudioFormat
from appliance.errors import AudioDeviceError

log = logging.getLogger(__name__)
STALL_S = 2.0  # no capture callback for this long means the device is gone


def _pyaudio() -> Any:
    try:
        import pyaudio
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise AudioDeviceError(
            "PyAudio is not installed (pip install 'pi-realtime-appliance[pi]')"
        ) from exc
    return pyaudio


# ALSA's stock plugin PCMs (alsa.conf): PortAudio lists them all, none is a device to pick
PLUGIN_PCMS = frozenset(
    [
        "sysdefault",
        "lavrate",
        "samplerate",
        "speexrate",
        "pulse",
        "upmix",
        "vdownmix",
        "dmix",
        "dsnoop",
        "front",
        "rear",
        "center_lfe",
        "side",
        "surround21",
        "surround40",
        "surround41",
        "surround50",
        "surround51",
        "surround71",
        "iec958",
        "spdif",
        "hdmi",
        "modem",
        "phoneline",
        "jack",
        "oss",
        "null",
        "pipewire",
    ]
)


def useful_devices(devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sound cards (``hw:``), ``default`` and PCMs of your own (``/etc/asound.conf``) that can
    capture or play; ALSA's stock plugins are left out."""
    return [
        d
        for d in devices
        if (d["inputs"] or d["outputs"]) and ("(hw:" in d["name"] or d["name"] not in PLUGIN_PCMS)
    ]


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """libasound and JACK print dozens of lines to fd 2 while PortAudio probes every PCM;
    they say nothing about the devices that do exist."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def list_devices(quiet: bool = True) -> list[dict[str, Any]]:
    """Every PortAudio device: index, name, input/output channels, default rate."""
    with quiet_stderr() if quiet else contextlib.nullcontext():
        pa = _pyaudio().PyAudio()
    try:
        return [
            {
                "index": i,
                "name": info["name"],
                "inputs": int(info["maxInputChannels"]),
                "outputs": int(info["maxOutputChannels"]),
                "rate": int(info["defaultSampleRate"]),
            }
            for i in range(pa.get_device_count())
            for info in [pa.get_device_info_by_index(i)]
        ]
    finally:
        pa.terminate()


def find_device(pa: Any, wanted: str, output: bool) -> int | None:
    """Index for ``wanted`` (an index or part of a name); ``None`` for the default device."""
    if wanted == "":
        return None
    if wanted.isdigit():
        return int(wanted)
    key = "maxOutputChannels" if output else "maxInputChannels"
    for i in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(i)
        if wanted.lower() in str(info["name"]).lower() and int(info[key]) > 0:
            return i
    raise AudioDeviceError(f"no {'playback' if output else 'capture'} device matches {wanted!r}")


class AlsaSource:
    def __init__(self, device: str, fmt: AudioFormat, max_queue: int = 100) -> None:
        self._device = device
        self._format = fmt
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(max_queue)
        self._pa: Any = None
        self._stream: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.overruns = 0
        self.dropped_frames = 0
        """Captured frames thrown away because the reader fell behind (the front end
        skips their reference: ``FrontEnd.capture_dropped``)."""

    @property
    def format(self) -> AudioFormat:
        return self._format

    async def start(self) -> None:
        pyaudio = _pyaudio()
        self._loop = asyncio.get_running_loop()
        self._pa = pyaudio.PyAudio()
        try:
            index = find_device(self._pa, self._device, output=False)
            self._stream = self._pa.open(
                format=pyaudio.paInt16,
                channels=1,
                rate=self._format.rate,
                input=True,
                input_device_index=index,
                frames_per_buffer=self._format.frame_samples,
                stream_callback=self._callback,
            )
        except (OSError, ValueError) as exc:
            await self.close()
            raise AudioDeviceError(
                f"cannot open capture device {self._device or 'default'}: {exc}"
            ) from exc

    def _callback(self, data: bytes, frames: int, info: Any, status: int) -> tuple[None, int]:
        pyaudio = _pyaudio()
        if status & pyaudio.paInputOverflow:
            self.overruns += 1
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._put, data)
        return None, pyaudio.paContinue

    def _put(self, data: bytes) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.overruns += 1
            self.dropped_frames += 1
            log.warning("capture overrun: %d frames lost so far", self.overruns)
        self._queue.put_nowait(data)

    async def read(self) -> bytes:
        try:
            return await asyncio.wait_for(self._queue.get(), STALL_S)
        except TimeoutError:
            raise AudioDeviceError(f"capture stalled for {STALL_S:g} s (device gone?)") from None

    async def close(self) -> None:
        if self._stream is not None:
            self._stream.stop_stream()
            self._stream.close()
            self._stream = None
        if self._pa is not None:
            self._pa.terminate()
            self._pa = None


class AlsaSink:
    def __init__(self, device: str, fmt: AudioFormat, max_frames: int = 10) -> None:
        self._device = device
        self._format = fmt
        self._frames: collections.deque[bytes] = collections.deque()
        self._max_frames = max_frames
        self._silence = bytes(fmt.frame_bytes)
        self._pa: Any = None
        self._stream: Any = None
        self.underruns = 0
        self.playing = False

    @property
    def format(self) -> AudioFormat:
        return self._format

    async def start(self) -> None:
        pyaudio = _pyaudio()
        self._pa = pyaudio.PyAudio()
        try:
            index = find_device(self._pa, self._device, output=True)
            self._stream = self._pa.open(
                format=pyaudio.paInt16,
                channels=1,
                rate=self._format.rate,
                output=True,
                output_device_index=index,
                frames_per_buffer=self._format.frame_samples,
                stream_callback=self._callback,
            )
        except (OSError, ValueError) as exc:
            await self.close()
            raise AudioDeviceError(
                f"cannot open playback device {self._device or 'default'}: {exc}"
            ) from exc

    def _callback(self, data: None, frames: int, info: Any, status: int) -> tuple[bytes, int]:
        pyaudio = _pyaudio()
        try:
            out = self._frames.popleft()
            self.playing = True
        except IndexError:
            if self.playing:
                self.underruns += 1
            self.playing = False
            out = self._silence
        return out, pyaudio.paContinue

    async def write(self, frame: bytes) -> None:
        if self._stream is None:
            raise AudioDeviceError("playback device is not open")
        while len(self._frames) >= self._max_frames:
            await asyncio.sleep(self._format.frame_ms / 1000)
            if not self._stream.is_active():
                raise AudioDeviceError("playback stream stopped (device gone?)")
        self._frames.append(frame)

    def flush(self) -> None:
        self._frames.clear()

    async def close(self) -> None:
        if self._stream is not None:
            self._stream.stop_stream()
            self._stream.close()
            self._stream = None
        if self._pa is not None:
            self._pa.terminate()
            self._pa = None
