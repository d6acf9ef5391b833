"""Input drift: does a stream still look like the data the model was trained on?

What the server legitimately sees of a window is its ``K`` kept activations. A novelty bundle
stores, per first-layer unit, the mean and standard deviation of its activation over the normal
training windows (``head_config["drift"]``, :meth:`DriftReference.to_config`). For every window
the server computes the **drift statistic**: the mean over the kept units of the squared
standardised activation, ``mean_i ((v_i - mu_i) / sd_i)^2`` - about 1 for windows like the
training data, orders of magnitude more for another device, another body site, a wrong unit.

The squared z-scores cannot see a stream that is much *smaller* than the training data (a wrong
gain, a detached electrode, microvolts read as millivolts): its activations fall to about zero,
where ``((0 - mu_i) / sd_i)^2`` stays of order one. So the statistic has a second, **scale**
term: with ``p_i`` the mean squared activation of unit ``i`` on normal windows and
``s = log(sum_kept v_i^2 / sum_kept p_i)`` (about 0 for windows like the training data; a
stream ``c`` times smaller in amplitude gives ``s = -2 log c`` for a bias-free layer; a layer
whose units carry a fixed offset, like the multi-scale energy layer, has it subtracted first:
``offset`` below), it adds
``level * (s / SCALE_LOG)^2``: a scale :data:`SCALE_FACTOR` times off, either way, reaches the
drift level by itself. Bundles without ``power`` (made before) have no scale term.

An anomaly is short; drift lasts. :class:`DriftMonitor` keeps the lower quartile of the statistic
over the last ``windows`` windows of a stream (artefacts covering up to three quarters of that
span cannot raise it; a median was raised by two 3-s artefacts in the first 10 s of a stream) and
reports drift while that quartile is above the bundle's ``level`` (the largest rolling quartile
seen on the held-out training windows, times a margin), until it falls below half of it. While a
stream drifts, its anomaly scores mean nothing: the service publishes one ``kind: "drift"`` event
instead of an endless anomaly (:mod:`dropstream.inference.streams`).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

#: ``kind`` (and ``label``) of the alert messages that report drift.
DRIFT_KIND = "drift"
#: Windows whose drift statistics decide (at a 0.25 s hop: 20 s).
DEFAULT_WINDOWS = 80
#: Factor between the largest rolling quartile on held-out normal windows and the drift level.
MARGIN = 3.0
#: Quantile of the last windows' statistics that decides (the lower quartile: artefacts covering
#: up to three quarters of the span cannot raise it; a lasting change raises every window's).
QUANTILE = 0.25
#: Amplitude ratio (stream / training data, either way) that alone reaches the drift level.
SCALE_FACTOR = 10.0
#: ``|s|`` of a stream :data:`SCALE_FACTOR` times off in amplitude (energy goes with its square).
SCALE_LOG = 2.0 * float(np.log(SCALE_FACTOR))


@dataclass(frozen=True)
class DriftReference:
    """Per-unit activation statistics of the training data, and the drift level.

    Attributes
    ----------
    mean, std : numpy.ndarray, shape (m,)
        Mean and standard deviation of each first-layer unit's activation on normal windows.
    level : float
        Rolling quartile of the statistic above which a stream drifts.
    windows : int
        Windows in the rolling quartile.
    power : numpy.ndarray or None, shape (m,)
        Mean squared activation (minus ``offset``) of each unit on normal windows (the scale
        term); ``None`` for bundles made before it.
    offset : numpy.ndarray or None, shape (m,)
        Each unit's fixed offset (its bias where a zero signal gives the bias), subtracted
        before the scale term; ``None``: no offset.
    """

    mean: np.ndarray
    std: np.ndarray
    level: float
    windows: int = DEFAULT_WINDOWS
    power: np.ndarray | None = None
    offset: np.ndarray | None = None

    @classmethod
    def fit(
        cls,
        fitted: np.ndarray,
        held_out: np.ndarray,
        windows: int = DEFAULT_WINDOWS,
        offset: np.ndarray | None = None,
    ) -> DriftReference:
        """Statistics from the activations ``(N, m)`` of the fitted normal windows; the level
        from the held-out ones (in time order): ``MARGIN`` x their largest rolling
        :data:`QUANTILE` of the squared z-scores (the scale term is scaled to that level)."""
        a = np.asarray(fitted, dtype=np.float64)
        mean = a.mean(axis=0)
        std = np.maximum(a.std(axis=0), 1e-3 * (float(a.std()) or 1.0))
        offset = None if offset is None else np.asarray(offset, dtype=np.float64)
        c = a if offset is None else a - offset
        power = np.maximum((c * c).mean(axis=0), 1e-12 * (float((c * c).mean()) or 1.0))
        ref = cls(mean, std, 1.0, int(windows))
        stats = ref.statistic_dense(np.asarray(held_out, dtype=np.float64))
        n = min(len(stats), ref.windows)
        quartiles = [
            np.quantile(stats[i : i + n], QUANTILE) for i in range(0, max(1, len(stats) - n + 1))
        ]
        level = MARGIN * max(1.0, float(max(quartiles)))
        return cls(mean, std, level, int(windows), power, offset)

    def statistic(self, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Drift statistic of windows given their kept units ``(N, K)`` and values ``(N, K)``."""
        idx = np.asarray(indices, dtype=np.int64)
        v = np.asarray(values, dtype=np.float64)
        z = (v - self.mean[idx]) / self.std[idx]
        return np.mean(z * z, axis=1) + self._scale_term(idx, v)

    def statistic_dense(self, activations: np.ndarray) -> np.ndarray:
        """Drift statistic over all ``m`` units of ``(N, m)`` activations."""
        a = np.asarray(activations, dtype=np.float64)
        z = (a - self.mean) / self.std
        idx = np.broadcast_to(np.arange(a.shape[1]), a.shape)
        return np.mean(z * z, axis=1) + self._scale_term(idx, a)

    def scale(self, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
        """``s = log(sum v_i^2 / sum p_i)`` over each window's kept units: 0 at the training
        data's scale, ``-2 log c`` for a stream ``c`` times smaller (NaN without ``power``)."""
        if self.power is None:
            return np.full(len(values), np.nan)
        idx = np.asarray(indices, dtype=np.int64)
        v = np.asarray(values, dtype=np.float64)
        if self.offset is not None:
            v = v - self.offset[idx]
        expected = self.power[idx].sum(axis=1)
        return np.log(((v * v).sum(axis=1) + 1e-30 * expected) / expected)

    def _scale_term(self, indices: np.ndarray, values: np.ndarray) -> np.ndarray | float:
        if self.power is None:
            return 0.0
        return self.level * (self.scale(indices, values) / SCALE_LOG) ** 2

    def to_config(self) -> dict[str, Any]:
        """JSON-able form stored in the bundle's ``head_config["drift"]``."""
        out = {
            "mean": self.mean.astype(np.float32).tolist(),
            "std": self.std.astype(np.float32).tolist(),
            "level": float(self.level),
            "windows": int(self.windows),
        }
        if self.power is not None:
            out["power"] = self.power.astype(np.float32).tolist()
        if self.offset is not None:
            out["offset"] = self.offset.astype(np.float32).tolist()
        return out

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> DriftReference | None:
        """The reference stored in a bundle, ``None`` for bundles without one."""
        if not config:
            return None
        return cls(
            np.asarray(config["mean"], dtype=np.float64),
            np.asarray(config["std"], dtype=np.float64),
            float(config["level"]),
            int(config.get("windows", DEFAULT_WINDOWS)),
            None if config.get("power") is None else np.asarray(config["power"], np.float64),
            None if config.get("offset") is None else np.asarray(config["offset"], np.float64),
        )


class DriftMonitor:
    """Drift state of one stream: rolling lower quartile of the statistic against the level.

    Parameters
    ----------
    reference : DriftReference
    """

    def __init__(self, reference: DriftReference) -> None:
        self.reference = reference
        self._recent: deque[float] = deque(maxlen=reference.windows)
        # the same values kept sorted (NaNs counted apart): a quartile per window in O(windows)
        # memmove instead of np.quantile's ~80 us, which halved serve's throughput
        self._sorted: list[float] = []
        self._nans = 0
        #: True while the stream drifts.
        self.active = False
        #: :data:`QUANTILE` of the statistic over the last windows (``nan`` before any).
        self.value = float("nan")

    def update(self, statistic: float) -> str | None:
        """Feed one window's statistic; ``"start"`` or ``"end"`` when the state changes.

        Drift starts only once ``windows // 2`` windows were seen and ends when the quartile
        falls below half the level.
        """
        self._push(float(statistic))
        if len(self._recent) < max(1, self.reference.windows // 2):
            return None
        self.value = self._quantile()
        if not self.active and self.value > self.reference.level:
            self.active = True
            return "start"
        if self.active and self.value < self.reference.level / 2:
            self.active = False
            return "end"
        return None

    def _push(self, x: float) -> None:
        if len(self._recent) == self._recent.maxlen:
            old = self._recent[0]
            if math.isnan(old):
                self._nans -= 1
            else:
                del self._sorted[bisect.bisect_left(self._sorted, old)]
        self._recent.append(x)
        if math.isnan(x):
            self._nans += 1
        else:
            bisect.insort(self._sorted, x)

    def _quantile(self) -> float:
        """:data:`QUANTILE` of the recent statistics, as ``np.quantile`` computes it (linear
        interpolation; ``nan`` if any is ``nan``)."""
        if self._nans:
            return float("nan")
        pos = QUANTILE * (len(self._sorted) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(self._sorted) - 1)
        return self._sorted[lo] + (self._sorted[hi] - self._sorted[lo]) * (pos - lo)
