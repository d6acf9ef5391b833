"""Supervised training: :func:`train_classifier`, the split classifier with dropping."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from dropstream.inference.training.config import TrainConfig, TrainingError
from dropstream.inference.training.fit import build, check_windows, fit, prepare, split, start
from dropstream.inference.training.trained import TrainedModel, finish


def train_classifier(
    X: np.ndarray,
    y: Sequence[Any] | np.ndarray,
    config: TrainConfig | None = None,
    *,
    sfreq: float,
    channel_names: Sequence[str] | None = None,
    channel_types: Sequence[str] | None = None,
    hop_samples: int | None = None,
    prefiltered: bool = False,
) -> TrainedModel:
    """Train the split classifier with dropping on windows ``X (N, C, T)`` and labels ``y``.

    Parameters
    ----------
    X : numpy.ndarray, shape (N, C, T)
        Raw windows in stream units (or filtered ones with ``prefiltered=True``).
    y : sequence
        One label per window; at least two classes.
    config : TrainConfig, optional
    sfreq : float
        Sample rate in Hz.
    channel_names, channel_types : sequence of str, optional
        Default ``ch0..`` and ``eeg``.
    hop_samples : int, optional
        Hop between windows in the stream (default: the window length, no overlap); with
        overlap the privacy guard also requires ``K < C * hop``.
    prefiltered : bool
        ``X`` was already filtered with ``config.preprocessing`` as a continuous stream.

    Returns
    -------
    TrainedModel

    Raises
    ------
    dropstream.local_encoder.first_layer.PrivacyGuardError
        If ``K`` is not below the window's input dimension (or ``C * hop``).
    TrainingError
        On bad data.
    """
    config = config or TrainConfig()
    X = check_windows(X)
    y = np.asarray([str(v) for v in y])
    if y.shape != (X.shape[0],):
        raise TrainingError(f"{len(y)} labels for {X.shape[0]} windows")
    classes = tuple(sorted(set(y.tolist())))
    if len(classes) < 2:
        raise TrainingError(f"need at least two classes to train a classifier; got {classes}")
    codes = np.searchsorted(np.asarray(classes), y)
    run = start(X, config, channel_names, channel_types, hop_samples)
    net = build(config, run, len(classes), novelty=False)
    fit_idx, val_idx = split(codes, run.n, config.val_fraction, run.rng)
    # normalisation statistics need no labels: fitted on all of TRAIN
    Xn, mean, std = prepare(X, config, sfreq, prefiltered, np.arange(run.n))
    net = net.to(run.device)
    xt = torch.as_tensor(Xn, device=run.device)
    yt = torch.as_tensor(codes, dtype=torch.long, device=run.device)

    def cross_entropy(out: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        return nn.functional.cross_entropy(out, target, label_smoothing=config.label_smoothing)

    history = fit(net, xt, yt, fit_idx, val_idx, config, cross_entropy, desc="train classifier")
    if config.refit and len(val_idx):
        best = next((int(r["epoch"]) for r in history if r.get("best")), len(history) - 1)
        torch.manual_seed(config.seed)
        net = build(config, run, len(classes), novelty=False).to(run.device)
        refit_cfg = replace(config, epochs=best + 1)
        everything = np.arange(run.n)
        history = fit(
            net, xt, yt, everything, everything[:0], refit_cfg, cross_entropy, "refit on TRAIN"
        )
        for r in history:
            r["refit"] = 1.0
    return finish(
        "classifier",
        net,
        run,
        config,
        sfreq=sfreq,
        norm=(mean, std),
        classes=classes,
        n_outputs=len(classes),
        output="logits over classes (softmax for probabilities)",
        history=history,
    )
