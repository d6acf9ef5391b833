"""Causal preprocessing: chunked filtering equals whole-signal filtering, on real EEG."""

from __future__ import annotations

from pathlib import Path

import mne
import numpy as np
import pytest

from dropstream.local_encoder.preprocessing import (
    CausalFilter,
    PreprocessingError,
    design_filter,
    filter_signal,
    filter_windows,
    fit_normalisation,
    normalise,
    prepare_window,
    sosfilt_zi,
)

PRE = {"l_freq": 1.0, "h_freq": 40.0, "notch": 60.0, "order": 4}


@pytest.fixture(scope="module")
def eeg(data_dir: Path) -> tuple[np.ndarray, float]:
    raw = mne.io.read_raw_edf(data_dir / "eeg" / "eegmmidb_S001R02.edf", verbose="error")
    raw.pick(raw.ch_names[:8]).crop(0, 20).load_data()
    return raw.get_data(), float(raw.info["sfreq"])


def test_chunked_filter_equals_whole_signal(eeg: tuple[np.ndarray, float]) -> None:
    x, sfreq = eeg
    whole = filter_signal(x, sfreq, PRE)
    rng = np.random.default_rng(0)
    cuts = np.sort(rng.choice(np.arange(1, x.shape[1]), size=40, replace=False))
    f = CausalFilter(sfreq, x.shape[0], PRE)
    pieces = [f.process(c) for c in np.split(x, cuts, axis=1)]
    pieces.append(f.process(x[:, :0]))  # an empty chunk changes nothing
    chunked = np.concatenate(pieces, axis=1)
    np.testing.assert_array_equal(chunked, whole)
    # the filter really filters: 60 Hz line and DC are gone, the output differs from the input
    assert not np.allclose(whole, x)
    assert abs(whole[:, 800:].mean()) < 0.1 * np.abs(x).mean()


def test_filter_is_causal(eeg: tuple[np.ndarray, float]) -> None:
    x, sfreq = eeg
    y1 = filter_signal(x, sfreq, PRE)
    x2 = x.copy()
    x2[:, 1000:] += 1e-3  # a change in the future must not alter the past
    y2 = filter_signal(x2, sfreq, PRE)
    np.testing.assert_array_equal(y1[:, :1000], y2[:, :1000])
    assert not np.allclose(y1[:, 1000:], y2[:, 1000:])


def test_reset_restarts_state(eeg: tuple[np.ndarray, float]) -> None:
    x, sfreq = eeg
    f = CausalFilter(sfreq, x.shape[0], PRE)
    first = f.process(x[:, :500])
    f.reset()
    np.testing.assert_array_equal(f.process(x[:, :500]), first)


def test_filter_windows_equals_per_window_streams(eeg: tuple[np.ndarray, float]) -> None:
    x, sfreq = eeg
    windows = np.stack([x[:, i * 160 : (i + 1) * 160] for i in range(5)])
    batch = filter_windows(windows, sfreq, PRE)
    for w, b in zip(windows, batch, strict=True):
        np.testing.assert_allclose(b, filter_signal(w, sfreq, PRE), rtol=0, atol=1e-15)


def test_no_filtering_passes_through(eeg: tuple[np.ndarray, float]) -> None:
    x, sfreq = eeg
    assert design_filter(sfreq, None) is None
    np.testing.assert_array_equal(CausalFilter(sfreq, x.shape[0]).process(x), x)


def test_normalise_and_demean(eeg: tuple[np.ndarray, float]) -> None:
    x, sfreq = eeg
    windows = np.stack([x[:, i * 160 : (i + 1) * 160] for i in range(10)])
    pre = {"window_demean": True}
    mean, std = fit_normalisation(windows, pre)
    out = prepare_window(windows, pre, mean, std)
    assert out.dtype == np.float32 and out.shape == windows.shape
    np.testing.assert_allclose(out.mean(axis=2), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 2)), 1.0, rtol=1e-4)
    one = prepare_window(windows[3], pre, mean, std)
    np.testing.assert_allclose(one, out[3], rtol=1e-6)


@pytest.mark.parametrize(
    "pre",
    [
        {"l_freq": 100.0},  # above Nyquist at 160 Hz
        {"l_freq": 30.0, "h_freq": 10.0},
        {"h_freq": -1.0},
        {"order": 0, "l_freq": 1.0},
        {"lowpass": 30.0},  # unknown key
    ],
)
def test_bad_settings_are_clear_errors(pre: dict) -> None:
    with pytest.raises(PreprocessingError):
        design_filter(160.0, pre)


def test_bad_shapes_are_clear_errors() -> None:
    f = CausalFilter(100.0, 3, {"l_freq": 1.0})
    with pytest.raises(PreprocessingError):
        f.process(np.zeros((2, 10)))
    with pytest.raises(PreprocessingError):
        normalise(np.zeros((3, 10)), np.zeros(2), np.ones(2))
    with pytest.raises(PreprocessingError):
        normalise(np.zeros((3, 10)), np.zeros(3), np.array([1.0, 0.0, 1.0]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_light_filter_kernel_is_scipy_sosfilt_bit_for_bit(dtype: type) -> None:
    """The device loads scipy's compiled sosfilt loop without scipy.signal; it and the public
    fallback give scipy.signal.sosfilt's numbers and final state exactly, and sosfilt_zi in
    numpy gives scipy's steady state."""
    from scipy import signal

    from dropstream.acquisition.sosfilt import sos_kernel, sosfilt_public

    sos = design_filter(160.0, PRE).astype(dtype)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 500)).astype(dtype)
    zi0 = rng.standard_normal((3, len(sos), 2)).astype(dtype)
    want, zf = signal.sosfilt(sos, x, axis=-1, zi=np.moveaxis(zi0, 1, 0))
    assert sos_kernel() is not sosfilt_public  # this scipy's kernel loads on its own
    for kernel in (sos_kernel(), sosfilt_public):
        y, zi = x.copy(), zi0.copy()
        kernel(sos, y, zi)
        np.testing.assert_array_equal(y, want)
        np.testing.assert_array_equal(zi, np.moveaxis(zf, 0, 1))
    designed = design_filter(160.0, PRE)  # float64, as every filter computes its steady state
    np.testing.assert_array_equal(sosfilt_zi(designed), signal.sosfilt_zi(designed))
    f = CausalFilter(160.0, 3, PRE, sos=design_filter(160.0, PRE))
    np.testing.assert_array_equal(f.process(x), CausalFilter(160.0, 3, PRE).process(x))
