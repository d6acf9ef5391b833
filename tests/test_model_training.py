"""Training on real EEG/ECG: classifier beats chance, novelty flags other signals, CLI, data."""

from __future__ import annotations

import json
from pathlib import Path

import mne
import numpy as np
import pytest
import torch

from dropstream.cli import main
from dropstream.inference.datasets import (
    DatasetError,
    load_ts,
    load_uea,
    ts_sample_rate,
    windows_from_recordings,
)
from dropstream.inference.head import ServerModel
from dropstream.inference.training import (
    TrainConfig,
    TrainingError,
    train_classifier,
    train_novelty,
)
from dropstream.inference.training.config import AUTO_ADVERSARY
from dropstream.inference.training.discriminants import discriminant_directions
from dropstream.local_encoder.bundle import load_device_bundle
from dropstream.local_encoder.first_layer import draw_kept_units
from dropstream.local_encoder.preprocessing import filter_signal


def test_classifier_beats_chance_on_real_eeg(data_dir: Path) -> None:
    tr, te = load_uea("SelfRegulationSCP1", data_dir / "uea")
    # a small subset of TRAIN (120 of 268 trials), the default recipe and head, fixed seed
    pick = np.random.default_rng(0).permutation(len(tr.y))[:120]
    cfg = TrainConfig(width=128, keep=32, epochs=30, seed=0, progress=False)
    model = train_classifier(tr.X[pick], tr.y[pick], cfg, sfreq=tr.sfreq)
    # held-out official TEST split, balanced (147/146): chance is 0.5, binomial SE 0.03
    acc = float(np.mean(model.predict(te.X) == te.y))
    assert acc > 0.75, acc
    assert model.keep == 32 and model.width == 128 and len(model.history) == 30
    assert model.head_config["fill"] == "decode" and model.head_config["format"] == 3


def test_validation_split_picks_epochs_then_refits(data_dir: Path) -> None:
    tr, _ = load_uea("FingerMovements", data_dir / "uea")
    cfg = TrainConfig(width=32, keep=8, hidden=(16,), epochs=4, val_fraction=0.25, seed=0,
                      progress=False)  # fmt: skip
    model = train_classifier(tr.X[:60], tr.y[:60], cfg, sfreq=tr.sfreq)
    # epochs picked on a validation split of TRAIN, then refitted on all of TRAIN
    assert model.history and all(r.get("refit") for r in model.history)


