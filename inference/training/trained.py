"""A trained split model (:class:`TrainedModel`) and :func:`finish`, every trainer's last step."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dropstream.inference.model import HEAD_FORMAT, SplitNet, TorchFirstLayer, random_keep_mask
from dropstream.inference.training.config import TrainConfig, TrainingError
from dropstream.inference.training.fit import Run, check_windows
from dropstream.local_encoder.bundle import DeviceBundle, write_bundle
from dropstream.local_encoder.preprocessing import (
    complete_preprocessing,
    filter_windows,
    prepare_window,
)

#: A head's ``scores_and_spans``: kept activations and mask -> scores ``(N,)`` and spans
#: ``(N, 2)`` or ``None``.
Locate = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class TrainedModel:
    """A trained split model: its torch parts and everything the bundle needs.

    Use :meth:`predict` / :meth:`predict_proba` (classifier) or :meth:`score` (novelty) on raw
    windows, :meth:`device_bundle` for the numpy device part and :meth:`save` to write a bundle.
    """

    kind: str
    first: TorchFirstLayer
    head: nn.Module
    keep: int
    config: TrainConfig
    sfreq: float
    channel_names: tuple[str, ...]
    channel_types: tuple[str, ...]
    window_samples: int
    hop_samples: int
    preprocessing: dict[str, Any]
    norm_mean: np.ndarray
    norm_std: np.ndarray
    classes: tuple[str, ...]
    head_config: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    privacy_label: dict[str, Any] = field(default_factory=dict)

    @property
    def width(self) -> int:
        """First-layer units ``m``."""
        return self.first.width

    def prepare(self, X: np.ndarray, prefiltered: bool = False) -> np.ndarray:
        """Filter (unless ``prefiltered``) and normalise raw windows ``(N, C, T)``."""
        X = check_windows(X)
        if X.shape[1:] != (len(self.channel_names), self.window_samples):
            raise TrainingError(
                f"windows of shape {X.shape[1:]} do not fit the model's "
                f"({len(self.channel_names)}, {self.window_samples})"
            )
        if not prefiltered:
            X = filter_windows(X, self.sfreq, self.preprocessing)
        return prepare_window(X, self.preprocessing, self.norm_mean, self.norm_std)

    @torch.no_grad()
    def _outputs(
        self, X: np.ndarray, prefiltered: bool, seed: int, locate: Locate | None = None
    ) -> torch.Tensor:
        dev = next(self.first.parameters()).device
        x = torch.as_tensor(self.prepare(X, prefiltered), device=dev)
        gen = torch.Generator(device=dev).manual_seed(int(seed))
        self.first.eval()
        self.head.eval()
        outs = []
        for start in range(0, x.shape[0], 512):
            a = self.first(x[start : start + 512], gen)  # with the device's noise
            mask = random_keep_mask(a.shape[0], a.shape[1], self.keep, gen, dev)
            if locate is None:
                outs.append(self.head(a, mask.bool()).cpu())
            else:  # scores and spans as one (n, 3) block
                score, span = locate(a, mask.bool())
                parts = [score[:, None]] if span is None else [score[:, None], span]
                outs.append(torch.cat(parts, dim=1).cpu())
        return torch.cat(outs)

    def predict_proba(self, X: np.ndarray, prefiltered: bool = False, seed: int = 0) -> np.ndarray:
        """Class probabilities ``(N, n_classes)``; each window gets one fresh keep mask."""
        if self.kind != "classifier":
            raise TrainingError("predict_proba needs a classifier; use score() for novelty")
        return torch.softmax(self._outputs(X, prefiltered, seed), dim=1).numpy()

    def predict(self, X: np.ndarray, prefiltered: bool = False, seed: int = 0) -> np.ndarray:
        """Predicted labels ``(N,)``."""
        proba = self.predict_proba(X, prefiltered, seed)
        return np.asarray(self.classes)[proba.argmax(axis=1)]

    def score(self, X: np.ndarray, prefiltered: bool = False, seed: int = 0) -> np.ndarray:
        """Anomaly scores ``(N,)`` of a novelty model; higher = more anomalous."""
        return self.score_located(X, prefiltered, seed)[0]

    def score_located(
        self, X: np.ndarray, prefiltered: bool = False, seed: int = 0
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`score` and where in each window the head located the anomaly (``(N, 2)``
        fractions of the window; ``None`` for a head that does not locate), from the same
        keep masks, as the service computes them
        (:meth:`dropstream.inference.head.ServerModel.forward_located`)."""
        if self.kind != "novelty":
            raise TrainingError("score() needs a novelty model; use predict() for classifiers")
        locate = getattr(self.head, "scores_and_spans", None)
        if locate is None:
            return self._outputs(X, prefiltered, seed).numpy(), None
        out = self._outputs(X, prefiltered, seed, locate)
        return out[:, 0].numpy(), out[:, 1:].numpy() if out.shape[1] > 1 else None

    def device_bundle(self, model_id: str = "model", model_version: int = 1) -> DeviceBundle:
        """The numpy device part (checksum empty until written)."""
        bundle = DeviceBundle(
            model_id=model_id,
            model_version=int(model_version),
            layer=self.first.to_numpy(),
            keep=self.keep,
            sfreq=self.sfreq,
            window_samples=self.window_samples,
            hop_samples=self.hop_samples,
            channel_names=self.channel_names,
            channel_types=self.channel_types,
            preprocessing=complete_preprocessing(self.preprocessing),
            norm_mean=np.asarray(self.norm_mean, np.float32),
            norm_std=np.asarray(self.norm_std, np.float32),
            classes=self.classes,
            head_config=self.head_config,
            privacy={
                "defences": self.config.defences(self.first.rank, self.kind == "novelty"),
                "label": dict(self.privacy_label),
            },
        )
        bundle.check_privacy()
        return bundle

    def head_state_bytes(self) -> bytes:
        """The head's ``state_dict`` serialised with ``torch.save`` (CPU tensors)."""
        buf = io.BytesIO()
        state = {k: v.detach().cpu() for k, v in self.head.state_dict().items()}
        torch.save(state, buf)
        return buf.getvalue()

    def save(self, path: str | Path, model_id: str = "model", model_version: int = 1) -> str:
        """Write a bundle (``.dsb``) and return its SHA-256 checksum."""
        return write_bundle(
            path, self.device_bundle(model_id, model_version), self.head_state_bytes()
        )


