"""Units that cannot go wrong silently: real recordings streamed over real LSL outlets with every
unit convention producers use (mne-lsl power-of-ten codes, V, mV, uV, µV, microvolts, none) arrive
in microvolts; a wrong scale or an unknown unit is refused with the ``--units`` that fixes it, in
the inlet, in replay and in train."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import mne
import numpy as np
import pytest

from dropstream.acquisition import LiveStream
from dropstream.acquisition.info import StreamInfo
from dropstream.acquisition.publish import Publisher, Track
from dropstream.acquisition.recording import load_tracks
from dropstream.acquisition.units import UnitError, check_amplitude, plan_units, unit_factor
from dropstream.cli import main

EEG = "body/eeg_eyes_closed_open.fif"  # 2-ch EEG, 1000 Hz, volts in the file
ECG = "body/ecg_mitdb_anomaly.fif"  # MIT-BIH lead, 360 Hz


def test_every_unit_spelling_and_code() -> None:
    for unit, factor in [
        ("V", 1e6),
        ("volts", 1e6),
        ("0", 1e6),  # mne-lsl: 10**0 volts
        ("mV", 1e3),
        ("-3", 1e3),
        ("uV", 1.0),
        ("µV", 1.0),  # noqa: RUF001 - micro sign, as producers write it
        ("μV", 1.0),  # noqa: RUF001 - Greek mu
        ("microvolts", 1.0),
        ("-6", 1.0),
        ("nV", 1e-3),
        ("-9", 1e-3),
    ]:
        assert unit_factor(unit) == pytest.approx(factor), unit
    for unit in ("", None, "AU", "counts", "percent", "42"):
        assert unit_factor(unit) is None
    plan = plan_units(["Cz", "PPG"], ["EEG", "MISC"], ["", "AU"])
    assert plan.units == ("microvolts", "AU") and plan.assumed == ("Cz",)
    with pytest.raises(UnitError, match="--units"):
        plan_units(["Cz"], ["EEG"], ["counts"])
    assert plan_units(["Cz"], ["EEG"], ["counts"], "mV").factors == (1e3,)
    with pytest.raises(UnitError, match="not a voltage unit"):
        plan_units(["Cz"], ["EEG"], ["uV"], "furlongs")


def _track(data: np.ndarray, sfreq: float, ctype: str, unit: str, tag: str) -> Track:
    n = data.shape[1]
    info = StreamInfo(
        name=f"units-{tag}",
        type=ctype,
        source_id=f"test-units-{tag}-{uuid.uuid4().hex[:8]}",
        sfreq=sfreq,
        channel_names=tuple(f"ch{i}" for i in range(n)),
        channel_types=(ctype,) * n,
        units=(unit,) * n,
        channel_format="double64",
    )
    return Track(info, data)


def _receive(inlet: LiveStream, n: int, seconds: float = 10.0) -> np.ndarray:
    got: list[np.ndarray] = []
    deadline = time.monotonic() + seconds
    while sum(len(g) for g in got) < n and time.monotonic() < deadline:
        chunk = inlet.poll()
        if chunk.n_samples:
            got.append(chunk.data)
        time.sleep(0.01)
    return np.concatenate(got)[:n]


def test_real_recordings_over_lsl_arrive_in_microvolts_or_are_refused(data_dir: Path) -> None:
    eeg = load_tracks(data_dir / EEG)[0]
    ecg = load_tracks(data_dir / ECG)[0]
    uv = eeg.data[20_000:23_000]  # 3 s of real EEG in microvolts (MNE volts x 1e6)
    ecg_uv = ecg.data[:1080]  # 3 s of real ECG
    cases = {  # tag -> (track as the producer sends it, --units, expected delivery or error)
        "mnelsl-volts": (_track(uv * 1e-6, 1000, "EEG", "0", "a"), None, uv),
        "mnelsl-micro": (_track(uv, 1000, "EEG", "-6", "b"), None, uv),
        "volts": (_track(uv * 1e-6, 1000, "EEG", "V", "c"), None, uv),
        "micro-sign": (_track(uv, 1000, "EEG", "µV", "d"), None, uv),
        "ecg-millivolts": (_track(ecg_uv * 1e-3, 360, "ECG", "-3", "e"), None, ecg_uv),
        "no-unit": (_track(uv, 1000, "EEG", "", "f"), None, uv),
        "wrong-scale": (_track(uv * 1e-6, 1000, "EEG", "microvolts", "g"), None, "--units V"),
        "wrong-fixed": (_track(uv * 1e-6, 1000, "EEG", "microvolts", "h"), "V", uv),
        "too-large": (_track(uv * 1e6, 1000, "EEG", "uV", "i"), None, "--units nV"),
        "too-small": (_track(uv * 1e-3, 1000, "EEG", "uV", "j"), None, "--units mV"),
    }
    with Publisher([c[0] for c in cases.values()], speed=4.0, wait_for_consumers=15) as pub:
        inlets = {
            tag: LiveStream.connect(source_id=track.info.source_id, timeout=10, units=units)
            for tag, (track, units, _) in cases.items()
        }
        assert pub.wait_started(15)
        try:
            for tag, (track, _, expected) in cases.items():
                inlet = inlets[tag]
                if isinstance(expected, str):
                    with pytest.raises(UnitError) as err:
                        _receive(inlet, len(track.data))
                    assert expected in str(err.value), (tag, str(err.value))
                    assert "\n" not in str(err.value)
                    continue
                assert inlet.info.units == ("microvolts",) * track.info.n_channels, tag
                got = _receive(inlet, len(expected))
                np.testing.assert_allclose(got, expected, rtol=1e-9, err_msg=tag)
            assert inlets["no-unit"].units.assumed == ("ch0", "ch1")
        finally:
            for inlet in inlets.values():
                inlet.close()


def test_file_read_a_million_times_too_large_is_refused_in_replay_and_train(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What MNE gives for a GDF whose header says microvolts (values 10^6 too large)."""
    raw = mne.io.read_raw_fif(data_dir / EEG, preload=True, verbose="error").crop(0, 20)
    bad = mne.io.RawArray(raw.get_data() * 1e6, raw.info, verbose="error")
    path = tmp_path / "uv_header_read_as_volts.fif"
    bad.save(path, verbose="error")

    with pytest.raises(UnitError, match="--units uV"):
        load_tracks(path)
    fixed = load_tracks(path, units="uV")[0]
    np.testing.assert_allclose(fixed.data, raw.get_data().T * 1e6, rtol=1e-6)

    assert main(["replay", str(path), "--duration", "0.1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("dropstream replay: error:") and "--units uV" in err
    assert len(err.splitlines()) == 1
    args = ["train", "--novelty", "--recording", str(path), "-o", str(tmp_path / "m.dsb")]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("dropstream train: error:") and "--units uV" in err
    assert not (tmp_path / "m.dsb").exists()


TOO_SMALL = "eeg_em_noise.fif"  # EEG spanning 0.14 uV: below an EEG amplifier's own noise


def test_amplitude_check_fits_every_shipped_voltage_recording(data_dir: Path) -> None:
    """The plausible ranges accept every real recording we have, in the units they declare,
    except the one EEG whose scale cannot be EEG (60x smaller than the other PLUX EEG)."""
    for path in sorted((data_dir / "body").glob("*.fif")) + [data_dir / "eeg/eegmmidb_S001R02.edf"]:
        if path.name == TOO_SMALL:
            continue
        track = load_tracks(path)[0]  # runs check_amplitude; raises on a misfit
        assert check_amplitude(track.data, track.info.sfreq, track.info.channel_types) == []


def test_implausibly_small_eeg_is_refused_with_how_to_fix_it(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = data_dir / "body" / TOO_SMALL
    with pytest.raises(UnitError, match="below the 2-20000 uV") as err:
        load_tracks(path)
    assert "--units V" in str(err.value) and "\n" not in str(err.value)
    kept = load_tracks(path, units="V")[0]  # stated: kept, with a warning
    assert kept.data.shape == (90600, 1)
    for command in (["replay", str(path), "--duration", "0.1"], ["evaluate", "x.dsb", str(path)]):
        assert main(command) == 1
        err_line = capsys.readouterr().err.strip()
        assert "below the 2-20000 uV" in err_line and "--units V" in err_line, command
        assert len(err_line.splitlines()) == 1


def test_mne_lsl_player_streams_arrive_in_microvolts_or_are_refused(
    data_dir: Path, tmp_path: Path
) -> None:
    """mne-lsl's PlayerLSL (the producer of issue 11) declares power-of-ten codes ('0' = volts):
    a real recording arrives in microvolts; the same file 10^6 too large is refused."""
    player_lsl = pytest.importorskip("mne_lsl.player").PlayerLSL
    raw = mne.io.read_raw_fif(data_dir / EEG, preload=True, verbose="error").crop(0, 30)
    truth = raw.get_data().T * 1e6
    bad = mne.io.RawArray(raw.get_data() * 1e6, raw.info, verbose="error")
    for source, expect in ((raw, "ok"), (bad, "--units uV")):
        sid = f"test-mnelsl-{uuid.uuid4().hex[:8]}"
        with player_lsl(source, name=sid, source_id=sid, chunk_size=50) as _player:
            inlet = LiveStream.connect(source_id=sid, timeout=10)
            try:
                assert inlet.header.units == ("0", "0")  # mne-lsl's code for volts
                if expect != "ok":
                    with pytest.raises(UnitError, match=expect):
                        _receive(inlet, 3000)
                    continue
                got = _receive(inlet, 3000)
            finally:
                inlet.close()
        assert inlet.info.units == ("microvolts", "microvolts")
        start = int(np.argmin(np.abs(truth[:, 0] - got[0, 0]) + np.abs(truth[:, 1] - got[0, 1])))
        # float32 on the wire: microvolts to ~1e-6 relative
        np.testing.assert_allclose(got, truth[start : start + len(got)], rtol=1e-5, atol=1e-4)
