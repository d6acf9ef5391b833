"""Offline framing and the simulated device give exactly the real device's windows and messages."""

from __future__ import annotations

import numpy as np
import pytest

from dropstream.broker.wire import kept_units_from_seed
from dropstream.inference.demo import DEMO_BUNDLE
from dropstream.local_encoder.bundle import load_device_bundle
from dropstream.local_encoder.framing import stream_windows, window_starts
from dropstream.local_encoder.preprocessing import filter_signal, prepare_window
from dropstream.local_encoder.simulated import encode_recording
from dropstream.local_encoder.windowing import WindowBuffer


def test_window_starts_keep_only_full_windows():
    assert window_starts(10, 4, 3).tolist() == [0, 3, 6]
    assert window_starts(9, 4, 5).tolist() == [0, 5]
    assert window_starts(4, 4, 1).tolist() == [0]
    assert window_starts(3, 4, 1).size == 0
    stream = np.arange(20.0).reshape(2, 10)
    w = stream_windows(stream, 4, 3)
    assert w.shape == (3, 2, 4) and w.dtype == stream.dtype
    np.testing.assert_array_equal(w[2], stream[:, 6:10])
    assert stream_windows(stream, 11, 1).shape == (0, 2, 11)


@pytest.fixture(scope="module")
def ecg():
    bundle = load_device_bundle(DEMO_BUNDLE)
    rng = np.random.default_rng(0)
    n = int(8 * bundle.sfreq) + 37
    samples = rng.standard_normal((bundle.n_channels, n)) * 200.0 + 50.0
    return bundle, samples


def test_offline_framing_is_the_device_framing(ecg):
    bundle, samples = ecg
    stamps = 3.0 + np.arange(samples.shape[1]) / bundle.sfreq
    buf = WindowBuffer(bundle, bundle.channel_names, bundle.sfreq)
    live, pos = [], 0
    for size in np.random.default_rng(1).integers(1, 300, 200):
        live += buf.push(samples.T[pos : pos + size], stamps[pos : pos + size])
        pos += int(size)
    live += buf.push(samples.T[pos:], stamps[pos:])
    T, hop = bundle.window_samples, bundle.hop_samples
    filtered = filter_signal(samples, bundle.sfreq, bundle.preprocessing)
    offline = stream_windows(filtered, T, hop)
    starts = window_starts(samples.shape[1], T, hop)
    assert len(live) == len(offline) == len(starts) > 20
    for w, x, s in zip(live, offline, starts, strict=True):
        ref = prepare_window(x, bundle.preprocessing, bundle.norm_mean, bundle.norm_std)
        np.testing.assert_allclose(w.data, ref, rtol=1e-4, atol=1e-4)
        assert w.lsl_time == stamps[s]


def test_simulated_device_sends_what_the_device_would(ecg):
    bundle, samples = ecg
    sent = encode_recording(bundle, samples, "sim-1", "stm", seed=5, lsl_start=2.0)
    T, hop = bundle.window_samples, bundle.hop_samples
    filtered = filter_signal(samples, bundle.sfreq, bundle.preprocessing)
    windows = prepare_window(
        stream_windows(filtered, T, hop), bundle.preprocessing, bundle.norm_mean, bundle.norm_std
    )
    acts = bundle.layer.forward(windows)
    rng = np.random.default_rng(5)
    starts = window_starts(samples.shape[1], T, hop)
    assert len(sent) == len(starts)
    for seq, ((msg, raw), a, s) in enumerate(zip(sent, acts, starts, strict=True)):
        # the test seed draws each window's 64-bit seed; the kept set derives from it
        seed = int(rng.integers(0, 2**63))
        kept = kept_units_from_seed(seed, bundle.layer.width, bundle.keep)
        assert msg.seed == seed
        assert (msg.sequence, msg.device_id, msg.stream_id) == (seq, "sim-1", "stm")
        assert msg.lsl_time == pytest.approx(2.0 + s / bundle.sfreq)
        np.testing.assert_array_equal(msg.indices, kept)
        np.testing.assert_allclose(msg.values, a[kept], rtol=1e-4, atol=1e-4)
        assert raw and len(raw) < 4 * bundle.keep + 200


def test_simulated_device_stamps_wall_times_that_follow_the_recording(ecg):
    """Window i starts ``wall_start + hop * i`` on the wall clock (it once stamped the time of
    encoding: every window of a recording the same instant, so a real gap looked forged)."""
    import time

    bundle, samples = ecg
    hop_s = bundle.hop_samples / bundle.sfreq
    sent = [m for m, _ in encode_recording(bundle, samples, "sim", lsl_start=5.0, wall_start=1.7e9)]
    walls = np.array([m.wall_time for m in sent])
    np.testing.assert_allclose(walls, 1.7e9 + hop_s * np.arange(len(sent)), rtol=0, atol=1e-6)
    np.testing.assert_allclose(walls - [m.lsl_time for m in sent], 1.7e9 - 5.0, rtol=0, atol=1e-6)
    # default: the recording was just captured, it ends now (every window lies in the past)
    before = time.time()
    sent = [m for m, _ in encode_recording(bundle, samples, "sim")]
    duration = samples.shape[1] / bundle.sfreq
    assert before - duration - 0.5 <= sent[0].wall_time <= time.time() - duration
    assert sent[-1].wall_time - sent[0].wall_time == pytest.approx(hop_s * (len(sent) - 1))
    assert sent[-1].wall_time + bundle.window_samples / bundle.sfreq <= time.time()
