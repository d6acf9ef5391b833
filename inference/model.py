"""The split network in torch: localized first layer, activation dropping, server head.

Layout (Dong et al., TIFS 2018, arXiv:1711.07520)::

    window (C, T) --[device]--> first layer a = f(W x + b), m units
                  --[device]--> keep K random units, drop the rest (fresh set per window)
                  --[server]--> head: scatter kept values into an m-vector (zeros elsewhere),
                                rescale by m/K, MLP m -> 512 -> 256 -> outputs

The device sends the raw kept values (no rescaling on the device). The server knows ``m`` and
``K`` from the bundle and multiplies the scattered vector by ``m / K`` (inverted-dropout
scaling) so that the head sees activations of the same scale for any keep setting. Training
applies exactly the same dropping, so the head works for any kept set.

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
        if kind == "dense":
            pooled = self.n_samples // self.pool
            self.linear = nn.Linear(self.n_channels * pooled, int(width))
            self.width = int(width)
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

    def preactivation(self, x: torch.Tensor) -> torch.Tensor:
        """``W x + b`` for windows ``(N, C, T)`` -> ``(N, m)``."""
        if self.kind == "dense":
            if self.pool > 1:
                x = nn.functional.avg_pool1d(x, self.pool)
            return self.linear(x.reshape(x.shape[0], -1))
        return self.conv(x).reshape(x.shape[0], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Activations ``(N, m)`` of windows ``(N, C, T)``."""
        return self.act(self.preactivation(x))

    @torch.no_grad()
    def to_numpy(self) -> FirstLayer:
        """Export the device's :class:`FirstLayer` (float32).

        A dense layer keeps its factored form: time pooling, then the small matrix (the device
        computes ``C * T / pool`` multiply-adds per unit); a convolution is exported as its
        equivalent dense matrix.
        """
        pool, n_samples = 1, 0
        if self.kind == "dense":
            weight = self.linear.weight.detach().cpu().double().numpy()
            bias = self.linear.bias.detach().cpu().double().numpy()
            if self.pool > 1:
                pool, n_samples = self.pool, self.n_samples
        else:
            n = self.n_channels * self.n_samples
            # any linear pre-map: read the dense matrix off the unit basis
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
            n_samples=n_samples,
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


class Head(nn.Module):
    """Server part: rescale the dropped activations by ``m/K`` and run an MLP.

    Parameters
    ----------
    width : int
        First-layer width ``m`` (input size).
    keep : int
        Units kept per window ``K``; the input is multiplied by ``m / K`` when ``rescale``.
    hidden : sequence of int
        Hidden layer sizes (default ``(512, 256)``).
    n_outputs : int
        Number of classes, or the embedding size of a novelty head.
    dropout : float
        Ordinary dropout between hidden layers during training.
    bias : bool
        Whether linear layers have a bias (a Deep SVDD novelty head uses ``False``).
    rescale : bool
        Multiply the input by ``m / K``.
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
    ) -> None:
        super().__init__()
        self.width = int(width)
        self.keep = int(keep)
        self.rescale = bool(rescale)
        layers: list[nn.Module] = []
        prev = self.width
        for h in hidden:
            layers += [nn.Linear(prev, int(h), bias=bias), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            prev = int(h)
        layers.append(nn.Linear(prev, int(n_outputs), bias=bias))
        self.mlp = nn.Sequential(*layers)

    def forward(self, dropped: torch.Tensor) -> torch.Tensor:
        """Outputs for dropped activations ``(N, m)`` (zeros at dropped units)."""
        if self.rescale:
            dropped = dropped * (self.width / self.keep)
        return self.mlp(dropped)


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

    def forward(self, dropped: torch.Tensor) -> torch.Tensor:
        """Anomaly scores ``(N,)`` of dropped activations ``(N, m)``."""
        return ((self.head(dropped) - self.center) ** 2).sum(dim=1)


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
        a = self.first(x)
        if n_masks > 1:
            a = a.repeat_interleave(n_masks, dim=0)
        mask = random_keep_mask(a.shape[0], a.shape[1], self.keep, generator, a.device)
        return self.head(a * mask)


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
