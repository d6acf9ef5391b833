"""``dropstream evaluate`` on the shipped recording: JSON metrics, an HTML report, no broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dropstream.cli import main
from dropstream.inference.demo import DEMO_BUNDLE, DEMO_RECORDING


def test_evaluate_reports_alerts_metrics_and_html(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.html"
    args = ["evaluate", str(DEMO_BUNDLE), str(DEMO_RECORDING), "-o", str(out), "--seed", "0"]
    assert main(args) == 0
    line, report = capsys.readouterr().out.strip().splitlines()
    result = json.loads(line)
    assert result["events"] == 2 and result["event_sensitivity"] == 1.0
    assert result["false_alerts"] == 0 and result["window_auc"] > 0.8
    spans = [(9.0, 12.0), (19.0, 22.0)]  # the annotated artefacts (demo_data/README.md)
    for alert, (a, b) in zip(result["alerts"], spans, strict=True):
        assert a - 1.0 <= alert["recording_onset"] <= b
    assert report == f"report: {out}" and "<svg" in out.read_text()
    # a stricter threshold level (bundle calibration quantile) can only lower the alert share
    assert main([*args, "--threshold-level", "0.999"]) == 0
    strict = json.loads(capsys.readouterr().out.splitlines()[0])
    assert strict["threshold"] >= result["threshold"]
    assert strict["normal_time_under_alert"] <= result["normal_time_under_alert"]