def finish(
    kind: str,
    net: SplitNet,
    run: Run,
    config: TrainConfig,
    *,
    sfreq: float,
    norm: tuple[np.ndarray, np.ndarray],
    classes: tuple[str, ...],
    n_outputs: int,
    output: str,
    history: list[dict[str, float]],
    extra: dict[str, Any] | None = None,
) -> TrainedModel:
    """The :class:`TrainedModel` of a fitted network, with the ``head_config`` that rebuilds it.

    Parameters
    ----------
    kind : {"classifier", "novelty"}
        A novelty head has no bias and no dropout (as :func:`.fit.build` made it).
    net : SplitNet
        The fitted network.
    run : Run
        The run's shape and channel metadata (:func:`.fit.start`).
    config : TrainConfig
    sfreq : float
        Sample rate in Hz.
    norm : (numpy.ndarray, numpy.ndarray)
        Normalisation mean and std fitted on the training windows.
    classes : tuple of str
    n_outputs : int
        Head outputs (classes, or the novelty embedding size).
    output : str
        One sentence on what the head outputs.
    history : list of dict
        The fit's per-epoch records.
    extra : dict, optional
        More ``head_config`` entries (a novelty model's ``calibration``).
    """
    novelty = kind == "novelty"
    head_config = {
        "type": kind,
        "width": net.first.width,
        "keep": net.keep,
        "hidden": list(config.hidden),
        "n_outputs": n_outputs,
        "dropout": 0.0 if novelty else config.head_dropout,
        "bias": not novelty,
        "rescale": True,
        "fill": "zero" if novelty else net.head.fill,
        "format": HEAD_FORMAT,
        "output": output,
        "first_layer": config.first_layer,
        **(extra or {}),
    }
    if head_config["fill"] == "decode":
        head_config.update(
            rank=net.first.rank,
            activation=net.first.activation_name,
            negative_slope=net.first.negative_slope,
        )
    return TrainedModel(
        kind=kind,
        first=net.first,
        head=net.head,
        keep=net.keep,
        config=config,
        sfreq=float(sfreq),
        channel_names=run.channel_names,
        channel_types=run.channel_types,
        window_samples=run.samples,
        hop_samples=run.hop,
        preprocessing=complete_preprocessing(config.preprocessing),
        norm_mean=norm[0],
        norm_std=norm[1],
        classes=classes,
        head_config=head_config,
        history=history,
    )
