"""The attacks work where the layer is invertible and fail gracefully where it is not."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import lfilter

from dropstream.inference.audit.attacks import (
    GaussianPrior,
    WindowAttack,
    joint_attack,
    naive_attack,
    observe,
    preactivation_bounds,
)
from dropstream.inference.audit.metrics import pearson_r
from dropstream.local_encoder.first_layer import FirstLayer, PrivacyGuardError, check_keep
from dropstream.local_encoder.framing import stream_windows

C, T = 4, 32
N_IN = C * T


def _smooth(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
    x = lfilter(np.ones(6) / 6, 1, rng.standard_normal((n, C, length + 16)), axis=-1)[..., 16:]
    return (x / x.std()).astype(np.float32)


def _layer(rng: np.random.Generator, width: int, activation: str) -> FirstLayer:
    w = (rng.standard_normal((width, N_IN)) / np.sqrt(N_IN)).astype(np.float32)
    b = (0.1 * rng.standard_normal(width)).astype(np.float32)
    return FirstLayer(weight=w, bias=b, activation=activation)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "leaky_relu", "relu"])
def test_guard_bypassed_least_squares_recovers_window(activation: str) -> None:
    rng = np.random.default_rng(0)
    # a ReLU zero is only an inequality: give it enough units that > C*T of them are positive
    width = 3 * N_IN if activation == "relu" else N_IN + 16
    layer = _layer(rng, width, activation)
    keep = width  # K >= C*T: the guard forbids this, the audit must show why
    with pytest.raises(PrivacyGuardError):
        check_keep(keep, width, N_IN)
    x = _smooth(rng, 12, T)
    msgs = observe(layer, x, keep, rng)
    rec = WindowAttack(layer, GaussianPrior.identity(C, T)).reconstruct(msgs, C)
    r = pearson_r(x, rec)
    assert r.min() > 0.99, r.min()


def test_naive_attack_also_inverts_when_nothing_is_dropped() -> None:
    rng = np.random.default_rng(1)
    layer = _layer(rng, N_IN + 16, "tanh")
    x = _smooth(rng, 8, T)
    rec = naive_attack(layer, observe(layer, x, layer.width, rng), C)
    assert pearson_r(x, rec).min() > 0.99


def test_dropping_defeats_white_least_squares_and_mask_helps() -> None:
    rng = np.random.default_rng(2)
    layer = _layer(rng, 256, "tanh")
    x = rng.standard_normal((40, C, T)).astype(np.float32)  # white: no prior to exploit
    msgs = observe(layer, x, 16, rng)
    ridge = WindowAttack(layer, GaussianPrior.identity(C, T)).reconstruct(msgs, C)
    naive = naive_attack(layer, msgs, C)
    r_ridge = float(pearson_r(x, ridge).mean())
    r_naive = float(pearson_r(x, naive).mean())
    # 16 equations of 128 unknowns: the projection keeps about sqrt(16/128) = 0.35 of r
    assert 0.2 < r_ridge < 0.5
    assert r_naive < r_ridge


def test_relu_zero_bounds_are_respected_and_help() -> None:
    rng = np.random.default_rng(3)
    layer = _layer(rng, 256, "relu")
    x = _smooth(rng, 20, T)
    msgs = observe(layer, x, 160, rng)
    with_b = WindowAttack(layer, GaussianPrior.identity(C, T)).reconstruct(msgs, C)
    without = WindowAttack(layer, GaussianPrior.identity(C, T), use_bounds=False).reconstruct(
        msgs, C
    )
    z = with_b.reshape(len(msgs), -1) @ layer.weight.T + layer.bias
    kept_z = np.take_along_axis(z, msgs.indices, axis=1)
    zero = msgs.values == 0
    assert np.all(kept_z[zero] <= 1e-3)  # every ReLU zero's inequality holds
    assert pearson_r(x, with_b).mean() > pearson_r(x, without).mean()


def test_prior_from_other_data_beats_white_ridge_on_smooth_signals() -> None:
    rng = np.random.default_rng(4)
    layer = _layer(rng, 256, "relu")
    prior = GaussianPrior.fit(_smooth(rng, 200, T))
    x = _smooth(rng, 30, T)
    msgs = observe(layer, x, 64, rng)
    white = WindowAttack(layer, GaussianPrior.identity(C, T)).reconstruct(msgs, C)
    gauss = WindowAttack(layer, prior).reconstruct(msgs, C)
    assert pearson_r(x, gauss).mean() > pearson_r(x, white).mean() + 0.1


def test_joint_attack_inverts_overlapping_windows_the_guard_forbids() -> None:
    rng = np.random.default_rng(5)
    layer = _layer(rng, 256, "leaky_relu")
    stream = _smooth(rng, 1, 200)[0]
    hop, keep = 4, 64  # K=64 >= C*hop=16: each window adds more equations than unknowns
    with pytest.raises(PrivacyGuardError):
        check_keep(keep, layer.width, N_IN, C * hop)
    windows = stream_windows(stream, T, hop)
    msgs = observe(layer, windows, keep, rng)
    rec = joint_attack(layer, msgs, C, stream.shape[1], hop)
    per_window = WindowAttack(layer, GaussianPrior.identity(C, T)).reconstruct(msgs, C)
    assert pearson_r(windows, stream_windows(rec, T, hop)).mean() > 0.99
    assert pearson_r(windows, per_window).mean() < 0.9


def test_joint_attack_rejects_messages_that_do_not_fit_the_stream() -> None:
    rng = np.random.default_rng(6)
    layer = _layer(rng, 64, "relu")
    msgs = observe(layer, _smooth(rng, 3, T), 8, rng)
    with pytest.raises(ValueError, match="windows"):
        joint_attack(layer, msgs, C, 200, 16)


def test_preactivation_bounds_invert_each_activation() -> None:
    rng = np.random.default_rng(7)
    z = rng.uniform(-3, 3, 1000)
    for act in ("tanh", "sigmoid", "leaky_relu", "relu"):
        layer = FirstLayer(np.zeros((1, 1), np.float32), np.zeros(1, np.float32), act)
        v = layer.activate(z).astype(np.float16).astype(np.float32)
        lo, hi, var = preactivation_bounds(v, layer)
        eq = lo == hi
        tol = 1.01 * np.sqrt(3.0 * var) + 1e-6  # half a float16 step through f^-1
        assert np.all(lo <= z + tol) and np.all(z - tol <= hi)
        assert np.all(np.abs(lo[eq] - z[eq]) <= tol[eq])
        assert np.all(var[eq] >= 0)
        if act == "relu":
            assert np.all(eq == (z > 0))
