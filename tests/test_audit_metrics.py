"""Audit metrics on cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from dropstream.inference.audit.metrics import (
    BANDS,
    band_pearson_r,
    band_power_error,
    band_powers,
    pearson_r,
    score,
    snr_db,
)


def test_pearson_of_affine_copy_is_one_and_of_negation_minus_one() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 200))
    assert np.allclose(pearson_r(x, 2.5 * x - 7.0), 1.0)
    assert np.allclose(pearson_r(x, -0.3 * x + 1.0), -1.0)


def test_pearson_of_independent_noise_is_near_zero_and_constant_gives_zero() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 4000))
    y = rng.standard_normal((64, 4000))
    assert abs(float(pearson_r(x, y).mean())) < 0.01
    assert np.all(pearson_r(x, np.ones_like(x)) == 0.0)


def test_pearson_matches_numpy_corrcoef() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal(300)
    y = 0.5 * x + rng.standard_normal(300)
    assert pearson_r(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)


def test_snr_of_known_noise() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 20000))
    noise = 0.1 * rng.standard_normal((8, 20000))  # power ratio 100 -> 20 dB
    assert np.allclose(snr_db(x, x + noise), 20.0, atol=0.2)
    assert np.allclose(snr_db(x, np.zeros_like(x)), 0.0)  # reconstructing nothing: 0 dB
    assert np.all(snr_db(x, x) > 200)


@pytest.mark.parametrize(
    ("freq", "band"),
    [(2.5, "delta"), (6.0, "theta"), (10.0, "alpha"), (20.0, "beta"), (40.0, "gamma")],
)
def test_band_power_of_pure_sinusoid_lands_in_its_band(freq: float, band: str) -> None:
    sfreq, seconds = 160.0, 4.0
    t = np.arange(int(sfreq * seconds)) / sfreq
    x = np.sin(2 * np.pi * freq * t)[None, :]
    p = band_powers(x, sfreq)[0]
    names = [b[0] for b in BANDS]
    assert names[int(np.nanargmax(p))] == band
    others = np.delete(p, names.index(band))
    assert np.all(others < 1e-3 * p[names.index(band)])


def test_band_power_error_is_relative() -> None:
    sfreq = 128.0
    t = np.arange(512) / sfreq
    x = np.sin(2 * np.pi * 10.0 * t)[None, :]
    alpha = [b[0] for b in BANDS].index("alpha")
    assert band_power_error(x, 2.0 * x, sfreq)[0, alpha] == pytest.approx(3.0)  # power x4
    assert band_power_error(x, 0.5 * x, sfreq)[0, alpha] == pytest.approx(0.75)
    assert band_power_error(x, x, sfreq)[0, alpha] == pytest.approx(0.0)


def test_band_without_bins_is_nan() -> None:
    x = np.random.default_rng(4).standard_normal((1, 16))
    assert np.isnan(band_powers(x, 50.0)[0, -1])  # gamma 30-45 Hz above Nyquist 25 Hz


def test_score_summarises_and_rejects_bad_shapes() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((10, 3, 256))
    s = score(x, 3.0 * x, 128.0)
    assert s.r_mean == pytest.approx(1.0)
    assert s.snr_db == pytest.approx(10 * np.log10(1 / 4))
    assert s.r_channel.shape == (3,)
    assert s.band_error["alpha"] == pytest.approx(8.0)
    assert s.as_row()["n_windows"] == 10
    with pytest.raises(ValueError, match="N, C, T"):
        score(x, x[:5], 128.0)


def test_band_r_separates_rhythms() -> None:
    sfreq = 128.0
    t = np.arange(512) / sfreq
    rng = np.random.default_rng(6)
    slow = np.sin(2 * np.pi * 0.5 * t)
    alpha = 0.3 * np.sin(2 * np.pi * 10.0 * t + 0.4)
    x = (slow + alpha)[None, :]
    # a reconstruction with the slow wave right and the alpha rhythm replaced by noise
    y = (slow + 0.3 * rng.standard_normal(t.size))[None, :]
    names = ["slow"] + [b[0] for b in BANDS]
    rb = band_pearson_r(x, y, sfreq)[0]
    assert rb[names.index("slow")] > 0.99
    assert abs(rb[names.index("alpha")]) < 0.3
    assert pearson_r(x, y)[0] > 0.8  # the overall r hides the missing rhythm
    s = score(x[None], y[None], sfreq)
    assert s.band_r["slow"] > 0.99 and abs(s.band_r["alpha"]) < 0.3
