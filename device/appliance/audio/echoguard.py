"""Is a cleaned frame the user, or echo the canceller failed to remove? Judged per band.

A linear echo canceller cannot say when it is wrong: after an echo-path change, a volume
step or a clipping speaker its output is mostly echo, and a level test (``near_end_present``)
takes that echo for the user. ``EchoGuard`` keeps a second, cruder model of the echo that
does not depend on the adaptive filter: per frequency band, how loud the mic gets for a
given reference envelope (``echo gain``), and how loud the canceller's output stays
(``residual gain``). Both are learned from frames where only the speaker plays.

Per 20 ms frame and band ``b`` (16 bands, 0–8 kHz, from one FFT of each of mic, output and
reference):

- ``S_b``: the reference envelope: the loudest of the last ``LEAD_FRAMES`` reference frames
  (the echo arrives up to that late), decaying no faster than a 0.6 s reverberation;
- predicted echo in the mic ``P_b = G_b·S_b`` and in the output ``Q_b = Gr_b·S_b``, with
  ``G_b`` / ``Gr_b`` the 95th / 90th percentile of mic/S and out/S over the last 3 s of
  echo (the 95th for both while the canceller is or just was diverged);
- **out excess**: the share of the output's energy in bands ≥ 6 dB above ``Q_b`` (what
  the canceller left is more than its residual: someone else is there);
- **mic excess**: the share of the mic's energy in bands ≥ 6 dB above ``P_b`` (the mic
  holds more than the echo can explain);
- **removal**: the median over bands of mic/out while the reference plays.

A frame with out excess but little removal in most bands (the output is about as loud as
the mic in three bands of four) and no mic excess is the canceller having diverged, not the
user: the guard marks the canceller *diverged* from that frame on (``DIVERGED_HOLD_S``
past the last such frame, or until the residual model has caught up), and while diverged
only mic excess counts as the user. A volume step the device makes after the reference
tap (``volume_step``) scales both gains at once and marks the canceller diverged, without
waiting to discover it.
"""

from __future__ import annotations

import itertools
from collections import deque

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]

BANDS = 16
LEAD_FRAMES = 8
"""Reference frames (20 ms) the echo may lag behind: 160 ms of bulk delay."""
REVERB_DECAY = 10.0 ** (-0.2)
"""Energy decay per 20 ms frame of a 0.6 s RT60 (−2 dB)."""
HISTORY = 150
"""Echo-only frames the gains are learned from (3 s)."""
MIN_HISTORY = 25
LEARN_EVERY = 10
"""Frames between refreshes of the learned gains (they describe seconds)."""
UNHEARD = -30.0
"""log10 gain recorded for a band the reference did not reach in a frame."""
PERCENTILE = 95
RESIDUAL_PERCENTILE = 90
"""The residual model the user's voice must exceed: the 90th percentile of out/S (the
95th, as for the mic, let a clipping speaker's rare residual bursts hide a user 10 dB
under the echo: hard rooms 11/16 barge-ins within 200 ms, 13/16 with the 90th) ..."""
CAUTIOUS_S = 3.0
"""... except while the canceller is diverged and for this long after: then the 95th."""
EXCESS = 4.0
"""6 dB: how far above a prediction a band must be to count as excess."""
EXCESS_SHARE = 0.5
DIVERGED_REMOVAL_DB = 6.0
"""Per-band removal below this with the reference playing: the canceller removes (almost)
nothing ..."""
DIVERGED_BANDS_PCT = 75
"""... in three bands of four (its 75th percentile): a user's voice lowers the removal in
the bands it dominates, a diverged filter in all of them (measured: a user's onset had
the median below 6 dB but not the 75th percentile in 9 frames of 10; an echo-path
change had both in most)."""
MIC_SHARE = 0.0
ADDED_DB = -5.0
"""A frame of echo the canceller made louder by this much has diverged whatever else it
shows (measured: a new chord in the music rooms; the user never does that)."""
BURST_MIC_SHARE = 0.02
"""Out excess while the canceller still removes something and the mic shows (almost) no
excess: a burst of nonlinear residual (a clipping speaker's loud onset), not the user."""
CLEAN_BURST_DB = 18.0
"""Behind a well-converged canceller, the same holds for frames it still took this much
off: a user 6 dB under the echo leaves the removal near 6–16 dB."""
BURST_BELOW_DB = 22.0
"""... judged so only behind a canceller whose typical removal is below this (a clipping
speaker; a clean one rarely bursts, and a user 6 dB under its echo shows little mic excess)."""
ONSET_RISE = 10.0
"""A band whose reference envelope jumps 10 dB has new sound in it (a word after a pause,
a new chord) that the adaptive filter has not heard lately: its residual is briefly loud."""
FRESH_FRAMES = LEAD_FRAMES + 6
"""... for this long after the jump (the echo's bulk delay plus 120 ms of re-adaptation)."""
FRESH_GAP = 2.0
"""... during which out excess there needs 20 dB more."""
DIVERGED_MIC_SHARE = 0.2
"""... and less than this share of the mic's energy is in excess bands (a user 6 dB under
the echo still puts a fifth or more there; a diverged canceller's echo rarely does)."""
ECHO_OVER_NOISE = 10.0
"""The typical removal is learned from frames with echo 10 dB over the mic's noise floor
(not the pauses between the reply's words, where there is nothing to remove)."""
DIVERGED_HOLD_S = 1.0
REMOVAL_MARGIN_DB = 10.0
"""The user's frames: the canceller takes at least this much less off than off its echo."""
MIN_REMOVAL_LIMIT_DB = 8.0
"""... and the allowance never shrinks below this, or a poorly converged canceller (a
clipping speaker, a reverberant room) would make the device deaf to a quieter user."""
FRAME_S = 0.02
ACTIVE_REF = 1e3
"""Band energy of the reference envelope (int16² summed over a band's bins) that counts."""


