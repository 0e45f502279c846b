"""Wake word: microWakeWord models through ``pymicro-wakeword`` (the ``wake`` extra).

:class:`WakeWord` takes the same 16 kHz s16le mono frames as the speech gate (any whole
number of samples; 20 ms in the app) and returns True exactly once per detection:

* the model turns each 10 ms of audio into a feature slice, runs its streaming network every
  ``stride`` slices (30 ms for the built-ins) and averages the last ``sliding_window_size``
  outputs; a detection is that average rising above the threshold;
* one utterance keeps the average high for several inferences: the detector fires on the
  rising edge and re-arms only after the average has fallen back below the threshold;
* after a detection, further detections are ignored for ``refractory_s`` seconds of *audio*
  (counted in samples fed, so the behaviour is the same in real time and in tests).

**Sensitivity** (``activation.wake_sensitivity``, per device): ``low``, ``medium``,
``high`` or ``max`` scales the model's margin below certainty, ``1 − cutoff``, by
×0.5 / ×1 / ×2 / ×3 (:data:`SENSITIVITY_MARGIN`, :func:`sensitivity_threshold`): for
``okay_nabu`` (cut-off 0.85) the threshold is 0.925 / 0.85 / 0.70 / 0.55, for ``alexa``
(0.90) 0.95 / 0.90 / 0.80 / 0.70. Higher sensitivity hears more voices in more noise and
wakes falsely more often (docs/audio.md, "Wake word", has the measured trade-off). A non-zero
``activation.wake_threshold`` overrides the sensitivity. The sliding window (5 inferences,
150 ms) is the model's and is not changed.

Built-in models (shipped in the wheel, no download): ``okay_nabu``, ``hey_jarvis``,
``alexa``, ``hey_mycroft``. A custom model is a microWakeWord ``.json`` whose ``model`` field
names a ``.tflite`` beside it (``activation.wake_model_path``; a ``.tflite`` path is accepted
when the ``.json`` of the same stem sits beside it).

Measured figures (hit rates by voice, noise and sensitivity, false accepts per hour, cost,
latency) and the method are in docs/audio.md, "Wake word" (``python -m appliance_dev.bench wake``).
Not thread-safe: feed it from one thread.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.audio.base import SAMPLE_WIDTH
from appliance.errors import ConfigError

if TYPE_CHECKING:
    from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures

RATE = 16_000
"""The only sample rate microWakeWord models take."""

WORD_KEY = "activation.wake_word"
THRESHOLD_KEY = "activation.wake_threshold"
REFRACTORY_KEY = "activation.wake_refractory_s"
PATH_KEY = "activation.wake_model_path"
SENSITIVITY_KEY = "activation.wake_sensitivity"

DEFAULT_MODEL = "alexa"
"""The recommended built-in model: the most robust across voices and noise in the bench
(docs/audio.md, "Wake word")."""

SENSITIVITY_MARGIN = {"low": 0.5, "medium": 1.0, "high": 2.0, "max": 3.0}
"""Sensitivity → factor on the model's margin ``1 − probability_cutoff``."""
MIN_THRESHOLD = 0.05

_TFLITE_MAGIC = b"TFL3"  # flatbuffer file identifier at bytes 4..8 of a .tflite


def _package() -> Any:
    try:
        import pymicro_wakeword
    except ImportError as exc:
        raise ConfigError(
            WORD_KEY,
            "the wake word needs the pymicro-wakeword package "
            "(pip install 'pi-realtime-appliance[wake]')",
        ) from exc
    return pymicro_wakeword


def available_models() -> list[str]:
    """Names of the built-in models (empty when pymicro-wakeword is not installed)."""
    try:
        from pymicro_wakeword import Model
    except ImportError:
        return []
    return sorted(model.value for model in Model)


def sensitivity_threshold(cutoff: float, sensitivity: str) -> float:
    """The detection threshold for a model with ``cutoff`` at ``sensitivity``:
    ``1 − (1 − cutoff) × SENSITIVITY_MARGIN[sensitivity]``, never below ``MIN_THRESHOLD``."""
    if sensitivity not in SENSITIVITY_MARGIN:
        raise ConfigError(
            SENSITIVITY_KEY,
            f"must be one of {', '.join(SENSITIVITY_MARGIN)}, not {sensitivity!r}",
        )
    margin = (1.0 - cutoff) * SENSITIVITY_MARGIN[sensitivity]
    return round(max(MIN_THRESHOLD, 1.0 - margin), 6)


