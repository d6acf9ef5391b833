"""``dropstream demo`` end to end: shipped recording, LSL replay, agent, service, alerts."""

from __future__ import annotations

import pytest

from dropstream.inference.demo import DEMO_BUNDLE, DEMO_DATA, DEMO_RECORDING, run_demo
from dropstream.inference.evaluation import evaluate_recording, write_report


def test_demo_ships_small_files():
    shipped = [p for p in DEMO_DATA.iterdir() if p.is_file()]
    assert DEMO_RECORDING in shipped and DEMO_BUNDLE in shipped
    assert sum(p.stat().st_size for p in shipped) < 2 * 1024 * 1024


@pytest.mark.slow
def test_demo_alerts_line_up_with_the_known_anomalies(tmp_path):
    lines: list[str] = []
    summary = run_demo(emit=lines.append, seed=7)
    assert len(summary.anomalies) == 2
    for anomaly in summary.anomalies:
        assert anomaly.alert_id is not None, "\n".join(lines)
        assert anomaly.alert_id in summary.alerts
        assert set(summary.alerts[anomaly.alert_id]) == {"open", "closed"}
        # the alert opens within the anomaly (plus the 1 s window it needs to see it)
        assert -0.5 < anomaly.detection_delay_s < 4.0
        assert anomaly.service_latency_s is not None and anomaly.service_latency_s < 5.0
        # the alert says where it is in the replayed recording and when it was (UTC)
        opened = summary.alerts[anomaly.alert_id]["open"]
        assert opened.recording_onset is not None and opened.onset_utc is not None
        assert anomaly.onset_s - 1.0 <= opened.recording_onset <= anomaly.offset_s
        assert abs(opened.onset_utc - opened.produced_at) < 10.0
        closed = summary.alerts[anomaly.alert_id]["closed"]
        assert closed.recording_offset is not None
        assert opened.recording_onset < closed.recording_offset <= anomaly.offset_s + 3.0
    assert summary.false_alerts == [], "\n".join(lines)
    assert summary.ok
    # every window the device made was sent and scored; only kept activations travelled
    assert summary.windows_sent >= 110
    assert 0 < summary.bytes_sent < summary.raw_bytes
    assert any(line.startswith("  result: OK") for line in lines)

    # dropstream evaluate, offline, reproduces the live run's alerts: same ids, same times
    # (the device joined the running replay: its first window starts where it joined; the
    # device's keep masks are seeded so that the offline run draws the same ones)
    live = {aid: v["closed"] for aid, v in summary.alerts.items()}
    some = next(iter(live.values()))
    hop_s = 0.25  # the demo bundle's hop
    ev = evaluate_recording(
        DEMO_BUNDLE,
        DEMO_RECORDING,
        device_id=some.device_id,
        stream_id=some.stream_id,
        # the onset window's start: onset_time is where in it the head located the anomaly
        start=some.recording_onset
        + ((some.onset_window_time or some.onset_time) - some.onset_time)
        - some.onset_sequence * hop_s,
        seed=7,
    )
    offline = {m.alert_id: m for m in ev.alerts}
    assert set(offline) == set(live), (sorted(offline), sorted(live))
    for aid, m in offline.items():
        assert m.recording_onset == pytest.approx(live[aid].recording_onset, abs=0.01)
        assert m.recording_offset == pytest.approx(live[aid].recording_offset, abs=0.01)
        # the same windows, masks and head: the same peak (to float rounding of the batch size)
        assert m.score == pytest.approx(live[aid].score, rel=1e-5)
    assert ev.metrics["event_sensitivity"] == 1.0 and ev.metrics["false_alerts"] == 0
    assert ev.metrics["window_auc"] > 0.8
    report = write_report([ev], tmp_path / "report.html").read_text()
    assert report.count("<svg") == 2 and "window_auc" in report
