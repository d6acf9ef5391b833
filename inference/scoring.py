"""Scoring: dense activations -> anomaly scores, and the alert policy of a bundle.

The one scoring path of the server: :func:`dropstream.inference.batching.scatter_dense` builds
the dense ``(N, m)`` activations, :meth:`dropstream.inference.head.ServerModel.forward` runs the
head, and :class:`Scorer` turns its outputs into scores where higher means more anomalous.
"""

from __future__ import annotations

import numpy as np
import torch

from dropstream.inference.alerting import AlertPolicy
from dropstream.inference.head import ServerModel
from dropstream.inference.settings import ServiceError, ServiceSettings


class Scorer:
    """A bundle's head on a torch device: dense activations ``(N, m)`` -> scores ``(N,)``.

    Parameters
    ----------
    model : ServerModel
        Moved to ``device`` (:meth:`ServerModel.to`).
    device : torch.device
    """

    def __init__(self, model: ServerModel, device: torch.device) -> None:
        self.model = model.to(device)
        self.kind = model.kind
        self.classes: list[str] = list(model.bundle.classes)
        self.normal = -1
        if self.kind == "classifier":
            if "normal" not in self.classes:
                raise ServiceError(
                    f"classifier bundle {model.bundle.model_id} has no 'normal' class "
                    f"({self.classes}); alerts need one"
                )
            self.normal = self.classes.index("normal")

    @torch.inference_mode()
    def __call__(
        self, dense: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Scores (higher = more anomalous); for a classifier, the top abnormal class; for a
        head that locates anomalies in time, where in each window (``(N, 2)`` fractions)."""
        if self.kind != "classifier":
            out, span = self.model.forward_located(dense)
            return out.float().cpu().numpy(), None, None if span is None else span.cpu().numpy()
        out = self.model.forward(dense)
        proba = torch.softmax(out.float(), dim=1)
        score = 1.0 - proba[:, self.normal]
        proba[:, self.normal] = -1.0
        return score.cpu().numpy(), proba.argmax(dim=1).cpu().numpy(), None


def policy_for(model: ServerModel, settings: ServiceSettings) -> AlertPolicy:
    """The alert policy of ``model`` under ``settings`` (calibrated thresholds, timing)."""
    s = settings
    timing = {
        "min_duration_s": s.min_duration_s,
        "merge_gap_s": s.merge_gap_s,
        "refractory_s": s.refractory_s,
        "adapt_windows": s.adapt_windows,
        "adapt_level": s.adapt_level,
    }
    if model.kind == "classifier":
        return AlertPolicy(
            high=s.class_threshold, low=s.class_threshold, kind="class", label="class", **timing
        )
    cal = model.bundle.head_config.get("calibration")
    if not cal:
        raise ServiceError(
            f"novelty bundle {model.bundle.model_id} has no calibration; retrain it "
            "with 'dropstream train' (it stores the calibration)"
        )
    return AlertPolicy.from_calibration(cal, s.threshold_level, s.hysteresis_level, **timing)
