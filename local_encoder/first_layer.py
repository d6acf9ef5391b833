"""The localized first layer and its activation dropping, in numpy.

The first layer is an affine map of a flattened window (C channels x T samples, channel-major)
to ``m`` units, followed by an element-wise activation. A linear convolution is stored in its
equivalent dense form, so the device always computes ``a = f(W x + b)``. For every window a fresh
set of ``K`` units is kept and the rest are dropped (Dong et al., TIFS 2018): with ``K`` smaller
than the number of unknowns the server faces an under-determined system and cannot invert the
layer.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    weight : numpy.ndarray, shape (m, C*T), float32
        Dense weights over the flattened (channel-major) window.
    bias : numpy.ndarray, shape (m,), float32
    activation : str
        One of :data:`ACTIVATIONS`.
    negative_slope : float
        Slope of ``leaky_relu`` for negative inputs.
    noise : float
        Privacy noise: the device computes ``f(W x + b + noise * M e)`` with a fresh
        ``e ~ N(0, I)`` per window from an unpredictable generator (0 = none).
    noise_mix : numpy.ndarray or None, shape (m, r)
        ``M``; ``None`` is the identity (independent noise per unit). A low-rank layer
        ``W = A B`` stores ``A`` here, so the noise lives in the ``r`` projections.
    """

    weight: np.ndarray
    bias: np.ndarray
    activation: str = "relu"
    negative_slope: float = 0.01
    noise: float = 0.0
    noise_mix: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.weight.ndim != 2 or self.bias.shape != (self.weight.shape[0],):
            raise DropstreamError(
                f"first layer weight must be (m, n) and bias (m,); got {self.weight.shape} "
                f"and {self.bias.shape}"
            )
        if not (np.isfinite(self.noise) and self.noise >= 0):
            raise DropstreamError(f"first layer noise must be finite and >= 0, not {self.noise}")
        if self.noise_mix is not None and (
            self.noise_mix.ndim != 2 or self.noise_mix.shape[0] != self.weight.shape[0]
        ):
            raise DropstreamError(
                f"noise_mix must be (m, r) with m={self.weight.shape[0]}; "
                f"got {self.noise_mix.shape}"
            )
        if self.activation not in ACTIVATIONS:
            raise DropstreamError(
                f"unknown activation {self.activation!r}; choose one of {ACTIVATIONS}"
            )

    @property
    def width(self) -> int:
        """Number of units ``m``."""
        return int(self.weight.shape[0])

    @property
    def n_inputs(self) -> int:
        """Input dimension ``C * T``."""
        return int(self.weight.shape[1])

    def activate(self, z: np.ndarray) -> np.ndarray:
        """Apply the element-wise activation to pre-activations ``z``."""
        if self.activation == "relu":
            return np.maximum(z, 0.0)
        if self.activation == "leaky_relu":
            return np.where(z >= 0, z, self.negative_slope * z)
        if self.activation == "tanh":
            return np.tanh(z)
        return 1.0 / (1.0 + np.exp(-z))

    def forward(self, windows: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Activations of a window ``(C, T)`` -> ``(m,)`` or a batch ``(N, C, T)`` -> ``(N, m)``.

        With ``rng`` the layer's privacy noise (if any) is drawn from it and added to the
        pre-activations, as the device does; without, the noise-free map (for checks).
        """
        x = np.asarray(windows, dtype=np.float32)
        flat = x.reshape(-1, self.n_inputs) if x.ndim == 3 else x.reshape(self.n_inputs)
        z = flat @ self.weight.T + self.bias
        if rng is not None and self.noise > 0:
            z = z + self.draw_noise(rng, z.shape[:-1])
        return self.activate(z)

    def draw_noise(self, rng: np.random.Generator, batch: tuple[int, ...] = ()) -> np.ndarray:
        """``noise * M e`` for ``batch`` windows: shape ``(*batch, m)`` float32."""
        if self.noise_mix is None:
            e = rng.standard_normal((*batch, self.width), dtype=np.float32)
            return self.noise * e
        e = rng.standard_normal((*batch, self.noise_mix.shape[1]), dtype=np.float32)
        return self.noise * (e @ self.noise_mix.T)


def draw_kept_units(rng: np.random.Generator, width: int, keep: int) -> np.ndarray:
    """A fresh, sorted set of ``keep`` distinct unit indices out of ``width`` (uint16/uint32)."""
    idx = np.sort(rng.choice(width, size=keep, replace=False))
    return idx.astype(np.uint16 if width <= 65536 else np.uint32)
