"""Reconstruction attacks on dropped first-layer activations (numpy / scipy).

The attacker is the server (or anyone reading the topic). It knows the first layer (``W``, ``b``,
activation), ``K`` and every message: per window the sorted kept unit indices and their values
(float16 on the wire by default). It does not know the window ``x`` (``C * T`` numbers,
channel-major). Each kept value ``v_i = f(w_i . x + b_i)`` becomes a constraint on the
pre-activation ``z_i = w_i . x + b_i``:

* an *equality* ``z_i = f^{-1}(v_i)`` where ``f`` is invertible at ``v_i`` (ReLU with
  ``v_i > 0``, leaky ReLU, tanh / sigmoid away from saturation), with the float16 rounding
  error carried through ``f^{-1}`` as per-unit noise;
* a one-sided *bound* where it is not: a ReLU zero says only ``z_i <= 0``; a saturated tanh /
  sigmoid says ``z_i >= f^{-1}(v_max)`` (or ``<=``).

Attacks (see :data:`ATTACKS`):

``naive``
    Treats dropped units as zeros and fits all ``m`` equations (what a server that ignores the
    mask does; the comparison point of published attacks).
``ridge``
    Mask-aware: the kept units only, equalities and bounds, minimum-norm (ridge) solution; bounds
    are enforced exactly by a small non-negative least-squares dual.
``prior``
    As ``ridge`` but with a Gaussian prior on the window (mean and a separable
    channel x time covariance estimated on *other* recordings): the MAP / Wiener estimate. This
    is the best *linear-Gaussian* attacker and exploits that EEG is smooth and correlated.
``kernel``
    The posterior mean under the attacker's own windows as an empirical prior
    (:class:`KernelAttack`): no linear or Gaussian assumption.
``joint``
    All windows of one stream at once: windows that overlap share samples, so the equations of
    every window are stacked over the stream's unknowns (ridge + squared-hinge penalty for the
    bounds, solved with L-BFGS).

:func:`label_attack` is the task floor (the class-mean window). Every attack knows the layer's
privacy defences: its noise (scale and mixing) is part of the :class:`FirstLayer` and enters
the likelihoods, and a low-rank layer is simply a dense weight of low rank. The learned decoder
(torch) lives in :mod:`dropstream.inference.audit.decoder`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize

from dropstream.local_encoder.first_layer import FirstLayer, draw_kept_units
from dropstream.local_encoder.framing import window_starts

#: Names of the numpy attacks in this module, strongest assumptions last.
ATTACKS = ("naive", "ridge", "prior", "kernel", "joint")


@dataclass(frozen=True)
class Messages:
    """What the server sees of ``N`` windows.

    Attributes
    ----------
    indices : numpy.ndarray, shape (N, K), int64
        Sorted kept unit indices per window.
    values : numpy.ndarray, shape (N, K), float32
        Kept activation values as received (already rounded to the wire dtype).
    width : int
        Layer width ``m``.
    value_dtype : str
        Wire dtype of the values (``"float16"`` or ``"float32"``), for the rounding model.
    """

    indices: np.ndarray
    values: np.ndarray
    width: int
    value_dtype: str = "float16"

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def dense(self, fill: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Values scattered to ``(N, m)`` (``fill`` at dropped units) and the 0/1 mask."""
        n = len(self)
        dense = np.full((n, self.width), fill, np.float32)
        mask = np.zeros((n, self.width), np.float32)
        rows = np.arange(n)[:, None]
        dense[rows, self.indices] = self.values
        mask[rows, self.indices] = 1.0
        return dense, mask


def observe(
    layer: FirstLayer,
    windows: np.ndarray,
    keep: int,
    rng: np.random.Generator,
    value_dtype: str = "float16",
) -> Messages:
    """Run the device side on windows ``(N, C, T)``: forward, keep ``K`` random units, round.

    ``keep`` equal to the width sends everything (no dropping). The layer's privacy noise is
    drawn from ``rng``. The guard is not consulted: the audit must be able to measure the
    settings the guard forbids.
    """
    act = layer.forward(np.asarray(windows, np.float32), rng)  # with the device's noise
    act = act.reshape(-1, layer.width)
    n = act.shape[0]
    idx = np.stack([draw_kept_units(rng, layer.width, keep).astype(np.int64) for _ in range(n)])
    vals = np.take_along_axis(act, idx, axis=1)
    vals = vals.astype(np.dtype(value_dtype)).astype(np.float32)
    return Messages(indices=idx, values=vals, width=layer.width, value_dtype=value_dtype)


