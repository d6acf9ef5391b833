"""Unsupervised training: :func:`train_novelty`, a Deep SVDD on the dropped activations.

The novelty model never learns to reconstruct the input: it is a Deep SVDD (Ruff et al., ICML
2018) on the dropped first-layer activations. A bias-free head maps the dropped activations to an
embedding and is trained to pull normal windows towards a fixed centre; the squared distance to the
centre is the anomaly score. Each window is seen with several fresh keep masks (mask augmentation)
so the score holds for any kept set. The score's quantiles on held-out normal windows are stored in
the bundle as the calibration the server thresholds on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from dropstream.inference.model import NoveltyScorer
from dropstream.inference.training.config import TrainConfig, TrainingError
from dropstream.inference.training.fit import build, check_windows, fit, prepare, split, start
from dropstream.inference.training.trained import TrainedModel, finish

#: Quantile levels of held-out normal scores stored as a novelty model's calibration.
CALIBRATION_LEVELS = (0.5, 0.8, 0.9, 0.95, 0.975, 0.99, 0.995, 0.999)


def _mean_score(out: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    return out.mean()


def train_novelty(
    X_normal: np.ndarray,
    config: TrainConfig | None = None,
    *,
    sfreq: float,
    channel_names: Sequence[str] | None = None,
    channel_types: Sequence[str] | None = None,
    hop_samples: int | None = None,
    prefiltered: bool = False,
) -> TrainedModel:
    """Learn what normal windows look like and score novelty (Deep SVDD on dropped activations).

    Parameters are those of :func:`dropstream.inference.training.train_classifier` without
    labels: ``X_normal`` holds only baseline (normal) windows. ``config.val_fraction`` of them is
    held out for early stopping and for the calibration (quantiles of held-out scores) stored in
    ``head_config["calibration"]``.

    Returns
    -------
    TrainedModel
        ``kind == "novelty"``; its head outputs the anomaly score (squared distance of the
        embedding to the centre; higher = more anomalous).
    """
    config = config or TrainConfig()
    X = check_windows(X_normal)
    if X.shape[0] < 10:
        raise TrainingError(f"need at least 10 normal windows to learn normal; got {X.shape[0]}")
    run = start(X, config, channel_names, channel_types, hop_samples)
    net = build(config, run, config.embedding, novelty=True)
    fit_idx, val_idx = split(None, run.n, max(config.val_fraction, 0.1), run.rng)
    Xn, mean, std = prepare(X, config, sfreq, prefiltered, fit_idx)
    # a bias would let the network map everything to the centre regardless of input
    first = net.first
    bias = first.linear.bias if first.kind == "dense" else first.conv.bias
    nn.init.zeros_(bias)
    bias.requires_grad_(False)
    dev = run.device
    net = net.to(dev)
    xt = torch.as_tensor(Xn, device=dev)
    gen = torch.Generator(device=dev).manual_seed(config.seed + 7)
    with torch.no_grad():
        net.eval()
        emb = net(xt[torch.as_tensor(fit_idx, device=dev)], n_masks=4, generator=gen)
        center = emb.mean(0)
        # keep coordinates away from zero (Ruff et al.): a zero centre is trivially reachable
        eps = 0.1
        center = torch.where(center.abs() < eps, torch.where(center < 0, -eps, eps), center)
    net.head = NoveltyScorer(net.head, center)

    history = fit(net, xt, None, fit_idx, val_idx, config, _mean_score, desc="train novelty")
    with torch.no_grad():
        vgen = torch.Generator(device=dev).manual_seed(config.seed + 11)
        val_scores = net(xt[torch.as_tensor(val_idx, device=dev)], generator=vgen).cpu().numpy()
    calibration = {
        "levels": list(CALIBRATION_LEVELS),
        "quantiles": [float(np.quantile(val_scores, q)) for q in CALIBRATION_LEVELS],
        "n_windows": len(val_idx),
        "threshold": float(np.quantile(val_scores, 0.99)),
        "threshold_level": 0.99,
    }
    return finish(
        "novelty",
        net,
        run,
        config,
        sfreq=sfreq,
        norm=(mean, std),
        classes=("normal", "anomaly"),
        n_outputs=config.embedding,
        output="anomaly score: squared distance of the embedding to the centre of normal; "
        "higher = more anomalous",
        history=history,
        extra={"calibration": calibration},
    )
