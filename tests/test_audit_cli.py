"""``dropstream audit`` end to end on real recordings, and the CKKS comparison on a tiny layer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dropstream.cli import main
from dropstream.inference.audit.encryption import measure_encrypted, measure_local, message_bytes
from dropstream.local_encoder.bundle import DeviceBundle, write_bundle
from dropstream.local_encoder.first_layer import FirstLayer

#: three channels of eegmmidb_S001R02.edf (160 Hz) and their std after the 1-40 Hz filter, in
#: microvolts (the units the inlet delivers and the bundle is trained on)
EEG = ("Fc5.", "Fc3.", "Fc1.")
EEG_STD = (36.0, 40.0, 42.0)
PRE = {"l_freq": 1.0, "h_freq": 40.0, "notch": None, "order": 4, "window_demean": False}


def _bundle(
    path: Path,
    n_ch: int,
    names: tuple[str, ...],
    sfreq: float,
    window: int,
    hop: int,
    width: int,
    keep: int,
    activation: str,
    norm_std: tuple[float, ...],
    preprocessing: dict | None = None,
) -> Path:
    rng = np.random.default_rng(0)
    n = n_ch * window
    layer = FirstLayer(
        weight=(rng.standard_normal((width, n)) / np.sqrt(n)).astype(np.float32),
        bias=(0.05 * rng.standard_normal(width)).astype(np.float32),
        activation=activation,
    )
    bundle = DeviceBundle(
        model_id="audit-test",
        model_version=1,
        layer=layer,
        keep=keep,
        sfreq=sfreq,
        window_samples=window,
        hop_samples=hop,
        channel_names=names,
        channel_types=("eeg",) * n_ch,
        preprocessing=preprocessing or PRE,
        norm_mean=np.zeros(n_ch, np.float32),
        norm_std=np.asarray(norm_std, np.float32),
    )
    write_bundle(path, bundle, b"no head")
    return path


def test_audit_shows_the_leak_without_dropping_and_writes_outputs(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 3 ch x 64 samples = 192 inputs, m = 240 units (invertible leaky ReLU), device keeps 16
    model = _bundle(tmp_path / "m.dsb", 3, EEG, 160.0, 64, 64, 240, 16, "leaky_relu", EEG_STD)
    rec = data_dir / "eeg" / "eegmmidb_S001R02.edf"
    out = tmp_path / "audit"
    code = main(
        [
            "audit",
            "--model",
            str(model),
            "--data",
            str(rec),
            "--keep",
            "240",
            "16",
            "--decoder-seconds",
            "1",
            "--max-windows",
            "30",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "strongest attack" in text and "first half" in text
    rows = json.loads((out / "audit.json").read_text())["rows"]
    got = {(r["attack"], r["keep"]): r for r in rows}
    for attack in ("naive", "ridge", "prior", "decoder"):
        assert (attack, 240) in got and (attack, 16) in got
    assert got[("ridge", 240)]["r_mean"] > 0.99  # nothing dropped: the layer is inverted
    assert got[("ridge", 16)]["r_mean"] < 0.6  # 16 equations for 192 unknowns
    assert got[("ridge", 240)]["snr_db"] > 20
    assert (out / "audit.png").stat().st_size > 10_000
    assert "| K | K/m | attack |" in (out / "audit.md").read_text()


def test_audit_on_uea_trials_with_separate_attacker_data(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = tuple(f"ch{i}" for i in range(28))
    model = _bundle(tmp_path / "fm.dsb", 28, names, 100.0, 50, 50, 128, 32, "relu", (30.0,) * 28)
    uea = data_dir / "uea"
    code = main(
        [
            "audit",
            "--model",
            str(model),
            "--data",
            str(uea / "FingerMovements_TEST.ts"),
            "--attacker-data",
            str(uea / "FingerMovements_TRAIN.ts"),
            "--keep",
            "32",
            "--attacks",
            "ridge",
            "joint",
            "--max-windows",
            "20",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "other recordings: FingerMovements_TRAIN.ts" in out
    assert "joint: windows do not overlap" in out
    assert "| 32 | 0.250 | ridge |" in out


def test_audit_refuses_bad_inputs(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _bundle(tmp_path / "m.dsb", 3, EEG, 160.0, 64, 64, 64, 16, "relu", EEG_STD)
    rec = data_dir / "eeg" / "eegmmidb_S001R02.edf"
    assert main(["audit", "--model", str(model), "--data", str(tmp_path / "nope.edf")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert (
        main(["audit", "--model", str(model), "--data", str(rec), "--attacker-data", str(rec)]) == 1
    )
    assert "must not train on what it attacks" in capsys.readouterr().err
    one_ch = data_dir / "body" / "eeg_movement_artefacts_1.fif"
    assert main(["audit", "--model", str(model), "--data", str(one_ch)]) == 1
    assert "not an integer multiple" in capsys.readouterr().err
    assert main(["audit", "--model", str(model), "--data", str(rec), "--keep", "65"]) == 1
    assert "between 1 and the layer width" in capsys.readouterr().err
    assert main(["audit", "--model", str(model), "--data", str(rec), "--attacks", "magic"]) == 1
    assert "unknown attacks" in capsys.readouterr().err


def test_ckks_layer_matches_plain_layer_and_costs_more_than_local() -> None:
    rng = np.random.default_rng(0)
    layer = FirstLayer(
        rng.standard_normal((8, 32)).astype(np.float32),
        rng.standard_normal(8).astype(np.float32),
        "relu",
    )
    x = rng.standard_normal(32)
    he = measure_encrypted(layer, x)
    assert he.max_abs_error < 1e-3  # CKKS is approximate but close
    local = measure_local(layer, x, keep=4, repeats=3)
    assert local.bytes_up == message_bytes(8, 4)
    assert he.bytes_up > 100 * local.bytes_up  # a ciphertext dwarfs K indices and values
    assert he.bytes_down > 0 and he.setup_bytes > he.bytes_up


def test_audit_decimates_a_faster_recording_like_the_device(data_dir: Path, tmp_path: Path) -> None:
    from dropstream.inference.audit.report import load_recording
    from dropstream.local_encoder.bundle import load_device_bundle

    # eegmmidb is recorded at 160 Hz; a model at 80 Hz sees it decimated by 2, as on the device
    pre = PRE | {"h_freq": 30.0}
    model = _bundle(tmp_path / "m.dsb", 3, EEG, 80.0, 32, 32, 64, 16, "relu", EEG_STD, pre)
    rec = load_recording(data_dir / "eeg" / "eegmmidb_S001R02.edf", load_device_bundle(model))
    assert rec.streams[0].shape == (3, 61 * 80)
