"""Headless Debian Chromium through playwright (no browser download: /usr/bin/chromium)."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.conftest import require

CHROMIUM = "/usr/bin/chromium"


def chromium_args(fake_mic: Path) -> list[str]:
    require(shutil.which("chromium") is not None or Path(CHROMIUM).exists(), "Debian chromium")
    return [
        "--no-sandbox",
        "--headless",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={fake_mic}",
        "--autoplay-policy=no-user-gesture-required",
        "--allow-loopback-in-peer-connection",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
    ]


def silent_wav(folder: Path) -> Path:
    """An empty 16 kHz WAV for Chromium's fake microphone (pages that need no audio)."""
    path = folder / "silence.wav"
    path.write_bytes(
        b"RIFF$\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00\x80>\x00\x00"
        b"\x00}\x00\x00\x02\x00\x10\x00data\x00\x00\x00\x00"
    )
    return path
