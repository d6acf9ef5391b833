"""``dropstream alerts`` follows the alert topic: table, JSON lines, device filter."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from dropstream.broker.alert_message import AlertMessage, decode_alert, make_alert_id
from dropstream.broker.clients import make_producer


def alert(device: str, status: str, onset: int = 3) -> AlertMessage:
    return AlertMessage(
        alert_id=make_alert_id(device, "s", onset),
        status=status,
        device_id=device,
        stream_id="s",
        kind="anomaly",
        label="anomaly",
        onset_time=10.0,
        offset_time=None if status == "open" else 12.0,
        onset_sequence=onset,
        offset_sequence=None if status == "open" else onset + 4,
        score=0.5,
        threshold=0.1,
        model_id="m",
        model_version=1,
        produced_at=time.time(),
        detection_latency_s=0.02,
    )


def alerts_cli(config, *extra: str) -> str:
    cmd = [
        sys.executable, "-m", "dropstream", "alerts", "--bootstrap", config.bootstrap,
        "--alerts-topic", config.alerts_topic, "--from-beginning", "--max-seconds", "3", *extra,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_alerts_table_json_and_device_filter(kafka_config):
    producer = make_producer(kafka_config)
    sent = [alert("dev-a", "open"), alert("dev-b", "open"), alert("dev-a", "closed")]
    for msg in [*sent, sent[0]]:  # the last one is a duplicate (same id and status)
        producer.send(kafka_config.alerts_topic, key=msg.device_id.encode(), value=msg.to_json())
    producer.flush()
    producer.close()

    lines = alerts_cli(kafka_config, "--json", "--device", "dev-a").splitlines()
    bodies = [json.loads(line) for line in lines]
    assert [b.pop("verified") for b in bodies] == [False, False]  # nobody signed these
    got = [decode_alert(json.dumps(b).encode()) for b in bodies]
    assert [(a.device_id, a.status) for a in got] == [("dev-a", "open"), ("dev-a", "closed")]

    table = alerts_cli(kafka_config).splitlines()
    assert table[0].split()[:4] == ["produced", "(UTC)", "status", "alert"]
    assert len(table) == 4  # header + 3 distinct updates (the duplicate is shown once)
    assert sum(sent[0].alert_id in row for row in table) == 2


def test_serve_stopped_while_loading_exits_cleanly(tmp_path):
    """SIGTERM while torch and the bundle load (a rolling restart) ends serve with exit 0."""
    import signal

    from dropstream.inference.demo import DEMO_BUNDLE

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dropstream",
            "serve",
            "--bundle",
            str(DEMO_BUNDLE),
            "--bootstrap",
            "127.0.0.1:9",
            "--device",
            "cpu",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # Wait until the CLI handles SIGTERM (Linux: bit 15 of SigCgt), i.e. it is loading now.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = Path(f"/proc/{proc.pid}/status").read_text()
        caught = next(ln for ln in status.splitlines() if ln.startswith("SigCgt")).split()[1]
        if int(caught, 16) & (1 << (signal.SIGTERM - 1)):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
