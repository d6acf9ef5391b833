"""Loading recordings for replay: formats (EDF, FIF, EEGLAB, XDF), units, annotations, and
bad input (missing, unsupported, corrupt, empty files, NaN samples) as typed errors or flags."""

from __future__ import annotations

import struct
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import mne
import numpy as np
import pytest

from dropstream.acquisition import Chunk, LiveStream, RecordingError
from dropstream.acquisition.recording import load_tracks
from dropstream.acquisition.replay import RecordingReplay

EDF = "eeg/eegmmidb_S001R02.edf"


def write_edf(path: Path, n_signals: int, n_records: int, per_record: int = 10) -> Path:
    """A minimal EDF file (header + zero samples), to make empty recordings."""

    def field(value: object, width: int) -> str:
        return str(value).ljust(width)[:width]

    header = (
        field("0", 8)
        + field("X", 80)
        + field("Y", 80)
        + field("01.01.20", 8)
        + field("00.00.00", 8)
        + field(256 + 256 * n_signals, 8)
        + field("", 44)
        + field(n_records, 8)
        + field(1, 8)
        + field(n_signals, 4)
    )
    for width, value in (
        (16, None),
        (80, ""),
        (8, "uV"),
        (8, -100),
        (8, 100),
        (8, -32768),
        (8, 32767),
        (80, ""),
        (8, per_record),
        (32, ""),
    ):
        header += "".join(
            field(f"EEG{i}" if value is None else value, width) for i in range(n_signals)
        )
    samples = np.zeros(n_records * n_signals * per_record, dtype="<i2").tobytes()
    path.write_bytes(header.encode("ascii") + samples)
    return path


def _chunk(tag: int, content: bytes) -> bytes:
    body = struct.pack("<H", tag) + content
    return bytes([4]) + struct.pack("<I", len(body)) + body


def write_xdf(path: Path, data: np.ndarray, sfreq: float, t0: float, markers: list) -> Path:
    """A minimal XDF 1.0 file: one double64 EEG stream (units volts) and one marker stream."""
    n, n_ch = data.shape
    chans = "".join(
        f"<channel><label>C{i}</label><unit>volts</unit><type>EEG</type></channel>"
        for i in range(n_ch)
    )
    eeg_hdr = (
        "<?xml version='1.0'?><info><name>xdf-eeg</name><type>EEG</type>"
        f"<channel_count>{n_ch}</channel_count><nominal_srate>{sfreq}</nominal_srate>"
        "<channel_format>double64</channel_format><source_id>x</source_id>"
        f"<desc><channels>{chans}</channels></desc></info>"
    )
    mk_hdr = (
        "<?xml version='1.0'?><info><name>xdf-markers</name><type>Markers</type>"
        "<channel_count>1</channel_count><nominal_srate>0</nominal_srate>"
        "<channel_format>string</channel_format><source_id>y</source_id></info>"
    )
    out = b"XDF:" + _chunk(1, b"<?xml version='1.0'?><info><version>1.0</version></info>")
    out += _chunk(2, struct.pack("<I", 1) + eeg_hdr.encode())
    out += _chunk(2, struct.pack("<I", 2) + mk_hdr.encode())
    samples = b""
    for i in range(n):
        samples += bytes([8]) + struct.pack("<d", t0 + i / sfreq) + data[i].astype("<f8").tobytes()
    out += _chunk(3, struct.pack("<I", 1) + bytes([4]) + struct.pack("<I", n) + samples)
    msamples = b""
    for t, text in markers:
        raw = text.encode()
        msamples += bytes([8]) + struct.pack("<d", t) + bytes([1, len(raw)]) + raw
    out += _chunk(3, struct.pack("<I", 2) + bytes([4]) + struct.pack("<I", len(markers)) + msamples)
    path.write_bytes(out)
    return path


