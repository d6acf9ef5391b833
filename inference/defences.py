"""Privacy penalties for training the first layer (torch, server-side training only).

Two of the defences of ``docs/privacy.md`` act through the training loss; the other two live in
the first layer itself (:class:`dropstream.inference.model.TorchFirstLayer`: a low-rank layer
``rank`` and calibrated device noise ``noise``). :func:`make_penalty` builds the loss term that
the training loop (:func:`dropstream.inference.training.fit.fit`) adds to the task loss of
every batch:

``nopeek``
    The NoPeek distance-correlation penalty (Vepakomma et al., "NoPeek: Information leakage
    reduction to share activations in distributed deep learning", ICDMW 2020): the sample
    distance correlation between the batch's windows and their (noisy) first-layer activations.
``adversary``
    A reconstruction adversary in closed form: the Gaussian-prior MAP (Wiener) estimate of the
    window from the layer's noisy outputs, ``x_hat = mu + S G' (G S G' + s^2 I)^-1 (u - E u)``
    with the prior ``N(mu, S)`` fitted on the (time-pooled) training windows, ``G`` the map to
    the noise space and ``s`` the noise. The penalty is its mean per-window, per-channel Pearson
    ``r`` (what the audit measures), differentiable in the layer's weights. The audit's prior
    attack is this estimator with the exact dropping and ReLU bounds; the learned decoder of the
    audit is the other adversary, and one the layer was not trained against.
``excess``
    The same adversary when it also knows each window's class: its prior is the class-mean
    window and the within-class covariance, so its estimate starts at the task floor (the
    audit's ``label`` attack) and the penalty, its Pearson ``r``, only falls when the layer
    reveals less of the window *beyond* the class. Unlike ``adversary`` it does not fight the
    class information the classifier needs: a privacy-aware projection that removes the
    directions that help the attacker but not the task (classifiers only).

Both are computed on the layer's pooled input (what the weights see), batch by batch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from dropstream.inference.model import TorchFirstLayer

#: A privacy loss term: a batch of normalised windows and its class codes (or ``None``) -> scalar.
Penalty = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def distance_correlation(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Sample distance correlation (Szekely et al. 2007) of two batches ``(N, p)``, ``(N, q)``."""

    def centred(z: torch.Tensor) -> torch.Tensor:
        sq = (z[:, None, :] - z[None, :, :]).pow(2).sum(-1)
        d = torch.sqrt(sq + eps)
        return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()

    a, b = centred(x.flatten(1)), centred(y.flatten(1))
    dxy, dxx, dyy = (a * b).mean(), (a * a).mean(), (b * b).mean()
    return torch.sqrt(torch.clamp(dxy, min=0.0) / torch.sqrt(dxx * dyy + eps) + eps)


def pooled(first: TorchFirstLayer, x: torch.Tensor) -> torch.Tensor:
    """The window as the dense layer's weights see it: time-pooled ``(N, C, T // pool)``."""
    return nn.functional.avg_pool1d(x, first.pool) if first.pool > 1 else x


def noise_map(first: TorchFirstLayer) -> torch.Tensor:
    """``G``: the linear map from the pooled, flattened window to the noise space ``(r, n)``.

    Standardisation divides by the running standard deviation (its centring only shifts the
    mean, which the estimator removes).
    """
    lin = first.down if first.down is not None else first.linear
    g = lin.weight
    if first.norm is not None:
        g = g / torch.sqrt(first.norm.running_var + first.norm.eps)[:, None]
    return g


