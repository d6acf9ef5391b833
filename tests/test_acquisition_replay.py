"""Replay of the real recordings in ../shared/data through real LSL (loopback).

Acceptance of issue 3: every sample of eegmmidb_S001R02.edf arrives in order with the file's
values (microvolts) and real-time timestamps; the annotations arrive as markers; loss accounting
is 0 in steady state and reports a pause; killing and restarting ``dropstream replay`` is a
reported reconnection; two files replay aligned on one clock.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import mne
import numpy as np
import pylsl
import pytest

from dropstream.acquisition import Chunk, LiveStream, Marker, MarkerStream, StreamGroup
from dropstream.acquisition.replay import RecordingReplay

EDF = "eeg/eegmmidb_S001R02.edf"
SECONDS = 10.0
TOL = 0.005  # seconds: the "within 5 ms of real-time pace"


def unique(prefix: str) -> str:
    return f"test-{prefix}-{uuid.uuid4().hex[:10]}"


def read_microvolts(path: Path) -> tuple[np.ndarray, mne.io.BaseRaw]:
    """The file's samples as (n, C) microvolts, read independently of acquisition."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = mne.io.read_raw(path, preload=True, verbose="error")
    return raw.get_data().T * 1e6, raw


@dataclass
class EdfRun:
    replay: RecordingReplay
    info: object
    chunks: list[Chunk]
    markers: list[Marker]
    total_lost: int


@pytest.fixture(scope="module")
def edf_run(data_dir: Path) -> EdfRun:
    """10 s of real-time replay of the EDF, received by a data inlet and a marker inlet."""
    sid = unique("edf")
    replay = RecordingReplay([data_dir / EDF], source_id=sid, wait_for_consumers=20)
    replay.start()
    try:
        # The marker inlet first: the clock starts as soon as the data inlet is connected.
        markers_in = MarkerStream.connect(source_id=f"{sid}-markers", timeout=10)
        data_in = LiveStream.connect(source_id=sid, timeout=10)
        assert replay.wait_started(20)
        chunks: list[Chunk] = []
        markers: list[Marker] = []
        need = int(SECONDS * 160)
        deadline = time.monotonic() + SECONDS + 10
        while sum(c.n_samples for c in chunks) < need and time.monotonic() < deadline:
            chunk = data_in.poll()
            if chunk.n_samples or chunk.gaps:
                chunks.append(chunk)
            markers += markers_in.poll()
            time.sleep(0.005)
        markers += markers_in.poll()
        info = data_in.info
        total_lost = data_in.total_lost
        data_in.close()
        markers_in.close()
    finally:
        replay.stop()
    return EdfRun(replay, info, chunks, markers, total_lost)


def test_replay_delivers_every_sample_in_order_with_file_values(
    edf_run: EdfRun, data_dir: Path
) -> None:
    expected, raw = read_microvolts(data_dir / EDF)
    data = np.concatenate([c.data for c in edf_run.chunks])
    n = data.shape[0]
    assert n >= SECONDS * 160
    np.testing.assert_array_equal(data, expected[:n])  # in order, nothing missing, exact values
    assert edf_run.info.channel_names == tuple(raw.ch_names)
    assert set(edf_run.info.units) == {"microvolts"}
    assert set(edf_run.info.channel_types) == {"EEG"}
    assert edf_run.info.sfreq == 160.0


def test_replay_timestamps_follow_real_time(edf_run: EdfRun) -> None:
    ts = np.concatenate([c.timestamps for c in edf_run.chunks])
    t0 = edf_run.replay.t0
    assert t0 is not None
    schedule = t0 + np.arange(ts.size) / 160.0
    assert np.abs(ts - schedule).max() < TOL
    # Paced, not dumped: no chunk arrives before its last sample was due ...
    for chunk in edf_run.chunks:
        if chunk.n_samples:
            assert chunk.received_at >= chunk.timestamps[-1] - TOL
    # ... so 10 s of samples took at least ~10 s to arrive.
    received = [c.received_at for c in edf_run.chunks if c.n_samples]
    assert received[-1] - t0 >= (ts.size - 1) / 160.0 - TOL


def test_replay_steady_state_has_no_loss(edf_run: EdfRun) -> None:
    assert edf_run.total_lost == 0
    assert not any(c.gaps for c in edf_run.chunks)
    assert not any(c.nonfinite.any() for c in edf_run.chunks)
    assert not any(c.rate_changed for c in edf_run.chunks)