def test_edf_loads_in_microvolts_with_labels_and_annotations(data_dir: Path) -> None:
    [track] = load_tracks(data_dir / EDF)
    raw = mne.io.read_raw(data_dir / EDF, preload=True, verbose="error")
    np.testing.assert_array_equal(track.data, raw.get_data().T * 1e6)
    assert track.info.channel_names == tuple(raw.ch_names)
    assert track.info.units == ("microvolts",) * 64
    assert track.info.type == "EEG"
    assert track.info.source_id == "dropstream-replay-eegmmidb_S001R02"
    assert [(a.onset, a.description) for a in track.annotations] == [(0.0, "T0")]


def test_fif_ppg_channel_keeps_its_unit(data_dir: Path) -> None:
    [track] = load_tracks(data_dir / "body" / "ppg_rest.fif")
    assert track.info.units == ("AU",)  # a fraction of the ADC range, not a voltage
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = mne.io.read_raw(data_dir / "body" / "ppg_rest.fif", verbose="error")
    np.testing.assert_array_equal(track.data[:, 0], raw.get_data()[0])


def test_eeglab_export_of_the_real_edf_replays_the_same_signal(
    data_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("eeglabio")
    raw = mne.io.read_raw(data_dir / EDF, preload=True, verbose="error").crop(0, 5)
    path = tmp_path / "excerpt.set"
    mne.export.export_raw(path, raw, fmt="eeglab", verbose="error")
    [track] = load_tracks(path)
    assert track.info.channel_names == tuple(raw.ch_names)
    assert track.info.sfreq == 160.0
    np.testing.assert_allclose(track.data, raw.get_data().T * 1e6, rtol=1e-5, atol=1e-3)


def write_brainvision(path: Path, data_uv: np.ndarray, names: list[str], sfreq: float) -> Path:
    """A BrainVision triplet (.vhdr/.vmrk/.eeg, float32 microvolts) with one stimulus at 1 s."""
    stem = path.stem
    chans = "\n".join(f"Ch{i + 1}={n},,1,\u00b5V" for i, n in enumerate(names))
    path.write_text(
        "Brain Vision Data Exchange Header File Version 1.0\n\n[Common Infos]\nCodepage=UTF-8\n"
        f"DataFile={stem}.eeg\nMarkerFile={stem}.vmrk\nDataFormat=BINARY\n"
        f"DataOrientation=MULTIPLEXED\nNumberOfChannels={len(names)}\n"
        f"SamplingInterval={1e6 / sfreq:g}\n\n[Binary Infos]\nBinaryFormat=IEEE_FLOAT_32\n\n"
        f"[Channel Infos]\n{chans}\n",
        encoding="utf-8",
    )
    onset = int(sfreq) + 1  # 1-based sample index of t = 1 s
    path.with_suffix(".vmrk").write_text(
        "Brain Vision Data Exchange Marker File, Version 1.0\n\n[Common Infos]\nCodepage=UTF-8\n"
        f"DataFile={stem}.eeg\n\n[Marker Infos]\nMk1=Stimulus,S  1,{onset},1,0\n",
        encoding="utf-8",
    )
    path.with_suffix(".eeg").write_bytes(data_uv.astype("<f4").tobytes())  # (n, C) multiplexed
    return path


def test_brainvision_copy_of_the_real_edf_replays_the_same_signal(
    data_dir: Path, tmp_path: Path
) -> None:
    raw = mne.io.read_raw(data_dir / EDF, preload=True, verbose="error").crop(0, 5)
    uv = raw.get_data().T * 1e6
    path = write_brainvision(tmp_path / "excerpt.vhdr", uv, raw.ch_names, 160.0)
    [track] = load_tracks(path)
    assert track.info.channel_names == tuple(raw.ch_names)
    assert track.info.units == ("microvolts",) * 64
    np.testing.assert_allclose(track.data, uv.astype(np.float32), rtol=1e-5, atol=1e-4)
    assert [(a.onset, a.description) for a in track.annotations] == [(1.0, "Stimulus/S  1")]


def test_xdf_stream_and_markers_are_loaded(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    data = rng.normal(0, 10e-6, (500, 3))
    path = write_xdf(tmp_path / "rec.xdf", data, 250.0, 100.0, [(100.4, "go"), (101.0, "stop")])
    [track] = load_tracks(path)
    assert track.info.channel_names == ("C0", "C1", "C2")
    assert track.info.units == ("microvolts",) * 3
    assert track.info.sfreq == 250.0
    np.testing.assert_allclose(track.data, data * 1e6, rtol=1e-12)
    assert [(round(a.onset, 6), a.description) for a in track.annotations] == [
        (0.4, "go"),
        (1.0, "stop"),
    ]


def test_missing_unsupported_and_corrupt_files_raise_recording_error(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match="does not exist"):
        load_tracks(tmp_path / "nope.edf")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(RecordingError, match="unsupported file type '.txt'"):
        load_tracks(tmp_path / "notes.txt")
    garbage = tmp_path / "broken.edf"
    garbage.write_bytes(np.random.default_rng(0).bytes(3000))
    with pytest.raises(RecordingError, match="could not read"):
        load_tracks(garbage)
    (tmp_path / "broken.xdf").write_bytes(b"XDF:garbage")
    with pytest.raises(RecordingError, match="broken.xdf"):
        load_tracks(tmp_path / "broken.xdf")


def test_empty_recordings_raise_recording_error(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match="no channel"):
        load_tracks(write_edf(tmp_path / "zero_channels.edf", 0, 5))
    with pytest.raises(RecordingError, match="no sample"):
        load_tracks(write_edf(tmp_path / "zero_samples.edf", 2, 0))
    assert load_tracks(write_edf(tmp_path / "ok.edf", 2, 3))[0].data.shape == (30, 2)


def test_replay_rejects_bad_options_and_start_past_end(data_dir: Path) -> None:
    with pytest.raises(RecordingError, match="past the end"):
        RecordingReplay([data_dir / "body" / "ecg_mitdb_anomaly.fif"], start=1000.0)
    with pytest.raises(RecordingError, match="no recording"):
        RecordingReplay([])


def test_cli_reports_bad_files_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("x")
    for args, expected in (
        ([str(tmp_path / "missing.edf")], "does not exist"),
        ([str(tmp_path / "x.txt")], "unsupported file type"),
        (["--speed", "0", str(tmp_path / "x.txt")], "--speed must be > 0"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "dropstream", "replay", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 1
        assert expected in proc.stderr
        assert "Traceback" not in proc.stderr


def test_nan_samples_of_a_recording_are_flagged_at_the_inlet(tmp_path: Path) -> None:
    data = np.random.default_rng(5).normal(0, 20e-6, (2, 400))
    data[1, 123] = np.nan
    data[0, 301] = np.inf
    raw = mne.io.RawArray(data, mne.create_info(["Cz", "Pz"], 200.0, "eeg"), verbose="error")
    path = tmp_path / "with_nan_raw.fif"
    raw.save(path, verbose="error")
    sid = f"test-nan-{uuid.uuid4().hex[:10]}"
    chunks: list[Chunk] = []
    with (
        RecordingReplay([path], source_id=sid, speed=2.0, wait_for_consumers=20) as replay,
        LiveStream.connect(source_id=sid, timeout=10) as inlet,
    ):
        assert replay.wait_started(20)
        deadline = time.monotonic() + 10
        while sum(c.n_samples for c in chunks) < 400 and time.monotonic() < deadline:
            chunks.append(inlet.poll())
            time.sleep(0.01)
    flags = np.concatenate([c.nonfinite for c in chunks])
    assert np.flatnonzero(flags).tolist() == [123, 301]
    got = np.concatenate([c.data for c in chunks])
    saved = mne.io.read_raw(path, preload=True, verbose="error").get_data().T  # float32 in FIF
    np.testing.assert_array_equal(got, saved * 1e6)  # NaN/inf delivered where they are
