"""The inference service on a real broker: alerts, dead letters, duplicates, schema."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import numpy as np
import pytest

from dropstream.broker.alert_message import decode_alert
from dropstream.broker.clients import make_producer
from dropstream.broker.embedded import free_port
from dropstream.broker.wire import decode_activation, encode_activation
from dropstream.inference.demo import (
    DEMO_ALERTS,
    DEMO_BUNDLE,
    DEMO_RECORDING,
    read_recording,
    reference_alerts,
)
from dropstream.inference.service import (
    REASON_HEADER,
    SOURCE_HEADER,
    InferenceService,
    ServiceSettings,
)
from dropstream.local_encoder.bundle import load_device_bundle
from dropstream.local_encoder.simulated import encode_recording


@pytest.fixture(scope="module")
def device_messages():
    """Three simulated devices streaming the demo recording (different keep masks)."""
    bundle = load_device_bundle(DEMO_BUNDLE)
    samples, _, _ = read_recording(DEMO_RECORDING)
    return {
        f"sim-{d}": [raw for _, raw in encode_recording(bundle, samples, f"sim-{d}", seed=d)]
        for d in range(3)
    }


def read_all(config, topic, until, timeout=30.0):
    """Records of ``topic`` (confluent-kafka, an independent client) until ``until(records)``."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": config.bootstrap,
            "group.id": f"reader-{time.monotonic_ns()}",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(config.partitions)])
    records = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not until(records):
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                records.append(msg)
    finally:
        consumer.close()
    return records


def test_service_alerts_dead_letters_and_duplicates(kafka_config, device_messages):
    expected = reference_alerts(
        DEMO_BUNDLE, [m for msgs in device_messages.values() for m in msgs], DEMO_ALERTS
    )
    assert len(expected) == 12  # two events per device, open + closed
    settings = ServiceSettings(max_wait_ms=10, device="cpu", **DEMO_ALERTS)
    service = InferenceService(kafka_config, DEMO_BUNDLE, settings)
    port = free_port()
    service.metrics.serve_http(port, addr="127.0.0.1")
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    assert service.ready.wait(20)

    good = decode_activation(device_messages["sim-0"][0])
    other_model = encode_activation(
        type(good)(**{**good.__dict__, "model_id": "someone-else", "sequence": 10_000})
    )
    old_version = encode_activation(
        type(good)(**{**good.__dict__, "model_version": 7, "sequence": 10_001})
    )
    garbage = {
        b"not a message at all": "malformed message",
        # window 0 carries its stream block in full (3 only its reference, which the reader
        # may not resolve yet: sim-1's block is on another partition)
        device_messages["sim-1"][0][:-5]: "does not match its header",
        other_model: "window for model 'someone-else'",
        old_version: "version 7 is unknown",
    }
    producer = make_producer(kafka_config)
    topic = kafka_config.activations_topic
    n = len(device_messages["sim-0"])
    for i in range(n):
        for device, msgs in device_messages.items():
            if (device, i) != ("sim-1", 5):  # window 5 of sim-1 comes late, after window 10
                producer.send(topic, key=device.encode(), value=msgs[i])
        if i == 10:
            producer.send(topic, key=b"sim-1", value=device_messages["sim-1"][5])
        if i == n // 3:  # bad input in the middle of the stream, then duplicates
            for value in garbage:
                producer.send(topic, key=b"sim-0", value=value)
            for j in range(i - 5, i + 1):
                producer.send(topic, key=b"sim-2", value=device_messages["sim-2"][j])
    producer.flush()
    producer.close()

    alerts = read_all(kafka_config, kafka_config.alerts_topic, lambda r: len(r) >= len(expected))
    dead = read_all(kafka_config, kafka_config.dead_letter_topic, lambda r: len(r) >= 4)
    deadline = time.monotonic() + 10
    while service.metrics.windows < 3 * n and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.2)  # one lag update
    scraped = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    service.stop()
    thread.join(15)
    assert not thread.is_alive()

    # every alert message matches the schema (independent client: confluent-kafka)
    decoded = [decode_alert(m.value()) for m in alerts]
    for m, a in zip(alerts, decoded, strict=True):
        assert m.key().decode() == a.device_id
        body = json.loads(m.value())
        assert body["schema"] == "dropstream.alert" and body["version"] == 1
        assert a.model_id == "demo-ecg-novelty" and a.kind == "anomaly"
        assert np.isfinite(a.detection_latency_s)
        if a.status == "closed":
            assert a.offset_sequence >= a.onset_sequence and a.offset_time > a.onset_time
    # exactly the reference alerts, each once (duplicates were scored once, no extra events)
    assert sorted((a.alert_id, a.status) for a in decoded) == sorted(expected)
    assert service.metrics.windows == 3 * n
    assert service.metrics.duplicates == 6
    # the gap was counted when window 6 came, the window filling it was late (scored once)
    assert (service.metrics.lost, service.metrics.late) == (1, 1)

    # bad input went to the dead-letter topic with the reason and source, and the service
    # went on serving (alerts after the garbage exist: the second events start at ~19 s)
    assert len(dead) == 4
    for m in dead:
        headers = dict(m.headers())
        assert headers[SOURCE_HEADER].decode() == topic
        assert m.key() == b"sim-0"
        assert garbage[m.value()] in headers[REASON_HEADER].decode()
    assert service.metrics.dead_letters == 4

    # the same counts as Prometheus metrics
    metrics = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in scraped.decode().splitlines()
        if line and not line.startswith("#")
    }
    assert metrics["dropstream_serve_windows_total"] == 3 * n
    assert metrics["dropstream_serve_duplicates_total"] == 6
    assert metrics['dropstream_serve_dead_letters_total{reason="malformed"}'] == 2
    assert metrics['dropstream_serve_dead_letters_total{reason="other-model"}'] == 1
    assert metrics['dropstream_serve_dead_letters_total{reason="unknown-model-version"}'] == 1
    assert metrics['dropstream_serve_alerts_total{status="open"}'] == 6
    assert metrics["dropstream_serve_alert_latency_seconds_count"] == 12
    assert metrics["dropstream_serve_batch_size_sum"] == 3 * n
    assert metrics["dropstream_serve_window_latency_seconds_count"] == 3 * n
    assert metrics["dropstream_serve_consumer_lag"] == 0


