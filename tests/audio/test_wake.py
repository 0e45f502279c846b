"""The wake word (pymicro-wakeword) on espeak-ng speech."""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from appliance.audio.frames import Pcm
from appliance.audio.frontend import DSP_FORMAT, FrontEnd
from appliance.audio.wake import (
    MIN_THRESHOLD,
    SENSITIVITY_MARGIN,
    WakeWord,
    available_models,
    sensitivity_threshold,
)
from appliance.config import ActivationConfig, Config
from appliance.errors import ConfigError
from appliance_dev.bench.wake import score_trace
from tests.conftest import require
from tests.speech import speech

RATE = 16_000
FRAME_BYTES = 640  # 20 ms


@pytest.fixture(autouse=True)
def _package() -> None:
    require(importlib.util.find_spec("pymicro_wakeword") is not None, "package pymicro-wakeword")


def _silence(seconds: float) -> Pcm:
    return np.zeros(int(RATE * seconds), dtype=np.int16)


def _detections(wake: WakeWord, pcm: Pcm) -> list[float]:
    """Stream times at which ``wake`` fired."""
    data = pcm.astype("<i2").tobytes()
    hits = []
    for i in range(0, len(data) - FRAME_BYTES + 1, FRAME_BYTES):
        if wake.process(data[i : i + FRAME_BYTES]):
            hits.append(wake.time)
            assert wake.last_detection_at == wake.time
    return hits


def _keyword(text: str) -> tuple[Pcm, float]:
    """``text`` after 0.5 s of silence, 1 s after it; and where the speech ends."""
    clip = speech(text, RATE)
    loud = np.nonzero(np.abs(clip.astype(np.int32)) > 330)[0]
    return np.concatenate([_silence(0.5), clip, _silence(1.0)]), 0.5 + (loud[-1] + 1) / RATE


def test_builtin_models_are_listed() -> None:
    assert available_models() == ["alexa", "hey_jarvis", "hey_mycroft", "okay_nabu"]
    assert WakeWord().name == "alexa"  # the recommended default (docs/audio.md)
    assert WakeWord.available_models() == available_models()


def test_okay_nabu_fires_once_soon_after_the_keyword() -> None:
    wake = WakeWord("okay_nabu", refractory_s=0.0)
    assert wake.threshold == pytest.approx(0.85)  # the model's own cut-off
    assert wake.phrase == "Okay Nabu"
    assert wake.name == "okay_nabu"
    pcm, end = _keyword("okay nabu")
    hits = _detections(wake, pcm)
    assert len(hits) == 1  # the score stays high for several inferences: still one event
    assert end - 0.3 < hits[0] < end + 0.5
    assert wake.score < wake.threshold  # it went quiet again afterwards


def test_no_detection_on_other_speech() -> None:
    wake = WakeWord("okay_nabu")
    for text in (
        "the weather today is cloudy with a chance of rain",
        "please turn off the kitchen lights",
        "alexa",
        "hey jarvis, what time is it",
        "okay, now back to you",
    ):
        assert _detections(wake, speech(text, RATE, pad_s=0.5)) == [], text


def test_each_model_hears_only_its_own_word() -> None:
    alexa = WakeWord("alexa")
    assert len(_detections(alexa, _keyword("alexa")[0])) == 1
    assert _detections(alexa, _keyword("okay nabu")[0]) == []


def test_refractory_period_suppresses_a_quick_repeat() -> None:
    clip, _ = _keyword("okay nabu")
    twice = np.concatenate([clip, clip])  # the keyword about 2.5 s apart
    assert len(_detections(WakeWord("okay_nabu", refractory_s=0.0), twice)) == 2
    assert len(_detections(WakeWord("okay_nabu", refractory_s=1.0), twice)) == 2
    assert len(_detections(WakeWord("okay_nabu", refractory_s=4.0), twice)) == 1
    assert (
        len(_detections(WakeWord("okay_nabu", refractory_s=4.0), np.concatenate([twice, clip])))
        == 2
    )


def test_reset_starts_over() -> None:
    wake = WakeWord("okay_nabu", refractory_s=30.0)
    clip, _ = _keyword("okay nabu")
    assert len(_detections(wake, clip)) == 1
    assert _detections(wake, clip) == []  # still refractory
    wake.reset()
    assert wake.time == 0.0
    assert wake.last_detection_at is None
    assert len(_detections(wake, clip)) == 1


