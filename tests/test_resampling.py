"""Decimation of a faster stream to the model rate: on the device and in training, the same.

Real data: the 1000 Hz ECG recording ``body/ecg_5min.fif`` feeding a 500 Hz model.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from scipy import signal

from dropstream.acquisition import LiveStream
from dropstream.acquisition.info import StreamInfo
from dropstream.acquisition.publish import Track
from dropstream.acquisition.recording import load_tracks
from dropstream.broker.wire import decode_activation
from dropstream.cli import main
from dropstream.inference.datasets import DatasetError, windows_from_recordings
from dropstream.local_encoder.bundle import BundleError, load_device_bundle
from dropstream.local_encoder.encoder import WindowEncoder
from dropstream.local_encoder.preprocessing import filter_signal, prepare_window
from dropstream.local_encoder.resampling import (
    CausalDecimator,
    ResamplingError,
    decimate_signal,
    decimation_factor,
)
from dropstream.local_encoder.windowing import WindowBuffer
from tests.encoder_support import (
    PREPROCESSING,
    make_bundle,
    start_replay,
    unique_source,
)

ECG_FILE = "body/ecg_5min.fif"
STREAM_HZ = 1000.0
MODEL_HZ = 500.0
WINDOW, HOP = 500, 250  # 1 s windows every 0.5 s at the model rate


@pytest.fixture(scope="module")
def ecg(data_dir):
    """The ECG track as replay publishes it: ``(n, 1)`` microvolts at 1000 Hz."""
    track = load_tracks(data_dir / ECG_FILE)[0]
    assert track.info.sfreq == STREAM_HZ
    return track


@pytest.fixture(scope="module")
def bundle500(ecg):
    """A 500 Hz bundle whose normalisation is fitted on the decimated ECG."""
    low = decimate_signal(ecg.data[: int(60 * STREAM_HZ)].T, STREAM_HZ, 2)
    return make_bundle(
        low.T, MODEL_HZ, list(ecg.info.channel_names), window=WINDOW, hop=HOP, keep=64
    )


def reference_windows(bundle, stream):
    """Windows of ``stream (n, C)`` at 1000 Hz decimated, filtered and cut all at once."""
    low = filter_signal(decimate_signal(stream.T, STREAM_HZ, 2), MODEL_HZ, PREPROCESSING)
    n = (low.shape[1] - WINDOW) // HOP + 1
    return [
        prepare_window(
            low[:, i * HOP : i * HOP + WINDOW], PREPROCESSING, bundle.norm_mean, bundle.norm_std
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("factor", [2, 4])
def test_chunk_boundaries_change_nothing(ecg, factor):
    x = ecg.data[: int(60 * STREAM_HZ)].T  # (1, 60000)
    t = 50.0 + np.arange(x.shape[1]) / STREAM_HZ
    whole = decimate_signal(x, STREAM_HZ, factor)
    assert whole.shape == (1, -(-x.shape[1] // factor))
    rng = np.random.default_rng(factor)
    sizes = rng.integers(1, 701, size=x.shape[1] // 300)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    bounds = np.append(bounds[bounds < x.shape[1]], x.shape[1])
    dec = CausalDecimator(STREAM_HZ, factor, 1)
    parts, stamps = [], []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        n_out = dec.n_out(b - a)
        y, ty = dec.process_timed(x[:, a:b], t[a:b])
        assert y.shape == (1, n_out) and ty.shape == (n_out,)
        parts.append(y)
        stamps.append(ty)
    got = np.concatenate(parts, axis=1)
    np.testing.assert_allclose(got, whole, rtol=1e-10, atol=1e-9 * np.abs(whole).max())
    # the timestamp of a kept sample is the stream timestamp of that sample
    np.testing.assert_array_equal(np.concatenate(stamps), t[::factor])
    # after the start-up transient it is what scipy's own causal IIR decimation gives (which
    # starts its filter from rest instead of the steady state of the first sample)
    ref = signal.decimate(x, factor, ftype="iir", zero_phase=False, axis=1)
    skip = int(STREAM_HZ) // factor  # one second
    np.testing.assert_allclose(whole[:, skip:], ref[:, skip:], atol=1e-6 * np.abs(ref).max())


def test_antialias_filter_suppresses_tones_above_the_new_nyquist():
    t = np.arange(int(10 * STREAM_HZ)) / STREAM_HZ

    def gain_db(freq):
        x = np.sin(2 * np.pi * freq * t)[None]
        y = decimate_signal(x, STREAM_HZ, 2)[:, 500:]  # skip the first second (transient)
        return 20 * np.log10(y.std() / x.std())

    assert gain_db(400.0) < -40.0  # would alias to 100 Hz
    assert gain_db(300.0) < -40.0  # would alias to 200 Hz
    assert abs(gain_db(50.0)) < 0.1  # in band: passes (0.05 dB ripple)
    assert abs(gain_db(150.0)) < 0.1


def test_rates_that_work_and_rates_that_are_refused(bundle500, ecg):
    names = list(ecg.info.channel_names)
    assert decimation_factor(1000.0, 500.0) == 2
    assert decimation_factor(1500.0 * (1 + 1e-9), 500.0) == 3
    assert bundle500.stream_plan(names, 500.0) == ([0], 1)
    assert bundle500.stream_plan(names, 1000.0) == ([0], 2)
    assert bundle500.stream_plan(names, 1000.0 * (1 + 1e-8)) == ([0], 2)
    for bad, why in ((750.0, "not an integer multiple"), (250.0, "slower than")):
        with pytest.raises(BundleError, match=why) as err:
            bundle500.stream_plan(names, bad)
        assert "500, 1000, 1500" in str(err.value)  # says which rates work
        with pytest.raises(BundleError, match=why):
            WindowBuffer(bundle500, names, bad)
    with pytest.raises(ResamplingError):
        decimation_factor(1000.0, 0.0)
    # check_stream keeps its meaning for callers that do not decimate: exact rate only
    assert bundle500.check_stream(names, 500.0) == [0]
    with pytest.raises(BundleError, match="decimate it by 2"):
        bundle500.check_stream(names, 1000.0)
    with pytest.raises(BundleError, match="lacks channels"):
        bundle500.stream_plan(["other"], 1000.0)


def test_window_buffer_matches_the_training_path(bundle500, ecg, data_dir):
    """A 1000 Hz stream into a 500 Hz WindowBuffer gives the windows training cut."""
    ws = windows_from_recordings(
        [data_dir / ECG_FILE], window_s=1.0, hop_s=0.5, preprocessing=PREPROCESSING, sfreq=500
    )
    assert ws.sfreq == MODEL_HZ and ws.hop_samples == HOP and ws.X.shape[1:] == (1, WINDOW)
    stream = ecg.data
    stamps = 10.0 + np.arange(stream.shape[0]) / STREAM_HZ
    buf = WindowBuffer(bundle500, list(ecg.info.channel_names), STREAM_HZ)
    assert buf.factor == 2
    rng = np.random.default_rng(3)
    got, pos = [], 0
    while pos < stream.shape[0]:
        n = int(rng.integers(1, 701))
        got += buf.push(stream[pos : pos + n], stamps[pos : pos + n])
        pos += n
    assert len(got) == len(ws.X) == (stream.shape[0] // 2 - WINDOW) // HOP + 1
    expected = prepare_window(ws.X, PREPROCESSING, bundle500.norm_mean, bundle500.norm_std)
    for i, w in enumerate(got):
        assert w.index == i
        assert w.lsl_time == stamps[2 * i * HOP]  # stream time of the window's first kept sample
        np.testing.assert_allclose(w.data, expected[i], rtol=1e-4, atol=1e-4)
    assert buf.lost_samples == 0


def test_training_refuses_a_rate_it_cannot_decimate(data_dir):
    with pytest.raises(DatasetError, match="integer multiple"):
        windows_from_recordings([data_dir / ECG_FILE], window_s=1.0, hop_s=1.0, sfreq=300.0)
    with pytest.raises(DatasetError, match="slower"):
        windows_from_recordings([data_dir / ECG_FILE], window_s=1.0, hop_s=1.0, sfreq=2000.0)


def test_counts_are_at_the_model_rate_and_a_gap_restarts_the_decimator(bundle500, ecg):
    names = list(ecg.info.channel_names)
    stream = ecg.data[: int(20 * STREAM_HZ)]
    stamps = np.arange(stream.shape[0]) / STREAM_HZ
    buf = WindowBuffer(bundle500, names, STREAM_HZ)
    assert buf.push(stream[:997], stamps[:997]) == []
    assert buf.buffered == 499  # stream samples 0, 2, ..., 996
    first = buf.push(stream[997:999], stamps[997:999])  # sample 998 completes the window
    assert len(first) == 1 and first[0].lsl_time == 0.0
    # a gap: the next window starts at the first sample after it, decimated afresh
    cut = 5001
    buf.push(stream[999:cut], stamps[999:cut])
    discarded_before = buf.discarded_samples
    held = buf.buffered
    buf.note_lost(7)
    assert buf.discarded_samples == discarded_before + held and buf.lost_samples == 7
    after = buf.push(stream[cut:], stamps[cut:])
    ref = reference_windows(bundle500, stream[cut:])
    assert len(after) == len(ref) > 10
    for i, (w, r) in enumerate(zip(after, ref, strict=True)):
        assert w.lsl_time == stamps[cut + 2 * i * HOP]
        np.testing.assert_allclose(w.data, r, rtol=1e-5, atol=1e-5)


def test_replay_over_lsl_into_a_500hz_model(bundle500, ecg):
    """End to end: a real 1000 Hz recording over LSL, windows and messages at 500 Hz."""
    speed = 10.0
    stream = ecg.data[: int(20 * STREAM_HZ)]
    src = unique_source()
    info = StreamInfo(
        name=f"ecg-{src}",
        type="ECG",
        source_id=src,
        sfreq=STREAM_HZ,
        channel_names=ecg.info.channel_names,
        channel_types=ecg.info.channel_types,
        units=ecg.info.units,
        channel_format="double64",
    )
    pub = start_replay(Track(info=info, data=stream), speed=speed)
    inlet = LiveStream.connect(source_id=src, timeout=10.0)
    try:
        assert inlet.info.sfreq == STREAM_HZ
        buf = WindowBuffer(bundle500, inlet.info.channel_names, inlet.info.sfreq)
        encoder = WindowEncoder(bundle500, "dev-1", src, seed=1)
        expected = reference_windows(bundle500, stream)
        windows = []
        deadline = time.monotonic() + 20.0 / speed + 15.0
        while len(windows) < len(expected) and time.monotonic() < deadline:
            chunk = inlet.poll()
            if chunk.n_samples:
                ts = np.asarray(chunk.timestamps)
                breaks = [
                    (int(np.searchsorted(ts, g.start)), int(g.lost_samples)) for g in chunk.gaps
                ]
                windows += buf.push(chunk.data, ts, breaks)
            time.sleep(0.01)
    finally:
        inlet.close()
        pub.stop()
    assert buf.lost_samples == 0
    assert len(windows) == len(expected) == 39
    for w, r in zip(windows, expected, strict=True):
        np.testing.assert_allclose(w.data, r, rtol=1e-5, atol=1e-5)
    # windows start every hop of 0.5 s stream time, i.e. 0.05 s on the clock at 10x speed
    np.testing.assert_allclose(
        np.diff([w.lsl_time for w in windows]), HOP / MODEL_HZ / speed, atol=2e-3
    )
    msg = decode_activation(encoder.to_bytes(encoder.encode(windows[3], 3, time.time())))
    assert msg.sfreq == MODEL_HZ  # the rate of the window's samples, not the stream's
    assert (msg.window_samples, msg.hop_samples) == (WINDOW, HOP)


def test_cli_trains_a_500hz_model_from_a_1000hz_recording(data_dir, tmp_path, capsys):
    out = tmp_path / "ecg500.dsb"
    common = ["--width", "64", "--keep", "16", "--epochs", "2", "--label-seconds", "0"]
    common += ["--quiet", "-o", str(out)]
    rc = main(
        ["train", "--novelty", "--recording", str(data_dir / ECG_FILE), "--sfreq", "500"]
        + ["--window", "1", "--l-freq", "1", "--h-freq", "40"]
        + common
    )
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["windows"] == 300  # 300 s of 1 s windows
    bundle = load_device_bundle(out)
    assert (bundle.sfreq, bundle.window_samples) == (MODEL_HZ, 500)
    ecg = load_tracks(data_dir / ECG_FILE)[0]
    buf = WindowBuffer(bundle, list(ecg.info.channel_names), STREAM_HZ)
    windows = buf.push(ecg.data[:10_000], np.arange(10_000) / STREAM_HZ)
    assert len(windows) == 10 and windows[0].data.shape == (1, 500)
