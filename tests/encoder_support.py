"""Helpers shared by the encoder-agent tests: real EEG, a device bundle, LSL replay, consuming.

The bundle's first layer has random (seeded) weights - the agent does not care what the weights
learned - but its preprocessing and normalisation are fitted on the real recording, so the
windows the agent encodes are realistic. No torch is needed on the device side.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import mne
import numpy as np

from dropstream.acquisition.info import StreamInfo
from dropstream.acquisition.publish import Publisher, Track
from dropstream.broker.clients import make_consumer
from dropstream.broker.config import ClientConfig
from dropstream.broker.wire import ActivationMessage, decode_activation
from dropstream.local_encoder.bundle import DeviceBundle, write_bundle
from dropstream.local_encoder.first_layer import FirstLayer
from dropstream.local_encoder.framing import stream_windows
from dropstream.local_encoder.preprocessing import filter_signal, fit_normalisation

EEG_FILE = "eeg/eegmmidb_S001R02.edf"
PREPROCESSING = {"l_freq": 1.0, "h_freq": 40.0, "notch": None, "order": 4, "window_demean": False}


def load_eeg(data_dir: Path, n_channels: int = 8) -> tuple[np.ndarray, float, list[str]]:
    """First ``n_channels`` of the PhysioNet EEG recording: ``(n, C)`` microvolts, Hz, names."""
    raw = mne.io.read_raw_edf(data_dir / EEG_FILE, preload=True, verbose=False)
    names = [c.strip(".") for c in raw.ch_names[:n_channels]]
    data = raw.get_data()[:n_channels].T * 1e6
    return np.ascontiguousarray(data), float(raw.info["sfreq"]), names


def make_bundle(
    data: np.ndarray,
    sfreq: float,
    names: list[str],
    *,
    window: int = 160,
    hop: int = 80,
    width: int = 256,
    keep: int = 64,
    activation: str = "relu",
    check: bool = True,
) -> DeviceBundle:
    """A device bundle for ``data (n, C)`` with normalisation fitted on the filtered signal."""
    c = len(names)
    filtered = filter_signal(data.T, sfreq, PREPROCESSING)
    windows = stream_windows(filtered, window, hop)
    mean, std = fit_normalisation(windows, PREPROCESSING)
    rng = np.random.default_rng(7)
    weight = (rng.standard_normal((width, c * window)) / np.sqrt(c * window)).astype(np.float32)
    bias = (0.1 * rng.standard_normal(width)).astype(np.float32)
    bundle = DeviceBundle(
        model_id="test-eeg",
        model_version=3,
        layer=FirstLayer(weight, bias, activation),
        keep=keep,
        sfreq=sfreq,
        window_samples=window,
        hop_samples=hop,
        channel_names=tuple(names),
        channel_types=("eeg",) * c,
        preprocessing=dict(PREPROCESSING),
        norm_mean=mean,
        norm_std=std,
    )
    if check:
        bundle.check_privacy()
    return bundle


def save_bundle(path: Path, bundle: DeviceBundle) -> Path:
    """Write ``bundle`` (with a placeholder head, which the device never reads)."""
    write_bundle(path, bundle, b"head not needed on the device")
    return path


def eeg_track(data: np.ndarray, sfreq: float, names: list[str], source_id: str) -> Track:
    """A replay track of the recording with a unique name and source id."""
    info = StreamInfo(
        name=f"eeg-{source_id}",
        type="EEG",
        source_id=source_id,
        sfreq=sfreq,
        channel_names=tuple(names),
        channel_types=("EEG",) * len(names),
        units=("microvolts",) * len(names),
        channel_format="float32",
    )
    return Track(info=info, data=data)


def unique_source() -> str:
    """A source id no other test uses."""
    return f"enc-{uuid.uuid4().hex[:8]}"


def start_replay(track: Track, speed: float, wait_for_consumers: float = 10.0) -> Publisher:
    """Publish ``track`` as LSL in a background thread, starting when an inlet connects."""
    return Publisher([track], speed=speed, wait_for_consumers=wait_for_consumers).start()


def consume_all(
    config: ClientConfig,
    expected: int | None = None,
    timeout: float = 20.0,
    idle: float = 2.0,
) -> list[tuple[ActivationMessage, bytes, bytes]]:
    """Read every activation message of the topic: ``(message, key, raw value)`` in offset order.

    Stops when ``expected`` messages arrived (and nothing more for 0.5 s), after ``idle``
    seconds without new messages, or after ``timeout`` seconds.
    """
    consumer = make_consumer(
        config, [config.activations_topic], group_id=f"read-{uuid.uuid4().hex[:8]}"
    )
    out: list[tuple[ActivationMessage, bytes, bytes]] = []
    try:
        deadline = time.monotonic() + timeout
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=200)
            records = sorted(
                (r for rs in batch.values() for r in rs), key=lambda r: (r.partition, r.offset)
            )
            for r in records:
                out.append((decode_activation(r.value), r.key, r.value))
            if records:
                last_new = time.monotonic()
            quiet = time.monotonic() - last_new
            if expected is not None and len(out) >= expected and quiet > 0.5:
                break
            if expected is None and out and quiet > idle:
                break
    finally:
        consumer.close()
    return out
