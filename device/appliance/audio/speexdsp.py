"""A small ctypes binding to libspeexdsp: the echo canceller and the preprocessor.

Only what the appliance needs: ``SpeexEcho`` (``speex_echo_*``) and ``SpeexPreprocessor``
(``speex_preprocess_*``) with its residual-echo suppressor wired to the echo state
(``SPEEX_PREPROCESS_SET_ECHO_STATE``), which is what makes Speex usable for barge-in: the
adaptive filter removes the linear echo, the preprocessor removes what is left using the
filter's own estimate of the residual.

Both objects work in place on preallocated numpy int16 buffers, so a frame costs two
``memmove``s and the C calls; nothing is allocated per frame except the returned ``bytes``.
The native state is freed by ``close()`` (idempotent) or, as a last resort, by ``__del__``.

Debian: ``apt install libspeexdsp1`` (the runtime library is all that is needed).
Constants are those of ``speex/speex_echo.h`` and ``speex/speex_preprocess.h`` (speexdsp 1.2).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

import numpy as np
import numpy.typing as npt

from appliance.errors import ApplianceError

# speex/speex_echo.h
SPEEX_ECHO_GET_FRAME_SIZE = 3
SPEEX_ECHO_SET_SAMPLING_RATE = 24
SPEEX_ECHO_GET_SAMPLING_RATE = 25

# speex/speex_preprocess.h
SPEEX_PREPROCESS_SET_DENOISE = 0
SPEEX_PREPROCESS_GET_DENOISE = 1
SPEEX_PREPROCESS_SET_AGC = 2
SPEEX_PREPROCESS_SET_VAD = 4
SPEEX_PREPROCESS_SET_DEREVERB = 8
SPEEX_PREPROCESS_SET_NOISE_SUPPRESS = 18
SPEEX_PREPROCESS_GET_NOISE_SUPPRESS = 19
SPEEX_PREPROCESS_SET_ECHO_SUPPRESS = 20
SPEEX_PREPROCESS_GET_ECHO_SUPPRESS = 21
SPEEX_PREPROCESS_SET_ECHO_SUPPRESS_ACTIVE = 22
SPEEX_PREPROCESS_GET_ECHO_SUPPRESS_ACTIVE = 23
SPEEX_PREPROCESS_SET_ECHO_STATE = 24
SPEEX_PREPROCESS_GET_ECHO_STATE = 25

DEFAULT_LIBRARY = "speexdsp"
"""Name given to ``ctypes.util.find_library`` (or a path / soname tried as is)."""

_Int16Ptr = ctypes.POINTER(ctypes.c_int16)
Samples = npt.NDArray[np.int16]


class SpeexDspUnavailable(ApplianceError, ImportError):
    """libspeexdsp could not be loaded (not installed, or a wrong name/path was given)."""


_cache: dict[str, ctypes.CDLL] = {}
_cache_lock = threading.Lock()


def load_library(name: str = DEFAULT_LIBRARY) -> ctypes.CDLL:
    """Load libspeexdsp and declare the prototypes used here.

    ``name`` is a library name for ``find_library`` (``"speexdsp"``), a soname
    (``"libspeexdsp.so.1"``) or a path. Raises ``SpeexDspUnavailable`` if nothing loads.
    """
    with _cache_lock:
        if name in _cache:
            return _cache[name]
        candidates = [c for c in (ctypes.util.find_library(name), name) if c]
        if name == DEFAULT_LIBRARY:
            candidates.append("libspeexdsp.so.1")
        errors: list[str] = []
        for candidate in candidates:
            try:
                lib = ctypes.CDLL(candidate)
            except OSError as exc:
                errors.append(str(exc))
                continue
            try:
                _declare(lib)
            except AttributeError as exc:  # loaded something that is not libspeexdsp
                errors.append(f"{candidate}: {exc}")
                continue
            _cache[name] = lib
            return lib
        raise SpeexDspUnavailable(
            f"libspeexdsp not found as {name!r} (Debian: apt install libspeexdsp1): "
            + ("; ".join(errors) or "find_library found nothing")
        )


def _declare(lib: ctypes.CDLL) -> None:
    p = ctypes.c_void_p
    i = ctypes.c_int
    lib.speex_echo_state_init.argtypes = [i, i]
    lib.speex_echo_state_init.restype = p
    lib.speex_echo_state_destroy.argtypes = [p]
    lib.speex_echo_state_destroy.restype = None
    lib.speex_echo_cancellation.argtypes = [p, _Int16Ptr, _Int16Ptr, _Int16Ptr]
    lib.speex_echo_cancellation.restype = None
    lib.speex_echo_state_reset.argtypes = [p]
    lib.speex_echo_state_reset.restype = None
    lib.speex_echo_ctl.argtypes = [p, i, p]
    lib.speex_echo_ctl.restype = i
    lib.speex_preprocess_state_init.argtypes = [i, i]
    lib.speex_preprocess_state_init.restype = p
    lib.speex_preprocess_state_destroy.argtypes = [p]
    lib.speex_preprocess_state_destroy.restype = None
    lib.speex_preprocess_run.argtypes = [p, _Int16Ptr]
    lib.speex_preprocess_run.restype = i
    lib.speex_preprocess_ctl.argtypes = [p, i, p]
    lib.speex_preprocess_ctl.restype = i


def _ptr(buffer: Samples) -> ctypes._Pointer[ctypes.c_int16]:
    return buffer.ctypes.data_as(_Int16Ptr)


class SpeexEcho:
    """``SpeexEchoState``: an adaptive (MDF) echo canceller for one mic and one speaker.

    ``frame_size`` samples per call (10–20 ms); ``filter_length`` samples of echo tail
    (bulk delay + reverberation) it can model.
    """

    def __init__(
        self, frame_size: int, filter_length: int, rate: int, *, library: str = DEFAULT_LIBRARY
    ) -> None:
        if frame_size <= 0 or filter_length <= 0:
            raise ValueError("frame_size and filter_length must be positive")
        self._lib = load_library(library)
        self.frame_size = frame_size
        self.filter_length = filter_length
        self.rate = rate
        self._state: int | None = self._lib.speex_echo_state_init(frame_size, filter_length)
        if not self._state:
            raise MemoryError("speex_echo_state_init failed")
        value = ctypes.c_int(rate)
        self._lib.speex_echo_ctl(self._state, SPEEX_ECHO_SET_SAMPLING_RATE, ctypes.byref(value))
        self._mic = np.zeros(frame_size, dtype=np.int16)
        self._ref = np.zeros(frame_size, dtype=np.int16)
        self.out = np.zeros(frame_size, dtype=np.int16)
        """The last output frame (overwritten by every ``cancel``)."""
        self._mic_p, self._ref_p, self._out_p = _ptr(self._mic), _ptr(self._ref), _ptr(self.out)

    @property
    def handle(self) -> int:
        """The native ``SpeexEchoState*`` (for ``SpeexPreprocessor``)."""
        if not self._state:
            raise ValueError("SpeexEcho is closed")
        return self._state

    @property
    def closed(self) -> bool:
        return not self._state

    def ctl_int(self, request: int, value: int = 0) -> int:
        """``speex_echo_ctl`` with an ``int`` argument; returns the (possibly updated) value."""
        arg = ctypes.c_int(value)
        if self._lib.speex_echo_ctl(self.handle, request, ctypes.byref(arg)) != 0:
            raise ValueError(f"speex_echo_ctl: unknown request {request}")
        return arg.value

    def cancel(self, mic: bytes | Samples, ref: bytes | Samples) -> Samples:
        """Remove the echo of ``ref`` (what the speaker played) from ``mic``.

        Returns ``self.out`` (reused: copy it if you keep it).
        """
        np.copyto(self._mic, _samples(mic, self.frame_size))
        np.copyto(self._ref, _samples(ref, self.frame_size))
        self._lib.speex_echo_cancellation(self.handle, self._mic_p, self._ref_p, self._out_p)
        return self.out

    def reset(self) -> None:
        """Forget the adapted filter (e.g. after the echo path changed completely)."""
        self._lib.speex_echo_state_reset(self.handle)

    def close(self) -> None:
        state, self._state = self._state, None
        if state:
            self._lib.speex_echo_state_destroy(state)

    def __del__(self) -> None:
        if getattr(self, "_state", None):
            self.close()


class SpeexPreprocessor:
    """``SpeexPreprocessState``: denoiser and, given an echo state, residual-echo suppressor.

    ``echo_suppress_db`` is the most the residual echo is attenuated (negative dB) when
    only the far end talks, ``echo_suppress_active_db`` when the near end talks too (less,
    so the user's voice survives double talk). ``noise_suppress_db`` caps the denoiser.
    """

    def __init__(
        self,
        frame_size: int,
        rate: int,
        *,
        echo: SpeexEcho | None = None,
        denoise: bool = True,
        noise_suppress_db: int = -15,
        echo_suppress_db: int = -40,
        echo_suppress_active_db: int = -15,
        library: str = DEFAULT_LIBRARY,
    ) -> None:
        self._lib = load_library(library)
        self.frame_size = frame_size
        self.rate = rate
        self._state: int | None = self._lib.speex_preprocess_state_init(frame_size, rate)
        if not self._state:
            raise MemoryError("speex_preprocess_state_init failed")
        self._echo = echo  # keep the echo state alive as long as we point at it
        self.ctl_int(SPEEX_PREPROCESS_SET_DENOISE, int(denoise))
        self.ctl_int(SPEEX_PREPROCESS_SET_NOISE_SUPPRESS, noise_suppress_db)
        self.ctl_int(SPEEX_PREPROCESS_SET_ECHO_SUPPRESS, echo_suppress_db)
        self.ctl_int(SPEEX_PREPROCESS_SET_ECHO_SUPPRESS_ACTIVE, echo_suppress_active_db)
        if echo is not None:
            self.wire(echo)
        self.frame = np.zeros(frame_size, dtype=np.int16)
        """The working frame: ``run`` processes it in place."""
        self._frame_p = _ptr(self.frame)

    @property
    def handle(self) -> int:
        if not self._state:
            raise ValueError("SpeexPreprocessor is closed")
        return self._state

    def ctl_int(self, request: int, value: int = 0) -> int:
        """``speex_preprocess_ctl`` with an ``int`` argument; returns the value after."""
        arg = ctypes.c_int(value)
        if self._lib.speex_preprocess_ctl(self.handle, request, ctypes.byref(arg)) != 0:
            raise ValueError(f"speex_preprocess_ctl: unknown request {request}")
        return arg.value

    def wire(self, echo: SpeexEcho) -> None:
        """Take the residual echo's estimate from ``echo`` from now on."""
        self._lib.speex_preprocess_ctl(
            self.handle, SPEEX_PREPROCESS_SET_ECHO_STATE, ctypes.c_void_p(echo.handle)
        )
        self._echo = echo

    def echo_state(self) -> int | None:
        """The ``SpeexEchoState*`` the residual-echo suppressor uses (None if unwired)."""
        arg = ctypes.c_void_p()
        self._lib.speex_preprocess_ctl(
            self.handle, SPEEX_PREPROCESS_GET_ECHO_STATE, ctypes.byref(arg)
        )
        return arg.value

    def run(self, frame: bytes | Samples) -> Samples:
        """Process one frame; returns ``self.frame`` (reused: copy it if you keep it)."""
        if self._echo is not None and self._echo.closed:
            raise ValueError("the echo state wired to this preprocessor is closed")
        np.copyto(self.frame, _samples(frame, self.frame_size))
        self._lib.speex_preprocess_run(self.handle, self._frame_p)
        return self.frame

    def close(self) -> None:
        state, self._state = self._state, None
        if state:
            self._lib.speex_preprocess_state_destroy(state)
        self._echo = None

    def __del__(self) -> None:
        if getattr(self, "_state", None):
            self.close()


def _samples(data: bytes | Samples, size: int) -> Samples:
    samples = np.frombuffer(data, dtype="<i2") if isinstance(data, bytes) else data
    if samples.shape != (size,):
        raise ValueError(f"expected {size} samples, got {samples.size}")
    return samples