def pearson_rows(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson r over the last axis (per window and channel)."""
    xc = x - x.mean(-1, keepdim=True)
    yc = y - y.mean(-1, keepdim=True)
    return (xc * yc).sum(-1) / torch.sqrt((xc * xc).sum(-1) * (yc * yc).sum(-1) + eps)


def map_estimate(
    first: TorchFirstLayer,
    xp: torch.Tensor,
    mean: torch.Tensor,
    cov: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The Gaussian-prior MAP estimate of pooled windows ``xp (N, C, Tp)`` from the noise space.

    Every unit is observed (no dropping): the worst case over masks. ``mean`` is the prior
    mean ``(C, Tp)``, or one per window ``(N, C, Tp)`` (the class mean of each window).
    """
    n, c, tp = xp.shape
    g = noise_map(first)
    d = (xp - mean).reshape(n, -1)
    u = d @ g.T
    s2 = first.noise**2
    if s2 > 0:
        u = u + first.noise * torch.randn(u.shape, generator=generator, device=u.device)
    sg = cov @ g.T  # (n_in, r)
    gsg = g @ sg
    jitter = (s2 + 1e-4 * torch.diagonal(gsg).mean().detach()) * torch.eye(
        g.shape[0], device=g.device
    )
    coef = torch.linalg.solve(gsg + jitter, u.T)  # (r, N)
    return mean + (sg @ coef).T.reshape(n, c, tp)


def fit_prior(
    first: TorchFirstLayer,
    xn: np.ndarray,
    shrinkage: float = 0.05,
    codes: np.ndarray | None = None,
) -> tuple:
    """Mean window and full covariance (shrunk to its diagonal) of pooled training windows;
    with class ``codes`` (0..C-1), the class means ``(n_classes, C, Tp)`` and the pooled
    within-class covariance."""
    with torch.no_grad():
        xp = pooled(first, torch.as_tensor(np.asarray(xn, np.float32))).double()
    if codes is None:
        mean = xp.mean(0)
        flat = (xp - mean).reshape(xp.shape[0], -1)
    else:
        idx = torch.as_tensor(np.asarray(codes), dtype=torch.long)
        mean = torch.stack([xp[idx == c].mean(0) for c in range(int(idx.max()) + 1)])
        flat = (xp - mean[idx]).reshape(xp.shape[0], -1)
    cov = flat.T @ flat / max(flat.shape[0] - 1, 1)
    cov = (1 - shrinkage) * cov + shrinkage * torch.diag(torch.diagonal(cov))
    return mean.float(), cov.float()


def make_penalty(
    first: TorchFirstLayer,
    xn: np.ndarray,
    nopeek: float = 0.0,
    adversary: float = 0.0,
    excess: float = 0.0,
    codes: np.ndarray | None = None,
) -> Penalty | None:
    """The privacy loss term for a batch of normalised windows, or ``None`` when both are 0.

    Parameters
    ----------
    first : TorchFirstLayer
        The layer being trained (its current weights are used at every call).
    xn : numpy.ndarray, shape (N, C, T)
        Normalised training windows, for the adversary's prior.
    nopeek, adversary, excess : float
        Weights of the distance-correlation, the MAP-reconstruction and the class-aware
        MAP-reconstruction (excess leak) penalties.
    codes : numpy.ndarray, optional
        Class codes of ``xn`` (0..C-1), needed by ``excess``.
    """
    if nopeek <= 0 and adversary <= 0 and excess <= 0:
        return None
    mean = cov = class_mean = within = None
    if adversary > 0:
        mean, cov = fit_prior(first, xn)
    if excess > 0:
        if codes is None:
            raise ValueError("the excess-leak penalty needs the windows' classes")
        class_mean, within = fit_prior(first, xn, codes=codes)

    def penalty(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        total = x.new_zeros(())
        xp = pooled(first, x)
        if nopeek > 0:
            total = total + nopeek * distance_correlation(xp, first(x))
        if adversary > 0:
            m, s = mean.to(x.device), cov.to(x.device)
            total = total + adversary * pearson_rows(map_estimate(first, xp, m, s), xp).mean()
        if excess > 0:
            if y is None:
                raise ValueError("the excess-leak penalty needs the batch's classes")
            m, s = class_mean.to(x.device)[y], within.to(x.device)
            total = total + excess * pearson_rows(map_estimate(first, xp, m, s), xp).mean()
        return total

    return penalty
