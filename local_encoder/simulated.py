"""A simulated device: a whole recording through the real device code, without LSL or Kafka.

:func:`encode_recording` pushes the recording through
:class:`~dropstream.local_encoder.windowing.WindowBuffer` (channel picks, decimation, causal
filter, windows, normalisation) and :class:`~dropstream.local_encoder.encoder.WindowEncoder`
(first layer, fresh keep mask, wire bytes), exactly as the agent does with an inlet's chunks, so
the demo's reference, the service tests and the benchmarks cannot drift from the real device.
The keep masks are seeded (a real device uses OS entropy).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from dropstream.broker.auth import DeviceKey
from dropstream.broker.wire import ActivationMessage
from dropstream.local_encoder.bundle import DeviceBundle
from dropstream.local_encoder.encoder import WindowEncoder
from dropstream.local_encoder.windowing import WindowBuffer


def encode_recording(
    bundle: DeviceBundle,
    samples: np.ndarray,
    device_id: str,
    stream_id: str = "stream",
    seed: int | None = 0,
    lsl_start: float = 0.0,
    sfreq: float | None = None,
    channel_names: Sequence[str] | None = None,
    recording_clock: Callable[[float], float | None] | None = None,
    key: DeviceKey | None = None,
    wall_start: float | None = None,
) -> list[tuple[ActivationMessage, bytes]]:
    """Encode a whole recording as the device does.

    Parameters
    ----------
    bundle : DeviceBundle
    samples : numpy.ndarray, shape (C, n)
        The stream, channels in the bundle's order (or ``channel_names``'), in the units the
        bundle was trained on (microvolts for voltages).
    device_id, stream_id : str
    seed : int | None
        Seed of the keep masks (``None``: OS entropy, like a real device).
    lsl_start : float
        LSL-clock time of the first sample, seconds.
    sfreq : float, optional
        Rate of ``samples`` in Hz (default: the bundle's; an integer multiple is decimated).
    channel_names : sequence of str, optional
        The stream's channels, in ``samples``' order (default: the bundle's); the bundle's are
        picked from them as the device does.
    recording_clock : callable, optional
        ``recording_clock(lsl_time)``: seconds into the recording, sent with each window (see
        :class:`~dropstream.local_encoder.encoder.WindowEncoder`).
    key : DeviceKey, optional
        Sign every message with this device key, as the agent does (its id must be
        ``device_id``); without it the messages carry a zeroed tag, which a service that
        authenticates refuses.
    wall_start : float, optional
        Wall-clock time (Unix seconds) of the first sample; each window's wall-clock start is
        ``wall_start`` plus its start's offset into the recording (``start + hop * i`` for
        window ``i`` of an unbroken stream), as a device stamps it. Default: the recording
        ends now (it was just captured), so every window lies in the past.

    Returns
    -------
    list of (ActivationMessage, bytes)
        One message per window with its wire bytes, sequence numbers from 0.
    """
    if key is not None and key.device_id != device_id:
        raise ValueError(f"the key is for device {key.device_id!r}, not {device_id!r}")
    rate = float(sfreq or bundle.sfreq)
    samples = np.asarray(samples)
    stamps = lsl_start + np.arange(samples.shape[1]) / rate
    names = bundle.channel_names if channel_names is None else channel_names
    windows = WindowBuffer(bundle, names, rate).push(samples.T, stamps)
    encoder = WindowEncoder(bundle, device_id, stream_id, seed, recording_clock)
    if wall_start is None:
        wall_start = time.time() - samples.shape[1] / rate
    out = []
    for seq, window in enumerate(windows):
        msg = encoder.encode(window, seq, wall_start + (window.lsl_time - lsl_start))
        raw = encoder.to_bytes(msg)
        out.append((msg, raw if key is None else key.sign(raw)))
    return out
