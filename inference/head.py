"""Load a bundle's server head into torch and run it on activation messages.

::

    from dropstream.inference.head import ServerModel
    model = ServerModel.load("scp1.dsb").to("cuda")   # bundle (numpy part) + torch head
    model.predict_proba(indices, values)  # classifier: (N, n_classes) from kept (N, K)
    model.score(indices, values)          # novelty: (N,) anomaly scores, higher = more anomalous

There is one scoring path: kept values are scattered into a dense ``(N, m)`` matrix by
:func:`dropstream.inference.batching.scatter_dense` (what the service does for a whole decoded
batch) and run through :meth:`ServerModel.forward`; :class:`dropstream.inference.scoring.Scorer`
turns those outputs into the service's anomaly scores.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dropstream.inference.batching import scatter_dense
from dropstream.inference.energy import EnergyScorer
from dropstream.inference.model import HEAD_FORMAT, Head, ModelConfigError, NoveltyScorer
from dropstream.local_encoder.bundle import BundleError, DeviceBundle, load_bundle


def build_head(head_config: Mapping[str, Any]) -> nn.Module:
    """Rebuild an (untrained) head from a bundle's ``head_config``.

    ``head_config["format"]`` (absent = 1) is the head's input and layout version
    (:data:`dropstream.inference.model.HEAD_FORMAT`): format 1 heads (zero-filled, rescaled) load
    as they were; a newer format than this dropstream knows is refused with a clear error.
    """
    try:
        head_format = int(head_config.get("format", 1))
    except (TypeError, ValueError) as exc:
        raise BundleError(f"head_config format {head_config.get('format')!r} is invalid") from exc
    if not 1 <= head_format <= HEAD_FORMAT:
        raise BundleError(
            f"the bundle's head has format {head_format}, this dropstream reads head formats 1 "
            f"to {HEAD_FORMAT}: upgrade dropstream on the server (or retrain the bundle)"
        )
    try:
        head = Head(
            int(head_config["width"]),
            int(head_config["keep"]),
            hidden=tuple(int(h) for h in head_config["hidden"]),
            n_outputs=int(head_config["n_outputs"]),
            dropout=float(head_config.get("dropout", 0.0)),
            bias=bool(head_config.get("bias", True)),
            rescale=bool(head_config.get("rescale", True)),
            fill=str(head_config.get("fill", "zero")) if head_format >= 2 else "zero",
            rank=head_config.get("rank"),
            activation=str(head_config.get("activation", "relu")),
            negative_slope=float(head_config.get("negative_slope", 0.01)),
        )
    except (KeyError, TypeError, ValueError, ModelConfigError) as exc:
        raise BundleError(f"head_config is incomplete or invalid: {exc!r}") from exc
    kind = head_config.get("type", "classifier")
    if kind == "novelty" and head_config.get("scorer") == "energy":
        groups = head_config.get("energy_groups")
        return EnergyScorer(head.width, head.keep, None if groups is None else int(groups))
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
    """The server side of a bundle: turns kept activations into predictions or scores.

    Attributes
    ----------
    bundle : DeviceBundle
        The bundle's numpy part (first layer, ``K``, model id, classes, calibration).
    head : torch.nn.Module
        The server head, in eval mode, on :attr:`torch_device`.
    torch_device : torch.device
        Where :attr:`head` runs (CPU after :meth:`load`; see :meth:`to`).
    """

    bundle: DeviceBundle
    head: nn.Module
    torch_device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def load(cls, path: str | Path) -> ServerModel:
        """Load from a bundle file (head on the CPU)."""
        return cls(*load_model(path))

    def to(self, device: torch.device | str) -> ServerModel:
        """Move the head to the torch ``device``; returns ``self``."""
        self.torch_device = torch.device(device)
        self.head = self.head.to(self.torch_device).eval()
        return self

    @property
    def kind(self) -> str:
        """``"classifier"`` or ``"novelty"``."""
        return str(self.bundle.head_config.get("type", "classifier"))

    def forward(self, dense: np.ndarray) -> torch.Tensor:
        """Raw head outputs (on :attr:`torch_device`) for dense activations ``(N, m)`` float32
        with NaN at dropped units (:func:`scatter_dense`); the caller chooses the grad mode."""
        return self.head(self._tensor(dense))

    def _tensor(self, dense: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(dense).to(self.torch_device, non_blocking=True)

    def forward_located(self, dense: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`forward` and, for a head that locates anomalies in time (the multi-scale
        energy head), where in each window: ``(N, 2)`` fractions, else ``None``."""
        locate = getattr(self.head, "scores_and_spans", None)
        return (self.forward(dense), None) if locate is None else locate(self._tensor(dense))

    @torch.inference_mode()
    def outputs(self, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Raw head outputs for kept indices/values ``(N, K)`` (or one window ``(K,)``)."""
        idx = np.asarray(indices, dtype=np.int64)
        val = np.asarray(values, dtype=np.float32)
        if idx.ndim == 1:
            idx, val = idx[None], val[None]
        bundle = self.bundle
        if idx.shape[-1] != bundle.keep:
            raise BundleError(
                f"model {bundle.model_id} expects K={bundle.keep} kept units per "
                f"window; got {idx.shape[-1]}"
            )
        if idx.shape != val.shape:
            raise ModelConfigError(f"indices {idx.shape} and values {val.shape} differ")
        width = bundle.layer.width
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= width):
            raise ModelConfigError(f"kept unit index outside 0..{width - 1}")
        return self.forward(scatter_dense(idx, val, width)).float().cpu().numpy()

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
        cal = self.bundle.head_config.get("calibration")
        if not cal:
            raise BundleError(f"model {self.bundle.model_id} has no novelty calibration")
        if level is None:
            return float(cal["threshold"])
        levels = np.asarray(cal["levels"])
        return float(np.asarray(cal["quantiles"])[np.abs(levels - level).argmin()])
