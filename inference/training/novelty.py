"""Unsupervised training: :func:`train_novelty`, a Deep SVDD on the dropped activations.

The novelty model never learns to reconstruct the input: it is a Deep SVDD (Ruff et al., ICML
2018) on the dropped first-layer activations. A bias-free head maps the dropped activations to an
embedding and is trained to pull normal windows towards a fixed centre; the squared distance to the
centre is the anomaly score. Each window is seen with several fresh keep masks (mask augmentation)
so the score holds for any kept set. The score's quantiles on held-out normal windows are stored in
the bundle as the calibration the server thresholds on.

Calibration you can trust: overlapping windows (hop < window) share samples, so a random
hold-out would score windows the network has almost seen and set the threshold too low. The
held-out windows are therefore the *last* ``calibration_fraction`` (20 %) of the windows (in
recording order), with the windows that overlap the fitted ones dropped at the boundary; at least
``config.min_calibration_windows`` of them are required, and the threshold's 95 % confidence
interval (moving-block bootstrap over the held-out scores, blocks as long as a window's
overlap) is stored beside it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from dropstream.inference.drift import DriftReference
from dropstream.inference.model import NoveltyScorer
from dropstream.inference.training.config import TrainConfig, TrainingError
from dropstream.inference.training.fit import build, check_windows, fit, prepare, start
from dropstream.inference.training.trained import TrainedModel, finish

#: Quantile levels of held-out normal scores stored as a novelty model's calibration.
CALIBRATION_LEVELS = (0.5, 0.8, 0.9, 0.95, 0.975, 0.99, 0.995, 0.999)
#: Quantile of held-out normal scores used as the threshold.
THRESHOLD_LEVEL = 0.99


def tail_split(n: int, fraction: float, overlap: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit on the first windows, hold out the last ``fraction`` of them, and leave out the
    ``overlap`` windows between (they share samples with both sides).

    Returns
    -------
    fit_idx, val_idx : numpy.ndarray of int
    """
    n_val = max(1, int(round(fraction * n)))
    first_val = n - n_val
    return np.arange(0, max(0, first_val - overlap)), np.arange(first_val, n)


def quantile_ci(
    scores: np.ndarray,
    level: float,
    block: int = 1,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile confidence interval of the ``level`` quantile of ``scores`` (in time order) by
    a moving-block bootstrap with blocks of ``block`` consecutive scores (1 = iid bootstrap).
    """
    x = np.asarray(scores, dtype=np.float64)
    n = x.size
    block = int(min(max(1, block), n))
    n_blocks = int(np.ceil(n / block))
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n - block + 1, size=(n_boot, n_blocks))
    idx = (starts[:, :, None] + np.arange(block)).reshape(n_boot, -1)[:, :n]
    q = np.quantile(x[idx], level, axis=1)
    tail = (1.0 - confidence) / 2
    lo, hi = np.quantile(q, [tail, 1.0 - tail])
    return float(lo), float(hi)


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
    labels: ``X_normal`` holds only baseline (normal) windows. ``config.calibration_fraction`` of
    them (the last ones) is held out for early stopping and for the calibration (quantiles of
    held-out scores) stored in ``head_config["calibration"]``.

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
    fraction = config.calibration_fraction
    overlap = int(np.ceil(run.samples / run.hop)) - 1  # windows sharing samples with a window
    fit_idx, val_idx = tail_split(run.n, fraction, overlap)
    need = int(config.min_calibration_windows)
    if len(val_idx) < need or len(fit_idx) < 10:
        total = int(np.ceil(need / fraction)) + overlap + 10
        raise TrainingError(
            f"the threshold would be calibrated on {len(val_idx)} held-out normal windows "
            f"(the last {fraction:.0%} of {run.n}); at least {need} are needed, so give at least "
            f"{total} normal windows: a longer baseline, more recordings or a shorter --hop "
            "(the privacy guard wants --keep below channels x hop samples), or lower "
            "--min-calibration-windows knowing the threshold is then little more than a maximum"
        )
    net = build(config, run, config.embedding, novelty=True)
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
    lo, hi = quantile_ci(val_scores, THRESHOLD_LEVEL, block=overlap + 1, seed=config.seed)
    calibration = {
        "levels": list(CALIBRATION_LEVELS),
        "quantiles": [float(np.quantile(val_scores, q)) for q in CALIBRATION_LEVELS],
        "n_windows": len(val_idx),
        "threshold": float(np.quantile(val_scores, THRESHOLD_LEVEL)),
        "threshold_level": THRESHOLD_LEVEL,
        "threshold_ci95": [lo, hi],
        "holdout": "last windows in recording order, overlapping ones left out",
    }
    model = finish(
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
    # what the server will see of each window: the device's first layer on prepared windows
    layer = model.first.to_numpy()
    acts = layer.forward(model.prepare(X, prefiltered=prefiltered))
    drift = DriftReference.fit(acts[fit_idx], acts[val_idx])
    model.head_config["drift"] = drift.to_config()
    return model