def test_replay_annotations_arrive_as_markers(edf_run: EdfRun, data_dir: Path) -> None:
    _, raw = read_microvolts(data_dir / EDF)
    onsets = raw.annotations.onset - raw.first_time
    due = [
        (o, str(d))
        for o, d in zip(onsets, raw.annotations.description, strict=True)
        if o <= SECONDS
    ]
    assert due, "the EDF has annotations in its first seconds"
    assert [m.text for m in edf_run.markers] == [d for _, d in due]
    t0 = edf_run.replay.t0
    for marker, (onset, _) in zip(edf_run.markers, due, strict=True):
        assert abs(marker.timestamp - (t0 + onset)) < TOL


def test_pause_of_real_recording_is_reported_and_start_offset_applies(data_dir: Path) -> None:
    path = data_dir / "body" / "ecg_mitdb_anomaly.fif"
    expected, raw = read_microvolts(path)
    sfreq = raw.info["sfreq"]
    start = 18.5  # the file's 'anomaly' annotation is at 19.27 s
    sid = unique("pause")
    with RecordingReplay([path], source_id=sid, start=start, wait_for_consumers=20) as replay:
        markers_in = MarkerStream.connect(source_id=f"{sid}-markers", timeout=10)
        inlet = LiveStream.connect(source_id=sid, timeout=10)
        assert replay.wait_started(20)
        t0 = replay.t0  # resume() shifts replay.t0 by the pause
        chunks: list[Chunk] = []
        markers: list[Marker] = []

        def run(seconds: float, stop_on_gap: bool = False) -> None:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                chunk = inlet.poll()
                chunks.append(chunk)
                nonlocal markers
                markers += markers_in.poll()
                if stop_on_gap and chunk.gaps:
                    return
                time.sleep(0.01)

        run(1.2)
        steady_lost = inlet.total_lost
        replay.pause()
        time.sleep(0.5)
        replay.resume()
        run(5.0, stop_on_gap=True)
        run(0.2)
        inlet.close()
        markers_in.close()
    assert steady_lost == 0
    gaps = [g for c in chunks for g in c.gaps]
    assert len(gaps) == 1
    assert gaps[0].duration >= 0.45
    assert gaps[0].lost_samples == round(gaps[0].duration * sfreq)
    data = np.concatenate([c.data for c in chunks])
    first = round(start * sfreq)
    np.testing.assert_array_equal(data, expected[first : first + data.shape[0]])
    assert [m.text for m in markers] == ["anomaly"]
    onset = raw.annotations.onset[0] - (raw.first_time if raw.annotations.orig_time else 0.0)
    assert abs(markers[0].timestamp - (t0 + onset - start)) < TOL


def test_killed_replay_restarts_and_inlet_reconnects_by_itself(data_dir: Path) -> None:
    sid = unique("kill")
    cmd = [
        sys.executable,
        "-m",
        "dropstream",
        "replay",
        "--source-id",
        sid,
        "--wait-for-consumers",
        "20",
        str(data_dir / "body" / "ecg_5min.fif"),
    ]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = None
    try:
        inlet = LiveStream.connect(source_id=sid, timeout=30, lost_after=1.0)
        chunks: list[Chunk] = []
        deadline = time.monotonic() + 10
        while sum(c.n_samples for c in chunks) < 500 and time.monotonic() < deadline:
            chunks.append(inlet.poll())
            time.sleep(0.01)
        assert sum(c.n_samples for c in chunks) >= 500
        first.send_signal(signal.SIGKILL)
        first.wait()
        killed_at = pylsl.local_clock()
        deadline = time.monotonic() + 5
        while not inlet.lost and time.monotonic() < deadline:
            chunks.append(inlet.poll())
            time.sleep(0.02)
        assert inlet.lost, "a stream that stopped delivering must be reported lost"
        second = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not inlet.gaps and time.monotonic() < deadline:
            chunks.append(inlet.poll())  # the same inlet: no reconnect call by the test
            time.sleep(0.02)
        chunks.append(inlet.poll())
        inlet.close()
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    gaps = inlet.gaps
    assert len(gaps) == 1
    gap = gaps[0]
    assert gap.reconnected
    assert gap.start <= killed_at + 0.1
    assert gap.lost_samples == round(gap.duration * 1000)
    assert not inlet.lost
    # After the restart (which waits for the recovered inlet) the file plays again from its
    # first sample, and every sample arrives.
    expected, _ = read_microvolts(data_dir / "body" / "ecg_5min.fif")
    after = np.concatenate([c.data for c in chunks if c.n_samples and c.timestamps[0] > gap.start])
    np.testing.assert_array_equal(after, expected[: after.shape[0]])