def test_service_refuses_a_bundle_without_calibration(tmp_path):
    import zipfile

    from dropstream.inference.service import ServiceError

    bad = tmp_path / "nocal.dsb"
    with zipfile.ZipFile(DEMO_BUNDLE) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "manifest.json":
                manifest = json.loads(data)
                del manifest["head_config"]["calibration"]
                data = json.dumps(manifest).encode()
            dst.writestr(item, data)
    from dropstream.broker.config import ClientConfig

    with pytest.raises(ServiceError, match="no calibration"):
        InferenceService(ClientConfig(), bad)


def serve_and_send(kafka_config, settings, key, msgs):
    """A running service (and its thread) that joined the group, and ``msgs`` sent under
    ``key``."""
    service = InferenceService(kafka_config, DEMO_BUNDLE, settings)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    assert service.ready.wait(20)
    producer = make_producer(kafka_config)
    for raw in msgs:
        producer.send(kafka_config.activations_topic, key=key, value=raw)
    producer.flush()
    producer.close()
    return service, thread


def test_alerts_leave_at_once_and_offsets_wait_for_the_commit_interval(
    kafka_config, device_messages
):
    """Alerts are sent after their batch; offsets are committed only every
    commit_interval_ms (here: not before the stop), after every alert was acknowledged."""
    from kafka import KafkaConsumer, TopicPartition

    msgs = device_messages["sim-1"][:60]
    expected = reference_alerts(DEMO_BUNDLE, msgs, DEMO_ALERTS)
    assert expected
    settings = ServiceSettings(
        max_wait_ms=5, device="cpu", commit_interval_ms=3_600_000, **DEMO_ALERTS
    )
    service, thread = serve_and_send(kafka_config, settings, b"sim-1", msgs)
    alerts = read_all(kafka_config, kafka_config.alerts_topic, lambda r: len(r) >= len(expected))
    assert [(decode_alert(m.value()).alert_id, decode_alert(m.value()).status) for m in alerts] == (
        expected
    )
    parts = [TopicPartition(kafka_config.activations_topic, p) for p in range(4)]
    probe = KafkaConsumer(**kafka_config.consumer_kwargs())
    try:
        assert [probe.committed(tp) for tp in parts] == [None] * 4  # nothing committed yet
        service.stop()
        thread.join(15)
        committed = sum(probe.committed(tp) or 0 for tp in parts)
    finally:
        probe.close()
    # committed at the stop, up to the stream's last clean point (its event is still open)
    assert 0 < committed <= len(msgs) and not len(service.outbox)