def _band_edges(bins: int, bands: int) -> list[tuple[int, int]]:
    """Bands on a mel-like scale (narrow at the bottom), skipping DC."""
    mel = np.linspace(0.0, 2595.0 * np.log10(1.0 + 8000.0 / 700.0), bands + 1)
    hz = 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    edges = np.clip(np.round(hz / 8000.0 * (bins - 1)).astype(int), 1, bins)
    out = []
    for a, b in itertools.pairwise(edges):
        out.append((int(a), int(max(b, a + 1))))
    return out


FLOOR_RISE = 0.002
"""How fast a band's noise floor may rise: 0.02 dB per frame, 1 dB a second."""


def _track_floor(floor: Floats, level: Floats) -> Floats:
    """Minimum statistics in log10 units: follow drops at once, rises slowly."""
    return np.minimum(floor + FLOOR_RISE, level)


class EchoGuard:
    def __init__(self, frame_samples: int = 320) -> None:
        self.frame_samples = frame_samples
        bins = frame_samples // 2 + 1
        edges = _band_edges(bins, BANDS)
        self._index = np.zeros(bins, dtype=np.int64)
        self._keep = np.zeros(bins, dtype=bool)
        for i, (a, b) in enumerate(edges):
            self._index[a:b] = i
            self._keep[a:b] = True
        self._window = np.hanning(frame_samples)
        self._refs: deque[Floats] = deque(maxlen=LEAD_FRAMES)
        self._envelope = np.zeros(BANDS)
        self._fresh = np.zeros(BANDS, dtype=np.int64)
        self._last_mic = np.zeros(BANDS)
        self._out_floor = np.full(BANDS, 12.0)
        self._mic_floor = np.full(BANDS, 12.0)
        self._history: deque[tuple[Floats, Floats]] = deque(maxlen=HISTORY)
        self._since = 0
        self.echo_gain: Floats | None = None
        """log10 of mic/envelope per band (90th percentile); None until learned."""
        self._loud_residual = np.zeros(BANDS)
        self.residual_gain: Floats | None = None
        """log10 of out/envelope per band (90th percentile)."""
        self.diverged_until = -1.0
        self.divergences = 0
        """Times the canceller was found (or told it was) diverged."""
        self.out_share = 0.0
        self.mic_share = 0.0
        self.removal_db = 0.0
        self.removal_limit_db = MIN_REMOVAL_LIMIT_DB
        self.band_removal_db: Floats = np.zeros(0)
        """What the canceller took off the last frame, per band the reference reached."""
        self.typical_removal_db = 0.0
        """Median per-band removal over the last 3 s of echo."""
        """A frame the canceller took more than this off (band median) is its own echo."""
        self._removals: deque[float] = deque(maxlen=HISTORY)
        self.playing = False
        """The reference envelope was active in the last frame."""

    def _bands(self, pcm: npt.NDArray[np.int16]) -> Floats:
        spectrum = np.fft.rfft(pcm.astype(np.float64) * self._window)
        power = spectrum.real**2 + spectrum.imag**2
        bands = np.bincount(self._index[self._keep], power[self._keep], minlength=BANDS)
        return np.asarray(bands, dtype=np.float64)

    @property
    def learned(self) -> bool:
        return self.echo_gain is not None

    def diverged(self, now: float) -> bool:
        return now < self.diverged_until

    def volume_step(self, step_db: float, now: float) -> None:
        """The speaker got ``step_db`` louder (or quieter) after the reference tap."""
        shift = step_db / 10.0
        if self.echo_gain is not None and self.residual_gain is not None:
            self.echo_gain = self.echo_gain + shift
            self.residual_gain = self.residual_gain + shift
        self._history = deque(((m + shift, o + shift) for m, o in self._history), maxlen=HISTORY)
        self.mark_diverged(now)

    def recently_diverged(self, now: float) -> bool:
        return now < self.diverged_until + CAUTIOUS_S

    def mark_diverged(self, now: float) -> None:
        if not self.diverged(now):
            self.divergences += 1
        self.diverged_until = now + DIVERGED_HOLD_S

    def update(
        self,
        mic: npt.NDArray[np.int16],
        out: npt.NDArray[np.int16],
        ref: npt.NDArray[np.int16],
        now: float,
        user: bool,
    ) -> bool:
        """Feed one frame; returns whether it may hold the user (always ``True`` when the
        speaker is silent and its echo has died away). ``user``: the front end already
        counts the user as speaking (then nothing is learned from the frame)."""
        m_now = self._bands(mic)
        m = np.maximum(m_now, self._last_mic)  # the output may lag the mic by a frame
        self._last_mic = m_now
        e = self._bands(out)
        self._out_floor = _track_floor(self._out_floor, np.log10(e + 1.0))
        self._mic_floor = _track_floor(self._mic_floor, np.log10(m_now + 1.0))
        self._refs.append(self._bands(ref))
        peak = np.max(np.array(self._refs), axis=0)
        rose = peak > self._envelope * ONSET_RISE
        self._fresh = np.where(rose, FRESH_FRAMES, np.maximum(self._fresh - 1, 0))
        self._envelope = np.maximum(self._envelope * REVERB_DECAY, peak)
        s = self._envelope
        active = s > ACTIVE_REF
        self.playing = bool(active.sum() >= 3)
        if not self.playing:
            self.out_share = self.mic_share = 0.0
            return True
        log_s = np.log10(s + 1.0)
        log_m = np.log10(m + 1.0)
        log_e = np.log10(e + 1.0)
        if self.echo_gain is None or self.residual_gain is None:
            if not user:
                self._learn(log_m - log_s, log_e - log_s, active)
            return False
        p = np.maximum(log_s + self.echo_gain, self._mic_floor)
        residual = self.residual_gain
        if self.diverged(now) or self.recently_diverged(now):
            residual = residual + self._loud_residual
        q = np.maximum(log_s + residual, self._out_floor)
        gap = np.log10(EXCESS)
        out_ex = log_e > q + gap + np.where(self._fresh > 0, FRESH_GAP, 0.0)
        mic_ex = log_m > p + gap
        self.out_share = float(e[out_ex].sum() / max(float(e.sum()), 1e-9))
        self.mic_share = float(m[mic_ex].sum() / max(float(m.sum()), 1e-9))
        self.band_removal_db = 10.0 * (log_m[active] - log_e[active])
        self.removal_db = float(np.median(self.band_removal_db))
        typical = float(np.median(self._removals)) if self._removals else 0.0
        self.typical_removal_db = typical
        self.removal_limit_db = max(MIN_REMOVAL_LIMIT_DB, typical - REMOVAL_MARGIN_DB)
        out_excess = self.out_share >= EXCESS_SHARE and self.removal_db < self.removal_limit_db
        mic_excess = self.mic_share >= EXCESS_SHARE
        quiet_mic = self.mic_share < DIVERGED_MIC_SHARE
        most = float(np.percentile(self.band_removal_db, DIVERGED_BANDS_PCT))
        echo = m.sum() > ECHO_OVER_NOISE * float(np.sum(10.0**self._mic_floor))
        if (out_excess and quiet_mic and most < DIVERGED_REMOVAL_DB) or (
            echo and self.removal_db < ADDED_DB
        ):
            self.mark_diverged(now)
        some_mic = float(m[log_m > p].sum()) >= MIC_SHARE * float(m.sum())
        burst_removal = DIVERGED_REMOVAL_DB if typical < BURST_BELOW_DB else CLEAN_BURST_DB
        burst = self.mic_share < BURST_MIC_SHARE and self.removal_db >= burst_removal
        near = out_excess and not burst and (mic_excess or (some_mic and not self.diverged(now)))
        if not user and not near:
            self._learn(log_m - log_s, log_e - log_s, active)
            if echo:
                self._removals.append(self.removal_db)  # echo, not a pause in the reply
        return near

    def _learn(self, mic_gain: Floats, out_gain: Floats, active: npt.NDArray[np.bool_]) -> None:
        self._history.append(
            (np.where(active, mic_gain, UNHEARD), np.where(active, out_gain, UNHEARD))
        )
        self._since += 1
        if len(self._history) < MIN_HISTORY or self._since < LEARN_EVERY:
            return
        self._since = 0
        hist = np.array(self._history)  # (frames, 2, bands)
        gains = np.percentile(hist, PERCENTILE, axis=0)
        typical = np.percentile(hist[:, 1], RESIDUAL_PERCENTILE, axis=0)
        # a band the reference has (almost) never reached: assume the loudest band's gain
        gains = np.where(gains < UNHEARD / 2, np.max(gains, axis=1, keepdims=True), gains)
        typical = np.where(typical < UNHEARD / 2, gains[1], typical)
        self.echo_gain, self.residual_gain = gains[0], typical
        self._loud_residual = gains[1] - typical