def test_threshold_overrides_the_model_cut_off() -> None:
    clip, _ = _keyword("okay nabu")
    strict = WakeWord("okay_nabu", threshold=0.999)
    assert strict.threshold == 0.999
    assert _detections(strict, clip) == []


def test_custom_model_path(tmp_path: Path) -> None:
    import pymicro_wakeword

    models = Path(pymicro_wakeword.__file__).parent / "models"
    for name in ("okay_nabu.json", "okay_nabu.tflite"):
        shutil.copy(models / name, tmp_path / name)
    for path in (tmp_path / "okay_nabu.json", tmp_path / "okay_nabu.tflite"):
        wake = WakeWord("ignored when a path is given", model_path=path)
        assert len(_detections(wake, _keyword("okay nabu")[0])) == 1


def test_bad_settings_name_their_key(tmp_path: Path) -> None:
    def key_of(**kwargs: object) -> str:
        with pytest.raises(ConfigError) as err:
            WakeWord(**kwargs)  # type: ignore[arg-type]
        return err.value.key

    assert key_of(model="hey_siri") == "activation.wake_word"
    assert key_of(threshold=1.5) == "activation.wake_threshold"
    assert key_of(refractory_s=-1.0) == "activation.wake_refractory_s"
    assert key_of(model_path=tmp_path / "missing.json") == "activation.wake_model_path"
    (tmp_path / "junk.json").write_text("{not json", encoding="utf-8")
    assert key_of(model_path=tmp_path / "junk.json") == "activation.wake_model_path"
    # A well-formed config pointing at something that is not a TFLite model must not
    # reach the TFLite loader (it would crash the process).
    (tmp_path / "fake.tflite").write_bytes(b"\0" * 64)
    (tmp_path / "fake.json").write_text(
        '{"model": "fake.tflite", "wake_word": "Fake",'
        ' "micro": {"probability_cutoff": 0.9, "sliding_window_size": 5}}',
        encoding="utf-8",
    )
    assert key_of(model_path=tmp_path / "fake.json") == "activation.wake_model_path"


def test_sensitivity_maps_to_a_documented_threshold() -> None:
    # 1 − (1 − cutoff) × {low 0.5, medium 1, high 2, max 3}
    assert [sensitivity_threshold(0.85, s) for s in SENSITIVITY_MARGIN] == pytest.approx(
        [0.925, 0.85, 0.70, 0.55]
    )
    assert [sensitivity_threshold(0.9, s) for s in SENSITIVITY_MARGIN] == pytest.approx(
        [0.95, 0.9, 0.8, 0.7]
    )
    assert sensitivity_threshold(0.5, "max") == MIN_THRESHOLD  # never down to zero
    with pytest.raises(ConfigError) as err:
        sensitivity_threshold(0.85, "loud")
    assert err.value.key == "activation.wake_sensitivity"


def test_sensitivity_sets_the_threshold_unless_one_is_given() -> None:
    assert WakeWord("okay_nabu", sensitivity="high").threshold == pytest.approx(0.70)
    assert WakeWord("alexa", sensitivity="low").threshold == pytest.approx(0.95)
    assert WakeWord("okay_nabu", threshold=0.6, sensitivity="low").threshold == 0.6
    with pytest.raises(ConfigError) as err:
        WakeWord(sensitivity="loud")
    assert err.value.key == "activation.wake_sensitivity"


def test_the_device_front_end_takes_the_sensitivity_from_its_config() -> None:
    activation = replace(ActivationConfig(), wake_word="alexa", wake_sensitivity="max")
    front = FrontEnd(replace(Config(), activation=activation), DSP_FORMAT)
    assert front.wake is not None
    assert front.wake.threshold == pytest.approx(0.7)


def test_sensitivity_decides_a_borderline_keyword() -> None:
    # espeak-ng's en-us+f3 saying "okay nabu" after 0.5 s of silence peaks near 0.80 on
    # okay_nabu: below the model's own cut-off (0.85, "medium"), above "high" (0.70).
    clip = np.concatenate([_silence(0.5), speech("okay nabu", RATE, "en-us+f3", pad_s=1.0)])
    peak = float(score_trace(WakeWord("okay_nabu"), clip).max())
    assert 0.70 < peak < 0.85
    assert _detections(WakeWord("okay_nabu", sensitivity="low"), clip) == []
    assert _detections(WakeWord("okay_nabu", sensitivity="medium"), clip) == []
    assert len(_detections(WakeWord("okay_nabu", sensitivity="high"), clip)) == 1
