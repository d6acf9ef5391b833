"""Training the split network: a supervised classifier and an unsupervised novelty model.

Python API::

    from dropstream.inference.training import TrainConfig, train_classifier, train_novelty
    model = train_classifier(X, y, TrainConfig(width=256, keep=64), sfreq=256.0)
    model.predict(X_test)            # labels, each window with a fresh keep mask
    model.save("scp1.dsb", model_id="scp1")

    novelty = train_novelty(X_normal, TrainConfig(keep=64), sfreq=1000.0)
    novelty.score(X)                 # anomaly score, higher = more anomalous

``X`` are raw windows ``(N, C, T)`` in stream units. Unless ``prefiltered=True`` (windows cut from
a recording that :func:`dropstream.local_encoder.preprocessing.filter_signal` already filtered as
one stream) each window is causally filtered on its own. Normalisation statistics are fitted on the
training windows only. Everything is seeded: the same inputs and config give the same model.

The novelty model never learns to reconstruct the input: it is a Deep SVDD (Ruff et al., ICML
2018) on the dropped first-layer activations. A bias-free head maps the dropped activations to an
embedding and is trained to pull normal windows towards a fixed centre; the squared distance to the
centre is the anomaly score. Each window is seen with several fresh keep masks (mask augmentation)
so the score holds for any kept set. The score's quantiles on held-out normal windows are stored in
the bundle as the calibration the server thresholds on.
"""

from __future__ import annotations

import copy
import io
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from dropstream.errors import DropstreamError
from dropstream.inference.defences import make_penalty
from dropstream.inference.model import (
    Head,
    NoveltyScorer,
    SplitNet,
    TorchFirstLayer,
    random_keep_mask,
    validate_keep,
)
from dropstream.local_encoder.bundle import DeviceBundle, write_bundle
from dropstream.local_encoder.preprocessing import (
    complete_preprocessing,
    filter_windows,
    fit_normalisation,
    prepare_window,
)

log = logging.getLogger(__name__)

#: Quantile levels of held-out normal scores stored as a novelty model's calibration.
CALIBRATION_LEVELS = (0.5, 0.8, 0.9, 0.95, 0.975, 0.99, 0.995, 0.999)


class TrainingError(DropstreamError):
    """Training data or settings that cannot give a model."""


