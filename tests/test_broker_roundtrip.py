"""Activation messages through a real broker: ordering per device, nothing lost or duplicated."""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import pytest

from dropstream.broker.clients import make_consumer, make_producer
from dropstream.broker.config import ClientConfig
from dropstream.broker.topics import partition_count
from dropstream.broker.wire import ActivationMessage, decode_activation, encode_activation

N_MESSAGES = 10_000
N_DEVICES = 20


def _messages() -> list[ActivationMessage]:
    rng = np.random.default_rng(7)
    out = []
    for i in range(N_MESSAGES):
        device, seq = i % N_DEVICES, i // N_DEVICES
        idx = np.sort(rng.choice(256, 64, replace=False))
        out.append(
            ActivationMessage(
                model_id="roundtrip",
                model_version=3,
                device_id=f"device-{device:02d}",
                stream_id=f"eeg-{device:02d}",
                sequence=seq,
                lsl_time=1000.0 + seq * 0.5,
                wall_time=1.7e9 + seq * 0.5,
                sfreq=160.0,
                window_samples=160,
                hop_samples=80,
                width=256,
                indices=idx,
                values=rng.standard_normal(64).astype(np.float32),
            )
        )
    return out


def _produce(config: ClientConfig, messages: list[ActivationMessage]) -> list[bytes]:
    producer = make_producer(config)
    payloads = [encode_activation(m) for m in messages]
    for m, payload in zip(messages, payloads, strict=True):
        producer.send(config.activations_topic, key=m.device_id.encode(), value=payload)
    producer.flush()
    producer.close()
    return payloads


def test_topics_are_created_with_configured_partitions(kafka_config: ClientConfig) -> None:
    for name in (
        kafka_config.activations_topic,
        kafka_config.alerts_topic,
        kafka_config.dead_letter_topic,
    ):
        assert partition_count(kafka_config, name) == kafka_config.partitions


def test_ten_thousand_messages_from_twenty_devices(kafka_config: ClientConfig) -> None:
    messages = _messages()
    payloads = _produce(kafka_config, messages)
    consumer = make_consumer(kafka_config, [kafka_config.activations_topic])
    received: dict[str, list[int]] = defaultdict(list)
    raw: set[bytes] = set()
    deadline = time.monotonic() + 60
    count = 0
    while count < N_MESSAGES and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            for record in records:
                msg = decode_activation(record.value)
                assert record.key == msg.device_id.encode()
                received[msg.device_id].append(msg.sequence)
                raw.add(record.value)
                count += 1
        consumer.commit()
    consumer.close()
    assert count == N_MESSAGES
    assert len(received) == N_DEVICES
    for sequences in received.values():
        assert sequences == list(range(N_MESSAGES // N_DEVICES))  # in order, none missing/dup
    assert raw == set(payloads)  # byte-identical


def test_independent_client_reads_what_dropstream_wrote(kafka_config: ClientConfig) -> None:
    confluent_kafka = pytest.importorskip("confluent_kafka")
    messages = _messages()[:2000]
    _produce(kafka_config, messages)
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": kafka_config.bootstrap,
            "group.id": kafka_config.group_id + ".confluent",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "fetch.wait.max.ms": 10,
        }
    )
    consumer.subscribe([kafka_config.activations_topic])
    seen: dict[str, list[int]] = defaultdict(list)
    deadline = time.monotonic() + 60
    total = 0
    try:
        while total < len(messages) and time.monotonic() < deadline:
            for record in consumer.consume(num_messages=500, timeout=0.5):
                assert record.error() is None, record.error()
                msg = decode_activation(record.value())
                assert record.key().decode() == msg.device_id
                seen[msg.device_id].append(msg.sequence)
                total += 1
    finally:
        consumer.close()
    assert total == len(messages)
    for sequences in seen.values():
        assert sequences == list(range(len(messages) // N_DEVICES))


def test_topic_reader_reads_every_partition_and_refuses_a_missing_topic(
    kafka_config: ClientConfig,
) -> None:
    from dropstream.broker.clients import KafkaClientError, make_topic_reader

    _produce(kafka_config, _messages()[:200])
    reader = make_topic_reader(kafka_config, kafka_config.activations_topic)
    assert len(reader.assignment()) == kafka_config.partitions
    got = 0
    deadline = time.monotonic() + 30
    while got < 200 and time.monotonic() < deadline:
        got += sum(len(records) for records in reader.poll(timeout_ms=200).values())
    reader.close()
    assert got == 200
    with pytest.raises(KafkaClientError, match="does not exist"):
        make_topic_reader(kafka_config, kafka_config.activations_topic + ".missing")
