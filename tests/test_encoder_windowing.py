"""Windowing on real EEG: chunk boundaries change nothing, breaks are accounted for."""

from __future__ import annotations

import numpy as np
import pytest

from dropstream.local_encoder.bundle import BundleError
from dropstream.local_encoder.preprocessing import (
    CausalFilter,
    PreprocessingError,
    filter_signal,
    prepare_window,
)
from dropstream.local_encoder.windowing import WindowBuffer
from tests.encoder_support import PREPROCESSING, load_eeg, make_bundle


@pytest.fixture(scope="module")
def eeg(data_dir):
    data, sfreq, names = load_eeg(data_dir)
    return data[: int(20 * sfreq)], sfreq, names


def reference_windows(bundle, data, start=0):
    """Windows cut from the whole signal filtered causally at once."""
    filtered = filter_signal(data.T, bundle.sfreq, PREPROCESSING)
    T, hop = bundle.window_samples, bundle.hop_samples
    n = (filtered.shape[1] - T) // hop + 1
    return [
        prepare_window(
            filtered[:, i * hop : i * hop + T], PREPROCESSING, bundle.norm_mean, bundle.norm_std
        )
        for i in range(n)
    ]


def push_in_chunks(buf, data, stamps, sizes):
    out, pos = [], 0
    for size in sizes:
        out += buf.push(data[pos : pos + size], stamps[pos : pos + size])
        pos += size
    out += buf.push(data[pos:], stamps[pos:])
    return out


@pytest.mark.parametrize("hop", [80, 160, 200])
def test_chunk_boundaries_change_nothing(eeg, hop):
    data, sfreq, names = eeg
    bundle = make_bundle(data, sfreq, names, hop=hop, check=False)
    stamps = 1000.0 + np.arange(data.shape[0]) / sfreq
    ref = reference_windows(bundle, data)
    assert len(ref) >= 15
    rng = np.random.default_rng(hop)
    for sizes in (
        [data.shape[0]],  # all at once
        [1] * 500,  # sample by sample
        rng.integers(1, 700, size=200).tolist(),  # random chunks, some longer than a window
    ):
        buf = WindowBuffer(bundle, names, sfreq)
        got = push_in_chunks(buf, data, stamps, sizes)
        assert len(got) == len(ref)
        for i, (w, r) in enumerate(zip(got, ref, strict=True)):
            assert w.index == i
            assert w.lsl_time == pytest.approx(stamps[i * hop])
            assert w.data.dtype == np.float32 and w.data.shape == (len(names), 160)
            np.testing.assert_allclose(w.data, r, rtol=1e-5, atol=1e-5)
        assert buf.lost_samples == 0


@pytest.mark.parametrize(
    "pre", [PREPROCESSING, {"h_freq": 40.0, "notch": 50.0}], ids=["band-pass", "low-pass+notch"]
)
@pytest.mark.parametrize("offset", [0.0, 5e4], ids=["no-offset", "50mV-offset"])
def test_float32_filter_stays_close_to_float64(eeg, pre, offset):
    """The device filters in float32; against training's float64 the error stays far below the
    float16 rounding of the wire (~5e-4), also on top of a large electrode offset (50 mV in
    microvolts), and does not grow along the recording."""
    data, sfreq, _ = eeg
    x = data.T + offset
    y64 = filter_signal(x, sfreq, pre, np.float64)
    f32 = CausalFilter(sfreq, x.shape[0], pre)
    y32 = np.concatenate([f32.process(x[:, i : i + 37]) for i in range(0, x.shape[1], 37)], 1)
    assert y32.dtype == np.float32
    scale = (y64 - y64.mean(axis=1, keepdims=True)).std(axis=1, keepdims=True)
    err = np.abs(y32 - y64) / scale
    assert err.max() < 3e-4
    half = err.shape[1] // 2
    assert err[:, half:].max() < 3 * err[:, :half].max() + 1e-5  # no drift
    # and the float32 path is not silently float64: it does differ a little
    assert err.max() > 0


def test_stream_channels_are_mapped_to_model_order(eeg):
    data, sfreq, names = eeg
    bundle = make_bundle(data, sfreq, names, check=False)
    # the stream has the channels reversed, different case, and an extra channel
    extra = np.random.default_rng(0).standard_normal((data.shape[0], 1))
    stream = np.hstack([data[:, ::-1], extra])
    stream_names = [n.upper() for n in names[::-1]] + ["AUX"]
    stamps = np.arange(data.shape[0]) / sfreq
    got = WindowBuffer(bundle, stream_names, sfreq).push(stream, stamps)
    ref = reference_windows(bundle, data)
    np.testing.assert_allclose(got[5].data, ref[5], rtol=1e-5, atol=1e-5)