def _custom_config(path: Path) -> Path:
    """The ``.json`` of a custom model, checked enough that loading it cannot crash."""
    if path.suffix == ".tflite":
        path = path.with_suffix(".json")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(PATH_KEY, f"cannot read {path}: {exc.strerror or exc}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(PATH_KEY, f"{path} is not a microWakeWord JSON file: {exc}") from exc
    if not (
        isinstance(config, dict)
        and isinstance(config.get("model"), str)
        and isinstance(config.get("wake_word"), str)
        and isinstance(config.get("micro"), dict)
        and isinstance(config["micro"].get("probability_cutoff"), int | float)
        and isinstance(config["micro"].get("sliding_window_size"), int)
    ):
        raise ConfigError(
            PATH_KEY,
            f"{path} lacks model, wake_word, micro.probability_cutoff or micro.sliding_window_size",
        )
    tflite = path.parent / config["model"]
    try:
        with tflite.open("rb") as handle:
            header = handle.read(8)
    except OSError as exc:
        raise ConfigError(PATH_KEY, f"cannot read {tflite}: {exc.strerror or exc}") from exc
    if header[4:8] != _TFLITE_MAGIC:
        raise ConfigError(PATH_KEY, f"{tflite} is not a TensorFlow Lite model")
    return path


class WakeWord:
    """One wake-word model listening to a 16 kHz mic stream.

    ``model``: a built-in name (``activation.wake_word``); ignored when ``model_path`` is
    given. ``threshold``: 0 derives it from the model's cut-off and ``sensitivity``
    (:func:`sensitivity_threshold`), else 0 < threshold < 1 and ``sensitivity`` is ignored.
    ``refractory_s``: after a detection, ignore the word for this much audio.
    Bad settings raise ``ConfigError`` naming the ``activation.*`` key.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        threshold: float = 0.0,
        refractory_s: float = 2.0,
        model_path: Path | None = None,
        sensitivity: str = "medium",
    ) -> None:
        if not 0.0 <= threshold < 1.0:
            raise ConfigError(
                THRESHOLD_KEY, f"must be 0 (model default) or in (0, 1), not {threshold}"
            )
        sensitivity_threshold(0.5, sensitivity)  # checks it before the model loads
        if refractory_s < 0:
            raise ConfigError(REFRACTORY_KEY, f"must be ≥ 0, not {refractory_s}")
        package = _package()
        if model_path is not None:
            config = _custom_config(Path(model_path))
            try:
                self._model: MicroWakeWord = package.MicroWakeWord.from_config(config)
            except (OSError, ValueError, KeyError, RuntimeError) as exc:
                raise ConfigError(PATH_KEY, f"cannot load {config}: {exc}") from exc
        else:
            names = available_models()
            if model not in names:
                raise ConfigError(
                    WORD_KEY, f"unknown wake-word model {model!r}; built-ins: {', '.join(names)}"
                )
            self._model = package.MicroWakeWord.from_builtin(package.Model(model))
        self._features: MicroWakeWordFeatures = package.MicroWakeWordFeatures()
        self.name: str = self._model.id
        """Model id (the ``.tflite`` stem), e.g. ``okay_nabu``."""
        self.phrase: str = self._model.wake_word
        """What to say, e.g. ``Okay Nabu``."""
        self.cutoff: float = float(self._model.probability_cutoff)
        """The model's own cut-off (its ``micro.probability_cutoff``)."""
        self.threshold: float = threshold or sensitivity_threshold(self.cutoff, sensitivity)
        self.refractory_s = refractory_s
        self._samples = 0
        self._slices = 0
        self._armed = True
        self._last_detection: float | None = None
        self.score = 0.0
        """The latest smoothed probability (0–1)."""

    @staticmethod
    def available_models() -> list[str]:
        """Names of the built-in models (see the module-level :func:`available_models`)."""
        return available_models()

    @property
    def time(self) -> float:
        """Stream seconds fed since construction or :meth:`reset`."""
        return self._samples / RATE

    @property
    def last_detection_at(self) -> float | None:
        """Stream time (end of the frame) of the latest detection, or None."""
        return self._last_detection

    def process(self, frame: bytes) -> bool:
        """Feed 16 kHz s16le mono audio (a 20 ms frame); True once per detection."""
        if len(frame) % SAMPLE_WIDTH:
            raise ValueError("frame must hold whole 16-bit samples")
        self._samples += len(frame) // SAMPLE_WIDTH
        above = False
        for features in self._features.process_streaming(frame):
            probability = self._model.process_streaming_prob(features)
            self._slices += 1
            # The model buffers ``stride`` slices per inference and answers 0.0 meanwhile.
            if probability is None or self._slices % self._model.stride:
                continue
            self.score = float(probability)
            above = above or self.score > self.threshold
        if not above:
            if self.score <= self.threshold:
                self._armed = True
            return False
        if not self._armed:
            return False
        self._armed = False
        now = self.time
        if self._last_detection is not None and now - self._last_detection < self.refractory_s:
            return False
        self._last_detection = now
        return True

    def reset(self) -> None:
        """Clear the audio history and the network's state (e.g. after playback ends);
        the stream clock and refractory period start over."""
        self._features.reset()
        self._model.reset()
        self._samples = 0
        self._slices = 0
        self._armed = True
        self._last_detection = None
        self.score = 0.0

    def close(self) -> None:
        """Free the TFLite interpreter; the object is unusable afterwards."""
        self._model.close()
