"""The subspace attack: regress the window on the projections a low-rank layer reveals.

A low-rank first layer (``W = A B`` of rank ``R``; the privacy default) lets the server learn at
most the ``R`` numbers ``q = B x`` (plus the device noise) per window, whatever it does. This
attacker knows the defence exactly and attacks that bottleneck head-on:

1. It factorises the exported weight, ``W = U S V'``, keeps the ``R`` non-zero singular values,
   and recovers each message's noisy projections ``q`` by least squares from the kept units
   whose pre-activation is known exactly (the equalities of
   :func:`~dropstream.inference.audit.attacks.preactivation_bounds`: ReLU values > 0). With ``K``
   kept units and ``R`` small this is exact up to the device noise.
2. It pushes its own windows through the very device several times (fresh masks, fresh noise,
   float16 rounding), recovers their ``q`` the same way and learns ``E[x | q]`` by local-linear
   kernel regression (Nadaraya-Watson with a linear correction, which removes the smoother's
   bias where the data thin out; its bandwidth, down to a plain linear regression, is chosen by
   leave-one-window-out on the attacker's data, never on the attacked windows).

``E[x | q]`` is the best any attacker can do in mean squared error with this prior, so against a
low-rank layer this is the strongest attack of the audit up to the attacker's data; the kernel
attack approximates the same posterior mean from the kept values without knowing the
factorisation. Layers whose rank exceeds :data:`MAX_RANK` (or half of ``K``) are left to the
other attacks (:meth:`SubspaceAttack.applies`).
"""

from __future__ import annotations

import numpy as np

from dropstream.inference.audit.attacks import (
    Messages,
    observe,
    preactivation_bounds,
    subsample_windows,
)
from dropstream.local_encoder.first_layer import FirstLayer

#: Largest layer rank attacked through its subspace (beyond it the regression has too many
#: inputs for an attacker's few hundred windows).
MAX_RANK = 16


def layer_subspace(layer: FirstLayer, tol: float = 1e-4) -> np.ndarray:
    """``U S`` of the weight's thin SVD, its numerically non-zero part: ``(m, R)``."""
    u, s, _ = np.linalg.svd(np.asarray(layer.dense_weight, np.float64), full_matrices=False)
    rank = int(np.sum(s > tol * s[0])) if s.size and s[0] > 0 else 0
    return u[:, :rank] * s[:rank]


class SubspaceAttack:
    """``E[window | revealed projections]`` by local-linear regression; see the module docstring.

    Parameters
    ----------
    layer, windows, keep, rng, value_dtype
        As for :class:`~dropstream.inference.audit.attacks.KernelAttack`.
    draws : int
        Device passes (masks and noise) per attacker window.
    max_windows, max_samples : int
        At most this many attacker windows (a random subset), and fewer draws when
        ``draws * windows`` would exceed ``max_samples``.
    """

    NAME = "subspace"

    def __init__(
        self,
        layer: FirstLayer,
        windows: np.ndarray,
        keep: int,
        rng: np.random.Generator,
        value_dtype: str = "float16",
        draws: int = 8,
        max_windows: int = 1000,
        max_samples: int = 4000,
    ) -> None:
        from dropstream.inference.audit.metrics import pearson_r

        self.layer = layer
        self.us = layer_subspace(layer)
        x = subsample_windows(windows, max_windows, rng)
        self.shape = x.shape[1:]
        reps = np.tile(np.arange(len(x)), max(1, min(draws, max_samples // len(x))))
        q = self.projections(observe(layer, x[reps], keep, rng, value_dtype))
        self.scale = q.std(axis=0) + 1e-12
        self.q = q / self.scale
        self.x = x[reps].reshape(len(reps), -1)
        # leave-one-window-out choice of the bandwidth (inf = global linear regression)
        queries = rng.choice(len(reps), min(len(reps), 200), replace=False)
        same = reps[queries][:, None] == reps[None, :]
        d2 = self._dist2(self.q[queries])
        scale = float(np.median(d2))
        best = (-np.inf, np.inf)
        for h2 in (*(f * scale for f in np.geomspace(1e-3, 10.0, 9)), np.inf):
            w = self._weights(self.q[queries], d2, h2, exclude=same)
            r = float(np.mean(pearson_r(x[reps[queries]], (w @ self.x).reshape(-1, *self.shape))))
            if r > best[0]:
                best = (r, h2)
        self.h2 = best[1]

    @staticmethod
    def applies(layer: FirstLayer, keep: int) -> bool:
        """Whether the layer's rank is small enough to attack through its subspace."""
        rank = layer_subspace(layer).shape[1]
        return 1 <= rank <= min(MAX_RANK, keep // 2)

    def projections(self, messages: Messages) -> np.ndarray:
        """Least-squares ``q`` per message from its exact equalities: ``(N, R)``."""
        lo, hi, _ = preactivation_bounds(messages.values, self.layer, messages.value_dtype)
        bias = np.asarray(self.layer.bias, np.float64)
        q = np.zeros((len(messages), self.us.shape[1]))
        for i in range(len(messages)):
            idx = messages.indices[i]
            exact = lo[i] == hi[i]
            z = np.where(exact, lo[i], messages.values[i]) - bias[idx]
            use = exact if exact.sum() >= self.us.shape[1] else np.ones_like(exact)
            a = self.us[idx[use]]  # too few equalities: every value counts as one
            z = z[use]
            q[i] = np.linalg.lstsq(a, z, rcond=None)[0]
        return q

    def _dist2(self, q: np.ndarray) -> np.ndarray:
        return ((q[:, None, :] - self.q[None, :, :]) ** 2).sum(-1)

    def _weights(
        self, q: np.ndarray, d2: np.ndarray, h2: float, exclude: np.ndarray | None = None
    ) -> np.ndarray:
        """Equivalent kernel of local-linear regression at ``q``: ``(len(q), N)`` rows."""
        if np.isinf(h2):
            w = np.ones_like(d2)
        else:
            logw = -d2 / (2.0 * h2)
            if exclude is not None:
                logw[exclude] = -np.inf
            w = np.exp(logw - logw.max(axis=1, keepdims=True))
        if exclude is not None:
            w[exclude] = 0.0
        z = np.concatenate([np.ones((len(self.q), 1)), self.q], axis=1)  # (N, R + 1)
        g = np.einsum("qn,ni,nj->qij", w, z, z)
        g += 1e-6 * np.eye(z.shape[1]) * w.sum(axis=1)[:, None, None]
        e = np.concatenate([np.ones((len(q), 1)), q], axis=1)
        a = np.linalg.solve(g, e[:, :, None])[:, :, 0]  # (Q, R + 1)
        return w * (a @ z.T)

    def reconstruct(self, messages: Messages) -> np.ndarray:
        """Reconstruct every window of ``messages``; returns ``(N, C, T)`` float32."""
        q = self.projections(messages) / self.scale
        out = np.empty((len(q), int(np.prod(self.shape))), np.float32)
        for s in range(0, len(q), 256):
            w = self._weights(q[s : s + 256], self._dist2(q[s : s + 256]), self.h2)
            out[s : s + 256] = w @ self.x
        return out.reshape(len(q), *self.shape)
