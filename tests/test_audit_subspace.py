"""The subspace attack recovers what a low-rank layer reveals, and uses all of it."""

from __future__ import annotations

import numpy as np

from dropstream.inference.audit.attacks import KernelAttack, label_attack, observe
from dropstream.inference.audit.metrics import pearson_r
from dropstream.inference.audit.subspace import SubspaceAttack, layer_subspace
from dropstream.local_encoder.first_layer import FirstLayer

C, T, M, K = 3, 40, 64, 16


U = np.linalg.qr(np.random.default_rng(9).standard_normal((C * T, 2)))[0].T  # (2, C*T)


def _windows(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows that are a smooth non-linear function of two latents, which the two directions
    ``U`` read out linearly (as a trained low-rank layer reads out the task's projections)."""
    lat = rng.uniform(-1, 1, (n, 2))
    t = np.linspace(0, 1, T)
    ch = np.arange(1, C + 1)[:, None]
    x = np.sin(2 * np.pi * (1 + lat[:, 0, None, None]) * ch * t + 2 * lat[:, 1, None, None])
    flat = x.reshape(n, -1)
    flat = flat - (flat @ U.T) @ U + 3 * lat @ U
    return flat.reshape(n, C, T).astype(np.float32), lat


def _rank2_layer(rng: np.random.Generator, noise: float) -> FirstLayer:
    """``W = A B`` with ``B = U``."""
    a = rng.standard_normal((M, 2)).astype(np.float32)
    return FirstLayer(weight=U, bias=np.full(M, 0.5, np.float32), noise=noise, factor=a)


def test_projections_are_recovered_exactly_without_noise() -> None:
    rng = np.random.default_rng(0)
    x, _ = _windows(rng, 400)
    layer = _rank2_layer(rng, 0.0)
    assert layer_subspace(layer).shape == (M, 2)
    attack = SubspaceAttack(layer, x[:300], K, rng)
    msgs = observe(layer, x[300:], K, rng)
    q = attack.projections(msgs)
    # the pre-activations of every unit, kept or not, follow from the recovered projections
    z = q @ layer_subspace(layer).T + layer.bias
    z_true = x[300:].reshape(100, -1) @ layer.dense_weight.T + layer.bias
    assert np.abs(z - z_true).max() < 0.02 * np.abs(z_true).max()


def test_subspace_attack_beats_the_floor_and_the_kernel_attack_on_a_rank2_layer() -> None:
    rng = np.random.default_rng(1)
    x, _ = _windows(rng, 700)
    layer = _rank2_layer(rng, 0.1)
    att, held = x[:500], x[500:]
    msgs = observe(layer, held, K, rng)
    sub = float(pearson_r(held, SubspaceAttack(layer, att, K, rng).reconstruct(msgs)).mean())
    ker = float(pearson_r(held, KernelAttack(layer, att, K, rng).reconstruct(msgs)).mean())
    floor = float(pearson_r(held, label_attack(att, None, None, len(held))).mean())
    assert sub > 0.8, sub
    assert sub > ker, (sub, ker)
    assert sub > floor + 0.5, (sub, floor)


def test_full_rank_layers_are_left_to_the_other_attacks() -> None:
    rng = np.random.default_rng(2)
    w = rng.standard_normal((M, C * T)).astype(np.float32)
    layer = FirstLayer(weight=w, bias=np.zeros(M, np.float32))
    assert not SubspaceAttack.applies(layer, K)
