"""Input drift: a stream that no longer resembles the training data gets one ``kind="drift"``
event, not an endless anomaly - on real recordings, through the same device path, scorer and
stream tracker as the live service (``evaluate_recording``)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import mne
import numpy as np
import pytest

from dropstream.acquisition.recording import load_tracks
from dropstream.broker.alert_message import decode_alert
from dropstream.broker.clients import make_producer
from dropstream.cli import main
from dropstream.inference.datasets import WindowSet, windows_from_recordings
from dropstream.inference.drift import SCALE_LOG, DriftMonitor, DriftReference
from dropstream.inference.evaluation import evaluate_recording
from dropstream.inference.service import InferenceService, ServiceSettings
from dropstream.inference.training import TrainConfig, train_novelty
from dropstream.local_encoder.bundle import load_device_bundle
from dropstream.local_encoder.simulated import encode_recording
from tests.test_service_kafka import read_all


def test_statistic_and_monitor_on_known_data() -> None:
    rng = np.random.default_rng(0)
    fitted, held = rng.normal(2.0, 3.0, (2000, 64)), rng.normal(2.0, 3.0, (400, 64))
    ref = DriftReference.fit(fitted, held, windows=20)
    assert ref.statistic_dense(held).mean() == pytest.approx(1.0, rel=0.1)
    idx = np.sort(rng.choice(64, (5, 16)), axis=1)
    vals = np.take_along_axis(held[:5], idx, axis=1)
    scale_term = ref.level * (ref.scale(idx, vals) / SCALE_LOG) ** 2
    expected = np.mean(((vals - 2) / 3) ** 2, 1) + scale_term
    np.testing.assert_allclose(ref.statistic(idx, vals), expected, 0.1)
    assert DriftReference.from_config(ref.to_config()).level == pytest.approx(ref.level)
    mon = DriftMonitor(ref)
    changes = [mon.update(1.0) for _ in range(30)]
    changes += [mon.update(10 * ref.level) for _ in range(3)]  # a short artefact: no drift
    assert set(changes) == {None}
    changes = [mon.update(10 * ref.level) for _ in range(20)]
    assert changes.count("start") == 1 and mon.active
    changes = [mon.update(1.0) for _ in range(20)]
    assert changes.count("end") == 1 and not mon.active


def test_a_stream_far_smaller_or_larger_than_the_training_data_drifts() -> None:
    """relu activations of a 60x smaller signal sit near 0, where the squared z-scores stay of
    order one: the scale term must carry the drift."""
    rng = np.random.default_rng(1)
    acts = np.maximum(rng.normal(0.0, 1.0, (3000, 64)) @ rng.normal(size=(64, 64)), 0.0)
    ref = DriftReference.fit(acts[:2500], acts[2500:], windows=20)
    idx = np.sort(np.argsort(rng.random((500, 64)), axis=1)[:, :16], axis=1)
    normal = np.take_along_axis(acts[2500:], idx, axis=1)
    assert np.median(ref.statistic(idx, normal)) < ref.level / 2
    assert abs(np.median(ref.scale(idx, normal))) < 0.5
    for factor in (1 / 60, 60.0):
        stat = ref.statistic(idx, normal * factor)
        assert np.median(stat) > ref.level, factor
        shift = ref.scale(idx, normal * factor) - ref.scale(idx, normal)
        np.testing.assert_allclose(shift, 2 * np.log(factor), rtol=1e-6)
    small = normal / 60
    z_only = np.mean(((small - ref.mean[idx]) / ref.std[idx]) ** 2, axis=1)
    assert np.median(z_only) < ref.level  # what the guard saw before the scale term
    assert DriftReference.from_config(ref.to_config()).power is not None


@pytest.fixture(scope="module")
def ecg_bundle(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    ecg = windows_from_recordings([data_dir / "body" / "ecg_5min.fif"], 1.0, 0.5, {})
    cfg = TrainConfig(width=64, keep=16, pool=8, hidden=(64,), epochs=8, progress=False)
    return _save_novelty(ecg, ecg.X[:500], cfg, tmp_path_factory.mktemp("drift") / "ecg.dsb")


def _save_novelty(ws: WindowSet, X: np.ndarray, cfg: TrainConfig, path: Path) -> Path:
    """Train a novelty bundle on windows ``X`` of ``ws`` and write it to ``path``."""
    model = train_novelty(
        X,
        cfg,
        sfreq=ws.sfreq,
        channel_names=ws.channel_names,
        channel_types=ws.channel_types,
        hop_samples=ws.hop_samples,
        prefiltered=True,
    )
    assert "drift" in model.head_config
    model.save(path, model_id=path.stem)
    return path


def _as_ecg(src: Path, dst: Path, start: float, seconds: float) -> Path:
    """Another signal published as the model's ECG channel (a device on the wrong body site)."""
    raw = mne.io.read_raw_fif(src, preload=True, verbose="error").crop(start, start + seconds)
    info = mne.create_info(["ECG1"], raw.info["sfreq"], ["ecg"])
    mne.io.RawArray(raw.get_data(), info, verbose="error").save(dst, verbose="error")
    return dst


