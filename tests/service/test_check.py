"""``appliance check`` on fake hardware against a real stand-in and provisioning server."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import wave
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from appliance.check import TONE_HZ, TONE_S, Context, check_audio, run_checks, table
from appliance.config import AudioConfig, Config, DeviceConfig
from appliance.identity import enroll
from provisioning.live_relay import live_profile
from provisioning.server import ProvisioningServer, Settings
from standin import StandIn, StandInConfig

pytestmark = pytest.mark.slow  # appliance check end to end


@pytest.fixture
def pins(mock_pins: MockFactory) -> MockFactory:
    return mock_pins


SPEECH = Path(__file__).parents[2] / "device" / "appliance" / "assets" / "question-time.wav"


class Prompted(io.StringIO):
    """Standard output that hands every line the check prints to ``on_text``."""

    def __init__(self, on_text: Callable[[str], None]) -> None:
        super().__init__()
        self._on_text = on_text

    def write(self, text: str) -> int:
        written = super().write(text)
        self._on_text(text)
        return written


def config(state: Path, mic: Path | None = SPEECH, speaker: Path | None = None) -> Config:
    audio = AudioConfig(backend="wav", wav_input=mic, wav_output=speaker)
    return Config(device=DeviceConfig(state_dir=state, board="mock"), audio=audio)


@pytest.mark.parametrize("backend", ["realtime", "live"])
async def test_all_checks_pass_on_a_working_setup(
    tmp_path: Path, pins: MockFactory, backend: str
) -> None:
    async with StandIn(StandInConfig(api_key="sk-check")) as standin:
        settings = Settings(
            database_url=f"sqlite:///{tmp_path / 'p.db'}",
            upstream_url=standin.base_url,
            openai_api_key="sk-check",
            port=0,
        )
        async with ProvisioningServer(settings) as server:
            if backend == "live":  # the group's backend: the check opens a Live session
                server.store.ensure_group("default", live_profile("gpt-live-1"))
            await enroll(server.base_url, server.store.create_token("default"), tmp_path, "c")
            ctx = Context(config(tmp_path), wait_button_s=5)

            def press(text: str) -> None:  # the installer presses when asked to
                if "press the button" in text:
                    pins.pin(17).drive_low()
                    pins.pin(17).drive_high()

            with contextlib.redirect_stdout(Prompted(press)):
                results = await run_checks(ctx)
    text = table(results)
    assert [r.name for r in results] == [
        "config",
        "audio",
        "leds",
        "button",
        "provisioning",
        "session",
    ]
    assert all(r.ok for r in results), text
    assert "GPIO17 pressed" in text
    assert "dBFS" in text
    assert ("GPT-Live" in text) is (backend == "live")
    assert ("live_" in text) is (backend == "live")


async def test_failures_are_reported_not_raised(tmp_path: Path, pins: MockFactory) -> None:
    ctx = Context(config(tmp_path / "never-enrolled"), wait_button_s=0.2)
    results = {r.name: r for r in await run_checks(ctx)}
    assert not results["button"].ok
    assert not results["provisioning"].ok
    assert "enroll" in results["provisioning"].detail
    assert results["session"].detail == "skipped: no key"


def write_wav(path: Path, samples: np.ndarray, rate: int = 16_000) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())
    return path


async def test_a_silent_mic_fails(tmp_path: Path, pins: MockFactory) -> None:
    silent = write_wav(tmp_path / "silent.wav", np.zeros(16_000 * 3))
    result = await check_audio(Context(config(tmp_path, mic=silent)))
    assert not result.ok
    assert "silent" in result.detail


async def test_a_clipped_mic_fails(tmp_path: Path, pins: MockFactory) -> None:
    square = np.where(np.arange(16_000 * 3) % 40 < 20, 32767, -32768)
    result = await check_audio(Context(config(tmp_path, mic=write_wav(tmp_path / "c.wav", square))))
    assert not result.ok
    assert "clipped" in result.detail


async def test_speech_passes_and_a_tone_is_played(tmp_path: Path, pins: MockFactory) -> None:
    out = tmp_path / "speaker.wav"
    result = await check_audio(Context(config(tmp_path, speaker=out)))
    assert result.ok, result.detail
    with wave.open(str(out)) as w:
        rate = w.getframerate()
        played = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    assert played.size >= rate * TONE_S
    spectrum = np.abs(np.fft.rfft(played))
    peak_hz = np.argmax(spectrum) * rate / played.size
    assert abs(peak_hz - TONE_HZ) < 5


async def test_no_pin_factory_is_a_fail_row_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)
    saved = Device.pin_factory
    Device.pin_factory = None
    try:
        cfg = replace(config(tmp_path), device=DeviceConfig(state_dir=tmp_path, board="generic"))
        results = {r.name: r for r in await run_checks(Context(cfg, offline=True))}
    finally:
        Device.pin_factory = saved
    for row in ("leds", "button"):
        assert not results[row].ok
        assert "pin factory" in results[row].detail
    assert results["audio"].ok
    assert results["provisioning"].detail == "not tried (--offline)"


def test_cli_check_without_gpio_prints_rows(tmp_path: Path) -> None:
    conf = tmp_path / "appliance.toml"
    conf.write_text(
        f'[device]\nboard = "generic"\nstate_dir = "{tmp_path}"\n'
        f'[audio]\nbackend = "wav"\nwav_input = "{SPEECH}"\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "GPIOZERO_PIN_FACTORY"}
    done = subprocess.run(
        [sys.executable, "-m", "appliance", "check", "--config", str(conf), "--no-button"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert re.search(r"^leds +FAIL .*pin factory", done.stdout, re.M), done.stdout
    assert re.search(r"^provisioning +FAIL .*enroll", done.stdout, re.M), done.stdout
