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
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from dropstream.inference.defences import pooled
from dropstream.inference.drift import DriftReference
from dropstream.inference.energy import EnergyScorer
from dropstream.inference.model import NoveltyScorer, SplitNet, random_keep_mask
from dropstream.inference.training.config import TrainConfig, TrainingError
from dropstream.inference.training.fit import Run, build, check_windows, fit, prepare, start
from dropstream.inference.training.trained import TrainedModel, finish

#: Quantile levels of held-out normal scores stored as a novelty model's calibration.
CALIBRATION_LEVELS = (0.5, 0.8, 0.9, 0.95, 0.975, 0.99, 0.995, 0.999)
#: Quantile of held-out normal scores used as the threshold.
THRESHOLD_LEVEL = 0.99
#: Contiguous blocks of the baseline an energy model's calibration scores one at a time.
ENERGY_BLOCKS = 5
#: Shrinkage of the window covariance before whitening (times its largest eigenvalue).
WHITEN_REG = 1e-5
#: Time parts (besides the whole window) the multi-scale energy layer whitens on their own.
ENERGY_PARTS = 4
#: Offset of each energy unit (its bias) in standard deviations of its projection on normal
#: windows: the relu clips a normal window's unit with probability ~3e-5 (Gaussian).
ENERGY_OFFSET = 4.0
#: Keep masks (and device noise draws) per normal window when the energy head is fitted.
ENERGY_FIT_MASKS = 4


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
    if config.novelty_model == "svdd":
        net, history, val_scores, mean, std = _fit_svdd(
            X, config, run, sfreq, prefiltered, fit_idx, val_idx
        )
        holdout = "last windows in recording order, overlapping ones left out"
        output = "anomaly score: squared distance of the embedding to the centre of normal; "
        extra: dict = {}
    elif config.novelty_model == "energy":
        net, val_scores, mean, std = _fit_energy(X, config, run, sfreq, prefiltered, overlap)
        history = []
        holdout = (
            f"{ENERGY_BLOCKS} contiguous blocks, each scored by a model fitted on the others "
            "(windows overlapping the block left out)"
        )
        output = "anomaly score: sum over unit groups of squared z-scores of log-energies; "
        extra = {"scorer": "energy", "energy_groups": int(net.head.groups or 1)}
    else:
        raise TrainingError(f"novelty model {config.novelty_model!r}: choose 'energy' or 'svdd'")
    lo, hi = quantile_ci(val_scores, THRESHOLD_LEVEL, block=overlap + 1, seed=config.seed)
    calibration = {
        "levels": list(CALIBRATION_LEVELS),
        "quantiles": [float(np.quantile(val_scores, q)) for q in CALIBRATION_LEVELS],
        "n_windows": len(val_scores),
        "threshold": float(np.quantile(val_scores, THRESHOLD_LEVEL)),
        "threshold_level": THRESHOLD_LEVEL,
        "threshold_ci95": [lo, hi],
        "holdout": holdout,
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
        output=output + "higher = more anomalous",
        history=history,
        extra={"calibration": calibration, **extra},
    )
    # what the server will see of each window: the device's first layer on prepared windows
    layer = model.first.to_numpy()
    acts = layer.forward(model.prepare(X, prefiltered=prefiltered))
    offset = getattr(net.head, "offset", None)
    offset = None if offset is None else offset.detach().cpu().numpy()
    drift = DriftReference.fit(acts[fit_idx], acts[val_idx], offset=offset)
    model.head_config["drift"] = drift.to_config()
    return model


def _fit_svdd(
    X: np.ndarray,
    config: TrainConfig,
    run: Run,
    sfreq: float,
    prefiltered: bool,
    fit_idx: np.ndarray,
    val_idx: np.ndarray,
) -> tuple[SplitNet, list[dict[str, float]], np.ndarray, np.ndarray, np.ndarray]:
    """Deep SVDD: train first layer and head; scores of the held-out (last) windows."""
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
    return net, history, val_scores, mean, std


def whiten_projections(P: np.ndarray, rows: int, seed: int, reg: float = WHITEN_REG) -> np.ndarray:
    """``rows`` random projections of the whitened input: ``G S^-1/2 / sqrt(d)`` ``(rows, d)``.

    ``S`` is the covariance of the prepared, pooled normal windows ``P`` ``(N, d)``, shrunk
    towards ``reg`` times its largest eigenvalue (directions normal signal never uses are
    amplified at most ``1 / sqrt(reg)`` times, not up to the filter's stop-band noise).
    """
    cov = np.cov(np.asarray(P, dtype=np.float64), rowvar=False).reshape(P.shape[1], P.shape[1])
    ev, vec = np.linalg.eigh(cov)
    ev = np.maximum(ev, 0.0)
    inv_sqrt = (vec / np.sqrt(ev + reg * max(float(ev.max()), 1e-12))) @ vec.T
    g = np.random.default_rng(seed).standard_normal((rows, P.shape[1]))
    return (g @ inv_sqrt) / np.sqrt(P.shape[1])