def test_a_drifting_stream_gets_drift_status_not_anomaly_alerts(
    ecg_bundle: Path, data_dir: Path, tmp_path: Path
) -> None:
    body = data_dir / "body"
    # normal: unseen resting ECG of the same recording -> no drift
    same = evaluate_recording(
        ecg_bundle, _as_ecg(body / "ecg_5min.fif", tmp_path / "a.fif", 260, 39)
    )
    assert not [m for m in same.alerts if m.kind == "drift"]
    # EMG on the ECG channel: one drift event, and no anomaly event once it started
    emg = _as_ecg(body / "emg_fatigue.fif", tmp_path / "emg.fif", 10, 60)
    ev = evaluate_recording(ecg_bundle, emg)
    drift = [m for m in ev.alerts if m.kind == "drift"]
    assert len(drift) == 1 and drift[0].label == "drift" and drift[0].status == "closed"
    onset = drift[0].recording_onset
    assert onset is not None and onset < 40
    assert not [m for m in ev.alerts if m.kind == "anomaly" and m.recording_onset >= onset]
    assert drift[0].score > drift[0].threshold  # the rolling quartile of the statistic


def test_real_eeg_at_an_implausible_scale_drifts_on_a_real_eeg_bundle(
    data_dir: Path, tmp_path: Path
) -> None:
    """eeg_em_noise.fif spans 0.14 uV, 60x less than the PLUX EEG a bundle learned from: once
    its unit is stated (the amplitude check refuses it otherwise) the stream drifts."""
    body = data_dir / "body"
    eeg = windows_from_recordings(
        [body / "eeg_movement_artefacts_1.fif"], 1.0, 0.25, {"l_freq": 1.0, "h_freq": 40.0}
    )
    cfg = TrainConfig(width=64, keep=16, progress=False, preprocessing=eeg.preprocessing)
    path = _save_novelty(eeg, eeg.X, cfg, tmp_path / "eeg.dsb")
    other = evaluate_recording(path, body / "eeg_movement_artefacts_2.fif")  # same device
    assert not [m for m in other.alerts if m.kind == "drift"]
    ev = evaluate_recording(path, body / "eeg_em_noise.fif", units="V")
    drift = [m for m in ev.alerts if m.kind == "drift"]
    assert len(drift) == 1 and drift[0].score > drift[0].threshold
    onset = drift[0].recording_onset
    assert onset is not None and onset < 15
    assert not [m for m in ev.alerts if m.kind == "anomaly" and m.recording_onset >= onset]


def test_the_service_publishes_drift_on_the_alert_topic(
    ecg_bundle: Path, data_dir: Path, tmp_path: Path, kafka_config
) -> None:
    """The same on a real broker: the alert topic carries kind=drift, then no anomaly."""
    emg = _as_ecg(data_dir / "body" / "emg_fatigue.fif", tmp_path / "emg.fif", 10, 40)
    samples = load_tracks(emg)[0].data.T
    msgs = [raw for _, raw in encode_recording(load_device_bundle(ecg_bundle), samples, "dev")]
    settings = ServiceSettings(max_wait_ms=5, device="cpu", stale_after_s=1.0)
    service = InferenceService(kafka_config, ecg_bundle, settings)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        assert service.ready.wait(20)
        producer = make_producer(kafka_config)
        for raw in msgs:
            producer.send(kafka_config.activations_topic, key=b"dev", value=raw)
        producer.flush()
        producer.close()
        records = read_all(
            kafka_config,
            kafka_config.alerts_topic,
            lambda r: sum(decode_alert(m.value()).kind == "drift" for m in r) >= 2,
        )
    finally:
        service.stop()
        thread.join(15)
    updates = [decode_alert(m.value()) for m in records]
    drift = [a for a in updates if a.kind == "drift"]
    assert [a.status for a in drift] == ["open", "closed"]  # closed when the stream went silent
    assert not [a for a in updates if a.kind == "anomaly" and a.onset_time >= drift[0].onset_time]


@pytest.mark.parametrize("windows", [1, 3, 80])
def test_monitor_quartile_equals_numpy_over_the_rolling_span(windows: int) -> None:
    # the monitor keeps its span sorted instead of calling np.quantile per window
    from dropstream.inference.drift import QUANTILE, DriftMonitor, DriftReference

    rng = np.random.default_rng(0)
    stats = rng.normal(size=600)
    stats[rng.integers(0, 600, 8)] = np.nan
    stats[200:230] = 2.0  # ties
    monitor = DriftMonitor(DriftReference(np.zeros(2), np.ones(2), 1.0, windows, None))
    for i, x in enumerate(stats):
        monitor.update(x)
        span = stats[max(0, i + 1 - windows) : i + 1]
        if len(span) >= max(1, windows // 2):
            np.testing.assert_allclose(monitor.value, np.quantile(span, QUANTILE), rtol=1e-12)


def test_evaluate_lists_drift_as_its_own_kind_and_never_as_a_false_alert(
    ecg_bundle: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``dropstream evaluate`` JSON: the drift event carries ``kind: drift`` and is counted in
    ``drift_events``, not in ``false_alerts`` (the recording has no annotated anomaly)."""
    emg = _as_ecg(data_dir / "body" / "emg_fatigue.fif", tmp_path / "emg.fif", 10, 60)
    args = ["evaluate", str(ecg_bundle), str(emg), "-o", str(tmp_path / "r.html"), "--seed", "0"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[0])
    kinds = [a["kind"] for a in result["alerts"]]
    assert kinds.count("drift") == 1 and result["drift_events"] == 1 and result["drift_s"] > 0
    assert result["events"] == 0 and result["false_alerts"] == kinds.count("anomaly")
