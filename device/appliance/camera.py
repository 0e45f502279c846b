"""The camera tool: the model can look (``look``), the device sends a JPEG ``input_image``.

Sources: the Pi camera through picamera2 when ``device.camera = "picamera"`` (and the
package is installed, Debian ``python3-picamera2``), or an image file (``device.camera =
"/path/to/photo.jpg"``; any format FFmpeg reads), which is what tests and the demo use.
Encoding uses PyAV (FFmpeg's MJPEG encoder), already a dependency: no Pillow.

The data channel carries each event as one message, and the peer caps its size
(``a=max-message-size`` in the answer; 64 KiB when absent). The JPEG is therefore made to
fit: base64 grows it by 4/3 and the JSON envelope adds a little, so the image is scaled down
and its quality lowered step by step until the whole event fits.
"""

from __future__ import annotations

import base64
import fractions
import logging
from pathlib import Path
from typing import Protocol

import av
import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)
Rgb = npt.NDArray[np.uint8]
ENVELOPE_BYTES = 1024
"""Room left for the JSON around the base64 image in one data-channel message."""
SIDES = (1024, 768, 640, 512, 384, 256, 192, 128)
QUALITIES = (4, 8, 14, 22, 31)
"""MJPEG quantiser steps (lower is better)."""


class Camera(Protocol):
    def capture(self) -> Rgb:
        """One still, RGB ``uint8`` of shape (height, width, 3). May block: call it in a
        thread."""
        ...


class FileCamera:
    """A still image from a file, as if the camera had taken it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def capture(self) -> Rgb:
        with av.open(str(self.path)) as container:
            frame = next(container.decode(video=0))
            rgb = frame.to_ndarray(format="rgb24")
        return np.asarray(rgb, dtype=np.uint8)


class PiCamera:
    """The Raspberry Pi camera through picamera2."""

    def __init__(self) -> None:
        from picamera2 import Picamera2  # type: ignore[import-not-found]

        self._camera = Picamera2()
        self._camera.configure(
            self._camera.create_still_configuration(main={"format": "RGB888", "size": (1280, 960)})
        )

    def capture(self) -> Rgb:
        self._camera.start()
        try:
            array: Rgb = self._camera.capture_array("main")
        finally:
            self._camera.stop()
        return array[..., ::-1].copy()  # picamera2's RGB888 is BGR in memory


def make_camera(source: str) -> Camera | None:
    if not source:
        return None
    if source == "picamera":
        return PiCamera()
    return FileCamera(Path(source))


def encode_jpeg(rgb: Rgb, width: int, height: int, quality: int) -> bytes:
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    frame = frame.reformat(width=width, height=height, format="yuvj420p")
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuvj420p"
    codec.time_base = fractions.Fraction(1, 1)
    codec.options = {"qmin": str(quality), "qmax": str(quality)}
    packets = codec.encode(frame) + codec.encode(None)
    return b"".join(bytes(packet) for packet in packets)


def jpeg_budget(max_message_size: int) -> int:
    """The largest JPEG whose ``input_image`` event fits in one data-channel message."""
    return max(0, (max_message_size - ENVELOPE_BYTES) * 3 // 4)


def jpeg_that_fits(rgb: Rgb, max_bytes: int) -> tuple[bytes, int, int]:
    """The best JPEG of ``rgb`` no larger than ``max_bytes``: (data, width, height)."""
    height, width = rgb.shape[:2]
    longest = max(width, height)
    for side in [s for s in SIDES if s <= longest] or [longest]:
        scale = side / longest
        w, h = max(16, round(width * scale) // 2 * 2), max(16, round(height * scale) // 2 * 2)
        for quality in QUALITIES:
            data = encode_jpeg(rgb, w, h, quality)
            if len(data) <= max_bytes:
                return data, w, h
    raise ValueError(f"no JPEG of this image fits in {max_bytes} bytes")


def data_url(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
