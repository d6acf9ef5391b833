"""The split network in torch: localized first layer, activation dropping, server head.

Layout (Dong et al., TIFS 2018, arXiv:1711.07520)::

    window (C, T) --[device]--> first layer a = f(W x + b), m units
                  --[device]--> keep K random units, drop the rest (fresh set per window)
                  --[server]--> head: scatter kept values into an m-vector (NaN elsewhere),
                                fill the dropped units with learned values, append the keep
                                mask, MLP 2m -> 512 -> 256 -> outputs

The device sends the raw kept values. The server knows which units it received, so the head
(``fill="learned"``, the default since head format 2) gives every dropped unit a learned value
and sees the keep mask beside the values: a kept unit at zero (ReLU) and a dropped unit are no
longer the same input. Heads of format 1 (older bundles) zero the dropped units and rescale by
``m / K`` (inverted dropout); they still load. Training applies exactly the same dropping, so
the head works for any kept set.

The first layer is either ``"dense"`` (``nn.Linear`` over the channel-major flattened window) or
``"conv"`` (a spatio-temporal ``nn.Conv1d`` over all channels with a temporal kernel and stride,
which is linear and is exported to its equivalent dense matrix for the device). In both cases the
device computes :meth:`dropstream.local_encoder.first_layer.FirstLayer.forward`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from dropstream.errors import DropstreamError
from dropstream.local_encoder.first_layer import (
    ACTIVATIONS,
    FirstLayer,
    PrivacyGuardError,
    check_keep,
)


class ModelConfigError(DropstreamError):
    """An architecture setting that cannot be built."""


def activation_fn(name: str, negative_slope: float = 0.01) -> nn.Module:
    """The torch module of a first-layer activation name (see :data:`ACTIVATIONS`)."""
    if name == "relu":
        return nn.ReLU()
    if name == "leaky_relu":
        return nn.LeakyReLU(negative_slope)
    if name == "tanh":
        return nn.Tanh()
    if name == "sigmoid":
        return nn.Sigmoid()
    raise ModelConfigError(f"unknown activation {name!r}; choose one of {ACTIVATIONS}")


class LevelShapeScale(nn.Module):
    """Weight parametrisation of a dense layer over pooled windows ``(C, P)``, flattened: the
    layer sees each channel's window **level** (its mean over the window) and **shape** (the
    deviations from it) as separately standardised inputs.

    With ``W`` the trained weight, the effective weight is ``W M`` with, per channel ``c``,
    ``M_c = (I - J/P) / s_c + gain / (l_c P sqrt(P)) 1 1'`` (``J = 1 1'``; ``s_c`` the spread of
    the shape and ``l_c`` of the level over the training windows, :meth:`fit`). ``W x`` then
    equals ``W_shape . shape / s + (gain / l) level . (W 1 / sqrt(P))``: AdamW and weight decay
    act on ``W``, where level and shape are on one scale, instead of on raw samples where a
    large trial-to-trial offset drowns the shape. Still one linear map of the window: the device
    gets the effective weight (``layer.weight`` returns it).
    """

    def __init__(self, n_channels: int, n_positions: int, gain: float = 1.0) -> None:
        super().__init__()
        self.n_channels, self.n_positions, self.gain = int(n_channels), int(n_positions), gain
        self.register_buffer("shape_scale", torch.ones(self.n_channels))
        self.register_buffer("level_scale", torch.ones(self.n_channels))

    @torch.no_grad()
    def fit(self, pooled: torch.Tensor) -> None:
        """Set ``1/s`` and ``gain/l`` from pooled training windows ``(N, C, P)``."""
        level = pooled.mean(-1, keepdim=True)
        shape_sd = (pooled - level).std(dim=(0, 2)).clamp(min=1e-6)
        level_sd = level[..., 0].std(dim=0).clamp(min=1e-6) if len(pooled) > 1 else shape_sd
        self.shape_scale.copy_(1.0 / shape_sd)
        self.level_scale.copy_(self.gain / (level_sd * self.n_positions**1.5))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """The effective weight ``W M`` of the trained weight ``W (m, C*P)``."""
        w = weight.reshape(weight.shape[0], self.n_channels, self.n_positions)
        shape = (w - w.mean(-1, keepdim=True)) * self.shape_scale[:, None]
        level = w.sum(-1, keepdim=True) * self.level_scale[:, None]
        return (shape + level).reshape(weight.shape)


class TorchFirstLayer(nn.Module):
    """Device-side first layer in torch, dense or a linear convolution.

    Parameters
    ----------
    n_channels, n_samples : int
        Window shape ``C x T``.
    width : int
        Number of units ``m`` for ``kind="dense"``; ignored for ``"conv"`` where
        ``m = filters * positions``.
    kind : {"dense", "conv"}
    activation : str
    conv_filters, conv_kernel, conv_stride : int
        Convolution settings (kernel and stride in samples).
    pool : int
        For ``kind="dense"``: average each channel over non-overlapping blocks of ``pool``
        samples before the dense map (a trailing remainder is ignored). It cuts the trainable
        weights by ``pool`` (useful on small data) and is exported as pooling + the small matrix,
        so it cuts the device's work by ``pool`` too.
    rank : int or None
        For ``kind="dense"``: a low-rank layer ``W = A B`` (privacy defence). ``B`` maps the
        window to ``rank`` projections, standardised to unit variance on the training data, and
        ``A`` (with the bias) maps them to the ``m`` units, so the activations depend on the
        window through ``rank`` numbers only. Exported factored (``B`` with the standardisation
        folded in, then ``A``): the device computes ``rank * (C*T/pool + m)`` multiply-adds.
    noise : float
        Standard deviation of Gaussian noise added, on the device and in training alike, to the
        standardised projections (``rank`` set) or to the standardised pre-activations
        (``rank`` None): ``z = W x + b + noise * M e`` with ``e ~ N(0, I)`` and ``M`` = ``A``
        (or the identity; ``FirstLayer.noise_mix``). Signal variance per projection is 1, so
        ``noise`` is the noise-to-signal amplitude ratio. See :mod:`dropstream.inference.defences`.
    level_gain : float or None
        For ``kind="dense"``: train the input map's weight in level/shape coordinates
        (:class:`LevelShapeScale`, call :meth:`fit_input_scale` on training windows first) with
        this weight of the standardised level; ``None`` trains it on the samples directly.
    """

    def __init__(
        self,
        n_channels: int,
        n_samples: int,
        width: int = 256,
        kind: str = "dense",
        activation: str = "relu",
        negative_slope: float = 0.01,
        conv_filters: int = 16,
        conv_kernel: int = 32,
        conv_stride: int = 16,
        pool: int = 1,
        rank: int | None = None,
        noise: float = 0.0,
        level_gain: float | None = None,
    ) -> None:
        super().__init__()
        self.n_channels = int(n_channels)
        self.n_samples = int(n_samples)
        self.kind = kind
        self.activation_name = activation
        self.negative_slope = float(negative_slope)
        self.pool = int(pool)
        if not 1 <= self.pool <= self.n_samples:
            raise ModelConfigError(f"pool {pool} must be between 1 and the window's {n_samples}")
        self.rank = None if rank is None else int(rank)
        self.noise = float(noise)
        if self.noise < 0:
            raise ModelConfigError(f"noise must be >= 0, not {noise}")
        if self.rank is not None and (kind != "dense" or not 1 <= self.rank < int(width)):
            raise ModelConfigError(
                f"rank {rank} needs a dense first layer and 1 <= rank < width ({width})"
            )
        self.down: nn.Linear | None = None
        self.norm: nn.BatchNorm1d | None = None
        if kind == "dense":
            pooled = self.n_channels * (self.n_samples // self.pool)
            if self.rank is not None:
                self.down = nn.Linear(pooled, self.rank, bias=False)
                self.norm = nn.BatchNorm1d(self.rank, affine=False)
                self.linear = nn.Linear(self.rank, int(width))
            else:
                self.linear = nn.Linear(pooled, int(width))
                if self.noise > 0:
                    self.norm = nn.BatchNorm1d(int(width), affine=False)
            self.width = int(width)
            if level_gain is not None:
                scale = LevelShapeScale(self.n_channels, pooled // self.n_channels, level_gain)
                parametrize.register_parametrization(self.input_map, "weight", scale)
        elif kind == "conv":
            if conv_kernel > n_samples or conv_kernel < 1 or conv_stride < 1:
                raise ModelConfigError(
                    f"conv kernel {conv_kernel} / stride {conv_stride} do not fit a window of "
                    f"{n_samples} samples"
                )
            self.conv = nn.Conv1d(self.n_channels, conv_filters, conv_kernel, stride=conv_stride)
            positions = (n_samples - conv_kernel) // conv_stride + 1
            self.width = int(conv_filters * positions)
        else:
            raise ModelConfigError(f"first layer kind must be 'dense' or 'conv', not {kind!r}")
        self.act = activation_fn(activation, negative_slope)

    @property
    def input_map(self) -> nn.Linear:
        """The dense map from the pooled window: ``B`` of a low-rank layer, else the layer."""
        return self.down if self.down is not None else self.linear

    @torch.no_grad()
    def fit_input_scale(self, x: torch.Tensor) -> None:
        """Fit the level/shape standardisation (``level_gain`` set) on training windows
        ``(N, C, T)``; a no-op otherwise."""
        if self.kind != "dense" or not parametrize.is_parametrized(self.input_map, "weight"):
            return
        pooled = nn.functional.avg_pool1d(x, self.pool) if self.pool > 1 else x
        for p in self.input_map.parametrizations["weight"]:
            if isinstance(p, LevelShapeScale):
                p.fit(pooled[..., : p.n_positions])

    def noise_space(self, x: torch.Tensor) -> torch.Tensor:
        """The values the device's noise is added to: the standardised projections ``(N, r)``
        (``rank`` set), else the pre-activations ``(N, m)``, standardised when ``noise > 0``."""
        if self.kind == "dense":
            if self.pool > 1:
                x = nn.functional.avg_pool1d(x, self.pool)
            flat = x.reshape(x.shape[0], -1)
            u = self.input_map(flat)
            return self.norm(u) if self.norm is not None else u
        return self.conv(x).reshape(x.shape[0], -1)

    def _to_units(self, u: torch.Tensor) -> torch.Tensor:
        return self.linear(u) if self.down is not None else u

    def preactivation(self, x: torch.Tensor) -> torch.Tensor:
        """``W x + b`` (noise-free) for windows ``(N, C, T)`` -> ``(N, m)``."""
        return self._to_units(self.noise_space(x))

    def noisy_preactivation(
        self, x: torch.Tensor, generator: torch.Generator | None = None, repeats: int = 1
    ) -> torch.Tensor:
        """``W x + b + noise * M e``: the pre-activations as the device computes them.

        With ``repeats > 1`` each window's row is repeated (window-major) and every copy gets
        its own noise draw, as if the device had sent the window that many times.
        """
        u = self.noise_space(x)
        if repeats > 1:
            u = u.repeat_interleave(repeats, dim=0)
        if self.noise > 0:
            e = torch.randn(u.shape, generator=generator, device=u.device, dtype=u.dtype)
            u = u + self.noise * e
        return self._to_units(u)

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None, repeats: int = 1
    ) -> torch.Tensor:
        """Activations ``(N * repeats, m)`` of windows ``(N, C, T)``, with the device's noise."""
        return self.act(self.noisy_preactivation(x, generator, repeats))

    @torch.no_grad()
    def to_numpy(self) -> FirstLayer:
        """Export the device's :class:`FirstLayer` (float32).

        A dense layer keeps its factored form: time pooling, then the input map with the
        standardisation folded in, then ``A`` for a low-rank layer (the device computes
        ``r * (C*T/pool + m)`` multiply-adds, or ``m * C*T/pool`` at full rank); a convolution
        is exported as its equivalent dense matrix. Standardisation uses the running statistics
        (eval mode), whatever the current mode.
        """
        pool, factor = 1, None
        if self.kind == "dense":
            pool = self.pool
            linear = self.input_map
            weight = linear.weight.detach().cpu().double().numpy()  # parametrised: effective
            offset = np.zeros(weight.shape[0])
            if linear.bias is not None:
                offset = linear.bias.detach().cpu().double().numpy()
            if self.norm is not None:  # eval-mode BatchNorm: (u - running mean) / sd
                mean = self.norm.running_mean.detach().cpu().double().numpy()
                var = self.norm.running_var.detach().cpu().double().numpy()
                scale = 1.0 / np.sqrt(var + self.norm.eps)
                weight, offset = weight * scale[:, None], (offset - mean) * scale
            if self.down is not None:  # z = A u + b: the projection offset joins the bias
                factor = self.linear.weight.detach().cpu().double().numpy()
                offset = factor @ offset + self.linear.bias.detach().cpu().double().numpy()
            bias = offset
        else:
            n = self.n_channels * self.n_samples
            # the convolution's dense matrix, read off the unit basis
            dev = next(self.parameters()).device
            bias_t = self.preactivation(
                torch.zeros(1, self.n_channels, self.n_samples, device=dev)
            )[0]
            cols = []
            eye_chunk = 2048
            for start in range(0, n, eye_chunk):
                stop = min(n, start + eye_chunk)
                basis = torch.zeros(stop - start, n, device=dev)
                basis[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
                out = self.preactivation(basis.reshape(-1, self.n_channels, self.n_samples))
                cols.append((out - bias_t).T)
            weight = torch.cat(cols, dim=1).cpu().double().numpy()
            bias = bias_t.cpu().double().numpy()
        return FirstLayer(
            weight=weight.astype(np.float32),
            bias=bias.astype(np.float32),
            activation=self.activation_name,
            negative_slope=self.negative_slope,
            pool=pool,
            n_samples=self.n_samples,
            noise=self.noise,
            factor=None if factor is None else factor.astype(np.float32),
        )


def random_keep_mask(
    n: int, width: int, keep: int, generator: torch.Generator | None = None, device: Any = None
) -> torch.Tensor:
    """A float mask ``(n, width)`` with exactly ``keep`` ones per row, at random positions."""
    if keep >= width:
        return torch.ones(n, width, device=device)
    scores = torch.rand(n, width, generator=generator, device=device)
    idx = scores.topk(keep, dim=1).indices
    mask = torch.zeros(n, width, device=device)
    mask.scatter_(1, idx, 1.0)
    return mask


#: Version of the head's inputs and ``state_dict`` layout, stored as ``head_config["format"]``.
#: 1: zeros at dropped units, rescaled by ``m/K`` (bundles without the key). 2: ``fill`` is
#: ``"learned"`` or ``"zero"``, and dropped units arrive as NaN (or with an explicit mask).
#: 3: also ``fill="decode"`` (with ``rank``, ``activation``, ``negative_slope``).
HEAD_FORMAT = 3

#: How a head treats dropped units (see :class:`Head`).
FILLS = ("zero", "learned", "decode")

#: Ridge of the decoding head's normal equations, relative to their mean diagonal (at least 1):
#: negligible once ``rank`` units are known, and ``u = 0`` (the mean) when none is.
DECODE_RIDGE = 1e-5


def invert_activation(
    a: torch.Tensor, kept: torch.Tensor, activation: str, negative_slope: float = 0.01
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-activations ``z`` of kept activations ``a`` and where they are known exactly
    (``relu``: only positive values; ``tanh`` / ``sigmoid``: inside the open range)."""
    if activation == "relu":
        return a, kept & (a > 0)
    if activation == "leaky_relu":
        return torch.where(a >= 0, a, a / negative_slope), kept
    if activation == "tanh":
        valid = kept & (a.abs() < 1 - 1e-6)
        return torch.atanh(torch.where(valid, a, torch.zeros_like(a))), valid
    if activation == "sigmoid":
        valid = kept & (a > 1e-6) & (a < 1 - 1e-6)
        return torch.logit(torch.where(valid, a, torch.full_like(a, 0.5))), valid
    raise ModelConfigError(f"unknown activation {activation!r}; choose one of {ACTIVATIONS}")


class Head(nn.Module):
    """Server part: fill the dropped units, then an MLP.

    The input is the dense ``(N, m)`` activation matrix with **NaN at dropped units** (what
    :func:`dropstream.inference.batching.scatter_dense` builds), or any values with an explicit
    boolean keep ``mask``.

    Parameters
    ----------
    width : int
        First-layer width ``m``.
    keep : int
        Units kept per window ``K``.
    hidden : sequence of int
        Hidden layer sizes (default ``(512, 256)``).
    n_outputs : int
        Number of classes, or the embedding size of a novelty head.
    dropout : float
        Ordinary dropout between hidden layers during training.
    bias : bool
        Whether linear layers have a bias (a Deep SVDD novelty head uses ``False``).
    rescale : bool
        ``fill="zero"`` only: multiply the input by ``m / K`` (inverted-dropout scaling).
    fill : {"zero", "learned", "decode"}
        ``"zero"``: dropped units are zero (the head cannot tell a dropped unit from a kept unit
        at zero). ``"learned"``: a dropped unit takes a learned value (``fill_base``, the mean
        training activation, plus the learned ``fill_offset``) and the keep mask joins the
        input, so the MLP sees ``2 m`` numbers and knows which units were measured.
        ``"decode"`` (low-rank first layers ``z = A u + b``): the head solves the kept units
        whose pre-activation the activation reveals (ReLU: the positive ones) for the ``rank``
        projections ``u`` by least squares with the layer's ``A`` and ``b``
        (:meth:`set_units`; ``unit_weight``, ``unit_bias`` in the ``state_dict``) and feeds
        ``u`` to the MLP. ``rank`` known units give ``u`` exactly, so the head sees what the
        undropped layer sends, whichever units were kept. It learns nothing an attacker who
        knows the layer does not already get.
    rank : int, optional
        ``fill="decode"``: the first layer's rank ``r``.
    activation : str
        ``fill="decode"``: the first layer's activation (inverted on the kept units).
    negative_slope : float
        ``fill="decode"`` with ``leaky_relu``.
    decode_noise : float
        ``fill="decode"``: standard deviation of Gaussian noise added to the decoded
        projections while training (server-side augmentation; none in eval mode).
    """

    def __init__(
        self,
        width: int,
        keep: int,
        hidden: tuple[int, ...] | list[int] = (512, 256),
        n_outputs: int = 2,
        dropout: float = 0.25,
        bias: bool = True,
        rescale: bool = True,
        fill: str = "zero",
        rank: int | None = None,
        activation: str = "relu",
        negative_slope: float = 0.01,
        decode_noise: float = 0.0,
    ) -> None:
        super().__init__()
        self.decode_noise = float(decode_noise)
        if fill not in FILLS:
            raise ModelConfigError(f"head fill must be one of {FILLS}, not {fill!r}")
        self.width = int(width)
        self.keep = int(keep)
        self.rescale = bool(rescale)
        self.fill = fill
        self.activation = activation
        self.negative_slope = float(negative_slope)
        prev = self.width
        if fill == "learned":
            self.register_buffer("fill_base", torch.zeros(self.width))
            self.fill_offset = nn.Parameter(torch.zeros(self.width))
            prev = 2 * self.width
        elif fill == "decode":
            if rank is None or not 1 <= int(rank) < self.width or activation not in ACTIVATIONS:
                raise ModelConfigError(
                    f"a decoding head needs the first layer's rank (1 <= rank < {self.width}, "
                    f"got {rank!r}) and activation (one of {ACTIVATIONS}, got {activation!r})"
                )
            self.register_buffer("unit_weight", torch.zeros(self.width, int(rank)))
            self.register_buffer("unit_bias", torch.zeros(self.width))
            prev = int(rank)
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(prev, int(h), bias=bias), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            prev = int(h)
        layers.append(nn.Linear(prev, int(n_outputs), bias=bias))
        self.mlp = nn.Sequential(*layers)

    @torch.no_grad()
    def set_fill_base(self, activations: torch.Tensor) -> None:
        """Start the learned fill at the mean of undropped training activations ``(N, m)``."""
        if self.fill == "learned":
            self.fill_base.copy_(activations.mean(0))

    @torch.no_grad()
    def set_units(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """``fill="decode"``: the first layer's ``A (m, r)`` and ``b (m,)`` (``z = A u + b``)."""
        self.unit_weight.copy_(weight)
        self.unit_bias.copy_(bias)

    def decode(self, dense: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        """Least-squares projections ``u (N, r)`` from the kept units' revealed
        pre-activations (``fill="decode"``); no revealed unit gives ``u = 0`` (the mean)."""
        a = torch.where(kept, dense, torch.zeros((), dtype=dense.dtype, device=dense.device))
        z, known = invert_activation(a, kept, self.activation, self.negative_slope)
        w = known.to(dense.dtype)
        A = self.unit_weight.to(dense.dtype)
        gram = torch.einsum("nm,mr,ms->nrs", w, A, A)
        scale = gram.diagonal(dim1=1, dim2=2).mean(1).clamp(min=1.0)[:, None, None]
        gram = gram + DECODE_RIDGE * scale * torch.eye(A.shape[1], dtype=A.dtype, device=A.device)
        rhs = (w * (z - self.unit_bias.to(dense.dtype))) @ A
        return torch.linalg.solve(gram, rhs)

    def forward(self, dense: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Outputs for activations ``(N, m)``: NaN at dropped units, or ``mask`` (bool, True =
        kept) given."""
        kept = ~torch.isnan(dense) if mask is None else mask.bool()
        if self.fill == "decode":
            u = self.decode(dense, kept)
            if self.training and self.decode_noise > 0:
                u = u + self.decode_noise * torch.randn_like(u)
            return self.mlp(u)
        if self.fill == "zero":
            x = torch.where(kept, dense, torch.zeros((), dtype=dense.dtype, device=dense.device))
            if self.rescale:
                x = x * (self.width / self.keep)
        else:
            x = torch.where(kept, dense, self.fill_base + self.fill_offset)
            x = torch.cat([x, kept.to(x.dtype)], dim=1)
        return self.mlp(x)


class NoveltyScorer(nn.Module):
    """Deep SVDD head: squared distance of the head embedding to a fixed centre."""

    def __init__(self, head: Head, center: torch.Tensor) -> None:
        super().__init__()
        self.head = head
        self.register_buffer("center", center.detach().clone())

    @property
    def width(self) -> int:
        """First-layer width ``m`` (the head's)."""
        return self.head.width

    @property
    def keep(self) -> int:
        """Units kept per window ``K`` (the head's, so the two never disagree)."""
        return self.head.keep

    def forward(self, dense: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Anomaly scores ``(N,)`` of activations ``(N, m)`` (dropped units as in :class:`Head`)."""
        return ((self.head(dense, mask) - self.center) ** 2).sum(dim=1)


class SplitNet(nn.Module):
    """First layer + dropping + head, as trained (the device and server parts in one module)."""

    def __init__(self, first: TorchFirstLayer, head: Head, keep: int) -> None:
        super().__init__()
        self.first = first
        self.head = head
        self.keep = int(keep)

    def forward(
        self, x: torch.Tensor, n_masks: int = 1, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Head outputs for windows ``(N, C, T)``; with ``n_masks > 1`` each window is repeated
        with independent keep masks and the output has ``N * n_masks`` rows (window-major)."""
        a = self.first(x, generator, repeats=n_masks)
        mask = random_keep_mask(a.shape[0], a.shape[1], self.keep, generator, a.device)
        return self.head(a, mask.bool())


def validate_keep(
    keep: int,
    width: int,
    n_channels: int,
    n_samples: int,
    hop_samples: int | None,
    pool: int = 1,
) -> None:
    """The privacy guard for a planned model (raises ``PrivacyGuardError``).

    With time pooling (``pool > 1``) the first layer only sees ``C * (T // pool)`` averages, so
    ``K`` must also stay below that rank.
    """
    n_inputs = n_channels * n_samples
    hop_inputs = (
        n_channels * hop_samples
        if hop_samples is not None and 0 < hop_samples < n_samples
        else None
    )
    check_keep(int(keep), int(width), n_inputs, hop_inputs)
    rank = n_channels * (n_samples // pool)
    if pool > 1 and keep >= rank:
        # the layer only sees C * T/pool averages: keeping that many would reveal them
        raise PrivacyGuardError(
            f"keep K={keep} >= the {rank} time-averaged inputs (C*T/pool) the first layer "
            f"sees: the server could solve for them; choose K < {rank} or a smaller pool"
        )
