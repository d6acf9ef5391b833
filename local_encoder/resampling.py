"""Causal integer-factor decimation: a stream faster than the model, brought down to its rate.

A model is trained at one sample rate (the bundle's ``sfreq``, in Hz). A stream running at an
integer multiple ``k * sfreq`` (``k >= 2``) is accepted: before the model's own preprocessing,
the device

1. low-passes the stream at the **stream** rate with a causal anti-alias filter (Chebyshev
   type I, order 8, 0.05 dB pass-band ripple, edge at 0.8 x the new Nyquist frequency
   ``sfreq / 2``, in second-order sections - the filter :func:`scipy.signal.decimate` uses), and
2. keeps every ``k``-th sample, starting with the first sample of the stream.

The filter state and the decimation phase are carried across chunks, so the split of a stream
into chunks changes nothing: :meth:`CausalDecimator.process` over any chunking equals
:func:`decimate_signal` over the whole signal. Training from a recording at ``k * sfreq``
(:func:`dropstream.inference.datasets.windows_from_recordings` with ``sfreq=``) calls the same code.

Like :class:`dropstream.local_encoder.preprocessing.CausalFilter`, the filter starts in the steady
state of the first sample it sees, so a DC offset does not ring through the first seconds. Only
numpy and scipy are used; torch is never imported here.
"""

from __future__ import annotations

import numpy as np

from dropstream.errors import DropstreamError
from dropstream.local_encoder.preprocessing import SosFilterState

#: Relative tolerance when checking that a stream rate is an integer multiple of the model rate.
RATE_RTOL = 1e-6

#: Order, pass-band ripple (dB) and edge (fraction of the new Nyquist) of the anti-alias filter.
ANTIALIAS_ORDER = 8
ANTIALIAS_RIPPLE_DB = 0.05
ANTIALIAS_EDGE = 0.8


class ResamplingError(DropstreamError):
    """A stream rate that cannot be brought to the model rate, or input of the wrong shape."""


def decimation_factor(stream_sfreq: float, target_sfreq: float, rtol: float = RATE_RTOL) -> int:
    """The integer ``k`` with ``stream_sfreq == k * target_sfreq`` (within ``rtol``).

    Parameters
    ----------
    stream_sfreq : float
        Sample rate of the stream (or recording), Hz.
    target_sfreq : float
        Sample rate the model expects, Hz.
    rtol : float
        Relative tolerance of the ratio check.

    Returns
    -------
    int
        ``1`` when the rates match, else the decimation factor ``k >= 2``.

    Raises
    ------
    ResamplingError
        If a rate is not positive, the stream is slower than the target, or the ratio is not an
        integer; the message lists the stream rates that work.
    """
    fs, target = float(stream_sfreq), float(target_sfreq)
    if not (np.isfinite(fs) and np.isfinite(target) and fs > 0 and target > 0):
        raise ResamplingError(
            f"sample rates must be positive and finite; got stream {stream_sfreq} Hz and "
            f"model {target_sfreq} Hz"
        )
    ratio = fs / target
    k = int(round(ratio))
    if k >= 1 and abs(ratio - k) <= rtol * max(ratio, 1.0):
        return k
    works = ", ".join(f"{m * target:g}" for m in (1, 2, 3, 4))
    why = "slower than" if ratio < 1 else "not an integer multiple of"
    raise ResamplingError(
        f"a stream at {fs:g} Hz is {why} the model rate {target:g} Hz; streams at an integer "
        f"multiple of it work ({works}, ... Hz): set the device to such a rate or train a "
        f"model for {fs:g} Hz"
    )


def design_antialias(stream_sfreq: float, factor: int) -> np.ndarray:
    """Second-order sections of the anti-alias low-pass for decimation by ``factor``.

    Parameters
    ----------
    stream_sfreq : float
        Rate the filter runs at (the stream's), Hz.
    factor : int
        Decimation factor ``k >= 2``.

    Returns
    -------
    numpy.ndarray of shape (4, 6)
        Chebyshev type I low-pass with its edge at ``0.8 * stream_sfreq / (2 * factor)`` Hz.
    """
    if int(factor) < 2:
        raise ResamplingError(f"decimation factor must be >= 2 for a filter; got {factor}")
    edge_hz = ANTIALIAS_EDGE * float(stream_sfreq) / (2.0 * int(factor))
    from scipy import signal  # design only, when a stream must be decimated

    return signal.cheby1(
        ANTIALIAS_ORDER, ANTIALIAS_RIPPLE_DB, edge_hz, fs=float(stream_sfreq), output="sos"
    )


