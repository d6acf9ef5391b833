"""The steps both trainers share: checking windows, setting a run up, building and fitting.

A trainer (:mod:`.classifier`, :mod:`.novelty`) checks its windows with :func:`check_windows`,
derives the run's shape, metadata, seeds and torch device with :func:`start`, builds the network
with :func:`build`, splits and prepares the windows (:func:`split`, :func:`prepare`), fits with
:func:`fit` and hands the result to :func:`dropstream.inference.training.trained.finish`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from dropstream.inference.defences import make_penalty, pooled
from dropstream.inference.model import Head, SplitNet, TorchFirstLayer, validate_keep
from dropstream.inference.torch_device import torch_device
from dropstream.inference.training.config import TrainConfig, TrainingError, default_pool
from dropstream.inference.training.discriminants import discriminant_directions
from dropstream.local_encoder.preprocessing import (
    complete_preprocessing,
    filter_windows,
    fit_normalisation,
    prepare_window,
)

#: Starts of a low-rank layer's projections (``TrainConfig.init``): random, shrinkage LDA then
#: random, shrinkage LDA then PLS (see :func:`init_projections`).
INITS = (None, "lda", "lda-pls")

#: A training loss: network output and target (``None`` for novelty models) -> scalar tensor.
LossFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def check_windows(X: np.ndarray) -> np.ndarray:
    """``X`` as an array of shape ``(N, C, T)``, ``N > 0``, finite; else :class:`TrainingError`."""
    X = np.asarray(X)
    if X.ndim != 3 or X.shape[0] == 0:
        raise TrainingError(f"windows must have shape (N, C, T) with N > 0; got {X.shape}")
    if not np.all(np.isfinite(X)):
        raise TrainingError("windows hold NaN or infinite values; clean or drop them first")
    return X


@dataclass(frozen=True)
class Run:
    """What a training run derives from its checked windows and config before fitting.

    Attributes
    ----------
    n, channels, samples : int
        Windows ``N``, channels ``C`` and samples per window ``T``.
    hop : int
        Hop between windows in the stream, samples.
    channel_names, channel_types : tuple of str
    rng : numpy.random.Generator
        Seeded from ``config.seed`` (splits).
    device : torch.device
    """

    n: int
    channels: int
    samples: int
    hop: int
    channel_names: tuple[str, ...]
    channel_types: tuple[str, ...]
    rng: np.random.Generator
    device: torch.device


def start(
    X: np.ndarray,
    config: TrainConfig,
    channel_names: Sequence[str] | None,
    channel_types: Sequence[str] | None,
    hop_samples: int | None,
) -> Run:
    """Shape, channel metadata (default ``ch0..`` / ``eeg``), seeds and torch device of a run.

    Seeds torch's global generator with ``config.seed`` (network initialisation).
    """
    n, c, t = X.shape
    names = tuple(channel_names) if channel_names else tuple(f"ch{i}" for i in range(c))
    types = tuple(channel_types) if channel_types else ("eeg",) * c
    if len(names) != c or len(types) != c:
        raise TrainingError(f"{len(names)} channel names / {len(types)} types for {c} channels")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = torch_device(config.device, TrainingError)
    hop = int(hop_samples) if hop_samples else t
    return Run(n, c, t, hop, names, types, rng, device)


def build(config: TrainConfig, run: Run, n_out: int, novelty: bool) -> SplitNet:
    """A fresh first layer and head on ``run.device``; the privacy guard checks ``K`` first.

    A novelty head has no bias, no dropout and zero-filled dropped units (see :mod:`.novelty`):
    a learned fill or the keep mask would give it the constant input Deep SVDD must not have.

    Raises
    ------
    dropstream.local_encoder.first_layer.PrivacyGuardError
        If ``K`` is not below the window's input dimension (or ``C * hop``).
    """
    first = TorchFirstLayer(
        run.channels,
        run.samples,
        width=config.width,
        kind=config.first_layer,
        activation=config.activation,
        conv_filters=config.conv_filters,
        conv_kernel=config.conv_kernel,
        conv_stride=config.conv_stride,
        pool=config.pool if config.pool is not None else default_pool(run.samples),
        rank=config.resolve_rank(n_out, novelty),
        noise=config.noise,
        level_gain=None if novelty or config.first_layer != "dense" else config.level_gain,
    )
    keep = config.resolve_keep(first.width)
    validate_keep(keep, first.width, run.channels, run.samples, run.hop, pool=first.pool)
    fill = "zero" if novelty else config.resolve_fill(first.rank)
    head = Head(
        first.width,
        keep,
        hidden=config.hidden,
        n_outputs=n_out,
        dropout=0.0 if novelty else config.head_dropout,
        bias=not novelty,
        fill=fill,
        rank=first.rank,
        activation=first.activation_name,
        negative_slope=first.negative_slope,
        decode_noise=config.decode_noise,
    )
    if fill == "decode":
        # A and b only spread the r projections over the m units; the head reads u back with
        # them, so they stay at their random start (and the head keeps a copy)
        first.linear.requires_grad_(False)
        head.set_units(first.linear.weight, first.linear.bias)
    return SplitNet(first, head, keep)


def split(
    y_codes: np.ndarray | None, n: int, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (when labels are given) train/validation indices."""
    if fraction <= 0:
        idx = np.arange(n)
        return idx, idx[:0]
    if y_codes is None:
        perm = rng.permutation(n)
        n_val = max(1, int(round(fraction * n)))
        return np.sort(perm[n_val:]), np.sort(perm[:n_val])
    fit_idx, val_idx = [], []
    for c in np.unique(y_codes):
        members = rng.permutation(np.flatnonzero(y_codes == c))
        n_val = int(round(fraction * len(members)))
        if len(members) - n_val < 1:
            n_val = len(members) - 1
        val_idx.append(members[:n_val])
        fit_idx.append(members[n_val:])
    return np.sort(np.concatenate(fit_idx)), np.sort(np.concatenate(val_idx))


