"""Causal preprocessing shared by training and the device: filtering and normalisation.

The same code runs in :mod:`dropstream.inference.training` (on whole recordings) and on the device
(chunk by chunk as samples arrive), so what the model was trained on is exactly what it is served.
Only numpy and scipy are used; torch is never imported here. The device does not import
:mod:`scipy.signal` (about 75 MiB of resident memory it would never use): it runs scipy's compiled
second-order-section kernel (what :func:`scipy.signal.sosfilt` calls) loaded on its own, and a
bundle carries its designed sections (``filter_sos``), so only designing a filter (training, or
a bundle written before the sections were stored) imports :mod:`scipy.signal`.

The preprocessing of a model is a plain dict stored in the bundle's manifest
(:attr:`dropstream.local_encoder.bundle.DeviceBundle.preprocessing`)::

    {"l_freq": 1.0,        # high-pass edge in Hz, or None
     "h_freq": 40.0,       # low-pass edge in Hz, or None
     "notch": 50.0,        # mains notch in Hz, or None
     "order": 4,           # Butterworth order of the band-pass
     "window_demean": False}  # subtract each window's per-channel mean before normalising

The filter is a causal IIR (Butterworth band-pass, optional notch) in second-order sections, run
in float32 (each channel's first sample is taken off in float64 first, so an electrode offset
does not cost precision). Its state is carried across chunks, and it starts in the steady state
of the first sample seen, so a large DC offset does not ring through the first seconds.
Filtering a whole signal at once and filtering it in any split into chunks give identical
output.

After filtering, each window is (optionally) demeaned per channel and then normalised with the
per-channel ``norm_mean`` and ``norm_std`` stored in the bundle (stream units, e.g. volts).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from dropstream.acquisition.sosfilt import sos_kernel
from dropstream.errors import DropstreamError

#: Keys a preprocessing dict may hold, with their defaults (no filtering, no demeaning).
DEFAULT_PREPROCESSING: dict[str, Any] = {
    "l_freq": None,
    "h_freq": None,
    "notch": None,
    "order": 4,
    "window_demean": False,
}


class PreprocessingError(DropstreamError):
    """Preprocessing settings that cannot be realised, or input of the wrong shape."""


def complete_preprocessing(preprocessing: Mapping[str, Any] | None) -> dict[str, Any]:
    """Fill in defaults and reject unknown keys.

    Parameters
    ----------
    preprocessing : mapping or None
        Partial settings; ``None`` means no filtering and no demeaning.

    Returns
    -------
    dict
        A complete preprocessing dict (see the module docstring).
    """
    out = dict(DEFAULT_PREPROCESSING)
    if preprocessing:
        unknown = set(preprocessing) - set(DEFAULT_PREPROCESSING)
        if unknown:
            raise PreprocessingError(
                f"unknown preprocessing keys {sorted(unknown)}; "
                f"allowed are {sorted(DEFAULT_PREPROCESSING)}"
            )
        out.update(preprocessing)
    return out


def design_filter(sfreq: float, preprocessing: Mapping[str, Any] | None) -> np.ndarray | None:
    """Second-order sections of the causal filter, or ``None`` when no filtering is asked for.

    Parameters
    ----------
    sfreq : float
        Sample rate in Hz.
    preprocessing : mapping or None
        Settings with ``l_freq``, ``h_freq``, ``notch`` (Hz) and ``order``.

    Returns
    -------
    numpy.ndarray of shape (n_sections, 6) or None
    """
    p = complete_preprocessing(preprocessing)
    nyq = sfreq / 2.0
    l_freq, h_freq, notch = p["l_freq"], p["h_freq"], p["notch"]
    order = int(p["order"])
    for name, f in (("l_freq", l_freq), ("h_freq", h_freq), ("notch", notch)):
        if f is not None and not 0.0 < float(f) < nyq:
            raise PreprocessingError(
                f"{name}={f} Hz must lie strictly between 0 and Nyquist {nyq} Hz at "
                f"{sfreq} Hz; change the model's preprocessing"
            )
    if l_freq is not None and h_freq is not None and float(l_freq) >= float(h_freq):
        raise PreprocessingError(f"l_freq={l_freq} Hz must be below h_freq={h_freq} Hz")
    if order < 1:
        raise PreprocessingError(f"filter order must be >= 1, got {order}")
    if l_freq is None and h_freq is None and notch is None:
        return None
    from scipy import signal  # design only (training, bundle export): never on the device path

    sections = []
    if l_freq is not None and h_freq is not None:
        sections.append(
            signal.butter(order, [l_freq, h_freq], btype="bandpass", fs=sfreq, output="sos")
        )
    elif l_freq is not None:
        sections.append(signal.butter(order, l_freq, btype="highpass", fs=sfreq, output="sos"))
    elif h_freq is not None:
        sections.append(signal.butter(order, h_freq, btype="lowpass", fs=sfreq, output="sos"))
    if notch is not None:
        b, a = signal.iirnotch(float(notch), Q=30.0, fs=sfreq)
        sections.append(signal.tf2sos(b, a))
    if not sections:
        return None
    return np.concatenate(sections, axis=0)


def sosfilt_zi(sos: np.ndarray) -> np.ndarray:
    """Steady-state initial conditions ``(n_sections, 2)`` of a unit step, as
    :func:`scipy.signal.sosfilt_zi` (the same computation: per section ``(I - A^T) z = b[1:] -
    a[1:] b[0]`` solved with :func:`numpy.linalg.solve`, scaled by the DC gain of the sections
    before it), in numpy alone."""
    sos = np.asarray(sos, np.float64)
    zi = np.empty((sos.shape[0], 2))
    scale = 1.0
    for s, (b, a) in enumerate(zip(sos[:, :3], sos[:, 3:], strict=True)):
        b, a = b / a[0], a / a[0]
        companion_t = np.array([[-a[1], 1.0], [-a[2], 0.0]])  # transpose of the companion
        zi[s] = scale * np.linalg.solve(np.eye(2) - companion_t, b[1:] - a[1:] * b[0])
        scale *= b.sum() / a.sum()
    return zi


class SosFilterState:
    """Second-order sections applied chunk after chunk, with the filter state carried over.

    The state starts as the steady state of a signal that has been constant at its first
    sample, so a DC offset does not ring. Shared by :class:`CausalFilter` and
    :class:`dropstream.local_encoder.resampling.CausalDecimator`. Runs
    :func:`dropstream.acquisition.sosfilt.sos_kernel`: the numbers of :func:`scipy.signal.sosfilt`.

    Parameters
    ----------
    sos : numpy.ndarray of shape (n_sections, 6), or None
        The filter; ``None`` passes samples through.
    dtype : numpy dtype
        Precision of the coefficients and state; chunks are filtered in it (float64 by default;
        the device uses float32).
    """

    def __init__(self, sos: np.ndarray | None, dtype: type = np.float64) -> None:
        self.sos = None if sos is None else np.ascontiguousarray(sos, dtype)
        self._zi_unit = None if sos is None else sosfilt_zi(sos).astype(dtype)
        self._kernel = None if sos is None else sos_kernel()
        self._state: np.ndarray | None = None  # (signals, sections, 2), the kernel's layout

    def reset(self) -> None:
        """Forget the state: the next chunk starts a new signal."""
        self._state = None

    def apply(self, x: np.ndarray, overwrite: bool = False) -> np.ndarray:
        """Filter the next chunk ``(..., n)`` (of the filter's dtype) along its last axis.

        ``overwrite``: ``x`` is a temporary the caller gives up; filtered in place when it is
        C-contiguous and of the filter's dtype (no copy).
        """
        if self.sos is None or x.shape[-1] == 0:
            return x.copy()
        n = x.shape[-1]
        if overwrite and x.dtype == self.sos.dtype and x.flags.c_contiguous:
            y = x.reshape(-1, n)
        else:
            y = np.array(x.reshape(-1, n), dtype=self.sos.dtype, order="C")
        if self._state is None:
            self._state = self._zi_unit[None, :, :] * y[:, :1, None]
        self._kernel(self.sos, y, self._state)
        return y.reshape(x.shape)


class CausalFilter:
    """A causal IIR filter over ``C`` channels whose state is carried across chunks.

    Parameters
    ----------
    sfreq : float
        Sample rate in Hz.
    n_channels : int
        Number of channels ``C``.
    preprocessing : mapping or None
        Filter settings (see the module docstring); no filtering passes samples through.
    dtype : numpy dtype
        Precision of the filter and of its output: float32 (the default: device and training
        alike, so training sees exactly what the device computes) or float64 (about 1e-4 of a
        channel's spread apart at most on real EEG, see ``tests/test_encoder_windowing.py``).
    sos : numpy.ndarray of shape (n_sections, 6), optional
        The sections :func:`design_filter` gives for ``preprocessing`` (a bundle stores them:
        :attr:`dropstream.local_encoder.bundle.DeviceBundle.filter_sos`), so that the device
        need not design (import :mod:`scipy.signal`); zero sections: no filter.

    Examples
    --------
    >>> f = CausalFilter(256.0, 2, {"l_freq": 1.0, "h_freq": 40.0})
    >>> y1 = f.process(np.zeros((2, 100)))  # chunks of any length, shape (C, n)
    """

    def __init__(
        self,
        sfreq: float,
        n_channels: int,
        preprocessing: Mapping[str, Any] | None = None,
        dtype: type = np.float32,
        sos: np.ndarray | None = None,
    ) -> None:
        self.sfreq = float(sfreq)
        self.n_channels = int(n_channels)
        self.dtype = np.dtype(dtype)
        if sos is None:
            self.sos = design_filter(self.sfreq, preprocessing)
        else:  # designed already (a bundle's filter_sos); no sections: no filter
            self.sos = np.asarray(sos, np.float64).reshape(-1, 6) if len(sos) else None
        self._sections = SosFilterState(self.sos, self.dtype.type)
        # below float64, the first sample of each channel is taken off (in float64) before the
        # cast, so a large electrode offset does not eat float32's precision; the filter's DC
        # gain times the offset is added back (zero for a high- or band-pass)
        self._low_precision = self.sos is not None and self.dtype != np.float64
        self._dc_gain = 1.0
        if self.sos is not None:
            self._dc_gain = float(np.prod(self.sos[:, :3].sum(1) / self.sos[:, 3:].sum(1)))
        self._offset: np.ndarray | None = None
        self._dc_offset: np.ndarray | None = None

    def reset(self) -> None:
        """Forget the state; the next chunk starts the filter afresh (e.g. after a gap)."""
        self._sections.reset()
        self._offset = None

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Filter the next chunk ``(C, n)``; ``(C, n)`` back in the filter's dtype (unfiltered:
        float64)."""
        x = np.asarray(chunk, dtype=np.float64)  # cast to the filter's dtype in _apply
        if x.ndim != 2 or x.shape[0] != self.n_channels:
            raise PreprocessingError(
                f"chunk must have shape (channels={self.n_channels}, samples); got {x.shape}"
            )
        return self._apply(x)

    def _apply(self, x: np.ndarray) -> np.ndarray:
        """Filter float64 samples ``(..., C, n)``, starting from or continuing the state."""
        if self.sos is None:  # no filter: the samples pass through unchanged
            return x.copy()
        if not self._low_precision or x.shape[-1] == 0:
            return self._sections.apply(x.astype(self.dtype, copy=False))
        if self._offset is None:
            self._offset = x[..., :1].copy()
            # the filter's response to the offset taken off: constant from here on
            gain = self._dc_gain
            self._dc_offset = (gain * self._offset).astype(self.dtype) if abs(gain) > 1e-9 else None
        centred = np.subtract(x, self._offset, order="C")  # C order even for a transposed x
        y = self._sections.apply(centred.astype(self.dtype), overwrite=True)
        if self._dc_offset is not None:
            y += self._dc_offset
        return y


def filter_signal(
    x: np.ndarray,
    sfreq: float,
    preprocessing: Mapping[str, Any] | None,
    dtype: type = np.float32,
) -> np.ndarray:
    """Filter a whole signal ``(C, n)``; identical to :meth:`CausalFilter.process` in chunks."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise PreprocessingError(f"signal must have shape (channels, samples); got {x.shape}")
    return CausalFilter(sfreq, x.shape[0], preprocessing, dtype).process(x)


def filter_windows(
    windows: np.ndarray, sfreq: float, preprocessing: Mapping[str, Any] | None
) -> np.ndarray:
    """Filter each window ``(N, C, T)`` on its own, as if each were a stream starting there.

    Used for trial datasets (UEA problems) that are not continuous recordings.
    """
    w = np.asarray(windows, dtype=np.float64)
    if w.ndim != 3:
        raise PreprocessingError(f"windows must have shape (N, C, T); got {w.shape}")
    return CausalFilter(sfreq, w.shape[1], preprocessing)._apply(w)  # as the device, per window


def normalise(window: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Per-channel normalisation ``(x - mean) / std`` of a window ``(C, T)`` or batch ``(N, C, T)``.

    Parameters
    ----------
    window : numpy.ndarray
        Filtered samples, channels on axis -2.
    mean, std : numpy.ndarray, shape (C,)
        Per-channel statistics in the stream's units; ``std`` must be positive.

    Returns
    -------
    numpy.ndarray, float32, same shape as ``window``
        Computed in float64, or in float32 for a float32 window (the device: one new array).
    """
    dtype = np.float32 if getattr(window, "dtype", None) == np.float32 else np.float64
    x = np.asarray(window, dtype=dtype)
    mean = np.asarray(mean, dtype=dtype)
    std = np.asarray(std, dtype=dtype)
    if x.ndim < 2 or mean.shape != (x.shape[-2],) or std.shape != mean.shape:
        raise PreprocessingError(
            f"normalise needs a window (..., C, T) and mean/std of shape (C,); got {x.shape}, "
            f"{mean.shape} and {std.shape}"
        )
    if np.any(~np.isfinite(std)) or np.any(std <= 0):
        raise PreprocessingError("normalisation std must be finite and positive per channel")
    out = x - mean[:, None]
    out /= std[:, None]
    return out.astype(np.float32, copy=False)


def prepare_window(
    window: np.ndarray,
    preprocessing: Mapping[str, Any] | None,
    mean: np.ndarray,
    std: np.ndarray,
) -> np.ndarray:
    """Turn an already filtered window ``(C, T)`` (or batch) into the first layer's input.

    Applies the optional per-window demeaning, then :func:`normalise`. The result, flattened
    channel-major, is what :meth:`dropstream.local_encoder.first_layer.FirstLayer.forward` expects.
    """
    p = complete_preprocessing(preprocessing)
    x = window if getattr(window, "dtype", None) == np.float32 else np.asarray(window, np.float64)
    if p["window_demean"]:
        x = x - x.mean(axis=-1, keepdims=True)
    return normalise(x, mean, std)


def fit_normalisation(
    windows: np.ndarray, preprocessing: Mapping[str, Any] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of filtered training windows ``(N, C, T)`` (after demeaning).

    A channel with zero spread gets std 1 so that normalisation stays finite.
    """
    p = complete_preprocessing(preprocessing)
    x = np.asarray(windows, dtype=np.float64)
    if p["window_demean"]:
        x = x - x.mean(axis=-1, keepdims=True)
    mean = x.mean(axis=(0, 2))
    std = x.std(axis=(0, 2))
    std = np.where(std > 0, std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)