def test_a_stream_that_does_not_fit_is_refused(eeg):
    data, sfreq, names = eeg
    bundle = make_bundle(data, sfreq, names, check=False)
    with pytest.raises(BundleError, match="Hz"):
        WindowBuffer(bundle, names, 256.0)
    with pytest.raises(BundleError, match="lacks channels"):
        WindowBuffer(bundle, names[1:], sfreq)
    buf = WindowBuffer(bundle, names, sfreq)
    with pytest.raises(PreprocessingError):
        buf.push(data[:10, :3], np.arange(10.0))
    with pytest.raises(PreprocessingError):
        buf.push(data[:10], np.arange(9.0))


def test_gap_and_nonfinite_samples_break_the_stream(eeg):
    data, sfreq, names = eeg
    bundle = make_bundle(data, sfreq, names, check=False)
    stamps = np.arange(data.shape[0]) / sfreq
    buf = WindowBuffer(bundle, names, sfreq)
    first = buf.push(data[:1000], stamps[:1000])
    # 1000 samples -> windows at 0, 80, ..., 800 (11); 1000 - 880 = 120 samples left over
    assert len(first) == 11 and buf.buffered == 120
    # an inlet gap of 37 lost samples before sample 0 of the next chunk
    after = buf.push(data[1037:2000], stamps[1037:2000], breaks=[(0, 37)])
    assert buf.lost_samples == 37 and buf.discarded_samples == 120
    # after the break the filter restarts: windows equal a fresh stream starting at 1037
    ref = reference_windows(bundle, data[1037:2000])
    assert len(after) == len(ref)
    np.testing.assert_allclose(after[3].data, ref[3], rtol=1e-5, atol=1e-5)
    assert after[0].lsl_time == pytest.approx(stamps[1037])
    # a NaN sample: dropped, the stream restarts after it, nothing becomes NaN
    bad = data[2000:3000].copy()
    bad[500, 2] = np.nan
    got = buf.push(bad, stamps[2000:3000])
    assert all(np.isfinite(w.data).all() for w in got)
    assert buf.lost_samples == 38
    assert got[-1].lsl_time >= stamps[2501]


def test_a_gap_after_held_chunks_breaks_at_the_right_sample(eeg):
    data, sfreq, names = eeg
    bundle = make_bundle(data, sfreq, names, check=False)
    stamps = np.arange(data.shape[0]) / sfreq
    buf = WindowBuffer(bundle, names, sfreq)
    for s in range(0, 100, 7):  # held: not enough for a window yet
        assert buf.push(data[s : min(s + 7, 100)], stamps[s : min(s + 7, 100)]) == []
    assert buf.buffered == 100
    got = buf.push(data[137:1200], stamps[137:1200], breaks=[(0, 37)])
    assert buf.lost_samples == 37 and buf.discarded_samples == 100
    ref = reference_windows(bundle, data[137:1200])
    assert len(got) == len(ref)
    for w, r in zip(got, ref, strict=True):
        np.testing.assert_allclose(w.data, r, rtol=1e-5, atol=1e-5)
    assert got[0].lsl_time == pytest.approx(stamps[137])


def test_seconds_to_next_window_says_when_the_agent_polls_next(eeg):
    """The agent sleeps until the next window can be complete: the missing samples at the
    bundle's rate, counting samples held before filtering; 0 once a window can be cut."""
    data, sfreq, names = eeg
    bundle = make_bundle(data, sfreq, names, window=160, hop=80)
    buf = WindowBuffer(bundle, names, sfreq)
    stamps = np.arange(data.shape[0]) / sfreq
    assert buf.seconds_to_next_window() == pytest.approx(160 / sfreq)
    assert buf.push(data[:100], stamps[:100]) == []
    assert buf.seconds_to_next_window() == pytest.approx(60 / sfreq)
    assert len(buf.push(data[100:160], stamps[100:160])) == 1
    assert buf.seconds_to_next_window() == pytest.approx(80 / sfreq)  # the hop
    buf.note_lost(5)  # a break discards the unfinished window
    assert buf.seconds_to_next_window() == pytest.approx(160 / sfreq)