@dataclass
class TrainConfig:
    """Settings of :func:`train_classifier` and :func:`train_novelty`.

    Attributes
    ----------
    width : int
        First-layer units ``m`` (dense layer; a conv layer derives ``m`` from its settings).
    keep : int or None
        Units kept per window ``K``; ``None`` uses ``keep_fraction``.
    keep_fraction : float
        ``K = round(keep_fraction * m)`` when ``keep`` is ``None``.
    first_layer : {"dense", "conv"}
    activation : str
        ``relu``, ``leaky_relu``, ``tanh`` or ``sigmoid``.
    conv_filters, conv_kernel, conv_stride : int
        Settings of a ``conv`` first layer (kernel and stride in samples).
    pool : int or None
        Average-pool factor in time before a ``dense`` first layer (exported exactly as dense);
        ``None`` picks :func:`default_pool` (about 64 averaged samples per channel).
    hidden : tuple of int
        Head MLP hidden sizes.
    head_dropout : float
        Ordinary dropout inside the head.
    epochs, batch_size, lr, weight_decay : training settings (AdamW).
    n_masks : int
        Fresh keep masks per window per step (mask augmentation).
    val_fraction : float
        Share of the training windows held out (stratified) for early stopping and, for
        novelty models, calibration. The test split is never used for any choice.
    patience : int
        Epochs without validation improvement before stopping.
    select_by : {"val_acc", "val_loss"}
        What picks the best epoch of a classifier (accuracy, ties broken by loss; the loss of a
        dropped network on a small validation split bottoms out long before its accuracy).
    refit : bool
        After picking the best epoch count on the validation split, train afresh on all of
        TRAIN for that many epochs (small EEG sets cannot spare 20 % of their windows).
    preprocessing : dict
        Causal filter and demeaning settings (see :mod:`dropstream.local_encoder.preprocessing`).
    seed : int
    device : str
        ``"auto"`` (CUDA when present, else CPU), ``"cpu"`` or ``"cuda"``.
    progress : bool
        Show a tqdm progress bar over epochs.
    embedding : int
        Output size of a novelty head.
    threads : int or None
        torch CPU threads while training (restored afterwards). 1 is fastest for these small
        networks, above all on a busy machine where more threads stall each other; ``None``
        leaves torch's setting.
    rank, noise : int or None, float
        Privacy defences in the first layer: a low-rank layer and calibrated device noise (see
        :class:`~dropstream.inference.model.TorchFirstLayer`). ``rank="auto"`` (the default)
        is the point of the privacy-utility frontier that docs/privacy.md picks for a dense
        classifier: rank ``max(2, n_classes - 1)`` (room for every linear discriminant), no
        noise; on SCP1 and Blink the strongest adaptive attack then stays within 0.05 of the
        task floor and accuracy does not drop. For a novelty model or a ``conv`` layer "auto"
        means full rank (``None``): a novelty model must notice anything abnormal, which two
        projections cannot. An integer is used as given (dense layers only).
    nopeek, adversary : float
        Weights of the privacy penalties of :mod:`dropstream.inference.defences` (NoPeek
        distance correlation; Gaussian-MAP reconstruction adversary). 0 = off.
    """

    width: int = 256
    keep: int | None = None
    keep_fraction: float = 0.25
    first_layer: str = "dense"
    activation: str = "relu"
    conv_filters: int = 16
    conv_kernel: int = 32
    conv_stride: int = 16
    pool: int | None = None
    hidden: tuple[int, ...] = (512, 256)
    head_dropout: float = 0.25
    epochs: int = 150
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-2
    n_masks: int = 4
    val_fraction: float = 0.2
    patience: int = 30
    select_by: str = "val_acc"
    refit: bool = True
    preprocessing: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    embedding: int = 32
    threads: int | None = 1
    rank: int | str | None = "auto"
    noise: float = 0.0
    nopeek: float = 0.0
    adversary: float = 0.0

    def defences(self) -> dict[str, Any]:
        """The privacy defences of this config, as stored in the bundle."""
        return {
            "rank": self.rank,
            "noise": float(self.noise),
            "nopeek": float(self.nopeek),
            "adversary": float(self.adversary),
        }

    def resolve_keep(self, width: int) -> int:
        """``K`` for a layer of ``width`` units."""
        if self.keep is not None:
            return int(self.keep)
        return max(1, int(round(self.keep_fraction * width)))


