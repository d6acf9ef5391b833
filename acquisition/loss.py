"""Sample timing of a regular-rate stream: dejitter, lost-sample accounting and rate checks.

liblsl's own dejitter (``proc_dejitter``) fits one line through every timestamp; after a pause
it spreads the gap over the following samples (measured: a 1 s pause at 100 Hz was smeared over
~100 samples, timestamps off by up to 0.98 s), which hides lost samples. :class:`SampleTimeline`
does the dejitter itself, per contiguous segment, and starts a new segment at every gap:

* Within a segment sample ``k`` is expected at ``anchor + offset + k / sfreq``; ``offset`` is an
  exponentially weighted mean (half-life ``halflife`` seconds) of the observed deviations, which
  removes jitter and follows slow clock drift.
* A sample later than expected by more than ``0.5 / sfreq + jitter_tolerance`` seconds means
  samples were lost: a :class:`Gap` records when the first missing sample was due, how long the
  gap lasted and how many samples (at the nominal rate) are missing. A new segment starts there.
* A sample *earlier* than expected by the same margin (clock jump, rate change) restarts the
  segment without reporting loss.
* The effective rate over the last ``rate_window`` seconds (excluding gaps) is compared with the
  nominal rate; :attr:`SampleTimeline.rate_changed` is true when it differs by more than
  ``rate_tolerance`` (relative).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from dropstream.acquisition.sosfilt import sos_kernel


@dataclass(frozen=True)
class Gap:
    """Samples missing from a regular-rate stream.

    Attributes
    ----------
    start : float
        Local LSL clock time (seconds) at which the first missing sample was due.
    duration : float
        Seconds between that due time and the next sample that did arrive.
    lost_samples : int
        Number of missing samples at the nominal rate (``round(duration * sfreq)``, at least 1).
    reconnected : bool
        True when the stream was declared lost during this gap and came back.
    """

    start: float
    duration: float
    lost_samples: int
    reconnected: bool = False


class SampleTimeline:
    """Dejitter timestamps and account for lost samples of one regular-rate stream.

    Parameters
    ----------
    sfreq : float
        Nominal sampling rate in Hz (must be > 0).
    dejitter : bool
        Replace timestamps by the smoothed per-segment estimate (else keep them, only detect gaps).
    jitter_tolerance : float
        Seconds of timestamp jitter tolerated before a late sample counts as a gap.
    halflife : float
        Half-life in seconds of the offset estimate.
    rate_window : float
        Seconds of data used to measure the effective rate.
    rate_tolerance : float
        Relative deviation of the measured rate from ``sfreq`` that flags a rate change.
    """

    def __init__(
        self,
        sfreq: float,
        *,
        dejitter: bool = True,
        jitter_tolerance: float = 0.002,
        halflife: float = 10.0,
        rate_window: float = 2.0,
        rate_tolerance: float = 0.02,
    ) -> None:
        if not sfreq > 0:
            raise ValueError(f"SampleTimeline needs a regular rate, got sfreq={sfreq}")
        self.sfreq = float(sfreq)
        self.period = 1.0 / self.sfreq
        self.dejitter = dejitter
        self.threshold = 0.5 * self.period + jitter_tolerance
        self.decay = 0.5 ** (self.period / halflife)
        self._section = np.array([[1.0, 0.0, 0.0, 1.0, -self.decay, 0.0]])
        self.rate_window = rate_window
        self.rate_tolerance = rate_tolerance
        self.total_samples = 0
        self.total_lost = 0
        self.gaps: list[Gap] = []
        self.measured_rate: float | None = None
        self._segment_started = False
        self._anchor = 0.0
        self._k = -1
        self._num = 0.0
        self._den = 0.0
        self._last_raw: float | None = None
        self._last_out: float | None = None
        self._rate_parts: deque[tuple[int, float]] = deque()
        self._rate_span = 0.0
        self._rate_count = 0

    @property
    def rate_changed(self) -> bool:
        """True when the measured rate differs from the nominal rate beyond the tolerance."""
        if self.measured_rate is None:
            return False
        return abs(self.measured_rate / self.sfreq - 1.0) > self.rate_tolerance

    @property
    def last_timestamp(self) -> float | None:
        """Timestamp (after dejitter) of the last sample processed, or ``None``."""
        return self._last_out

    def expected_next(self) -> float | None:
        """When the next sample is due on the local clock, or ``None`` before any sample."""
        return None if self._last_out is None else self._last_out + self.period

    def _start_segment(self, t: float) -> None:
        self._segment_started = True
        self._anchor = t
        self._k = -1
        self._num = 0.0
        self._den = 0.0

    def process(
        self, raw: np.ndarray, *, reconnected: bool = False
    ) -> tuple[np.ndarray, list[Gap]]:
        """Process the next timestamps (seconds, local clock, increasing order expected).

        Parameters
        ----------
        raw : np.ndarray
            Timestamps of the new samples as delivered by the inlet.
        reconnected : bool
            The stream was lost before these samples; a gap found before the first of them is
            reported with ``reconnected=True``.

        Returns
        -------
        timestamps : np.ndarray
            Dejittered timestamps (or ``raw`` if dejitter is off), float64.
        gaps : list of Gap
            Gaps found before or between these samples.
        """
        raw = np.asarray(raw, dtype=np.float64)
        out = np.empty_like(raw)
        gaps: list[Gap] = []
        i = 0
        n = raw.size
        while i < n:
            if not self._segment_started:
                self._start_segment(raw[i])
            k = self._k + 1 + np.arange(n - i)
            y = raw[i:] - self._anchor - k * self.period
            # num[j] = y[j] + decay * num[j-1] and den alike (ones for y): a first-order
            # recursion run as one second-order section, the numbers lfilter gives
            nd = np.empty((2, y.size))
            nd[0], nd[1] = y, 1.0
            state = np.array([[[self.decay * self._num, 0.0]], [[self.decay * self._den, 0.0]]])
            sos_kernel()(self._section, nd, state)
            num, den = nd
            offset = num / den
            # Prediction for sample j uses the estimate up to sample j-1.
            prev = np.concatenate(([self._num / self._den if self._den > 0 else y[0]], offset[:-1]))
            resid = y - prev
            bad = np.flatnonzero(np.abs(resid) > self.threshold)
            m = bad[0] if bad.size else y.size
            if m > 0:
                est = offset[:m] if self.dejitter else y[:m]
                out[i : i + m] = self._anchor + est + k[:m] * self.period
                self._k = int(k[m - 1])
                self._num = float(num[m - 1])
                self._den = float(den[m - 1])
                self._last_out = float(out[i + m - 1])
            if m < y.size:
                j = i + m
                if resid[m] > 0 and self._last_out is not None:
                    due = self._last_out + self.period
                    duration = float(raw[j] - due)
                    if duration > 0:
                        lost = max(1, round(duration * self.sfreq))
                        gap = Gap(due, duration, lost, bool(reconnected and j == 0))
                        gaps.append(gap)
                        self.gaps.append(gap)
                        self.total_lost += lost
                self._segment_started = False
                i = j
            else:
                i = n
        self._update_rate(raw, gaps)
        self.total_samples += n
        return out, gaps

    def _update_rate(self, raw: np.ndarray, gaps: list[Gap]) -> None:
        if raw.size == 0:
            return
        start = raw[0] if self._last_raw is None else self._last_raw
        span = float(raw[-1] - start) - sum(g.duration for g in gaps)
        count = raw.size - (1 if self._last_raw is None else 0)
        self._last_raw = float(raw[-1])
        if count <= 0 or span <= 0:
            return
        self._rate_parts.append((count, span))
        self._rate_count += count
        self._rate_span += span
        while (
            len(self._rate_parts) > 1
            and self._rate_span - self._rate_parts[0][1] >= self.rate_window
        ):
            c, s = self._rate_parts.popleft()
            self._rate_count -= c
            self._rate_span -= s
        if self._rate_span >= self.rate_window and math.isfinite(self._rate_span):
            self.measured_rate = self._rate_count / self._rate_span
