"""How close a reconstruction is to the true window: correlation, SNR and band powers.

Every function takes arrays shaped ``(..., C, T)`` (windows of ``C`` channels by ``T`` samples)
and reduces over the time axis, so a single window, a batch of windows or a whole stream work
alike. The attacker's reconstruction is compared in the domain the first layer sees (after the
device's filter and per-channel normalisation); Pearson ``r`` is unchanged by the per-channel
affine map back to volts, and SNR / band-power errors are reported in that same domain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

#: EEG bands (name, low Hz, high Hz), half-open ``[low, high)``.
BANDS: tuple[tuple[str, float, float], ...] = (
    ("delta", 1.0, 4.0),
    ("theta", 4.0, 8.0),
    ("alpha", 8.0, 13.0),
    ("beta", 13.0, 30.0),
    ("gamma", 30.0, 45.0),
)


def pearson_r(original: np.ndarray, reconstructed: np.ndarray) -> np.ndarray:
    """Pearson correlation over time, per channel (and per window).

    Parameters
    ----------
    original, reconstructed : numpy.ndarray, shape (..., T)
        Signals compared along the last axis.

    Returns
    -------
    numpy.ndarray, shape (...)
        ``r`` in ``[-1, 1]``; ``0`` where either signal is constant (no linear information).
    """
    x = np.asarray(original, np.float64)
    y = np.asarray(reconstructed, np.float64)
    x = x - x.mean(axis=-1, keepdims=True)
    y = y - y.mean(axis=-1, keepdims=True)
    num = (x * y).sum(axis=-1)
    den = np.sqrt((x * x).sum(axis=-1) * (y * y).sum(axis=-1))
    out = np.zeros_like(num)
    ok = den > 1e-12 * max(1.0, float(np.max(den, initial=0.0)))
    np.divide(num, den, out=out, where=ok)
    return np.clip(out, -1.0, 1.0)


def band_pearson_r(
    original: np.ndarray,
    reconstructed: np.ndarray,
    sfreq: float,
    bands: tuple[tuple[str, float, float], ...] = (("slow", 0.0, 1.0),) + BANDS,
) -> np.ndarray:
    """Pearson ``r`` of the band-limited signals, per band: ``(..., n_bands)``.

    Both signals are restricted to each band by zeroing the other FFT bins of the window
    (zero-phase, brick-wall), then correlated. It tells which rhythms a reconstruction recovers:
    ``r`` over the whole window can be high from slow drifts alone (the ``slow`` band,
    0-1 Hz, below delta) while alpha or beta are not recovered at all. NaN for a band with no
    frequency bin.
    """
    x = np.asarray(original, np.float64)
    y = np.asarray(reconstructed, np.float64)
    n = x.shape[-1]
    fx = np.fft.rfft(x, axis=-1)
    fy = np.fft.rfft(y, axis=-1)
    freqs = np.fft.rfftfreq(n, d=1.0 / sfreq)
    out = np.full(x.shape[:-1] + (len(bands),), np.nan)
    for i, (_, lo, hi) in enumerate(bands):
        sel = (freqs >= lo) & (freqs < hi)
        if lo == 0.0:
            sel &= freqs > 0  # the window mean carries no shape
        if not sel.any():
            continue
        xb = np.fft.irfft(np.where(sel, fx, 0), n=n, axis=-1)
        yb = np.fft.irfft(np.where(sel, fy, 0), n=n, axis=-1)
        out[..., i] = pearson_r(xb, yb)
    return out


def snr_db(original: np.ndarray, reconstructed: np.ndarray) -> np.ndarray:
    """Signal-to-noise ratio of a reconstruction in dB, per channel (and per window).

    ``10 log10(sum(x^2) / sum((x - x_hat)^2))`` over the last axis: 0 dB means the error is as
    large as the signal (e.g. reconstructing all zeros); higher is a better reconstruction.
    """
    x = np.asarray(original, np.float64)
    err = x - np.asarray(reconstructed, np.float64)
    sig = (x * x).sum(axis=-1)
    noise = (err * err).sum(axis=-1)
    return 10.0 * np.log10(np.maximum(sig, 1e-300) / np.maximum(noise, 1e-300))


def band_powers(
    signal: np.ndarray, sfreq: float, bands: tuple[tuple[str, float, float], ...] = BANDS
) -> np.ndarray:
    """Power in each band from a Hann-windowed periodogram of the last axis.

    Parameters
    ----------
    signal : numpy.ndarray, shape (..., T)
    sfreq : float
        Sample rate in Hz.
    bands : tuple of (name, low Hz, high Hz)

    Returns
    -------
    numpy.ndarray, shape (..., n_bands)
        Mean power spectral density over the band's bins (signal units squared per Hz); NaN for
        a band with no frequency bin (window too short or ``sfreq`` too low for it).
    """
    x = np.asarray(signal, np.float64)
    n = x.shape[-1]
    win = np.hanning(n) if n > 1 else np.ones(1)
    x = (x - x.mean(axis=-1, keepdims=True)) * win
    spec = np.abs(np.fft.rfft(x, axis=-1)) ** 2 / (sfreq * (win * win).sum())
    freqs = np.fft.rfftfreq(n, d=1.0 / sfreq)
    out = np.full(x.shape[:-1] + (len(bands),), np.nan)
    for i, (_, lo, hi) in enumerate(bands):
        sel = (freqs >= lo) & (freqs < hi)
        if sel.any():
            out[..., i] = spec[..., sel].mean(axis=-1)
    return out


def band_power_error(
    original: np.ndarray,
    reconstructed: np.ndarray,
    sfreq: float,
    bands: tuple[tuple[str, float, float], ...] = BANDS,
) -> np.ndarray:
    """Relative error ``|P_hat - P| / P`` of each band's power, per channel (and window).

    Returns an array shaped ``(..., n_bands)``; 0 is a perfect spectrum, 1 is what reconstructing
    nothing (zeros) scores, and larger values mean spurious power.
    """
    p = band_powers(original, sfreq, bands)
    q = band_powers(reconstructed, sfreq, bands)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.abs(q - p) / np.where(p > 0, p, np.nan)


@dataclass(frozen=True)
class Scores:
    """Summary of one attack on a set of windows.

    Attributes
    ----------
    r_mean, r_median : float
        Pearson ``r`` per window and channel, averaged / median over all of them.
    r_channel : numpy.ndarray, shape (C,)
        Mean ``r`` of each channel over windows.
    snr_db : float
        SNR in dB over all windows and channels pooled (total signal / total error energy).
    band_error : dict of str to float
        Median relative band-power error over windows and channels, per band.
    band_r : dict of str to float
        Mean ``r`` of the band-limited signals (:func:`band_pearson_r`), per band, including
        ``slow`` (0-1 Hz).
    n_windows : int
    """

    r_mean: float
    r_median: float
    r_channel: np.ndarray
    snr_db: float
    band_error: dict[str, float]
    band_r: dict[str, float]
    n_windows: int

    def as_row(self) -> dict[str, float]:
        """Flat dictionary for tables and JSON."""
        row = {
            "r_mean": self.r_mean,
            "r_median": self.r_median,
            "snr_db": self.snr_db,
            "n_windows": float(self.n_windows),
        }
        row.update({f"err_{k}": v for k, v in self.band_error.items()})
        row.update({f"r_{k}": v for k, v in self.band_r.items()})
        return row


def score(
    original: np.ndarray,
    reconstructed: np.ndarray,
    sfreq: float,
    bands: tuple[tuple[str, float, float], ...] = BANDS,
) -> Scores:
    """Score reconstructed windows ``(N, C, T)`` against the originals."""
    x = np.asarray(original, np.float64)
    y = np.asarray(reconstructed, np.float64)
    if x.shape != y.shape or x.ndim != 3:
        raise ValueError(f"expected two (N, C, T) arrays of one shape, got {x.shape}, {y.shape}")
    r = pearson_r(x, y)
    total_sig = float((x * x).sum())
    total_err = float(((x - y) ** 2).sum())
    snr = 10.0 * np.log10(max(total_sig, 1e-300) / max(total_err, 1e-300))
    band_error = _per_band(band_power_error(x, y, sfreq, bands), bands, np.median)
    r_bands = (("slow", 0.0, 1.0),) + tuple(bands)
    band_r = _per_band(band_pearson_r(x, y, sfreq, r_bands), r_bands, np.mean)
    return Scores(
        r_mean=float(r.mean()),
        r_median=float(np.median(r)),
        r_channel=r.mean(axis=0),
        snr_db=snr,
        band_error=band_error,
        band_r=band_r,
        n_windows=int(x.shape[0]),
    )


def _per_band(
    values: np.ndarray,
    bands: tuple[tuple[str, float, float], ...],
    reduce: Callable[[np.ndarray], Any],
) -> dict[str, float]:
    """``reduce`` over the finite entries of each band's column of ``values`` ``(..., n_bands)``.

    NaN for a band with no finite entry.
    """
    out = {}
    for i, (name, _, _) in enumerate(bands):
        vals = values[..., i]
        vals = vals[np.isfinite(vals)]
        out[name] = float(reduce(vals)) if vals.size else float("nan")
    return out
