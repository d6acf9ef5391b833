"""Live inlets on real LSL (loopback): resolution errors, header metadata, units, loss
accounting, NaN and rate-change flags, several streams at once.

These are plumbing tests on synthetic signals (dropstream.acquisition.simulator); the realism tests
on the recordings in ../shared/data are in test_acquisition_replay.py.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import numpy as np
import pylsl
import pytest

from dropstream.acquisition import (
    Chunk,
    LiveStream,
    NonFiniteSampleError,
    RateChangedError,
    StreamGroup,
    StreamLostError,
    StreamNotFoundError,
    UnsupportedStreamError,
)
from dropstream.acquisition.info import StreamInfo, to_lsl
from dropstream.acquisition.loss import SampleTimeline
from dropstream.acquisition.publish import Publisher, Track
from dropstream.acquisition.simulator import simulated_track


def unique(prefix: str) -> str:
    return f"test-{prefix}-{uuid.uuid4().hex[:10]}"


def collect(
    stream: LiveStream, seconds: float, until: Callable[[list[Chunk]], bool] | None = None
) -> list[Chunk]:
    """Poll for ``seconds`` (or until ``until(chunks)``), keeping non-empty chunks."""
    chunks: list[Chunk] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        chunk = stream.poll()
        if chunk.n_samples or chunk.gaps:
            chunks.append(chunk)
        if until is not None and until(chunks):
            break
        time.sleep(0.01)
    return chunks


def test_resolve_names_what_was_found() -> None:
    sid = unique("present")
    track = simulated_track("ecg", sfreq=100, seconds=5, name=f"{sid}-name", source_id=sid)
    with Publisher([track]):
        missing = unique("missing")
        with pytest.raises(StreamNotFoundError) as err:
            LiveStream.connect(source_id=missing, timeout=0.5)
        with LiveStream.connect(name=f"{sid}-name", type="ECG", timeout=5) as by_name:
            assert by_name.info.source_id == sid
        with pytest.raises(StreamNotFoundError):
            LiveStream.connect(name=f"{sid}-name", type="EEG", timeout=0.3)  # all fields match
    text = str(err.value)
    assert missing in text
    assert f"{sid}-name" in text  # what WAS on the network


def test_header_metadata_and_volts_become_microvolts() -> None:
    sid = unique("volts")
    rng = np.random.default_rng(1)
    data = rng.normal(0.0, 20e-6, (400, 3))  # volts, like MNE
    info = StreamInfo(
        name="volt-sensor",
        type="EEG",
        source_id=sid,
        sfreq=200.0,
        channel_names=("Cz", "Pz", "PPG"),
        channel_types=("EEG", "EEG", "MISC"),  # an ECG in "AU" is refused: see test_units.py
        units=("V", "volts", "AU"),
        channel_format="double64",
    )
    with (
        Publisher([Track(info, data)], wait_for_consumers=10) as pub,
        LiveStream.connect(source_id=sid, timeout=5) as inlet,
    ):
        assert inlet.info.channel_names == ("Cz", "Pz", "PPG")
        assert inlet.info.channel_types == ("EEG", "EEG", "MISC")
        assert inlet.info.units == ("microvolts", "microvolts", "AU")
        assert inlet.header.units == ("V", "volts", "AU")
        assert inlet.info.sfreq == 200.0
        assert pub.wait_started(10)
        chunks = collect(inlet, 5.0, lambda cs: sum(c.n_samples for c in cs) >= 400)
    got = np.concatenate([c.data for c in chunks])
    assert got.shape == (400, 3)
    np.testing.assert_array_equal(got[:, :2], data[:, :2] * 1e6)
    np.testing.assert_array_equal(got[:, 2], data[:, 2])


def test_pause_is_reported_as_gap_and_steady_state_has_no_loss() -> None:
    sid = unique("pause")
    track = simulated_track("eeg", n_channels=4, sfreq=250, seconds=30, source_id=sid)
    with (
        Publisher([track], wait_for_consumers=10) as pub,
        LiveStream.connect(source_id=sid, timeout=5) as inlet,
    ):
        assert pub.wait_started(10)
        steady = collect(inlet, 1.5)
        assert sum(c.n_samples for c in steady) > 0
        assert inlet.total_lost == 0 and not any(c.gaps for c in steady)
        pub.pause()
        time.sleep(0.6)
        pub.resume()
        after = collect(inlet, 5.0, lambda cs: any(c.gaps for c in cs))
        after += collect(inlet, 0.3)
    gaps = [g for c in after for g in c.gaps]
    assert len(gaps) == 1
    gap = gaps[0]
    assert not gap.reconnected
    assert gap.duration >= 0.55
    assert gap.lost_samples == round(gap.duration * 250)
    assert inlet.total_lost == gap.lost_samples
    # Samples around the gap are still in order and continuous in value (nothing dropped
    # from the file, only time passed).
    data = np.concatenate([c.data for c in steady + after])
    np.testing.assert_array_equal(data, track.data[: data.shape[0]])
    ts = np.concatenate([c.timestamps for c in steady + after])
    steps = np.diff(ts)
    assert np.sum(steps > 2 / 250) == 1  # the single gap; everything else on the 250 Hz grid


def _push_raw(sid: str, sfreq: float, pushed_rate: float, data: np.ndarray) -> pylsl.StreamOutlet:
    info = StreamInfo(
        name="raw-sensor",
        type="EEG",
        source_id=sid,
        sfreq=sfreq,
        channel_names=("a", "b"),
        channel_types=("EEG", "EEG"),
        units=("microvolts", "microvolts"),
        channel_format="double64",
    )
    return pylsl.StreamOutlet(to_lsl(info))


def _feed(outlet: pylsl.StreamOutlet, inlet: LiveStream, data: np.ndarray, rate: float) -> list:
    """Push ``data`` with timestamps spaced 1/rate (in 10 chunks), polling as we go."""
    t0 = pylsl.local_clock()
    stamps = t0 + np.arange(data.shape[0]) / rate
    got: list = []
    for part, ts in zip(np.array_split(data, 10), np.array_split(stamps, 10), strict=True):
        outlet.push_chunk(part, ts.tolist())
        time.sleep(0.02)
        try:
            got.append(inlet.poll())
        except (NonFiniteSampleError, RateChangedError) as exc:
            got.append(exc)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            c = inlet.poll()
        except (NonFiniteSampleError, RateChangedError) as exc:
            got.append(exc)
            c = exc.chunk
        else:
            got.append(c)
        if (
            sum((x.chunk if isinstance(x, Exception) else x).n_samples for x in got)
            >= data.shape[0]
        ):
            break
        time.sleep(0.01)
    return got


def test_nonfinite_samples_are_flagged_or_raised_never_dropped() -> None:
    sid = unique("nan")
    data = np.arange(600.0).reshape(300, 2)
    data[100, 0] = np.nan
    data[200, 1] = np.inf
    outlet = _push_raw(sid, 100.0, 100.0, data)
    with LiveStream.connect(source_id=sid, timeout=5) as inlet:
        got = _feed(outlet, inlet, data, 100.0)
    chunks = [c for c in got if isinstance(c, Chunk)]
    flags = np.concatenate([c.nonfinite for c in chunks])
    received = np.concatenate([c.data for c in chunks])
    assert flags.shape == (300,)
    assert np.flatnonzero(flags).tolist() == [100, 200]
    np.testing.assert_array_equal(received, data)  # NaN/inf kept as received, never repaired

    sid = unique("nan-raise")
    outlet = _push_raw(sid, 100.0, 100.0, data)
    with LiveStream.connect(source_id=sid, timeout=5, on_nonfinite="raise") as inlet:
        got = _feed(outlet, inlet, data, 100.0)
    errors = [e for e in got if isinstance(e, NonFiniteSampleError)]
    assert errors, "NaN samples must raise with on_nonfinite='raise'"
    total = sum((x.chunk if isinstance(x, Exception) else x).n_samples for x in got)
    assert total == 300  # the raising chunks are carried by the exceptions: nothing lost
    del outlet


def test_stream_that_runs_at_another_rate_is_flagged() -> None:
    sid = unique("rate")
    data = np.zeros((500, 2))
    outlet = _push_raw(sid, 100.0, 125.0, data)  # header says 100 Hz, samples come at 125 Hz
    with LiveStream.connect(source_id=sid, timeout=5, on_rate_change="raise") as inlet:
        got = _feed(outlet, inlet, data, 125.0)
    errors = [e for e in got if isinstance(e, RateChangedError)]
    assert errors
    assert errors[-1].chunk.measured_rate == pytest.approx(125.0, rel=0.01)
    assert "125" in str(errors[-1])
    del outlet


def test_marker_stream_is_refused_by_data_inlet() -> None:
    sid = unique("markers")
    info = pylsl.StreamInfo("m", "Markers", 1, 0.0, pylsl.cf_string, sid)
    outlet = pylsl.StreamOutlet(info)
    with pytest.raises(UnsupportedStreamError, match="MarkerStream"):
        LiveStream.connect(source_id=sid, timeout=5)
    del outlet


def test_group_polls_two_streams_with_their_own_clocks() -> None:
    eeg_id, ecg_id = unique("g-eeg"), unique("g-ecg")
    tracks = [
        simulated_track("eeg", n_channels=2, sfreq=250, seconds=10, source_id=eeg_id),
        simulated_track("ecg", sfreq=500, seconds=10, source_id=ecg_id),
    ]
    with Publisher(tracks, wait_for_consumers=10) as pub:
        group = StreamGroup.connect({"eeg": {"source_id": eeg_id}, "ecg": {"source_id": ecg_id}})
        with group:
            assert pub.wait_started(10)
            got: dict[str, list[Chunk]] = {"eeg": [], "ecg": []}
            deadline = time.monotonic() + 5
            while (
                time.monotonic() < deadline
                and min(sum(c.n_samples for c in v) for v in got.values()) < 250
            ):
                for key, chunk in group.poll().items():
                    got[key].append(chunk)
                time.sleep(0.01)
            assert set(group.clock_offsets()) == {"eeg", "ecg"}
            start = group.common_start()
    assert start is not None
    first = {k: np.concatenate([c.timestamps for c in v])[0] for k, v in got.items()}
    # Same publisher clock: both streams start at t0 on the local clock.
    assert abs(first["eeg"] - first["ecg"]) < 1e-3
    assert start == pytest.approx(max(first.values()))
    np.testing.assert_array_equal(
        np.concatenate([c.data for c in got["ecg"]]),
        tracks[1].data[: sum(c.n_samples for c in got["ecg"])],
    )


def test_timeline_dejitters_and_counts_loss_in_pieces() -> None:
    rng = np.random.default_rng(0)
    true = 1000.0 + np.arange(1000) / 100.0
    true[600:] += 0.25  # 25 samples lost
    raw = true + rng.normal(0.0, 0.0005, true.size)
    tl = SampleTimeline(100.0)
    out, gaps = [], []
    for part in np.array_split(raw, 53):
        o, g = tl.process(part)
        out.append(o)
        gaps += g
    out_arr = np.concatenate(out)
    assert [g.lost_samples for g in gaps] == [25]
    assert gaps[0].start == pytest.approx(true[599] + 0.01, abs=2e-3)
    assert tl.total_lost == 25
    # dejitter brings the error well below the raw jitter after the first samples of a segment
    assert np.abs(out_arr - true)[50:600].max() < np.abs(raw - true)[50:600].max() / 2
    assert not tl.rate_changed
    assert tl.measured_rate == pytest.approx(100.0, rel=1e-3)


def test_timeline_flags_a_rate_change_mid_stream() -> None:
    tl = SampleTimeline(100.0)
    first = 50.0 + np.arange(300) / 100.0  # 3 s at the nominal 100 Hz
    for part in np.array_split(first, 30):
        tl.process(part)
    assert not tl.rate_changed
    second = first[-1] + (1 + np.arange(375)) / 125.0  # then 3 s at 125 Hz
    for part in np.array_split(second, 30):
        tl.process(part)
    assert tl.rate_changed
    assert tl.measured_rate == pytest.approx(125.0, rel=0.01)


def test_stream_gone_for_good_is_reported_lost_then_raises_when_asked() -> None:
    sid = unique("gone")
    track = simulated_track("ecg", sfreq=200, seconds=30, source_id=sid)
    pub = Publisher([track], wait_for_consumers=10).start()
    inlet = LiveStream.connect(source_id=sid, timeout=5, lost_after=0.5, give_up_after=1.5)
    try:
        assert pub.wait_started(10)
        # (the inlet holds the first second back for its unit check)
        got = collect(inlet, 5.0, lambda cs: sum(c.n_samples for c in cs) > 0)
        assert sum(c.n_samples for c in got) > 0
        pub.stop()  # the outlet disappears and never comes back
        flags: list[bool] = []
        with pytest.raises(StreamLostError, match="give_up_after"):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                flags.append(inlet.poll().stream_lost)
                time.sleep(0.02)
        assert True in flags  # reported lost (lost_after) before giving up
        assert inlet.lost
    finally:
        inlet.close()
