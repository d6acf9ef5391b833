"""Input drift: does a stream still look like the data the model was trained on?

What the server legitimately sees of a window is its ``K`` kept activations. A novelty bundle
stores, per first-layer unit, the mean and standard deviation of its activation over the normal
training windows (``head_config["drift"]``, :meth:`DriftReference.to_config`). For every window
the server computes the **drift statistic**: the mean over the kept units of the squared
standardised activation, ``mean_i ((v_i - mu_i) / sd_i)^2`` - about 1 for windows like the
training data, orders of magnitude more for another device, another body site, a wrong unit.

An anomaly is short; drift lasts. :class:`DriftMonitor` keeps the median of the statistic over
the last ``windows`` windows of a stream (robust to artefacts shorter than half of that span) and
reports drift while that median is above the bundle's ``level`` (the largest rolling median seen
on the held-out training windows, times a margin), until it falls below half of it. While a
stream drifts, its anomaly scores mean nothing: the service publishes one ``kind: "drift"`` event
instead of an endless anomaly (:mod:`dropstream.inference.streams`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Windows whose median drift statistic decides (at a 0.25 s hop: 20 s).
DEFAULT_WINDOWS = 80
#: Factor between the largest rolling median on held-out normal windows and the drift level.
MARGIN = 3.0


@dataclass(frozen=True)
class DriftReference:
    """Per-unit activation statistics of the training data, and the drift level.

    Attributes
    ----------
    mean, std : numpy.ndarray, shape (m,)
        Mean and standard deviation of each first-layer unit's activation on normal windows.
    level : float
        Rolling median of the statistic above which a stream drifts.
    windows : int
        Windows in the rolling median.
    """

    mean: np.ndarray
    std: np.ndarray
    level: float
    windows: int = DEFAULT_WINDOWS

    @classmethod
    def fit(
        cls, fitted: np.ndarray, held_out: np.ndarray, windows: int = DEFAULT_WINDOWS
    ) -> DriftReference:
        """Statistics from the activations ``(N, m)`` of the fitted normal windows; the level
        from the held-out ones (in time order): ``MARGIN`` x their largest rolling median."""
        a = np.asarray(fitted, dtype=np.float64)
        mean = a.mean(axis=0)
        std = np.maximum(a.std(axis=0), 1e-3 * (float(a.std()) or 1.0))
        ref = cls(mean, std, 1.0, int(windows))
        stats = ref.statistic_dense(np.asarray(held_out, dtype=np.float64))
        n = min(len(stats), ref.windows)
        medians = [np.median(stats[i : i + n]) for i in range(0, max(1, len(stats) - n + 1))]
        return cls(mean, std, MARGIN * max(1.0, float(max(medians))), int(windows))

    def statistic(self, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Drift statistic of windows given their kept units ``(N, K)`` and values ``(N, K)``."""
        idx = np.asarray(indices, dtype=np.int64)
        z = (np.asarray(values, dtype=np.float64) - self.mean[idx]) / self.std[idx]
        return np.mean(z * z, axis=1)

    def statistic_dense(self, activations: np.ndarray) -> np.ndarray:
        """Drift statistic over all ``m`` units of ``(N, m)`` activations."""
        z = (activations - self.mean) / self.std
        return np.mean(z * z, axis=1)

    def to_config(self) -> dict[str, Any]:
        """JSON-able form stored in the bundle's ``head_config["drift"]``."""
        return {
            "mean": self.mean.astype(np.float32).tolist(),
            "std": self.std.astype(np.float32).tolist(),
            "level": float(self.level),
            "windows": int(self.windows),
        }

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
        )


class DriftMonitor:
    """Drift state of one stream: rolling median of the statistic against the level.

    Parameters
    ----------
    reference : DriftReference
    """

    def __init__(self, reference: DriftReference) -> None:
        self.reference = reference
        self._recent: deque[float] = deque(maxlen=reference.windows)
        #: True while the stream drifts.
        self.active = False
        #: Median statistic of the last windows (``nan`` before any).
        self.median = float("nan")

    def update(self, statistic: float) -> str | None:
        """Feed one window's statistic; ``"start"`` or ``"end"`` when the state changes.

        Drift starts only once ``windows // 2`` windows were seen (a stream's first seconds
        cannot outvote a short artefact) and ends when the median falls below half the level.
        """
        self._recent.append(float(statistic))
        if len(self._recent) < max(1, self.reference.windows // 2):
            return None
        self.median = float(np.median(self._recent))
        if not self.active and self.median > self.reference.level:
            self.active = True
            return "start"
        if self.active and self.median < self.reference.level / 2:
            self.active = False
            return "end"
        return None