def test_training_is_deterministic(data_dir: Path) -> None:
    tr, _ = load_uea("FingerMovements", data_dir / "uea")
    cfg = TrainConfig(width=64, keep=16, epochs=3, hidden=(32,), seed=5, progress=False)
    a = train_classifier(tr.X[:60], tr.y[:60], cfg, sfreq=tr.sfreq)
    b = train_classifier(tr.X[:60], tr.y[:60], cfg, sfreq=tr.sfreq)
    for (ka, va), (kb, vb) in zip(
        a.head.state_dict().items(), b.head.state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(va, vb)
    np.testing.assert_array_equal(a.first.to_numpy().weight, b.first.to_numpy().weight)
    c = train_classifier(
        tr.X[:60], tr.y[:60], TrainConfig(**{**cfg.__dict__, "seed": 6}), sfreq=tr.sfreq
    )
    assert not np.array_equal(a.first.to_numpy().weight, c.first.to_numpy().weight)


def test_bad_training_input_is_a_clear_error(data_dir: Path) -> None:
    tr, _ = load_uea("FingerMovements", data_dir / "uea")
    with pytest.raises(TrainingError, match="two classes"):
        train_classifier(tr.X[:10], ["left"] * 10, TrainConfig(progress=False), sfreq=100.0)
    with pytest.raises(TrainingError, match="labels"):
        train_classifier(tr.X[:10], tr.y[:9], TrainConfig(progress=False), sfreq=100.0)
    bad = tr.X[:10].copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(TrainingError, match="NaN"):
        train_classifier(bad, tr.y[:10], TrainConfig(progress=False), sfreq=100.0)


@pytest.mark.parametrize("novelty", ["energy", "svdd"])
def test_novelty_flags_other_signals_and_round_trips(
    data_dir: Path, tmp_path: Path, novelty: str
) -> None:
    body = data_dir / "body"
    pre = {"l_freq": 0.5, "h_freq": 40.0}
    ecg = windows_from_recordings([body / "ecg_5min.fif"], 1.0, 0.5, pre)
    emg = windows_from_recordings([body / "emg_fatigue.fif"], 1.0, 1.0, pre)
    assert ecg.filtered and ecg.X.shape[1:] == (1, 1000)
    normal, held_out = ecg.X[:400], ecg.X[402:]  # 200 s to learn from; no shared samples
    cfg = TrainConfig(
        width=128,
        keep=32,
        pool=1,
        hidden=(256, 128),
        epochs=15,
        seed=0,
        progress=False,
        novelty_model=novelty,
    )
    model = train_novelty(
        normal, cfg, sfreq=ecg.sfreq, hop_samples=ecg.hop_samples, prefiltered=True
    )
    cal = model.head_config["calibration"]
    assert model.head_config["type"] == "novelty"
    assert cal["quantiles"] == sorted(cal["quantiles"])
    if novelty == "svdd":
        # held out: the last 20 % of the windows in time, none sharing samples with fitted ones
        assert cal["n_windows"] == 80
    else:  # every window, scored by a model fitted on the other four blocks
        assert cal["n_windows"] == 400 and "blocks" in cal["holdout"]
        assert model.head_config["scorer"] == "energy" and model.history == []
    lo, hi = cal["threshold_ci95"]
    assert lo <= cal["threshold"] <= hi
    thr = cal["threshold"]
    normal_scores = model.score(held_out, prefiltered=True)
    emg_scores = model.score(emg.X, prefiltered=True)
    assert np.mean(normal_scores > thr) < 0.1
    # the fatigue protocol has quiet rests too; the energy score is one number per window, and
    # many EMG windows have an ECG-like whitened energy (docs/anomalies.md: a whole other signal
    # is the drift guard's case)
    assert np.mean(emg_scores > thr) > (0.8 if novelty == "svdd" else 0.1)
    assert np.median(emg_scores) > 5 * np.median(normal_scores)

    path = tmp_path / "ecg.dsb"
    model.save(path, model_id="ecg-normal")
    server = ServerModel.load(path)
    assert server.kind == "novelty" and server.threshold() == thr
    dev = server.bundle
    a = dev.layer.forward(model.prepare(emg.X[:8], prefiltered=True))
    rng = np.random.default_rng(0)
    idx = np.stack([draw_kept_units(rng, dev.layer.width, dev.keep) for _ in range(8)])
    vals = np.take_along_axis(a, idx.astype(np.int64), axis=1)
    scores = server.score(idx, vals)
    dense = np.full((8, dev.layer.width), np.nan, dtype=np.float32)
    np.put_along_axis(dense, idx.astype(np.int64), vals, axis=1)
    with torch.no_grad():  # the bundle's head scores as the trained one
        np.testing.assert_allclose(scores, model.head(torch.as_tensor(dense)).numpy(), rtol=1e-4)
    assert scores.shape == (8,) and np.mean(scores > server.threshold(0.99)) > (
        0.5 if novelty == "svdd" else 0.1
    )


def test_load_ts_parses_official_split(data_dir: Path, tmp_path: Path) -> None:
    X, y, header = load_ts(data_dir / "uea" / "FingerMovements_TRAIN.ts")
    assert X.shape == (316, 28, 50) and X.dtype == np.float32
    assert set(y) == {"left", "right"} and header["problemname"] == "FingerMovements"
    bad = tmp_path / "bad.ts"
    bad.write_text("@problemName x\n@data\n1,2,3:4,5:a\n")
    with pytest.raises(DatasetError, match="unequal"):
        load_ts(bad)
    bad.write_text("@problemName x\n@data\n1,2,x:4,5,6:a\n")
    with pytest.raises(DatasetError, match="not a number"):
        load_ts(bad)
    with pytest.raises(DatasetError, match="does not exist"):
        load_uea("Unknown", tmp_path)


def test_uea_sample_rate_comes_from_the_files_or_is_a_clear_error(
    data_dir: Path, tmp_path: Path
) -> None:
    # Blink declares @equalLength false, yet every case is 4 x 510: the lengths read decide
    tr, te = load_uea("Blink", data_dir / "uea")
    assert tr.meta["header"]["equallength"] == "false"
    assert tr.X.shape == (500, 4, 510) and te.X.shape == (450, 4, 510)
    assert tr.sfreq == te.sfreq == 255.0  # "sampled at 255Hz" in the header comments
    assert set(tr.y) == {"LongBlink", "ShortBlink"}
    # SCP1 states its rate in prose too; the fallback table agrees
    assert load_uea("SelfRegulationSCP1", data_dir / "uea")[0].sfreq == 256.0
    assert ts_sample_rate({"#": "recorded at 1000 Hz, then downsampled at 100 Hz"}) == 100.0
    assert ts_sample_rate({"samplerate": "128"}) == 128.0
    rows = "@problemName p\n@equalLength false\n@data\n1,2,3:4,5,6:a\n1,2,3:4,5,6:b\n"
    for split in ("TRAIN", "TEST"):
        (tmp_path / f"P_{split}.ts").write_text(rows)
    with pytest.raises(DatasetError, match="sample rate.*--sfreq"):
        load_uea("P", tmp_path)
    assert load_uea("P", tmp_path, sfreq=50.0)[0].sfreq == 50.0
    (tmp_path / "P_TEST.ts").write_text("# sampled at 10 Hz\n" + rows)
    (tmp_path / "P_TRAIN.ts").write_text("# sampled at 20 Hz\n" + rows)
    with pytest.raises(DatasetError, match="different sample rates"):
        load_uea("P", tmp_path)
    (tmp_path / "P_TRAIN.ts").write_text(rows.replace("1,2,3:4,5,6:b", "1,2:4,5:b"))
    with pytest.raises(DatasetError, match="equalLength false.*pad or cut"):
        load_uea("P", tmp_path)


def test_windows_take_the_label_of_the_overlapping_annotation(data_dir: Path) -> None:
    path = data_dir / "body" / "ecg_mitdb_anomaly.fif"
    pre = {"l_freq": 0.5, "h_freq": 40.0}
    ws = windows_from_recordings([path], window_s=1.0, hop_s=0.5, preprocessing=pre)
    raw = mne.io.read_raw_fif(path, preload=True, verbose="error")
    onset = float(raw.annotations.onset[0]) - raw.first_time
    end = onset + float(raw.annotations.duration[0])
    starts = np.arange(len(ws.y)) * 0.5
    overlaps = (starts < end) & (starts + 1.0 > onset)
    assert set(ws.y[overlaps]) == {"anomaly"} and set(ws.y[~overlaps]) == {"normal"}
    # windows are cut from the recording filtered as one stream, as the device does, and in
    # the units the inlet delivers (microvolts; MNE holds volts)
    whole = filter_signal(raw.get_data() * 1e6, ws.sfreq, pre)
    np.testing.assert_allclose(ws.X[3], whole[:, 3 * 180 : 3 * 180 + 360], rtol=1e-6)
    skipped = windows_from_recordings([path], 1.0, 0.5, pre, default_label=None)
    assert set(skipped.y) == {"anomaly"} and len(skipped.y) == overlaps.sum()


def test_cli_train_writes_bundle(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fm.dsb"
    rc = main(
        [
            "train",
            "--uea",
            "FingerMovements",
            "--uea-dir",
            str(data_dir / "uea"),
            "--width",
            "64",
            "--keep",
            "16",
            "--epochs",
            "2",
            "--label-seconds",
            "0",
            "--quiet",
            "-o",
            str(out),
        ]
    )
    assert rc == 0 and out.exists()
    report = json.loads(capsys.readouterr().out)
    assert report["keep"] == 16 and 0.0 <= report["test_accuracy"] <= 1.0
    assert report["model_id"] == "fm" and len(report["sha256"]) == 64
    # the privacy label: a quick audit of the TEST trials, stored in the manifest
    label = report["privacy_label"]
    assert label["strongest_attack"] in ("prior", "kernel", "subspace")
    assert 0 < label["windows"] <= 200
    assert load_device_bundle(out).privacy["label"] == label
    rc = main(
        [
            "train",
            "--uea",
            "FingerMovements",
            "--uea-dir",
            str(data_dir / "uea"),
            "--width",
            "2048",
            "--keep",
            "1400",
            "--epochs",
            "1",
            "-o",
            str(tmp_path / "x"),
        ]
    )
    assert rc == 1
    assert "C*T=1400" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_novelty_calibration_needs_enough_held_out_windows(data_dir: Path) -> None:
    ecg = windows_from_recordings([data_dir / "body" / "ecg_5min.fif"], 1.0, 0.5, {})
    cfg = TrainConfig(width=64, keep=16, pool=1, hidden=(32,), epochs=1, progress=False)
    with pytest.raises(TrainingError, match="at least 50 are needed, so give at least 261"):
        train_novelty(ecg.X[:120], cfg, sfreq=ecg.sfreq, hop_samples=ecg.hop_samples)


def test_threshold_ci_covers_the_true_quantile_and_narrows_with_more_windows() -> None:
    from dropstream.inference.training.novelty import quantile_ci, tail_split

    fit_idx, val_idx = tail_split(100, 0.2, overlap=3)
    assert (fit_idx[-1], val_idx[0], len(val_idx)) == (76, 80, 20)
    rng = np.random.default_rng(1)
    true = float(np.quantile(rng.standard_normal(2_000_000), 0.99))
    widths = []
    for n in (100, 2000):
        lo, hi = quantile_ci(rng.standard_normal(n), 0.99, block=4, seed=0)
        assert lo <= true <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2


def test_novelty_from_an_annotated_baseline_names_its_labels(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The EEG baseline run is one long 'T0' annotation: the normal windows must be named."""
    edf = str(data_dir / "eeg" / "eegmmidb_S001R02.edf")
    out = tmp_path / "eeg.dsb"
    base = ["train", "--novelty", "--recording", edf, "--channels", "Cz..", "C3..", "C4.."]
    base += ["--window", "1", "--hop", "0.125", "--width", "32", "--keep", "8", "--epochs", "2"]
    base += ["--quiet", "-o", str(out)]
    assert main(base) == 1
    err = capsys.readouterr().err
    assert "'T0': 481" in err and "--normal-label" in err and "--all-normal" in err
    for extra in (["--normal-label", "T0"], ["--all-normal"]):
        assert main([*base, *extra]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["normal_windows"] == 481 and out.exists()
        assert "95% CI" in report["threshold"]


def test_cli_trains_any_uea_problem_with_its_rate(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dropstream.local_encoder.bundle import load_device_bundle

    out = tmp_path / "blink.dsb"
    common = ["--uea-dir", str(data_dir / "uea"), "--width", "64", "--keep", "16"]
    rc = main(["train", "--uea", "Blink", *common, "--epochs", "1", "--quiet", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["sfreq"] == 255.0  # from the .ts header
    bundle = load_device_bundle(out)
    assert (bundle.sfreq, bundle.window_samples, bundle.n_channels) == (255.0, 510, 4)


def test_discriminant_directions_find_the_separating_projection() -> None:
    # two classes apart along e0, hidden under strongly correlated noise along e0 + e1: the mean
    # difference points along e0, the discriminant along e0 - e1 (where the noise cancels)
    rng = np.random.default_rng(0)
    n, d = 400, 10
    codes = np.repeat([0, 1], n // 2)
    common = rng.normal(size=(n, 1)) * 3.0
    x = rng.normal(size=(n, d)) * 0.3
    x[:, :2] += common
    x[:, 0] += 1.0 * codes
    dirs = discriminant_directions(x, codes, rng)
    assert dirs.shape == (1, d)
    assert np.isclose(np.linalg.norm(dirs[0]), 1.0)
    truth = np.r_[1.0, -1.0, np.zeros(d - 2)] / np.sqrt(2)
    assert abs(dirs[0] @ truth) > 0.95

    def separation(w: np.ndarray) -> float:
        z = x @ w
        return abs(z[codes == 1].mean() - z[codes == 0].mean()) / z.std()

    assert separation(dirs[0]) > 2 * separation(np.eye(d)[0])


@pytest.mark.parametrize(("n", "d", "n_classes"), [(300, 20, 2), (60, 400, 3)])
def test_discriminants_solve_the_shrunk_generalized_eigenproblem(
    n: int, d: int, n_classes: int
) -> None:
    # the SVD form must give what the dense definition gives, also with more inputs than rows
    from dropstream.inference.training.discriminants import _fit

    rng = np.random.default_rng(1)
    codes = np.arange(n) % n_classes
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.2
    x[:, :3] += codes[:, None]
    lam = 0.3
    means, dirs = _fit(x, codes, lam)
    centred = x - means[codes]
    within = centred.T @ centred / (n - n_classes)
    within = (1 - lam) * within + lam * np.trace(within) / d * np.eye(d)
    diff = means - means.mean(0)
    between = diff.T @ (diff * np.bincount(codes)[:, None])
    assert dirs.shape == (d, n_classes - 1)
    vals = np.sort(np.linalg.eigvals(np.linalg.solve(within, between)).real)[::-1]
    for k, v in enumerate(dirs.T):
        # between v = lambda within v, with the k-th largest generalized eigenvalue
        np.testing.assert_allclose(between @ v, vals[k] * (within @ v), atol=1e-8 * vals[0])


@pytest.mark.parametrize("init", ["lda", "lda-pls"])
def test_lda_init_starts_the_low_rank_projection_at_the_discriminant(
    data_dir: Path, init: str
) -> None:
    tr, _ = load_uea("SelfRegulationSCP1", data_dir / "uea")
    pick = np.random.default_rng(0).permutation(len(tr.y))[:80]
    x, y = tr.X[pick], tr.y[pick]
    # projection_lr=0 keeps B where the initialisation put it (AdamW's decay scales with lr too)
    cfg = TrainConfig(width=32, keep=8, hidden=(16,), epochs=2, rank=2, init=init,
                      projection_lr=0.0, seed=0, progress=False)  # fmt: skip
    model = train_classifier(x, y, cfg, sfreq=tr.sfreq)
    feats = torch.nn.functional.avg_pool1d(
        torch.as_tensor(model.prepare(x)), model.first.pool
    ).flatten(1)
    codes = np.searchsorted(np.asarray(model.classes), y)
    want = discriminant_directions(feats.double().numpy(), codes, np.random.default_rng(0), 2)
    got = model.first.down.weight.detach().double().numpy()
    got /= np.linalg.norm(got, axis=1, keepdims=True)
    assert abs(got[0] @ want[0]) > 0.999  # the discriminant
    assert abs(got[0] @ want[1]) < 0.1  # the PLS direction is orthogonal to it
    if init == "lda-pls":
        assert abs(got[1] @ want[1]) > 0.999
    else:
        assert abs(got[1] @ want[1]) < 0.5  # the second row stays random
    with pytest.raises(TrainingError, match="init"):
        train_classifier(x, y, TrainConfig(init="pca", epochs=1, progress=False), sfreq=tr.sfreq)


def test_auto_adversary_defends_low_rank_classifiers_only(data_dir: Path) -> None:
    cfg = TrainConfig()
    assert cfg.resolve_adversary(2, novelty=False) == AUTO_ADVERSARY > 0
    assert cfg.resolve_adversary(None, novelty=False) == 0.0  # full rank
    assert cfg.resolve_adversary(2, novelty=True) == 0.0
    assert TrainConfig(adversary=1.5).resolve_adversary(None, novelty=True) == 1.5
    with pytest.raises(TrainingError, match="adversary"):
        TrainConfig(adversary="strong").resolve_adversary(2, novelty=False)
    # the bundle records the weight that was trained with
    tr, _ = load_uea("SelfRegulationSCP1", data_dir / "uea")
    small = TrainConfig(width=32, keep=8, hidden=(16,), epochs=1, seed=0, progress=False)
    model = train_classifier(tr.X[::8], tr.y[::8], small, sfreq=tr.sfreq)
    assert model.device_bundle().privacy["defences"]["adversary"] == AUTO_ADVERSARY
