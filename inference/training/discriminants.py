"""Task-shaped starting directions for a low-rank first layer: shrinkage linear discriminants.

A rank-``R`` first layer (:class:`~dropstream.inference.model.TorchFirstLayer`) sees the window
only through ``R`` projections ``B x`` of the time-pooled window. On small EEG sets (268 SCP1
trials, 384 pooled inputs) gradient descent finds poor projections: a single shrinkage-LDA
direction classifies SCP1 better than a trained rank-2 layer. :func:`discriminant_directions`
computes the directions that start ``B`` (``TrainConfig.init="lda"``); training then refines them.

The shrinkage ``lam`` of the within-class covariance ``(1 - lam) S + lam tr(S)/d I`` is chosen by
stratified k-fold cross-validation of the LDA rule on the training windows only.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

#: Shrinkage values tried by the cross-validation (0 = plain LDA, 1 = nearest class mean).
SHRINKAGES = (0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)


def _fit(features: np.ndarray, codes: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Class means ``(C, d)`` and discriminant directions ``(d, C - 1)`` (columns, generalized
    eigenvectors of the between- against the shrunk within-class scatter, best first)."""
    return next(_fits(features, codes, (lam,)))


def _fits(
    features: np.ndarray, codes: np.ndarray, lams: tuple[float, ...]
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """:func:`_fit` for each shrinkage of ``lams``, from one SVD of the rows.

    Works from the thin SVD of the centred windows, never a ``d x d`` matrix: the shrunk
    within-class scatter has the data's right singular vectors as eigenvectors (eigenvalues
    ``(1 - lam) s + lam tr(S)/d``, and ``lam tr(S)/d`` on their complement), and the between-class
    scatter has rank ``C - 1``. Cost ``O(N d min(N, d))`` instead of ``O(d^3)``: a 1,400-wide
    input (28 channels x 50 samples) took minutes with dense eigendecompositions.
    """
    classes = np.unique(codes)
    index = np.searchsorted(classes, codes)
    means = np.stack([features[codes == c].mean(0) for c in classes])
    centred = features - means[index]
    d = features.shape[1]
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    s = sv**2 / max(1, len(features) - len(classes))
    mu = s.sum() / d
    # between = M^T M with M the count-weighted centred class means: whitened, its top right
    # singular vectors are the eigenvectors of W^{-1/2} between W^{-1/2}
    weighted = (means - means.mean(0)) * np.sqrt(np.bincount(index))[:, None]
    for lam in lams:
        inv_sqrt_in = 1.0 / np.sqrt(np.maximum((1.0 - lam) * s + lam * mu, 1e-12))
        inv_sqrt_out = 1.0 / np.sqrt(max(lam * mu, 1e-12))
        _, _, top = np.linalg.svd(
            _whiten(weighted, vt, inv_sqrt_in, inv_sqrt_out), full_matrices=False
        )
        yield means, _whiten(top[: len(classes) - 1], vt, inv_sqrt_in, inv_sqrt_out).T


def _whiten(x: np.ndarray, vt: np.ndarray, inside: np.ndarray, outside: float) -> np.ndarray:
    """``x W^{-1/2}`` for rows ``x``, ``W`` symmetric with eigenvectors ``vt`` (rows) scaled by
    ``inside`` and ``outside`` on their complement."""
    proj = x @ vt.T
    return (proj * inside) @ vt + (x - proj @ vt) * outside


def _predict(means: np.ndarray, dirs: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Index of the nearest class mean in the discriminant space."""
    z, zm = features @ dirs, means @ dirs
    return np.argmin(((z[:, None, :] - zm[None]) ** 2).sum(-1), axis=1)


def choose_shrinkage(
    features: np.ndarray, codes: np.ndarray, rng: np.random.Generator, folds: int = 5
) -> float:
    """The shrinkage of :data:`SHRINKAGES` with the best stratified ``folds``-fold accuracy
    (ties: the larger shrinkage, the simpler model)."""
    fold = np.empty(len(codes), dtype=int)
    for c in np.unique(codes):
        members = rng.permutation(np.flatnonzero(codes == c))
        fold[members] = np.arange(len(members)) % folds
    hits = dict.fromkeys(SHRINKAGES, 0)
    n_classes = len(np.unique(codes))
    for k in range(folds):
        train, test = fold != k, fold == k
        classes = np.unique(codes[train])
        if len(classes) < n_classes:
            continue
        fits = _fits(features[train], codes[train], SHRINKAGES)
        for lam, (means, dirs) in zip(SHRINKAGES, fits, strict=True):
            pred = classes[_predict(means, dirs, features[test])]
            hits[lam] += int(np.sum(pred == codes[test]))
    best, best_acc = SHRINKAGES[-1], -1.0
    for lam in SHRINKAGES:
        acc = hits[lam] / len(codes)
        if acc >= best_acc:
            best, best_acc = lam, acc
    return best


def discriminant_directions(
    features: np.ndarray, codes: np.ndarray, rng: np.random.Generator, n: int | None = None
) -> np.ndarray:
    """Task-shaped directions ``(n, d)`` of ``features (N, d)`` with class ``codes``, unit norm,
    the most discriminative first: the ``C - 1`` shrinkage-LDA directions (shrinkage by
    cross-validation on these rows; ``n=None`` returns just these), then PLS directions (the
    top left singular vector of the covariance of the features with the centred one-hot
    classes, Wold's NIPALS weight) with the earlier directions projected out of the features.
    """
    features = np.asarray(features, np.float64)
    codes = np.asarray(codes)
    _, lda = _fit(features, codes, choose_shrinkage(features, codes, rng))
    n = lda.shape[1] if n is None else int(n)
    dirs = [v / max(float(np.linalg.norm(v)), 1e-12) for v in lda.T[:n]]
    onehot = (codes[:, None] == np.unique(codes)[None]).astype(np.float64)
    onehot -= onehot.mean(0)
    residual = features - features.mean(0)
    while len(dirs) < n:
        basis = np.linalg.qr(np.stack(dirs, axis=1))[0]
        u, _, _ = np.linalg.svd(
            (residual - (residual @ basis) @ basis.T).T @ onehot, full_matrices=False
        )
        dirs.append(u[:, 0])
    return np.stack(dirs)
