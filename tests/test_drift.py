"""Input drift: a stream that no longer resembles the training data gets one ``kind="drift"``
event, not an endless anomaly - on real recordings, through the same device path, scorer and
stream tracker as the live service (``evaluate_recording``)."""

from __future__ import annotations

import threading
from pathlib import Path

import mne
import numpy as np
import pytest

from dropstream.acquisition.recording import load_tracks
from dropstream.broker.alert_message import decode_alert
from dropstream.broker.clients import make_producer
from dropstream.inference.datasets import windows_from_recordings
from dropstream.inference.drift import DriftMonitor, DriftReference
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
    np.testing.assert_allclose(ref.statistic(idx, vals), np.mean(((vals - 2) / 3) ** 2, 1), 0.1)
    assert DriftReference.from_config(ref.to_config()).level == pytest.approx(ref.level)
    mon = DriftMonitor(ref)
    changes = [mon.update(1.0) for _ in range(30)]
    changes += [mon.update(10 * ref.level) for _ in range(3)]  # a short artefact: no drift
    assert set(changes) == {None}
    changes = [mon.update(10 * ref.level) for _ in range(20)]
    assert changes.count("start") == 1 and mon.active
    changes = [mon.update(1.0) for _ in range(20)]
    assert changes.count("end") == 1 and not mon.active


@pytest.fixture(scope="module")
def ecg_bundle(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    ecg = windows_from_recordings([data_dir / "body" / "ecg_5min.fif"], 1.0, 0.5, {})
    cfg = TrainConfig(width=64, keep=16, pool=8, hidden=(64,), epochs=8, progress=False)
    model = train_novelty(
        ecg.X[:500],
        cfg,
        sfreq=ecg.sfreq,
        channel_names=ecg.channel_names,
        channel_types=ecg.channel_types,
        hop_samples=ecg.hop_samples,
        prefiltered=True,
    )
    assert "drift" in model.head_config
    path = tmp_path_factory.mktemp("drift") / "ecg.dsb"
    model.save(path, model_id="ecg-drift")
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
    assert drift[0].score > drift[0].threshold  # the rolling median of the statistic


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
