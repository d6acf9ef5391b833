"""Settings of a training run: :class:`TrainConfig`, the one place its defaults live."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dropstream.errors import DropstreamError

#: ``adversary="auto"`` for a low-rank classifier: the frontier's default point
#: (docs/privacy.md).
AUTO_ADVERSARY = 0.5


class TrainingError(DropstreamError):
    """Training data or settings that cannot give a model."""


@dataclass
class TrainConfig:
    """Settings of :func:`train_classifier` and :func:`train_novelty`.

    ``dropstream train`` passes on only the options given on its command line, so these
    defaults are the command's defaults too.

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
        Average-pool factor in time before a ``dense`` first layer (exported as pooling + matrix);
        ``None`` picks :func:`default_pool` (about 64 averaged samples per channel).
    level_gain : float or None
        A ``dense`` classifier's first layer is trained in level/shape coordinates
        (:class:`~dropstream.inference.model.LevelShapeScale`: each channel's window mean and
        the deviations from it, standardised separately), the level weighted by this gain;
        ``None`` trains on the samples directly (as novelty models always do). Exported as one
        dense weight: the device is unchanged.
    hidden : tuple of int
        Head MLP hidden sizes.
    head_fill : {"auto", "decode", "learned", "zero"}
        How the classifier head treats dropped units (:class:`~dropstream.inference.model.Head`):
        ``"decode"`` solves the kept units for a low-rank layer's projections (exact whatever
        was dropped); ``"learned"`` fills them with learned values and appends the keep mask;
        ``"zero"`` is the zero-fill, ``m/K``-rescaled head of older bundles. ``"auto"``
        (default): ``"decode"`` for a low-rank layer, else ``"learned"``. Novelty heads are
        always ``"zero"``.
    head_dropout : float
        Ordinary dropout inside the head.
    epochs, batch_size, lr, weight_decay : training settings (AdamW).
    schedule : {"onecycle", "constant"} or None
        Learning-rate schedule: one cycle (10 % warm-up to ``lr``, then cosine decay) over
        ``epochs``, or a constant ``lr``. ``None``: one cycle for classifiers (measured in
        ``docs/accuracy.md``), constant for novelty models (as before; not re-measured).
    n_masks : int
        Fresh keep masks per window per step (mask augmentation).
    label_smoothing : float
        Label smoothing of the classifier's cross-entropy.
    average_fraction : float
        Without a validation split, the weights are averaged (stochastic weight averaging,
        equal weight per epoch) over this last share of the epochs; 0 keeps the last weights.
    val_fraction : float
        Share of the training windows held out (stratified) for early stopping; 0 (default)
        trains a classifier for exactly ``epochs`` on all windows. Novelty models hold out
        ``calibration_fraction`` instead. The test split is never used for any choice.
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
    novelty_model : {"energy", "svdd"}
        The novelty model: ``"energy"`` (default) is a first layer of random projections of
        the whitened window and a head scoring the kept activations' log-energy
        (:mod:`dropstream.inference.energy`; no gradient training, calibrated on every stretch
        of the baseline; docs/anomalies.md); ``"svdd"`` trains first layer and head as a
        Deep SVDD (the model before, kept to compare).
    embedding : int
        Output size of a Deep SVDD novelty head.
    threads : int or None
        torch CPU threads while training (restored afterwards). 1 is fastest for these small
        networks, above all on a busy machine where more threads stall each other; ``None``
        leaves torch's setting.
    calibration_fraction : float
        Share of a novelty model's normal windows held out (the last ones in time) for early
        stopping and the threshold's calibration.
    min_calibration_windows : int
        Held-out normal windows a novelty model's threshold needs at least (below, training
        stops with the number of normal windows to provide). The 0.99-quantile threshold of
        fewer windows is little more than their maximum.
    rank, noise : int, "auto" or None; float
        Privacy defences in the first layer: a low-rank layer and calibrated device noise (see
        :class:`~dropstream.inference.model.TorchFirstLayer`). ``rank="auto"`` (the default)
        is the point of the privacy-utility frontier that docs/privacy.md picks for a dense
        classifier: rank ``max(2, n_classes - 1)`` (room for every linear discriminant), no
        noise; on SCP1 and Blink the strongest adaptive attack then stays within about 0.03-0.06
        of the task floor (docs/privacy.md has the frontier). For a novelty model or a ``conv``
        layer "auto" means full rank (``None``): a novelty model must notice anything abnormal,
        which a few projections cannot without losing detection (docs/privacy.md, novelty
        models). An integer is used as given (dense layers only).
    nopeek, adversary, excess : float (adversary: or "auto")
        Weights of the privacy penalties of :mod:`dropstream.inference.defences` (NoPeek
        distance correlation; Gaussian-MAP reconstruction adversary; the same adversary
        knowing the class, which penalises only the leak beyond the task floor: classifiers
        only). 0 = off. ``adversary="auto"`` (the default) is :data:`AUTO_ADVERSARY` for a
        low-rank classifier (the frontier's default point in docs/privacy.md: it moves the
        rank-2 layer's projections away from what the subspace attack reads; SCP1 r 0.315 ->
        0.284-0.298 over 4 seeds at the same mean accuracy) and 0 for a full-rank layer or a
        novelty model.
    init : {"lda-pls", "lda", None}
        Start of a low-rank classifier's projections ``B`` (``rank`` set; see
        :func:`~dropstream.inference.training.fit.init_projections`): the shrinkage linear
        discriminants of the pooled training windows, then (``"lda-pls"``, default) PLS
        directions or (``"lda"``) random rows; ``None``: all random. Small EEG sets train
        poor projections from a random start (measured in docs/model.md).
    projection_lr : float
        Learning rate of the projections ``B`` relative to ``lr``: 0.3 (default) lets the
        privacy penalty move the task-shaped start; 0.1 (the default before the ``auto``
        adversary) refines it without walking away from it; 1 costs accuracy and is less
        stable across seeds (docs/model.md).
    decode_noise : float
        A decoding head's training-time noise on the decoded projections, which have unit
        variance (see :class:`~dropstream.inference.model.Head`; server side only). The exact
        projections let the head overfit where dropping used to regularise it: on Blink 0.3
        (default) gave 0.980 against 0.960 without (docs/model.md).
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
    level_gain: float | None = None
    hidden: tuple[int, ...] = (512, 256)
    head_fill: str = "auto"
    head_dropout: float = 0.25
    epochs: int = 60
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-2
    schedule: str | None = None
    n_masks: int = 4
    label_smoothing: float = 0.1
    average_fraction: float = 0.3
    val_fraction: float = 0.0
    patience: int = 30
    select_by: str = "val_acc"
    refit: bool = True
    preprocessing: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    novelty_model: str = "energy"
    embedding: int = 32
    threads: int | None = 1
    calibration_fraction: float = 0.2
    min_calibration_windows: int = 50
    rank: int | str | None = "auto"
    noise: float = 0.0
    nopeek: float = 0.0
    adversary: float | str = "auto"
    excess: float = 0.0
    init: str | None = "lda-pls"
    projection_lr: float = 0.3
    decode_noise: float = 0.3

    def defences(self, rank: int | None, novelty: bool) -> dict[str, Any]:
        """The privacy defences of this config for a layer of (resolved) ``rank``, as stored
        in the bundle."""
        return {
            "rank": rank,
            "noise": float(self.noise),
            "nopeek": float(self.nopeek),
            "adversary": self.resolve_adversary(rank, novelty),
            "excess": float(self.excess),
        }

    def resolve_rank(self, n_out: int, novelty: bool) -> int | None:
        """The first layer's rank: ``"auto"`` resolved (see the class docstring), or ``None``.

        Raises
        ------
        TrainingError
            If an explicit rank is not an integer >= 1 or the layer is not dense.
        """
        if self.rank == "auto":
            if novelty or self.first_layer != "dense":
                return None
            return max(2, n_out - 1)  # room for every linear discriminant
        if self.rank is None:
            return None
        if self.first_layer != "dense" or not isinstance(self.rank, int) or self.rank < 1:
            raise TrainingError(
                f"rank {self.rank!r} (a low-rank privacy bottleneck) needs a dense first layer "
                "and an integer >= 1, or 'auto'; use rank=None (--rank 0) for a full-rank layer"
            )
        return self.rank

    def resolve_adversary(self, rank: int | None, novelty: bool) -> float:
        """The reconstruction-adversary weight: ``"auto"`` resolved (see the class docstring).

        Raises
        ------
        TrainingError
            If it is neither ``"auto"`` nor a number >= 0.
        """
        if self.adversary == "auto":
            return AUTO_ADVERSARY if rank is not None and not novelty else 0.0
        try:
            weight = float(self.adversary)
        except (TypeError, ValueError):
            weight = -1.0
        if not weight >= 0:
            raise TrainingError(
                f"adversary {self.adversary!r} must be a weight >= 0 or 'auto' (0 = off)"
            )
        return weight

    def resolve_fill(self, rank: int | None) -> str:
        """A classifier head's ``fill``: ``"auto"`` resolved for a layer of ``rank``."""
        if self.head_fill == "auto":
            return "decode" if rank is not None else "learned"
        return self.head_fill

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
