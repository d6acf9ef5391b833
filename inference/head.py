"""Load a bundle's server head into torch and run it on activation messages.

::

    from dropstream.inference.head import load_model
    device, head = load_model("scp1.dsb")
    dense = scatter_kept(indices, values, device.layer.width)  # (N, m), zeros at dropped units
    logits = head(dense)         # classifier: (N, n_classes) logits
    scores = head(dense)         # novelty: (N,) anomaly scores, higher = more anomalous

:class:`ServerModel` wraps both with ``predict(indices, values)``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dropstream.inference.model import Head, NoveltyScorer, scatter_kept
from dropstream.local_encoder.bundle import BundleError, DeviceBundle, load_bundle


def build_head(head_config: Mapping[str, Any]) -> nn.Module:
    """Rebuild an (untrained) head from a bundle's ``head_config``."""
    try:
        head = Head(
            int(head_config["width"]),
            int(head_config["keep"]),
            hidden=tuple(int(h) for h in head_config["hidden"]),
            n_outputs=int(head_config["n_outputs"]),
            dropout=float(head_config.get("dropout", 0.0)),
            bias=bool(head_config.get("bias", True)),
            rescale=bool(head_config.get("rescale", True)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"head_config is incomplete or invalid: {exc!r}") from exc
    kind = head_config.get("type", "classifier")
    if kind == "novelty":
        return NoveltyScorer(head, torch.zeros(int(head_config["n_outputs"])))
    if kind != "classifier":
        raise BundleError(f"unknown head type {kind!r}; expected 'classifier' or 'novelty'")
    return head


def load_model(path: str | Path, map_location: str = "cpu") -> tuple[DeviceBundle, nn.Module]:
    """Load a bundle: its numpy device part and its torch head (in eval mode).

    Raises
    ------
    dropstream.local_encoder.bundle.BundleError
        If the file is not a bundle, fails its checksum, or the head does not match.
    """
    device, head_bytes = load_bundle(path)
    head = build_head(device.head_config)
    try:
        state = torch.load(io.BytesIO(head_bytes), map_location=map_location, weights_only=True)
        head.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise BundleError(
            f"bundle {path}: head weights do not fit its head_config ({exc})"
        ) from exc
    head.eval()
    if int(device.head_config.get("width", -1)) != device.layer.width:
        raise BundleError(f"bundle {path}: head width differs from the first layer's")
    return device, head


@dataclass
class ServerModel:
    """The server side of a bundle: turns kept activations into predictions or scores."""

    device: DeviceBundle
    head: nn.Module

    @classmethod
    def load(cls, path: str | Path) -> ServerModel:
        """Load from a bundle file."""
        return cls(*load_model(path))

    @property
    def kind(self) -> str:
        """``"classifier"`` or ``"novelty"``."""
        return str(self.device.head_config.get("type", "classifier"))

    @torch.no_grad()
    def outputs(self, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Raw head outputs for kept indices/values ``(N, K)`` (or one window ``(K,)``)."""
        idx = np.asarray(indices)
        if idx.shape[-1] != self.device.keep:
            raise BundleError(
                f"model {self.device.model_id} expects K={self.device.keep} kept units per "
                f"window; got {idx.shape[-1]}"
            )
        dense = scatter_kept(idx, values, self.device.layer.width)
        return self.head(dense).numpy()

    def predict_proba(self, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, n_classes)`` of a classifier."""
        logits = torch.as_tensor(self.outputs(indices, values))
        return torch.softmax(logits, dim=1).numpy()

    def score(self, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Anomaly scores ``(N,)`` of a novelty model (higher = more anomalous)."""
        return self.outputs(indices, values)

    def threshold(self, level: float | None = None) -> float:
        """Score threshold of a novelty model: the calibration quantile nearest ``level``
        (default: the stored threshold, the 0.99 quantile of held-out normal windows)."""
        cal = self.device.head_config.get("calibration")
        if not cal:
            raise BundleError(f"model {self.device.model_id} has no novelty calibration")
        if level is None:
            return float(cal["threshold"])
        levels = np.asarray(cal["levels"])
        return float(np.asarray(cal["quantiles"])[np.abs(levels - level).argmin()])