def test_a_silent_stream_gets_its_event_closed_and_commits_move_on(kafka_config, device_messages):
    from kafka import KafkaConsumer, TopicPartition

    msgs = device_messages["sim-0"][:45]  # the stream stops inside its first event
    expected = reference_alerts(DEMO_BUNDLE, msgs, DEMO_ALERTS)
    assert [s for _, s in expected] == ["open"]
    settings = ServiceSettings(max_wait_ms=5, device="cpu", stale_after_s=1.0, **DEMO_ALERTS)
    service, thread = serve_and_send(kafka_config, settings, b"sim-0", msgs)
    alerts = read_all(kafka_config, kafka_config.alerts_topic, lambda r: len(r) >= 2)
    service.stop()
    thread.join(15)
    updates = [decode_alert(m.value()) for m in alerts]
    assert [(a.alert_id, a.status) for a in updates] == expected + [(expected[0][0], "closed")]
    closed = updates[1]
    assert closed.offset_sequence is not None and closed.offset_sequence < 45
    # the partition's committed offset moved past the expired event: nothing left to replay
    probe = KafkaConsumer(**kafka_config.consumer_kwargs())
    try:
        parts = [TopicPartition(kafka_config.activations_topic, p) for p in range(4)]
        committed = sum(probe.committed(tp) or 0 for tp in parts)
    finally:
        probe.close()
    assert committed == len(msgs)


def test_a_poisoned_window_goes_to_dead_letters_and_the_stream_recovers(
    kafka_config, device_messages
):
    """A window of the right model whose values blow up the head, with a wild sequence
    number: dead-lettered; the stream's next windows are taken as a restarted sequence."""
    msgs = device_messages["sim-0"][:40]
    base = decode_activation(msgs[0])
    poison = type(base)(
        **{**base.__dict__, "sequence": 10**9, "values": np.full(base.keep, 1e38, np.float32)}
    )
    settings = ServiceSettings(max_wait_ms=5, device="cpu", **DEMO_ALERTS)
    service = InferenceService(kafka_config, DEMO_BUNDLE, settings)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    assert service.ready.wait(20)
    producer = make_producer(kafka_config)
    for i, raw in enumerate(msgs):
        producer.send(kafka_config.activations_topic, key=b"sim-0", value=raw)
        if i == 19:
            producer.send(
                kafka_config.activations_topic,
                key=b"sim-0",
                value=encode_activation(poison, "float32"),
            )
    producer.flush()
    producer.close()
    dead = read_all(kafka_config, kafka_config.dead_letter_topic, lambda r: len(r) >= 1)
    deadline = time.monotonic() + 10
    while service.metrics.windows < 41 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    # the detector saw the restarted stream up to its last window
    highest = service.streams.streams[("sim-0", base.stream_id)].highest
    service.stop()
    thread.join(15)
    assert len(dead) == 1
    assert "not finite" in dict(dead[0].headers())[REASON_HEADER].decode()
    assert service.metrics.windows == 41  # the 40 windows and the poisoned one were scored
    assert service.metrics.restarts == 1
    assert service.metrics.duplicates == 0
    assert highest == 39
