"""The localized first layer and its activation dropping, in numpy.

The first layer is an affine map of a flattened window (C channels x T samples, channel-major)
to ``m`` units, followed by an element-wise activation: ``a = f(W x + b)``. It is stored in the
factored form the device computes cheaply: an optional average pooling in time (blocks of
``pool`` samples per channel, a trailing remainder ignored, as ``torch.nn.functional.avg_pool1d``),
then the input map over the pooled inputs and, for a low-rank layer ``W = A B`` (the privacy
default), the ``m x r`` factor ``A`` after the ``r x n`` input map ``B``. A time-pooled rank-``r``
layer costs ``r * C * T / pool + m * r`` multiply-adds instead of ``m * C * T``. A linear
convolution is stored in its equivalent dense form (``pool = 1``, no factor).
:attr:`FirstLayer.dense_weight` gives the equivalent dense ``W`` of any layer (for audits). The
optional privacy noise is added to the input map's outputs (the ``r`` projections of a low-rank
layer, else the ``m`` pre-activations). For every window a fresh set of ``K`` units is kept and
the rest are dropped (Dong et al., TIFS 2018): with ``K`` smaller than the number of unknowns the
server faces an under-determined system and cannot invert the layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from dropstream.errors import DropstreamError

ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid")


class PrivacyGuardError(DropstreamError):
    """The first-layer settings would let the server reconstruct the raw window."""


def check_keep(keep: int, width: int, n_inputs: int, hop_inputs: int | None = None) -> None:
    """Refuse a keep count that makes the dropped layer invertible.

    Parameters
    ----------
    keep : int
        Number of units kept per window (``K``).
    width : int
        Number of first-layer units (``m``).
    n_inputs : int
        Input dimension of one window, ``C * T``.
    hop_inputs : int | None
        New unknowns each overlapping window adds, ``C * hop``; ``None`` when windows do not
        overlap. Each window brings ``K`` equations, so ``K < C * hop`` is required too.

    Raises
    ------
    PrivacyGuardError
        If ``K`` is not in ``[1, m]`` or not strictly below the number of unknowns.
    """
    if not 1 <= keep <= width:
        raise PrivacyGuardError(f"keep K={keep} must be between 1 and the layer width m={width}")
    if keep >= n_inputs:
        raise PrivacyGuardError(
            f"keep K={keep} >= window input dimension C*T={n_inputs}: the server could solve "
            "for the raw window; choose K < C*T"
        )
    if hop_inputs is not None and keep >= hop_inputs:
        raise PrivacyGuardError(
            f"keep K={keep} >= new unknowns per overlapping window C*hop={hop_inputs}: joined "
            "across windows the server could solve for the signal; choose K < C*hop or a "
            "longer hop"
        )


@dataclass(frozen=True)
class FirstLayer:
    """Weights and activation of the device-side first layer.

    Attributes
    ----------
    weight : numpy.ndarray, shape (m, n) or (r, n), float32
        The input map: over the flattened (channel-major) window, ``n = C*T``, or with
        ``pool > 1`` over the pooled window, ``n = C * (T // pool)``; ``r`` rows with a
        ``factor``.
    bias : numpy.ndarray, shape (m,), float32
    activation : str
        One of :data:`ACTIVATIONS`.
    negative_slope : float
        Slope of ``leaky_relu`` for negative inputs.
    pool : int
        Average each channel over non-overlapping blocks of ``pool`` samples before ``weight``;
        ``1`` (the default, and every bundle written before pooling was factored) for none.
    n_samples : int
        Window length ``T`` in samples; required when ``pool > 1`` (it fixes ``C`` and the
        ignored remainder ``T % pool``), optional otherwise.
    noise : float
        Privacy noise: the device computes ``f(A (B x + noise * e) + b)`` (low-rank) or
        ``f(W x + b + noise * e)`` with a fresh ``e ~ N(0, I)`` per window from an
        unpredictable generator (0 = none).
    factor : numpy.ndarray or None, shape (m, r), float32
        ``A`` of a low-rank layer ``W = A B``: ``weight`` is then ``B`` (r, n). ``None``:
        ``weight`` maps straight to the ``m`` units.
    """

    weight: np.ndarray
    bias: np.ndarray
    activation: str = "relu"
    negative_slope: float = 0.01
    pool: int = 1
    n_samples: int = 0
    noise: float = 0.0
    factor: np.ndarray | None = None

    def __post_init__(self) -> None:
        rows = self.weight.shape[0] if self.weight.ndim == 2 else -1
        if self.factor is not None and (self.factor.ndim != 2 or self.factor.shape[1] != rows):
            raise DropstreamError(
                f"first layer factor must be (m, r) with r={rows} (the weight's rows); "
                f"got {self.factor.shape}"
            )
        m = rows if self.factor is None else self.factor.shape[0]
        if self.weight.ndim != 2 or self.bias.shape != (m,):
            raise DropstreamError(
                f"first layer weight must be (m, n) (or (r, n) with a factor) and bias (m,); "
                f"got {self.weight.shape} and {self.bias.shape}"
            )
        if not (np.isfinite(self.noise) and self.noise >= 0):
            raise DropstreamError(f"first layer noise must be finite and >= 0, not {self.noise}")
        if self.activation not in ACTIVATIONS:
            raise DropstreamError(
                f"unknown activation {self.activation!r}; choose one of {ACTIVATIONS}"
            )
        if self.pool < 1 or (self.pool > 1 and self.n_samples < self.pool):
            raise DropstreamError(
                f"first layer pool={self.pool} needs n_samples >= pool (got {self.n_samples}); "
                "give the window length T with a pooled layer"
            )
        if self.pool > 1 and self.weight.shape[1] % (self.n_samples // self.pool):
            raise DropstreamError(
                f"pooled weight has {self.weight.shape[1]} inputs, not a multiple of the "
                f"{self.n_samples // self.pool} pooled samples per channel (T={self.n_samples}, "
                f"pool={self.pool})"
            )
        # the device computes in float32 from contiguous arrays
        object.__setattr__(self, "weight", np.ascontiguousarray(self.weight, np.float32))
        object.__setattr__(self, "bias", np.ascontiguousarray(self.bias, np.float32))
        if self.factor is not None:
            object.__setattr__(self, "factor", np.ascontiguousarray(self.factor, np.float32))

    @property
    def width(self) -> int:
        """Number of units ``m``."""
        return int(self.bias.shape[0])

    @property
    def noise_mix(self) -> np.ndarray | None:
        """``M`` of the pre-activation noise ``noise * M e``: the factor ``A`` (m, r) of a
        low-rank layer, ``None`` for the identity."""
        return self.factor

    @property
    def pooled_samples(self) -> int:
        """Pooled samples per channel, ``T // pool`` (``0`` when ``T`` is not given, pool 1)."""
        return self.n_samples // self.pool

    @property
    def n_channels(self) -> int | None:
        """Channels ``C`` when known from the layer alone (pooled, or ``n_samples`` given)."""
        if self.n_samples:
            return int(self.weight.shape[1]) // self.pooled_samples
        return None

    @property
    def n_inputs(self) -> int:
        """Input dimension of one window, ``C * T``."""
        if self.pool == 1:
            return int(self.weight.shape[1])
        return int(self.n_channels or 0) * self.n_samples

    @property
    def rank_inputs(self) -> int:
        """Inputs the matrix sees, ``C * T // pool``: the most independent values a window gives."""
        return int(self.weight.shape[1])

    @cached_property
    def dense_input_map(self) -> np.ndarray:
        """The input map over the unpooled window, ``(m, C*T)`` or ``(r, C*T)`` with a factor
        (float32): ``weight`` with the pooling spread over each block's samples."""
        w = self.weight
        if self.pool == 1:
            return w
        rows = w.shape[0]
        c, p, t = int(self.n_channels or 0), self.pooled_samples, self.n_samples
        dense = np.zeros((rows, c, t), np.float32)
        blocks = w.reshape(rows, c, p) / np.float32(self.pool)
        for k in range(self.pool):  # sample j * pool + k of block j gets the block's weight
            dense[:, :, k : p * self.pool : self.pool] = blocks
        return dense.reshape(rows, c * t)

    @cached_property
    def dense_weight(self) -> np.ndarray:
        """The equivalent dense ``W`` of shape ``(m, C*T)`` (float32), for audits."""
        w = self.dense_input_map
        if self.factor is None:
            return w
        return (self.factor.astype(np.float64) @ w.astype(np.float64)).astype(np.float32)

    def activate(self, z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Apply the element-wise activation to pre-activations ``z`` (into ``out`` if given)."""
        if self.activation == "relu":
            return np.maximum(z, 0.0, out=out)
        if self.activation == "leaky_relu":
            y = np.where(z >= 0, z, np.float32(self.negative_slope) * z)
            if out is None:
                return y
            out[...] = y
            return out
        if self.activation == "tanh":
            return np.tanh(z, out=out)
        if out is None:
            return 1.0 / (1.0 + np.exp(-z))
        np.negative(z, out=out)
        np.exp(out, out=out)
        out += 1.0
        return np.reciprocal(out, out=out)

    def pool_windows(self, windows: np.ndarray) -> np.ndarray:
        """Pooled flat inputs ``(..., C*T//pool)`` of windows ``(..., C, T)``, channel-major."""
        x = np.asarray(windows, dtype=np.float32)
        if self.pool == 1:
            return x.reshape(*x.shape[:-2], -1)
        p = self.pooled_samples
        blocks = x[..., : p * self.pool].reshape(*x.shape[:-1], p, self.pool)
        return blocks.mean(axis=-1, dtype=np.float32).reshape(*x.shape[:-2], -1)

    def forward(self, windows: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Activations of a window ``(C, T)`` -> ``(m,)`` or a batch ``(N, C, T)`` -> ``(N, m)``.

        With ``rng`` the layer's privacy noise (if any) is drawn from it and added to the
        pre-activations, as the device does; without, the noise-free map (for checks).
        """
        x = np.asarray(windows, dtype=np.float32)
        if self.pool == 1:
            flat = x.reshape(-1, self.n_inputs) if x.ndim == 3 else x.reshape(self.n_inputs)
        else:
            flat = self.pool_windows(x)
        u = flat @ self.weight.T
        if rng is not None and self.noise > 0:
            u = u + self.noise * rng.standard_normal(u.shape, dtype=np.float32)
        z = (u if self.factor is None else u @ self.factor.T) + self.bias
        return self.activate(z)

    def draw_noise(self, rng: np.random.Generator, batch: tuple[int, ...] = ()) -> np.ndarray:
        """The pre-activation noise ``noise * M e`` for ``batch`` windows: ``(*batch, m)``
        float32 (``M`` = :attr:`noise_mix`)."""
        e = rng.standard_normal((*batch, self.weight.shape[0]), dtype=np.float32)
        return self.noise * (e if self.factor is None else e @ self.factor.T)

    def runner(self) -> LayerRunner:
        """A single-window evaluator with its own preallocated buffers (one per stream)."""
        return LayerRunner(self)


class LayerRunner:
    """Evaluate one :class:`FirstLayer` window after window without allocating.

    Holds the pooled-input, projection, noise and output buffers; the pooling's ``1 / pool`` is
    folded into a float32 copy of the input map, so a window costs one strided sum and one
    matrix-vector product (two for a low-rank layer: ``B`` then ``A``). Not thread-safe: each
    stream (encoder) owns one.

    Parameters
    ----------
    layer : FirstLayer
    """

    def __init__(self, layer: FirstLayer) -> None:
        self.layer = layer
        self._weight = layer.weight if layer.pool == 1 else layer.weight / np.float32(layer.pool)
        self._pooled = np.empty(layer.rank_inputs, np.float32)
        self._u = np.empty(layer.weight.shape[0], np.float32)
        self._e = np.empty(layer.weight.shape[0], np.float32)
        self._out = np.empty(layer.width, np.float32)

    def __call__(self, window: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Activations ``(m,)`` of one window ``(C, T)``; a view of a buffer reused next call.

        With ``rng`` the layer's privacy noise (if any) is drawn from it, as
        :meth:`FirstLayer.forward` does.
        """
        layer = self.layer
        x = window if window.dtype == np.float32 else window.astype(np.float32)
        if layer.pool == 1:
            flat = x.reshape(layer.rank_inputs)
        else:
            # block sums as pool - 1 adds of strided views (sample i of every block): ~5 us
            # for 64 x 160, where np.add.reduce over a length-2 last axis takes ~80 us
            p, k = layer.pooled_samples, layer.pool
            pooled = self._pooled.reshape(x.shape[0], p)
            np.add(x[:, 0 : p * k : k], x[:, 1 : p * k : k], out=pooled)
            for i in range(2, k):
                pooled += x[:, i : p * k : k]
            flat = self._pooled
        u = np.matmul(self._weight, flat, out=self._u)
        if rng is not None and layer.noise > 0:
            rng.standard_normal(dtype=np.float32, out=self._e)
            self._e *= np.float32(layer.noise)
            u += self._e
        if layer.factor is None:
            z = np.add(u, layer.bias, out=self._out)
        else:
            z = np.matmul(layer.factor, u, out=self._out)
            z += layer.bias
        return layer.activate(z, out=z)


def draw_kept_units(rng: np.random.Generator, width: int, keep: int) -> np.ndarray:
    """A fresh, sorted set of ``keep`` distinct unit indices out of ``width`` (uint16/uint32)."""
    idx = np.sort(rng.choice(width, size=keep, replace=False))
    return idx.astype(np.uint16 if width <= 65536 else np.uint32)