class CausalDecimator:
    """Anti-alias low-pass and keep every ``factor``-th sample, state carried across chunks.

    Parameters
    ----------
    stream_sfreq : float
        Sample rate of the input, Hz.
    factor : int
        Keep one sample in ``factor``; ``1`` passes samples through unchanged (no filter).
    n_channels : int
        Number of channels ``C``.

    Attributes
    ----------
    out_sfreq : float
        Sample rate of the output, ``stream_sfreq / factor`` Hz.

    Examples
    --------
    >>> d = CausalDecimator(1000.0, 2, n_channels=1)
    >>> d.process(np.zeros((1, 5))).shape  # keeps input samples 0, 2, 4
    (1, 3)
    >>> d.process(np.zeros((1, 5))).shape  # keeps input samples 6, 8 (phase carried)
    (1, 2)
    """

    def __init__(self, stream_sfreq: float, factor: int, n_channels: int) -> None:
        if int(factor) < 1 or int(factor) != factor:
            raise ResamplingError(f"decimation factor must be an integer >= 1; got {factor}")
        self.stream_sfreq = float(stream_sfreq)
        self.factor = int(factor)
        self.n_channels = int(n_channels)
        self.out_sfreq = self.stream_sfreq / self.factor
        self.sos = design_antialias(self.stream_sfreq, self.factor) if self.factor > 1 else None
        self._sections = SosFilterState(self.sos)
        self._phase = 0  # input samples to drop before the next kept one (0..factor-1)

    def reset(self) -> None:
        """Forget filter state and phase: the next sample starts a new stream (after a gap)."""
        self._sections.reset()
        self._phase = 0

    def n_out(self, n_samples: int) -> int:
        """Output samples the next ``n_samples`` input samples would give (state unchanged)."""
        return max(0, -(-(int(n_samples) - self._phase) // self.factor))

    def _keep(self, n: int) -> slice:
        """The input positions kept from the next ``n`` samples; advances the phase."""
        kept = slice(self._phase, n, self.factor)
        self._phase = (self._phase - n) % self.factor
        return kept

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Decimate the next chunk ``(C, n)``; returns float64 ``(C, n_out)`` at ``out_sfreq``."""
        x = np.asarray(chunk, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] != self.n_channels:
            raise ResamplingError(
                f"chunk must have shape (channels={self.n_channels}, samples); got {x.shape}"
            )
        if self.sos is None or x.shape[1] == 0:
            return x.copy()
        y = self._sections.apply(x)
        return np.ascontiguousarray(y[:, self._keep(x.shape[1])])

    def process_timed(
        self, chunk: np.ndarray, timestamps: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`process`, also returning the timestamps of the kept samples.

        Parameters
        ----------
        chunk : numpy.ndarray, shape (C, n)
            Samples at the stream rate.
        timestamps : numpy.ndarray, shape (n,)
            Time of each sample, seconds (any clock).

        Returns
        -------
        data : numpy.ndarray, shape (C, n_out)
        times : numpy.ndarray, shape (n_out,)
            The input timestamp of each kept sample.
        """
        t = np.asarray(timestamps, dtype=np.float64)
        x = np.asarray(chunk)
        if t.shape != (x.shape[-1],):
            raise ResamplingError(f"need one timestamp per sample; got {t.shape} for {x.shape}")
        if self.factor == 1:
            return self.process(x), t.copy()
        phase = self._phase
        y = self.process(x)
        return y, t[phase :: self.factor]


def decimate_signal(x: np.ndarray, stream_sfreq: float, factor: int) -> np.ndarray:
    """Decimate a whole signal ``(C, n)``; identical to :meth:`CausalDecimator.process` in chunks.

    Parameters
    ----------
    x : numpy.ndarray, shape (C, n)
        Samples at ``stream_sfreq`` Hz.
    stream_sfreq : float
        Input rate, Hz.
    factor : int
        Keep one sample in ``factor`` (input samples ``0, factor, 2 * factor, ...``).

    Returns
    -------
    numpy.ndarray, shape (C, ceil(n / factor)), float64
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ResamplingError(f"signal must have shape (channels, samples); got {x.shape}")
    return CausalDecimator(stream_sfreq, factor, x.shape[0]).process(x)