def subsample_windows(
    windows: np.ndarray, max_windows: int, rng: np.random.Generator
) -> np.ndarray:
    """``windows`` as float32, at most ``max_windows`` of them (a random subset, in order): the
    attacker data of the learned attacks (:class:`KernelAttack`, the subspace attack)."""
    x = np.asarray(windows, np.float32)
    if len(x) > max_windows:
        x = x[np.sort(rng.choice(len(x), max_windows, replace=False))]
    return x


def preactivation_bounds(
    values: np.ndarray, layer: FirstLayer, value_dtype: str = "float16"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Invert the activation of received values into bounds on the pre-activation.

    Parameters
    ----------
    values : numpy.ndarray
        Received activation values (any shape).
    layer : FirstLayer
        For the activation and the leaky slope.
    value_dtype : str
        Wire dtype; its rounding step sets the noise of each inverted value.

    Returns
    -------
    lo, hi : numpy.ndarray
        Bounds ``lo <= z <= hi`` (``-inf`` / ``inf`` where open); ``lo == hi`` is an equality.
    var : numpy.ndarray
        Variance of the inverted value from rounding (uniform error of half a step, propagated
        through ``f^{-1}``); meaningful where ``lo == hi``.
    """
    v = np.asarray(values, np.float64)
    dt = np.dtype(value_dtype)
    ulp = np.spacing(np.abs(v).astype(dt)).astype(np.float64)
    lo = np.full(v.shape, -np.inf)
    hi = np.full(v.shape, np.inf)
    act = layer.activation
    if act == "relu":
        pos = v > 0
        lo[pos] = hi[pos] = v[pos]
        hi[~pos] = 0.0
        deriv = np.ones_like(v)
    elif act == "leaky_relu":
        s = float(layer.negative_slope)
        z = np.where(v >= 0, v, v / s)
        lo[:] = hi[:] = z
        deriv = np.where(v >= 0, 1.0, 1.0 / s)
    elif act == "tanh":
        top = 1.0 - np.spacing(np.asarray(1.0, dt)).astype(np.float64)
        sat_hi = v >= top
        sat_lo = v <= -top
        ok = ~(sat_hi | sat_lo)
        z = np.arctanh(np.clip(v, -top, top))
        lo[ok] = hi[ok] = z[ok]
        lo[sat_hi] = np.arctanh(top)
        hi[sat_lo] = -np.arctanh(top)
        deriv = 1.0 / np.maximum(1.0 - v * v, 1e-12)
    else:  # sigmoid
        tiny = float(np.finfo(dt).smallest_subnormal)
        top = 1.0 - np.spacing(np.asarray(1.0, dt)).astype(np.float64)
        sat_hi = v >= top
        sat_lo = v <= tiny
        ok = ~(sat_hi | sat_lo)
        vc = np.clip(v, tiny, top)
        z = np.log(vc) - np.log1p(-vc)
        lo[ok] = hi[ok] = z[ok]
        lo[sat_hi] = np.log(top) - np.log1p(-top)
        hi[sat_lo] = np.log(tiny) - np.log1p(-tiny)
        deriv = 1.0 / np.maximum(vc * (1.0 - vc), 1e-12)
    var = (deriv * ulp / 2.0) ** 2 / 3.0
    return lo, hi, var


@dataclass(frozen=True)
class GaussianPrior:
    """A Gaussian prior on the flattened window: ``x ~ N(mean, kron(spatial, temporal))``.

    Attributes
    ----------
    mean : numpy.ndarray, shape (C,) or (C, T)
        Per-channel mean of the (normalised) signal, or the mean window (trials aligned to a
        cue share a shape).
    spatial : numpy.ndarray, shape (C, C)
        Channel covariance (per sample).
    temporal : numpy.ndarray, shape (T, T)
        Stationary temporal correlation (Toeplitz, unit diagonal).
    """

    mean: np.ndarray
    spatial: np.ndarray
    temporal: np.ndarray

    @classmethod
    def identity(cls, n_channels: int, n_samples: int, scale: float = 1.0) -> GaussianPrior:
        """White prior (plain ridge): zero mean, ``scale`` times the identity."""
        return cls(
            mean=np.zeros(n_channels),
            spatial=scale * np.eye(n_channels),
            temporal=np.eye(n_samples),
        )

    @classmethod
    def fit(
        cls, windows: np.ndarray, shrinkage: float = 0.05, mean_window: bool = False
    ) -> GaussianPrior:
        """Estimate a separable prior from training windows ``(N, C, T)``.

        The mean is the mean window (``mean_window``) or per channel. The covariance of the
        deviations is stationary and separable: the temporal part is the biased autocorrelation
        (so positive semi-definite) averaged over windows and channels; the spatial part is the
        sample channel covariance, shrunk towards its diagonal by ``shrinkage``.
        """
        x = np.asarray(windows, np.float64)
        _, c, t = x.shape
        mean = x.mean(axis=0) if mean_window else x.mean(axis=(0, 2))
        xc = x - (mean[None] if mean_window else mean[None, :, None])
        spec = np.abs(np.fft.rfft(xc, n=2 * t, axis=-1)) ** 2
        acf = np.fft.irfft(spec.mean(axis=(0, 1)), n=2 * t)[:t]
        acf = acf / acf[0]
        lags = np.abs(np.arange(t)[:, None] - np.arange(t)[None, :])
        temporal = acf[lags]
        spatial = np.einsum("nct,ndt->cd", xc, xc) / (x.shape[0] * t)
        spatial = (1.0 - shrinkage) * spatial + shrinkage * np.diag(np.diag(spatial))
        return cls(mean=mean, spatial=spatial, temporal=temporal)

    def flat_mean(self) -> np.ndarray:
        """Prior mean of the flattened window ``(C*T,)``."""
        if self.mean.ndim == 2:
            return self.mean.ravel().copy()
        return np.repeat(self.mean, self.temporal.shape[0])

    def times_weights(self, weight: np.ndarray) -> np.ndarray:
        """``Sigma @ W.T`` for a weight ``(m, C*T)``, returned ``(C*T, m)``."""
        c, t = self.spatial.shape[0], self.temporal.shape[0]
        w = np.asarray(weight, np.float64).reshape(-1, c, t)
        sw = np.einsum("cd,mdt,ts->mcs", self.spatial, w, self.temporal)
        return sw.reshape(w.shape[0], c * t).T


class WindowAttack:
    """Per-window MAP reconstruction under a Gaussian prior with exact bound constraints.

    For each window with equality set ``E`` (targets ``y``) and bound set ``U`` the estimate is
    ``argmin (z_E - y)' N^-1 (z_E - y) + (x - mu)' Sigma^-1 (x - mu)`` subject to the bounds,
    where ``N`` is the rounding noise, the layer's own privacy noise (known to the attacker:
    ``noise^2 M M'``, correlated across units for a low-rank layer) and a small jitter. The
    equalities and bounds then hold for the noisy pre-activations. The unconstrained part is the
    closed-form Gaussian posterior mean; the bounds are then imposed exactly through the dual,
    a non-negative least-squares problem of size ``|U|`` (Cholesky of the posterior covariance
    of the bounded pre-activations).

    Parameters
    ----------
    layer : FirstLayer
    prior : GaussianPrior
        :meth:`GaussianPrior.identity` gives the plain ridge (minimum-norm) attacker.
    use_bounds : bool
        Use the one-sided constraints (ReLU zeros, saturation) or ignore them.
    jitter : float
        Relative ridge added to the equation noise, times the mean prior variance of ``z``.
    """

    def __init__(
        self,
        layer: FirstLayer,
        prior: GaussianPrior,
        use_bounds: bool = True,
        jitter: float = 1e-6,
    ) -> None:
        self.layer = layer
        self.use_bounds = use_bounds
        w = np.asarray(layer.dense_weight, np.float64)
        self.bias = np.asarray(layer.bias, np.float64)
        self.mu = prior.flat_mean()
        self.sw = prior.times_weights(w)  # (n, m) = Sigma W'
        wsw = w @ self.sw  # (m, m)
        self.floor = jitter * float(np.mean(np.diag(wsw)))
        if layer.noise > 0:  # covariance of the device noise on z
            mix = np.eye(layer.width) if layer.noise_mix is None else layer.noise_mix
            mix = np.asarray(mix, np.float64)
            wsw = wsw + layer.noise**2 * (mix @ mix.T)
        self.wsw = 0.5 * (wsw + wsw.T)  # prior covariance of the (noisy) pre-activations
        self.z_mu = w @ self.mu + self.bias  # prior mean of z

    def solve(self, idx: np.ndarray, lo: np.ndarray, hi: np.ndarray, var: np.ndarray) -> np.ndarray:
        """Reconstruct one flattened window from the bounds on units ``idx``."""
        eq = np.isfinite(lo) & np.isfinite(hi) & (lo == hi)
        e = idx[eq]
        x = self.mu.copy()
        alpha = np.zeros(0)
        if e.size:
            m_ee = self.wsw[np.ix_(e, e)] + np.diag(var[eq] + self.floor)
            chol = np.linalg.cholesky(m_ee)
            resid = lo[eq] - self.z_mu[e]
            alpha = _chol_solve(chol, resid)
            x += self.sw[:, e] @ alpha
        if not self.use_bounds:
            return x
        upper = ~eq & np.isfinite(hi)
        lower = ~eq & np.isfinite(lo)
        u = np.concatenate([idx[upper], idx[lower]])
        if not u.size:
            return x
        sign = np.concatenate([np.ones(upper.sum()), -np.ones(lower.sum())])
        h = np.concatenate([hi[upper], -lo[lower]])
        # posterior covariance of z_U (and Sigma W_U' projected) given the equalities
        s_u = self.sw[:, u].copy()
        q = self.wsw[np.ix_(u, u)].copy()
        if e.size:
            p_eu = self.wsw[np.ix_(e, u)]
            g = _chol_solve(chol, p_eu)
            s_u -= self.sw[:, e] @ g
            q -= p_eu.T @ g
        s_u *= sign[None, :]
        q *= np.outer(sign, sign)
        # posterior mean of the (noisy) bounded pre-activations given the equalities
        z_now = sign * (self.z_mu[u] + (self.wsw[np.ix_(u, e)] @ alpha if e.size else 0.0))
        c = z_now - h  # constraint values minus bounds: violated where > 0
        if not np.any(c > 0):
            return x
        # dual: min_{lam >= 0} 1/2 lam' Q lam - lam' c  <=>  nnls(L', L^-1 c)
        q = 0.5 * (q + q.T) + np.eye(u.size) * (self.floor + 1e-12)
        lq = np.linalg.cholesky(q)
        rhs = np.linalg.solve(lq, c)
        lam, _ = optimize.nnls(lq.T, rhs, maxiter=50 * u.size)
        return x - s_u @ lam

    def reconstruct(self, messages: Messages, n_channels: int) -> np.ndarray:
        """Reconstruct every window of ``messages``; returns ``(N, C, T)`` float32."""
        lo, hi, var = preactivation_bounds(messages.values, self.layer, messages.value_dtype)
        out = np.empty((len(messages), self.layer.n_inputs), np.float64)
        for i in range(len(messages)):
            out[i] = self.solve(messages.indices[i], lo[i], hi[i], var[i])
        return out.reshape(len(messages), n_channels, -1).astype(np.float32)


def _chol_solve(chol: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.linalg import solve_triangular

    y = solve_triangular(chol, b, lower=True)
    return solve_triangular(chol.T, y, lower=False)


def naive_attack(layer: FirstLayer, messages: Messages, n_channels: int) -> np.ndarray:
    """The mask-blind attacker: dropped units read as activation 0, all ``m`` units fitted.

    Every unit, dropped or not, becomes the equality ``z_i = f^{-1}(v_i)`` (a ReLU zero is read
    as ``z_i = 0``), solved by minimum-norm least squares. Returns ``(N, C, T)``.
    """
    dense, _ = messages.dense(fill=0.0)
    lo, hi, var = preactivation_bounds(dense, layer, messages.value_dtype)
    z = np.where(lo == hi, lo, np.where(np.isfinite(hi), hi, lo))
    w = np.asarray(layer.dense_weight, np.float64)
    target = z - np.asarray(layer.bias, np.float64)[None, :]
    x, *_ = np.linalg.lstsq(w, target.T, rcond=1e-6)
    return x.T.reshape(len(messages), n_channels, -1).astype(np.float32)


def joint_attack(
    layer: FirstLayer,
    messages: Messages,
    n_channels: int,
    n_samples: int,
    hop: int,
    ridge: float = 1e-3,
    penalty: float = 1.0,
    use_bounds: bool = True,
    max_iter: int = 400,
) -> np.ndarray:
    """Reconstruct a whole stream from the messages of all its (overlapping) windows.

    Unknown: the stream ``(C, L)``. Window ``j`` covers samples ``[j*hop, j*hop + T)`` and gives
    its kept equalities and bounds. Minimises, over the stream,
    ``sum_eq (z - y)^2 / s_z^2 + ridge * |x|^2 + penalty * sum_bounds hinge(z)^2 / s_z^2``
    (``s_z^2`` the mean pre-activation scale) with L-BFGS, starting from zero.

    Returns
    -------
    numpy.ndarray, shape (C, L)
        The reconstructed stream; samples no window covers stay 0.
    """
    w = np.asarray(layer.dense_weight, np.float64)
    b = np.asarray(layer.bias, np.float64)
    t = layer.n_inputs // n_channels
    starts = window_starts(n_samples, t, hop)
    if starts.size != len(messages):
        raise ValueError(
            f"{len(messages)} messages but a stream of {n_samples} samples has {starts.size} "
            f"windows of {t} samples at hop {hop}"
        )
    lo, hi, _ = preactivation_bounds(messages.values, layer, messages.value_dtype)
    rows = np.arange(len(messages))[:, None]
    eq = np.isfinite(lo) & (lo == hi)
    up = ~eq & np.isfinite(hi)
    dn = ~eq & np.isfinite(lo)
    scale = float(np.mean(np.sum(w * w, axis=1)))
    gather = starts[:, None] + np.arange(t)[None, :]  # (N, T)

    def windows_of(xs: np.ndarray) -> np.ndarray:
        return xs[:, gather].transpose(1, 0, 2).reshape(len(starts), -1)

    def objective(flat: np.ndarray) -> tuple[float, np.ndarray]:
        xs = flat.reshape(n_channels, n_samples)
        xw = windows_of(xs)
        z_all = xw @ w.T + b  # (N, m)
        z = z_all[rows, messages.indices]  # (N, K)
        r = np.zeros_like(z)
        r[eq] = z[eq] - lo[eq]
        if use_bounds:
            r[up] = np.maximum(z[up] - hi[up], 0.0) * np.sqrt(penalty)
            r[dn] = np.minimum(z[dn] - lo[dn], 0.0) * np.sqrt(penalty)
        f = float((r * r).sum()) / scale + ridge * float(flat @ flat)
        if use_bounds:
            r[up] *= np.sqrt(penalty)
            r[dn] *= np.sqrt(penalty)
        g_z = np.zeros_like(z_all)
        g_z[rows, messages.indices] = 2.0 * r / scale
        g_w = (g_z @ w).reshape(len(starts), n_channels, t)
        g = np.zeros((n_channels, n_samples))
        for j, s in enumerate(starts):
            g[:, s : s + t] += g_w[j]
        return f, g.ravel() + 2.0 * ridge * flat

    res = optimize.minimize(
        objective,
        np.zeros(n_channels * n_samples),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iter, "maxcor": 20},
    )
    return res.x.reshape(n_channels, n_samples).astype(np.float32)


def label_attack(
    attacker_windows: np.ndarray,
    attacker_labels: np.ndarray | None,
    labels: np.ndarray | None,
    n: int,
) -> np.ndarray:
    """The task floor: predict each window by the mean attacker window of its label.

    This is what an attacker learns from the task's answer alone (the server must learn that
    answer) plus population statistics. Windows whose label is unknown, or absent from the
    attacker's data, get the mean of all attacker windows (for a novelty model: the mean normal
    window). Returns ``(n, C, T)`` float32 (``labels``, when given, has ``n`` entries).
    """
    x = np.asarray(attacker_windows, np.float64)
    overall = x.mean(axis=0)
    if labels is None or attacker_labels is None:
        return np.broadcast_to(overall, (n, *overall.shape)).astype(np.float32)
    means = {c: x[attacker_labels == c].mean(axis=0) for c in np.unique(attacker_labels)}
    return np.stack([means.get(c, overall) for c in labels]).astype(np.float32)


class KernelAttack:
    """Posterior mean under the attacker's own windows as the prior (Nadaraya-Watson).

    The attacker pushes its windows ``x_j`` through the device (the very layer, its noise and
    rounding) and, for a received message, weighs each ``x_j`` by the likelihood of the kept
    values given ``x_j``: ``w_j ~ exp(-|v - a_j|^2 / (2 h^2))`` over the kept units (the
    ReLU zeros included), with ``a_j`` its own activations at those units. The reconstruction is
    ``sum_j w_j x_j``. Unlike the Gaussian prior it makes no linear or stationary assumption:
    it recovers whatever the messages say about *which* kind of window was sent (for a
    task-shaped, low-rank or noisy layer, mostly its class), so it is the attack a defence that
    hides the fine structure must still face. The bandwidth ``h`` is chosen on the attacker's
    data by leave-one-out (fresh masks and noise), never on the attacked windows.

    Parameters
    ----------
    layer : FirstLayer
    windows : numpy.ndarray, shape (N, C, T)
        The attacker's windows.
    keep : int
    rng : numpy.random.Generator
    value_dtype : str
    max_windows : int
        At most this many attacker windows (a random subset) form the prior.
    """

    NAME = "kernel"

    @staticmethod
    def applies(layer: FirstLayer, keep: int) -> bool:
        """Every layer can be attacked with the attacker's own windows."""
        return True

    def __init__(
        self,
        layer: FirstLayer,
        windows: np.ndarray,
        keep: int,
        rng: np.random.Generator,
        value_dtype: str = "float16",
        max_windows: int = 3000,
    ) -> None:
        from dropstream.inference.audit.metrics import pearson_r

        x = subsample_windows(windows, max_windows, rng)
        self.windows = x
        self.acts = observe(layer, x, layer.width, rng, value_dtype).values  # (N, m), noisy
        q = rng.choice(len(x), min(len(x), 300), replace=False)  # leave-one-out queries
        d2 = self._dist2(observe(layer, x[q], keep, rng, value_dtype))
        d2[np.arange(len(q)), q] = np.inf
        scale = float(np.median(d2[np.isfinite(d2)]))
        best = (-np.inf, scale)
        for f in np.geomspace(1e-3, 1.0, 13):
            r = float(np.mean(pearson_r(x[q], self._combine(d2, f * scale))))
            if r > best[0]:
                best = (r, f * scale)
        self.h2 = best[1]

    def _dist2(self, messages: Messages) -> np.ndarray:
        """Squared distances ``(len(messages), N)`` of kept values to the attacker's windows."""
        d2 = np.empty((len(messages), len(self.acts)), np.float64)
        for i in range(len(messages)):
            diff = self.acts[:, messages.indices[i]] - messages.values[i][None, :]
            d2[i] = np.einsum("jk,jk->j", diff, diff)
        return d2

    def _combine(self, d2: np.ndarray, h2: float) -> np.ndarray:
        logw = -d2 / (2.0 * h2)
        logw -= logw.max(axis=1, keepdims=True)
        w = np.exp(logw)
        w /= w.sum(axis=1, keepdims=True)
        return np.einsum("ij,jct->ict", w, self.windows)

    def reconstruct(self, messages: Messages) -> np.ndarray:
        """Reconstruct every window of ``messages``; returns ``(N, C, T)`` float32."""
        return self._combine(self._dist2(messages), self.h2).astype(np.float32)
