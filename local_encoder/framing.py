"""Offline framing: where the windows of a whole recorded stream start, and the windows.

The device (:class:`dropstream.local_encoder.windowing.WindowBuffer`) cuts a stream into windows
of ``window`` samples every ``hop`` samples from its first sample on, and keeps only full windows.
Code that has the whole stream at once (training data, the privacy audit, demo assets,
benchmarks) cuts it with these functions, so its windows are the device's. numpy only.
"""

from __future__ import annotations

import numpy as np


def window_starts(n_samples: int, window: int, hop: int) -> np.ndarray:
    """Start sample of every full window of a stream of ``n_samples`` samples.

    Parameters
    ----------
    n_samples : int
        Samples in the stream.
    window, hop : int
        Window length and hop, samples.

    Returns
    -------
    numpy.ndarray, shape (N,), int64
        ``0, hop, 2*hop, ...`` up to the last window that fits; empty if none does.
    """
    if n_samples < window:
        return np.zeros(0, np.int64)
    return np.arange(0, n_samples - window + 1, hop, dtype=np.int64)


def stream_windows(stream: np.ndarray, window: int, hop: int) -> np.ndarray:
    """Cut a stream ``(C, L)`` into windows ``(N, C, window)`` at :func:`window_starts`.

    The windows are copies (same dtype as ``stream``); ``N`` may be 0.
    """
    starts = window_starts(stream.shape[1], window, hop)
    if not starts.size:
        return np.zeros((0, stream.shape[0], window), stream.dtype)
    return np.stack([stream[:, s : s + window] for s in starts])