def multiscale_projections(
    P: np.ndarray, n_channels: int, width: int, seed: int, reg: float = WHITEN_REG
) -> tuple[np.ndarray, np.ndarray]:
    """The multi-scale energy layer: ``(width, d)`` weights and each unit's group ``(width,)``.

    Half of the units (group 0) are :func:`whiten_projections` of the whole pooled window
    ``P`` ``(N, d)`` (channel-major, ``d = n_channels * positions``); each of the
    :data:`ENERGY_PARTS` time quarters gets ``width / 8`` units (groups 1-4): projections of
    that quarter of every channel, whitened with the quarter's own covariance, zero elsewhere.
    """
    P = np.asarray(P, dtype=np.float64)
    positions = P.shape[1] // n_channels
    cube = P.reshape(len(P), n_channels, positions)
    per_part = width // (2 * ENERGY_PARTS)
    full = width - ENERGY_PARTS * per_part
    weight = np.zeros((width, P.shape[1]))
    group = np.zeros(width, dtype=np.int64)
    weight[:full] = whiten_projections(P, full, seed, reg)
    edges = np.linspace(0, positions, ENERGY_PARTS + 1).astype(int)
    for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        rows = slice(full + k * per_part, full + (k + 1) * per_part)
        part = cube[:, :, lo:hi].reshape(len(P), -1)
        w = np.zeros((per_part, n_channels, positions))
        w[:, :, lo:hi] = whiten_projections(part, per_part, seed + 1 + k, reg).reshape(
            per_part, n_channels, hi - lo
        )
        weight[rows] = w.reshape(per_part, -1)
        group[rows] = k + 1
    return weight, group


def _energy_net(config: TrainConfig, run: Run, xt: torch.Tensor, seed: int) -> SplitNet:
    """A fresh first layer of whitened random projections and its fitted energy head.

    At full rank without device noise (the default) the layer is multi-scale
    (:func:`multiscale_projections`) with each unit offset by :data:`ENERGY_OFFSET` times the
    standard deviation of its projection on normal windows; a low-rank or noisy layer keeps one
    group of bias-free relu units (the offset would vanish in the standardisation).
    """
    net = build(config, run, 1, novelty=True)
    first = net.first
    dev = xt.device
    multiscale = first.down is None and first.norm is None
    with torch.no_grad():
        flat = pooled(first, xt).reshape(len(xt), -1)
        rows = first.input_map.weight.shape[0]
        if multiscale:
            w, group = multiscale_projections(flat.cpu().numpy(), run.channels, rows, seed)
        else:
            w = whiten_projections(flat.cpu().numpy(), rows, seed)
            group = np.zeros(first.width, dtype=np.int64)  # one group of all units
        first.input_map.weight.copy_(torch.as_tensor(w, dtype=xt.dtype))
        if first.input_map.bias is not None:
            first.input_map.bias.zero_()
        if first.down is not None:  # low rank: units mix the r whitened projections at random
            a = np.random.default_rng(seed + 1).standard_normal((first.width, rows))
            first.linear.weight.copy_(torch.as_tensor(a / np.sqrt(rows), dtype=xt.dtype))
            first.linear.bias.zero_()
        if first.norm is not None:  # noise: standardise what the noise is added to
            u = first.input_map(flat)
            first.norm.running_mean.zero_()
            first.norm.running_var.copy_((u * u).mean(0))
        head = EnergyScorer(first.width, net.keep, int(group.max()) + 1).to(dev)
        head.unit_group.copy_(torch.as_tensor(group, device=dev))
        if multiscale:
            u = first.input_map(flat)
            offset = ENERGY_OFFSET * u.std(0).clamp_min(1e-12)
            first.input_map.bias.copy_(offset)
            head.offset.copy_(offset)
        first.eval()
        gen = torch.Generator(device=dev).manual_seed(seed + 2)
        acts = first(xt, gen, repeats=ENERGY_FIT_MASKS)
        head.unit_power.copy_(((acts - head.offset) ** 2).mean(0).clamp_min(1e-12))
        mask = random_keep_mask(acts.shape[0], acts.shape[1], net.keep, gen, dev).bool()
        head.fit(acts, mask)
    net.head = head.eval()
    return net


def _energy_scores(net: SplitNet, xt: torch.Tensor, seed: int) -> np.ndarray:
    """Scores of prepared windows, one fresh keep mask (and noise draw) per window."""
    with torch.no_grad():
        gen = torch.Generator(device=xt.device).manual_seed(seed)
        acts = net.first(xt, gen)
        mask = random_keep_mask(acts.shape[0], acts.shape[1], net.keep, gen, xt.device)
        return net.head(acts, mask.bool()).cpu().numpy()


def _fit_energy(
    X: np.ndarray,
    config: TrainConfig,
    run: Run,
    sfreq: float,
    prefiltered: bool,
    overlap: int,
) -> tuple[SplitNet, np.ndarray, np.ndarray, np.ndarray]:
    """Energy novelty model on all normal windows, and its calibration scores.

    The calibration scores come from :data:`ENERGY_BLOCKS` contiguous blocks of the windows,
    each scored by a model fitted on the other blocks (leaving out the ``overlap`` windows on
    each side that share samples with the block): every stretch of the baseline is scored as
    new data, so the threshold reflects how much a stretch of normal signal differs from the
    rest of the recording (non-stationarity), not only how the end of it resembles its start.
    """
    if config.pool is None:  # whitening is O(d^3): at most ~1024 inputs, else every sample
        config = replace(config, pool=max(1, int(np.ceil(run.channels * run.samples / 1024))))
    n = run.n
    Xn, mean, std = prepare(X, config, sfreq, prefiltered, np.arange(n))
    xt = torch.as_tensor(Xn, device=run.device)
    edges = np.linspace(0, n, ENERGY_BLOCKS + 1).astype(int)
    scores = []
    for b, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        rest = np.r_[np.arange(0, max(0, lo - overlap)), np.arange(min(n, hi + overlap), n)]
        if len(rest) < 10 or hi <= lo:
            continue
        net = _energy_net(config, run, xt[torch.as_tensor(rest, device=run.device)], config.seed)
        scores.append(_energy_scores(net, xt[lo:hi], config.seed + 100 + b))
    net = _energy_net(config, run, xt, config.seed)
    return net, np.concatenate(scores), mean, std
