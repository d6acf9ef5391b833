"""A synthetic body-sensor for demos and plumbing tests (no realism claimed).

Generates EEG-like (1/f noise plus a 10 Hz alpha rhythm) and ECG-like (a Gaussian QRS spike
train at ~72 bpm) signals in microvolts and publishes them with
:class:`~dropstream.acquisition.publish.Publisher`.
Tests that claim realism use the real recordings in ``../shared/data`` instead.
"""

from __future__ import annotations

import numpy as np

from dropstream.acquisition.info import StreamInfo
from dropstream.acquisition.publish import Annotation, Publisher, Track
from dropstream.acquisition.units import MICROVOLTS


def synthetic_eeg(n_channels: int, sfreq: float, seconds: float, seed: int = 0) -> np.ndarray:
    """``(n, n_channels)`` EEG-like signal in microvolts (~20 uV RMS, alpha at 10 Hz)."""
    rng = np.random.default_rng(seed)
    n = max(1, int(round(seconds * sfreq)))
    white = rng.standard_normal((n, n_channels))
    spectrum = np.fft.rfft(white, axis=0)
    freqs = np.fft.rfftfreq(n, 1.0 / sfreq)
    spectrum /= np.sqrt(np.maximum(freqs, 1.0))[:, None]
    pink = np.fft.irfft(spectrum, n=n, axis=0)
    pink *= 15.0 / (pink.std() + 1e-12)
    t = np.arange(n) / sfreq
    alpha = 10.0 * np.sin(2 * np.pi * 10.0 * t)[:, None] * rng.uniform(0.5, 1.0, n_channels)
    return pink + alpha


def synthetic_ecg(sfreq: float, seconds: float, bpm: float = 72.0, seed: int = 0) -> np.ndarray:
    """``(n, 1)`` ECG-like signal in microvolts (1 mV R peaks)."""
    rng = np.random.default_rng(seed)
    n = max(1, int(round(seconds * sfreq)))
    t = np.arange(n) / sfreq
    beats = np.arange(0.3, seconds, 60.0 / bpm)
    sig = np.zeros(n)
    for b in beats:
        sig += 1000.0 * np.exp(-0.5 * ((t - b) / 0.012) ** 2)
        sig += 150.0 * np.exp(-0.5 * ((t - b - 0.25) / 0.04) ** 2)  # T wave
    return (sig + rng.normal(0.0, 10.0, n))[:, None]


def simulated_track(
    kind: str = "eeg",
    *,
    n_channels: int = 8,
    sfreq: float = 250.0,
    seconds: float = 60.0,
    name: str | None = None,
    source_id: str = "dropstream-simulator",
    seed: int = 0,
    events_every: float = 0.0,
) -> Track:
    """A synthetic :class:`~dropstream.acquisition.publish.Track` (``kind`` ``"eeg"`` or ``"ecg"``).

    ``events_every`` > 0 adds a ``"sim-event"`` annotation every that many seconds.
    """
    if kind == "eeg":
        data = synthetic_eeg(n_channels, sfreq, seconds, seed)
    elif kind == "ecg":
        data = synthetic_ecg(sfreq, seconds, seed=seed)
    else:
        raise ValueError(f"unknown simulated kind {kind!r}; use 'eeg' or 'ecg'")
    n_ch = data.shape[1]
    info = StreamInfo(
        name=name or f"sim-{kind}",
        type=kind.upper(),
        source_id=source_id,
        sfreq=float(sfreq),
        channel_names=tuple(f"{kind.upper()}{i + 1}" for i in range(n_ch)),
        channel_types=(kind.upper(),) * n_ch,
        units=(MICROVOLTS,) * n_ch,
        channel_format="double64",
    )
    notes = (
        [
            Annotation(float(t), 0.0, "sim-event")
            for t in np.arange(events_every, seconds, events_every)
        ]
        if events_every > 0
        else []
    )
    return Track(info, data, notes)


def simulate(tracks: list[Track], **publisher_options: object) -> Publisher:
    """Start publishing ``tracks`` (see :class:`~dropstream.acquisition.publish.Publisher` for
    options)."""
    return Publisher(tracks, **publisher_options).start()  # type: ignore[arg-type]