def default_pool(n_samples: int, target: int = 64) -> int:
    """Default time pooling of a dense first layer: about ``target`` averages per channel.

    On small EEG sets a dense layer over every sample overfits; averaging blocks of samples (a
    linear map, exported exactly into the dense device weight) keeps the slow and mid-frequency
    content. The layer's input rank becomes ``C * (T // pool)``, which the privacy guard uses.
    """
    return max(1, int(n_samples) // int(target))


def _torch_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device 'cuda' asked for but no CUDA device is present; use 'cpu'")
    return torch.device(name)


def _check_windows(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 3 or X.shape[0] == 0:
        raise TrainingError(f"windows must have shape (N, C, T) with N > 0; got {X.shape}")
    if not np.all(np.isfinite(X)):
        raise TrainingError("windows hold NaN or infinite values; clean or drop them first")
    return X


def _split(
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
    fit, val = [], []
    for c in np.unique(y_codes):
        members = rng.permutation(np.flatnonzero(y_codes == c))
        n_val = int(round(fraction * len(members)))
        if len(members) - n_val < 1:
            n_val = len(members) - 1
        val.append(members[:n_val])
        fit.append(members[n_val:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(val))


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
        X = _check_windows(X)
        if X.shape[1:] != (len(self.channel_names), self.window_samples):
            raise TrainingError(
                f"windows of shape {X.shape[1:]} do not fit the model's "
                f"({len(self.channel_names)}, {self.window_samples})"
            )
        if not prefiltered:
            X = filter_windows(X, self.sfreq, self.preprocessing)
        return prepare_window(X, self.preprocessing, self.norm_mean, self.norm_std)

    @torch.no_grad()
    def _outputs(self, X: np.ndarray, prefiltered: bool, seed: int) -> torch.Tensor:
        dev = next(self.head.parameters()).device
        x = torch.as_tensor(self.prepare(X, prefiltered), device=dev)
        gen = torch.Generator(device=dev).manual_seed(int(seed))
        self.first.eval()
        self.head.eval()
        outs = []
        for start in range(0, x.shape[0], 512):
            a = self.first(x[start : start + 512], gen)
            mask = random_keep_mask(a.shape[0], a.shape[1], self.keep, gen, dev)
            outs.append(self.head(a * mask).cpu())
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
        if self.kind != "novelty":
            raise TrainingError("score() needs a novelty model; use predict() for classifiers")
        return self._outputs(X, prefiltered, seed).numpy()

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
                "defences": {**self.config.defences(), "rank": self.first.rank},
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


def _prepare_training(
    X: np.ndarray,
    config: TrainConfig,
    sfreq: float,
    prefiltered: bool,
    fit_idx: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pre = complete_preprocessing(config.preprocessing)
    Xf = X.astype(np.float64) if prefiltered else filter_windows(X, sfreq, pre)
    mean, std = fit_normalisation(Xf[fit_idx], pre)
    return prepare_window(Xf, pre, mean, std), mean, std


def _build(
    config: TrainConfig,
    n_channels: int,
    n_samples: int,
    hop_samples: int | None,
    n_out: int,
    novelty: bool,
) -> tuple[TorchFirstLayer, Head, int]:
    rank = config.rank
    if rank == "auto":
        auto = novelty or config.first_layer != "dense"
        rank = None if auto else max(2, n_out - 1)  # room for every linear discriminant
    elif rank is not None and (config.first_layer != "dense" or int(rank) < 1):
        raise TrainingError(
            f"rank {rank!r} (a low-rank privacy bottleneck) needs a dense first layer and an "
            "integer >= 1, or 'auto'; use rank=None (--rank 0) for a full-rank layer"
        )
    first = TorchFirstLayer(
        n_channels,
        n_samples,
        width=config.width,
        kind=config.first_layer,
        activation=config.activation,
        conv_filters=config.conv_filters,
        conv_kernel=config.conv_kernel,
        conv_stride=config.conv_stride,
        pool=config.pool if config.pool is not None else default_pool(n_samples),
        rank=rank,
        noise=config.noise,
    )
    keep = config.resolve_keep(first.width)
    validate_keep(keep, first.width, n_channels, n_samples, hop_samples, pool=first.pool)
    head = Head(
        first.width,
        keep,
        hidden=config.hidden,
        n_outputs=n_out,
        dropout=0.0 if novelty else config.head_dropout,
        bias=not novelty,
    )
    return first, head, keep


def _meta_defaults(
    n_channels: int, channel_names: Sequence[str] | None, channel_types: Sequence[str] | None
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    names = tuple(channel_names) if channel_names else tuple(f"ch{i}" for i in range(n_channels))
    types = tuple(channel_types) if channel_types else ("eeg",) * n_channels
    if len(names) != n_channels or len(types) != n_channels:
        raise TrainingError(
            f"{len(names)} channel names / {len(types)} types for {n_channels} channels"
        )
    return names, types


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
    X = _check_windows(X)
    y = np.asarray([str(v) for v in y])
    if y.shape != (X.shape[0],):
        raise TrainingError(f"{len(y)} labels for {X.shape[0]} windows")
    classes = tuple(sorted(set(y.tolist())))
    if len(classes) < 2:
        raise TrainingError(f"need at least two classes to train a classifier; got {classes}")
    codes = np.searchsorted(np.asarray(classes), y)
    n, c, t = X.shape
    hop = int(hop_samples) if hop_samples else t
    names, types = _meta_defaults(c, channel_names, channel_types)

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    dev = _torch_device(config.device)
    first, head, keep = _build(config, c, t, hop, len(classes), novelty=False)
    fit_idx, val_idx = _split(codes, n, config.val_fraction, rng)
    # normalisation statistics need no labels: fitted on all of TRAIN
    Xn, mean, std = _prepare_training(X, config, sfreq, prefiltered, np.arange(n))

    net = SplitNet(first, head, keep).to(dev)
    net.penalty = make_penalty(net.first, Xn[fit_idx], config.nopeek, config.adversary)
    xt = torch.as_tensor(Xn, device=dev)
    yt = torch.as_tensor(codes, dtype=torch.long, device=dev)

    def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(out, target)

    history = _fit(net, xt, yt, fit_idx, val_idx, config, loss_fn, desc="train classifier")
    if config.refit and len(val_idx):
        best = next((int(r["epoch"]) for r in history if r.get("best")), len(history) - 1)
        torch.manual_seed(config.seed)
        first, head, keep = _build(config, c, t, hop, len(classes), novelty=False)
        net = SplitNet(first, head, keep).to(dev)
        net.penalty = make_penalty(net.first, Xn, config.nopeek, config.adversary)
        refit_cfg = replace(config, epochs=best + 1)
        history = _fit(
            net, xt, yt, np.arange(n), np.arange(0), refit_cfg, loss_fn, desc="refit on TRAIN"
        )
        for r in history:
            r["refit"] = 1.0
    head_config = {
        "type": "classifier",
        "width": first.width,
        "keep": keep,
        "hidden": list(config.hidden),
        "n_outputs": len(classes),
        "dropout": config.head_dropout,
        "bias": True,
        "rescale": True,
        "output": "logits over classes (softmax for probabilities)",
        "first_layer": config.first_layer,
    }
    return TrainedModel(
        kind="classifier",
        first=net.first,
        head=net.head,
        keep=keep,
        config=config,
        sfreq=float(sfreq),
        channel_names=names,
        channel_types=types,
        window_samples=t,
        hop_samples=hop,
        preprocessing=complete_preprocessing(config.preprocessing),
        norm_mean=mean,
        norm_std=std,
        classes=classes,
        head_config=head_config,
        history=history,
    )


@contextmanager
def _cpu_threads(n: int | None) -> Iterator[None]:
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


def _fit(
    net: SplitNet,
    xt: torch.Tensor,
    yt: torch.Tensor | None,
    fit_idx: np.ndarray,
    val_idx: np.ndarray,
    config: TrainConfig,
    loss_fn: Any,
    desc: str,
) -> list[dict[str, float]]:
    """Mini-batch AdamW with dropping and mask augmentation; keeps the best-validation state."""
    with _cpu_threads(config.threads if xt.device.type == "cpu" else None):
        return _fit_loop(net, xt, yt, fit_idx, val_idx, config, loss_fn, desc)


def _fit_loop(
    net: SplitNet,
    xt: torch.Tensor,
    yt: torch.Tensor | None,
    fit_idx: np.ndarray,
    val_idx: np.ndarray,
    config: TrainConfig,
    loss_fn: Any,
    desc: str,
) -> list[dict[str, float]]:
    dev = xt.device
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator(device=dev).manual_seed(config.seed)
    cpu_gen = torch.Generator().manual_seed(config.seed)
    fit_t = torch.as_tensor(fit_idx, device=dev)
    val_t = torch.as_tensor(val_idx, device=dev)
    n_masks = max(1, int(config.n_masks))
    best_key: tuple[float, float] = (-float("inf"), -float("inf"))
    best_state, best_epoch, history = None, -1, []
    by_acc = yt is not None and config.select_by == "val_acc"
    if config.select_by not in ("val_acc", "val_loss"):
        raise TrainingError(f"select_by must be 'val_acc' or 'val_loss', not {config.select_by!r}")
    bar = tqdm(range(config.epochs), desc=desc, disable=not config.progress, leave=False)
    for epoch in bar:
        net.train()
        perm = fit_t[torch.randperm(len(fit_t), generator=cpu_gen).to(dev)]
        total, count = 0.0, 0
        for start in range(0, len(perm), config.batch_size):
            idx = perm[start : start + config.batch_size]
            out = net(xt[idx], n_masks=n_masks, generator=gen)
            target = None if yt is None else yt[idx].repeat_interleave(n_masks)
            loss = loss_fn(out, target)
            if net.penalty is not None:
                loss = loss + net.penalty(xt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        record = {"epoch": float(epoch), "train_loss": total / max(count, 1)}
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
    net.eval()
    return history


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

    Parameters are those of :func:`train_classifier` without labels: ``X_normal`` holds only
    baseline (normal) windows. ``config.val_fraction`` of them is held out for early stopping and
    for the calibration (quantiles of held-out scores) stored in ``head_config["calibration"]``.

    Returns
    -------
    TrainedModel
        ``kind == "novelty"``; its head outputs the anomaly score (squared distance of the
        embedding to the centre; higher = more anomalous).
    """
    config = config or TrainConfig()
    X = _check_windows(X_normal)
    n, c, t = X.shape
    if n < 10:
        raise TrainingError(f"need at least 10 normal windows to learn normal; got {n}")
    hop = int(hop_samples) if hop_samples else t
    names, types = _meta_defaults(c, channel_names, channel_types)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    dev = _torch_device(config.device)
    first, head, keep = _build(config, c, t, hop, config.embedding, novelty=True)
    fit_idx, val_idx = _split(None, n, max(config.val_fraction, 0.1), rng)
    Xn, mean, std = _prepare_training(X, config, sfreq, prefiltered, fit_idx)
    # a bias would let the network map everything to the centre regardless of input
    bias = first.linear.bias if first.kind == "dense" else first.conv.bias
    nn.init.zeros_(bias)
    bias.requires_grad_(False)
    net = SplitNet(first, head, keep).to(dev)
    net.penalty = make_penalty(net.first, Xn[fit_idx], config.nopeek, config.adversary)
    xt = torch.as_tensor(Xn, device=dev)
    gen = torch.Generator(device=dev).manual_seed(config.seed + 7)
    with torch.no_grad():
        net.eval()
        emb = net(xt[torch.as_tensor(fit_idx, device=dev)], n_masks=4, generator=gen)
        center = emb.mean(0)
        # keep coordinates away from zero (Ruff et al.): a zero centre is trivially reachable
        eps = 0.1
        center = torch.where(center.abs() < eps, torch.where(center < 0, -eps, eps), center)
    scorer = NoveltyScorer(head, center)
    net.head = scorer

    history = _fit(
        net,
        xt,
        None,
        fit_idx,
        val_idx,
        config,
        loss_fn=lambda out, _target: out.mean(),
        desc="train novelty",
    )
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
    head_config = {
        "type": "novelty",
        "width": first.width,
        "keep": keep,
        "hidden": list(config.hidden),
        "n_outputs": config.embedding,
        "dropout": 0.0,
        "bias": False,
        "rescale": True,
        "output": "anomaly score: squared distance of the embedding to the centre of normal; "
        "higher = more anomalous",
        "first_layer": config.first_layer,
        "calibration": calibration,
    }
    return TrainedModel(
        kind="novelty",
        first=net.first,
        head=scorer,
        keep=keep,
        config=config,
        sfreq=float(sfreq),
        channel_names=names,
        channel_types=types,
        window_samples=t,
        hop_samples=hop,
        preprocessing=complete_preprocessing(config.preprocessing),
        norm_mean=mean,
        norm_std=std,
        classes=("normal", "anomaly"),
        head_config=head_config,
        history=history,
    )