def test_two_files_replay_aligned_on_one_clock(data_dir: Path) -> None:
    eeg_path = data_dir / "body" / "eeg_eyes_closed_open.fif"
    ecg_path = data_dir / "body" / "ecg_5min.fif"
    prefix = unique("pair")
    with RecordingReplay([eeg_path, ecg_path], source_id=prefix, wait_for_consumers=20) as replay:
        ids = [s.source_id for s in replay.streams]
        assert ids == [f"{prefix}-eeg_eyes_closed_open", f"{prefix}-ecg_5min"]
        with StreamGroup.connect({"eeg": {"source_id": ids[0]}, "ecg": {"source_id": ids[1]}}) as g:
            assert replay.wait_started(20)
            got: dict[str, list[Chunk]] = {"eeg": [], "ecg": []}
            deadline = time.monotonic() + 10
            while (
                time.monotonic() < deadline
                and min(sum(c.n_samples for c in v) for v in got.values()) < 2000
            ):
                for key, chunk in g.poll().items():
                    got[key].append(chunk)
                time.sleep(0.01)
            assert g["eeg"].info.channel_names == ("EEG1", "EEG2")
            assert g["ecg"].info.channel_types == ("ECG",)
    ts = {k: np.concatenate([c.timestamps for c in v]) for k, v in got.items()}
    n = min(ts["eeg"].size, ts["ecg"].size)
    assert n >= 2000
    # Both 1000 Hz on one clock: sample k of each stream carries the same time.
    assert np.abs(ts["eeg"][:n] - ts["ecg"][:n]).max() < 1e-3
    assert abs(ts["eeg"][0] - replay.t0) < TOL
    for key, path in (("eeg", eeg_path), ("ecg", ecg_path)):
        data = np.concatenate([c.data for c in got[key]])
        expected, _ = read_microvolts(path)
        np.testing.assert_array_equal(data, expected[: data.shape[0]])
    assert not any(c.gaps for v in got.values() for c in v)


def test_speed_factor_is_declared_in_header_and_not_a_rate_change(data_dir: Path) -> None:
    path = data_dir / "body" / "ecg_mitdb_anomaly.fif"
    sid = unique("speed")
    with (
        RecordingReplay([path], source_id=sid, speed=4.0, wait_for_consumers=20) as replay,
        LiveStream.connect(source_id=sid, timeout=10) as inlet,
    ):
        assert replay.wait_started(20)
        assert inlet.info.speed == 4.0 and inlet.info.sfreq == 360.0
        chunks: list[Chunk] = []
        deadline = time.monotonic() + 10
        while inlet.timeline.measured_rate is None and time.monotonic() < deadline:
            chunks.append(inlet.poll())
            time.sleep(0.01)
    ts = np.concatenate([c.timestamps for c in chunks])
    np.testing.assert_allclose(np.diff(ts), 1 / 1440.0, atol=1e-6)
    assert inlet.timeline.measured_rate == pytest.approx(1440.0, rel=0.01)
    assert not any(c.rate_changed or c.gaps for c in chunks)


def test_loop_and_chunk_size_keep_timestamps_continuous(tmp_path: Path) -> None:
    sfreq = 200.0
    data = np.random.default_rng(7).normal(0, 20e-6, (2, 100))  # 0.5 s
    raw = mne.io.RawArray(data, mne.create_info(["C3", "C4"], sfreq, "eeg"), verbose="error")
    raw.set_annotations(mne.Annotations([0.25], [0.0], ["mid"]))
    path = tmp_path / "short_raw.fif"
    raw.save(path, fmt="double", verbose="error")
    expected, _ = read_microvolts(path)
    sid = unique("loop")
    chunks: list[Chunk] = []
    markers: list[Marker] = []
    with RecordingReplay(
        [path], source_id=sid, loop=True, speed=2.0, chunk_size=7, wait_for_consumers=20
    ) as replay:
        markers_in = MarkerStream.connect(source_id=f"{sid}-markers", timeout=10)
        inlet = LiveStream.connect(source_id=sid, timeout=10)
        assert replay.wait_started(20)
        t0 = replay.t0
        deadline = time.monotonic() + 10
        while sum(c.n_samples for c in chunks) < 350 and time.monotonic() < deadline:
            chunks.append(inlet.poll())
            markers += markers_in.poll()
            time.sleep(0.01)
        inlet.close()
        markers_in.close()
    got = np.concatenate([c.data for c in chunks])
    n = got.shape[0]
    assert n >= 350
    np.testing.assert_array_equal(got, np.tile(expected, (4, 1))[:n])  # 3.5 loops, in order
    ts = np.concatenate([c.timestamps for c in chunks])
    np.testing.assert_allclose(ts, t0 + np.arange(n) / (sfreq * 2.0), atol=TOL)
    assert not any(c.gaps for c in chunks)
    # One 'mid' marker per loop, at 0.25 s of each pass (speed 2 -> 0.125 s wall).
    assert [m.text for m in markers] == ["mid"] * len(markers) and len(markers) >= 3
    for k, m in enumerate(markers):
        assert abs(m.timestamp - (t0 + (k * 0.5 + 0.25) / 2.0)) < TOL
