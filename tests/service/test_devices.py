"""``appliance devices``: the sound devices one can pick, without ALSA's probe noise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from appliance.audio.alsa import useful_devices
from tests.audio.test_alsa import alsa_home
from tests.conftest import require

__all__ = ["alsa_home"]  # the fixture, shared with the ALSA tests

ROOT = Path(__file__).resolve().parents[2]


def devices(home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", "devices"],
        cwd=ROOT,
        env={**os.environ, "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_lists_the_configured_pcms_and_nothing_from_alsas_probe(alsa_home: Path) -> None:
    done = devices(alsa_home)
    assert done.returncode == 0, done.stderr
    names = [line.split()[1] for line in done.stdout.splitlines()]
    assert names == ["appliance_mic", "appliance_speaker"]
    assert "ALSA lib" not in done.stderr
    assert done.stderr == ""


def test_no_device_is_an_error_that_says_what_to_do(tmp_path: Path, alsa_home: Path) -> None:
    (alsa_home / ".asoundrc").write_text("")  # no PCMs of our own; CI has no sound card
    done = devices(alsa_home)
    # a laptop with a sound card skips; CI (no card) must run it: require() fails there
    require(not done.stdout.strip(), "a machine without a sound card")
    assert done.returncode == 1
    assert "no capture or playback device" in done.stderr
    assert "ALSA lib" not in done.stderr


def test_stock_alsa_plugins_are_left_out() -> None:
    listed = [
        {
            "index": 0,
            "name": "seeed-2mic-voicecard: bcm2835-i2s-wm8960-hifi wm8960-hifi-0 (hw:1,0)",
            "inputs": 2,
            "outputs": 2,
            "rate": 48000,
        },
        {"index": 1, "name": "lavrate", "inputs": 128, "outputs": 128, "rate": 44100},
        {"index": 2, "name": "dmix", "inputs": 0, "outputs": 2, "rate": 48000},
        {"index": 3, "name": "appliance_mic", "inputs": 2, "outputs": 0, "rate": 48000},
        {"index": 4, "name": "default", "inputs": 128, "outputs": 128, "rate": 44100},
        {"index": 5, "name": "HDMI (hw:0,0)", "inputs": 0, "outputs": 0, "rate": 44100},
    ]
    assert [d["index"] for d in useful_devices(listed)] == [0, 3, 4]
