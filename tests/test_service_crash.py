"""Scale-out and crash safety: two ``dropstream serve`` processes, one SIGKILLed mid-event.

Every expected alert must appear; the only duplicates allowed repeat an alert id (and status)
that is expected anyway.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from dropstream.broker.alert_message import decode_alert
from dropstream.broker.clients import make_producer
from dropstream.inference.demo import (
    DEMO_ALERTS,
    DEMO_BUNDLE,
    DEMO_RECORDING,
    read_recording,
    reference_alerts,
)
from dropstream.local_encoder.bundle import load_device_bundle
from dropstream.local_encoder.simulated import encode_recording

N_DEVICES = 6
PHASE_1 = 45  # windows per device before the kill: the first anomaly's events are open


def serve(config, log: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "dropstream",
        "serve",
        "--bundle",
        str(DEMO_BUNDLE),
        "--bootstrap",
        config.bootstrap,
        "--activations-topic",
        config.activations_topic,
        "--alerts-topic",
        config.alerts_topic,
        "--dead-letter-topic",
        config.dead_letter_topic,
        "--group-id",
        config.group_id,
        "--session-timeout-ms",
        "2000",
        "--device",
        "cpu",
        "--max-wait-ms",
        "10",
        "--log-interval-s",
        "1",
        *[f"--{k.replace('_', '-')}={v}" for k, v in DEMO_ALERTS.items()],
        "--allow-unauthenticated-devices",  # these simulated devices have no keys
    ]
    # the alert-signing key is made on first start: in the test's folder, not the user's
    env = os.environ | {"PYTHONUNBUFFERED": "1", "XDG_CONFIG_HOME": str(log.parent)}
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def assigned(log: Path) -> list[list[int]]:
    found = re.findall(r"assigned partitions \[([0-9, ]*)\]", log.read_text())
    return [[int(p) for p in f.split(",") if p.strip()] for f in found]


def opened(log: Path) -> int:
    return len(re.findall(r"alert \w+ open", log.read_text()))


class AlertReader:
    """Reads the alert topic from the start (kafka-python, no group)."""

    def __init__(self, config) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.consumer = KafkaConsumer(**config.common_kwargs(), enable_auto_commit=False)
        self.consumer.assign(
            [TopicPartition(config.alerts_topic, p) for p in range(config.partitions)]
        )
        self.consumer.seek_to_beginning()
        self.updates: list[tuple[str, str]] = []

    def poll(self) -> list[tuple[str, str]]:
        for recs in self.consumer.poll(timeout_ms=100).values():
            for rec in recs:
                a = decode_alert(rec.value)
                self.updates.append((a.alert_id, a.status))
        return self.updates


@pytest.mark.slow
def test_kill_a_serve_process_mid_event_and_restart(kafka_config, tmp_path):
    bundle = load_device_bundle(DEMO_BUNDLE)
    samples, _, _ = read_recording(DEMO_RECORDING)
    streams = {
        f"crash-{d}": [raw for _, raw in encode_recording(bundle, samples, f"crash-{d}", seed=d)]
        for d in range(N_DEVICES)
    }
    expected = set(
        reference_alerts(DEMO_BUNDLE, [m for s in streams.values() for m in s], DEMO_ALERTS)
    )
    assert len(expected) == 4 * N_DEVICES

    logs = [tmp_path / "serve-a.log", tmp_path / "serve-b.log", tmp_path / "serve-a2.log"]
    procs = [serve(kafka_config, logs[0])]
    reader = AlertReader(kafka_config)
    producer = make_producer(kafka_config)
    try:
        wait_for(lambda: assigned(logs[0]), 40, "the first serve process to join")
        procs.append(serve(kafka_config, logs[1]))
        # both members own partitions: the group shares them
        wait_for(
            lambda: any(assigned(logs[1])) and assigned(logs[0])[-1] != [0, 1, 2, 3],
            40,
            "the second serve process to share the partitions",
        )
        assert set(assigned(logs[0])[-1]).isdisjoint(assigned(logs[1])[-1])

        def publish(lo: int, hi: int) -> None:
            for i in range(lo, hi):
                for device, msgs in streams.items():
                    producer.send(
                        kafka_config.activations_topic, key=device.encode(), value=msgs[i]
                    )
            producer.flush()

        publish(0, PHASE_1)
        first_events = {aid for aid, status in expected if status == "open"}
        wait_for(
            lambda: len({a for a, s in reader.poll() if s == "open"}) >= N_DEVICES,
            30,
            "the first events to open",
        )
        assert {a for a, s in reader.updates if s == "open"} <= first_events
        assert not [s for _, s in reader.updates if s == "closed"]
        # kill the process that holds open events, without any chance to clean up
        victim = 0 if opened(logs[0]) >= opened(logs[1]) else 1
        assert opened(logs[victim]) > 0
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait(10)

        publish(PHASE_1, len(streams["crash-0"]))
        procs.append(serve(kafka_config, logs[2]))  # start it again
        wait_for(lambda: set(reader.poll()) >= expected, 60, "every expected alert")
        # the survivor alone may finish the alerts while the restarted process still loads
        # torch under load; stopping it then tests the start-up path, not the restart
        wait_for(lambda: assigned(logs[2]), 60, "the restarted serve process to join")
        time.sleep(1.0)
        reader.poll()
    finally:
        producer.close()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        reader.consumer.close()

    counts = Counter(reader.updates)
    assert set(counts) == expected, "an alert id that the reference does not produce appeared"
    # the killed process's open events were re-emitted under the same ids by their new owner
    assert any(n > 1 for n in counts.values())
    survivors = [p for i, p in enumerate(procs) if i != victim]
    assert all(p.returncode == 0 for p in survivors), [
        (p.returncode, log.read_text()[-1500:]) for p, log in zip(procs, logs, strict=True)
    ]
