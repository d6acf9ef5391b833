"""A replay publishes its clock start in the stream header, so a device maps every timestamp to
the time in the recording (what alerts report as ``recording_onset``) - checked sample by
sample on a real recording over real LSL, with a start offset, fast playback and a loop."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np

from dropstream.acquisition import LiveStream
from dropstream.acquisition.replay import RecordingReplay

ECG = "body/ecg_mitdb_anomaly.fif"  # 360 Hz, 20.8 s


def _receive(inlet: LiveStream, n: int) -> tuple[np.ndarray, np.ndarray]:
    data, stamps = [], []
    deadline = time.monotonic() + 20
    while sum(len(s) for s in stamps) < n and time.monotonic() < deadline:
        chunk = inlet.poll()
        if chunk.n_samples:
            data.append(chunk.data)
            stamps.append(chunk.timestamps)
        time.sleep(0.01)
    return np.concatenate(data)[:n], np.concatenate(stamps)[:n]


def test_recording_time_of_every_received_sample(data_dir: Path) -> None:
    sid = f"test-clock-{uuid.uuid4().hex[:8]}"
    with RecordingReplay([data_dir / ECG], source_id=sid, start=15.0, speed=4.0, loop=True) as rp:
        clock = rp.streams[0]
        with LiveStream.connect(source_id=sid, timeout=10) as inlet:
            replay = inlet.header.replay
            assert replay is not None and replay.t0 == rp.t0 and replay.speed == 4.0
            assert replay.t0_utc is not None and abs(replay.t0_utc - time.time()) < 60
            data, stamps = _receive(inlet, 8 * 360)  # 8 s: past the end, into the next loop
    sfreq = clock.sfreq
    track = rp.tracks[0].data
    rec = np.array([inlet.recording_time(t) for t in stamps])
    first = int(round(15.0 * sfreq))
    # (a time within half a sample of the loop's end is the next loop's first sample)
    idx = first + np.round((rec - 15.0) * sfreq).astype(int) % (track.shape[0] - first)
    # every sample is the recording's sample at the time the clock names, across the loop
    np.testing.assert_array_equal(data, track[idx])
    assert rec.min() >= 15.0 - 1e-6 and rec.max() < track.shape[0] / sfreq
    assert np.any(np.diff(rec) < 0)  # it looped back to 15 s


def test_a_replay_that_waits_for_consumers_says_it_has_no_recording_clock(data_dir: Path) -> None:
    sid = f"test-noclock-{uuid.uuid4().hex[:8]}"
    with (
        RecordingReplay([data_dir / ECG], source_id=sid, wait_for_consumers=10) as rp,
        LiveStream.connect(source_id=sid, timeout=10) as inlet,
    ):
        assert inlet.header.replay is None
        assert inlet.recording_time(123.0) is None
        assert rp.wait_started(10) and rp.t0 is not None