def prepare(
    X: np.ndarray,
    config: TrainConfig,
    sfreq: float,
    prefiltered: bool,
    fit_idx: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Filter (unless ``prefiltered``) and normalise windows with statistics of ``X[fit_idx]``.

    Returns the prepared windows and the normalisation mean and std.
    """
    pre = complete_preprocessing(config.preprocessing)
    Xf = X.astype(np.float64) if prefiltered else filter_windows(X, sfreq, pre)
    mean, std = fit_normalisation(Xf[fit_idx], pre)
    return prepare_window(Xf, pre, mean, std), mean, std


@contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch CPU threads, restoring the previous count afterwards."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit(
    net: SplitNet,
    xt: torch.Tensor,
    yt: torch.Tensor | None,
    fit_idx: np.ndarray,
    val_idx: np.ndarray,
    config: TrainConfig,
    loss_fn: LossFn,
    desc: str,
) -> list[dict[str, float]]:
    """Mini-batch AdamW (one-cycle schedule by default) with dropping and mask augmentation;
    keeps the best-validation state when there is a validation split, else the average of the
    weights over the last ``config.average_fraction`` of the epochs.

    Returns one record per epoch (``epoch``, ``train_loss``, ``val_loss``, ``val_acc`` for
    labelled data; ``best`` marks the epoch whose state the network keeps).
    """
    with cpu_threads(config.threads if xt.device.type == "cpu" else None):
        fit_x = xt[torch.as_tensor(fit_idx, device=xt.device)]
        net.first.fit_input_scale(fit_x)
        if config.init not in INITS:
            raise TrainingError(f"init must be one of {INITS}, not {config.init!r}")
        if config.init is not None and yt is not None:
            codes = yt[torch.as_tensor(fit_idx, device=xt.device)]
            init_projections(net.first, fit_x, codes, config.seed, pls=config.init == "lda-pls")
        if isinstance(net.head, Head):  # a learned fill starts at the mean training activation
            net.eval()
            with torch.no_grad():
                net.head.set_fill_base(net.first(fit_x))
        return _fit_loop(net, xt, yt, fit_idx, val_idx, config, loss_fn, desc)


@torch.no_grad()
def init_projections(
    first: TorchFirstLayer, fit_x: torch.Tensor, codes: torch.Tensor, seed: int, pls: bool
) -> None:
    """Start a low-rank layer's projections ``B`` at task-shaped directions of the pooled
    training windows (:mod:`.discriminants`): the ``n_classes - 1`` shrinkage linear
    discriminants, then PLS directions (``pls``) or the rows' random start. Each row keeps its
    initial norm: the standardisation after ``B`` removes the scale, and the norm sets how far
    AdamW's steps move the row. A no-op for full-rank or level/shape layers.
    """
    down = first.down
    if down is None or parametrize.is_parametrized(down, "weight"):
        return
    feats = pooled(first, fit_x).flatten(1).cpu().double().numpy()
    w = down.weight
    n = w.shape[0] if pls else None
    dirs = discriminant_directions(feats, codes.cpu().numpy(), np.random.default_rng(seed), n)
    n = min(len(dirs), w.shape[0])
    w[:n] = torch.as_tensor(dirs[:n], dtype=w.dtype, device=w.device) * w[:n].norm(
        dim=1, keepdim=True
    )


def _fit_loop(
    net: SplitNet,
    xt: torch.Tensor,
    yt: torch.Tensor | None,
    fit_idx: np.ndarray,
    val_idx: np.ndarray,
    config: TrainConfig,
    loss_fn: LossFn,
    desc: str,
) -> list[dict[str, float]]:
    dev = xt.device
    params = [p for p in net.parameters() if p.requires_grad]
    # the low-rank projections B may learn at their own rate (config.projection_lr)
    proj = {id(p) for p in net.first.down.parameters()} if net.first.down is not None else set()
    groups = [
        {"params": [p for p in params if id(p) not in proj], "lr": config.lr},
        {"params": [p for p in params if id(p) in proj], "lr": config.lr * config.projection_lr},
    ]
    groups = [g for g in groups if g["params"]]
    opt = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * max(1, -(-len(fit_idx) // config.batch_size))
    schedule = config.schedule or ("constant" if yt is None else "onecycle")
    if schedule == "onecycle":  # warm up over 10 % of the steps, then cosine to ~0
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=[g["lr"] for g in groups], total_steps=steps, pct_start=0.1
        )
    elif schedule == "constant":
        sched = None
    else:
        raise TrainingError(f"schedule must be 'onecycle' or 'constant', not {schedule!r}")
    gen = torch.Generator(device=dev).manual_seed(config.seed)
    cpu_gen = torch.Generator().manual_seed(config.seed)
    fit_t = torch.as_tensor(fit_idx, device=dev)
    val_t = torch.as_tensor(val_idx, device=dev)
    n_masks = max(1, int(config.n_masks))
    # privacy penalties (NoPeek, reconstruction adversary): their prior is fitted on the fit split
    penalty = make_penalty(
        net.first,
        xt[fit_t].detach().cpu().numpy(),
        config.nopeek,
        config.resolve_adversary(net.first.rank, yt is None),
        config.excess if yt is not None else 0.0,
        None if yt is None else yt[fit_t].cpu().numpy(),
    )
    best_key: tuple[float, float] = (-float("inf"), -float("inf"))
    best_state, best_epoch, history = None, -1, []
    by_acc = yt is not None and config.select_by == "val_acc"
    if config.select_by not in ("val_acc", "val_loss"):
        raise TrainingError(f"select_by must be 'val_acc' or 'val_loss', not {config.select_by!r}")
    bar = tqdm(range(config.epochs), desc=desc, disable=not config.progress, leave=False)
    # weight averaging (SWA-style) over the last epochs of a run without a validation split
    avg_from = config.epochs - int(round(config.average_fraction * config.epochs))
    averaged: list[torch.Tensor] | None = None
    n_averaged = 0
    for epoch in bar:
        net.train()
        perm = fit_t[torch.randperm(len(fit_t), generator=cpu_gen).to(dev)]
        total, count = 0.0, 0
        for begin in range(0, len(perm), config.batch_size):
            idx = perm[begin : begin + config.batch_size]
            out = net(xt[idx], n_masks=n_masks, generator=gen)
            target = None if yt is None else yt[idx].repeat_interleave(n_masks)
            loss = loss_fn(out, target)
            if penalty is not None:
                loss = loss + penalty(xt[idx], None if yt is None else yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        record = {"epoch": float(epoch), "train_loss": total / max(count, 1)}
        if not len(val_idx) and epoch >= avg_from:
            with torch.no_grad():
                n_averaged += 1
                if averaged is None:
                    averaged = [p.detach().clone() for p in params]
                else:
                    for mean, p in zip(averaged, params, strict=True):
                        mean.add_(p.detach() - mean, alpha=1.0 / n_averaged)
        if len(val_idx):
            net.eval()
            with torch.no_grad():
                vgen = torch.Generator(device=dev).manual_seed(config.seed + 1)
                out = net(xt[val_t], n_masks=n_masks, generator=vgen)
                target = None if yt is None else yt[val_t].repeat_interleave(n_masks)
                val_loss = float(loss_fn(out, target))
                record["val_loss"] = val_loss
                if yt is not None:
                    pred = out.argmax(1)
                    record["val_acc"] = float((pred == target).float().mean())
            key = (record["val_acc"], -val_loss) if by_acc else (-val_loss, 0.0)
            if key > best_key:
                best_key, best_epoch = key, epoch
                best_state = copy.deepcopy(net.state_dict())
            elif epoch - best_epoch >= config.patience:
                history.append(record)
                break
        history.append(record)
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", val=f"{record.get('val_loss', 0):.3f}")
    if best_state is not None:
        net.load_state_dict(best_state)
        history[best_epoch]["best"] = 1.0
    elif averaged is not None:
        with torch.no_grad():
            for mean, p in zip(averaged, params, strict=True):
                p.copy_(mean)
        history[-1]["averaged_epochs"] = float(n_averaged)
    net.eval()
    return history
