"""kafka-python producers and consumers built from a
:class:`~dropstream.broker.config.ClientConfig`.

Use these rather than constructing kafka-python clients by hand, so that security settings and
the tuned defaults (acks=all with idempotence, manual commits, short fetch waits) apply
everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from dropstream.broker.config import ClientConfig
from dropstream.errors import DropstreamError


class KafkaClientError(DropstreamError):
    """A Kafka client could not connect or was misconfigured."""


def make_producer(config: ClientConfig, **overrides: Any) -> KafkaProducer:
    """A producer with dropstream's defaults; ``overrides`` are kafka-python arguments."""
    try:
        return KafkaProducer(**(config.producer_kwargs() | overrides))
    except KafkaError as exc:
        raise KafkaClientError(
            f"cannot connect a producer to {config.bootstrap}: {exc!r}; check --bootstrap and "
            "the security settings"
        ) from exc


def make_consumer(
    config: ClientConfig,
    topics: Sequence[str],
    group_id: str | None = None,
    **overrides: Any,
) -> KafkaConsumer:
    """A consumer subscribed to ``topics`` with manual commits (commit after processing)."""
    try:
        consumer = KafkaConsumer(**(config.consumer_kwargs(group_id) | overrides))
    except KafkaError as exc:
        raise KafkaClientError(
            f"cannot connect a consumer to {config.bootstrap}: {exc!r}; check --bootstrap and "
            "the security settings"
        ) from exc
    consumer.subscribe(list(topics))
    return consumer


def make_topic_reader(
    config: ClientConfig, topic: str, from_beginning: bool = True, **overrides: Any
) -> KafkaConsumer:
    """A consumer outside any group, assigned to every partition of ``topic``.

    For reading a whole topic (following alerts, counting bytes) without joining a consumer
    group or committing offsets; starts at the beginning, or at the end (only new messages).

    Raises
    ------
    KafkaClientError
        If Kafka cannot be reached or the topic does not exist.
    """
    try:
        consumer = KafkaConsumer(
            **(config.common_kwargs() | {"enable_auto_commit": False} | overrides)
        )
        partitions = consumer.partitions_for_topic(topic)
    except KafkaError as exc:
        raise KafkaClientError(f"cannot reach Kafka at {config.bootstrap}: {exc!r}") from exc
    if not partitions:
        consumer.close()
        raise KafkaClientError(
            f"topic {topic} does not exist on {config.bootstrap}; start 'dropstream serve' (or "
            "'dropstream broker') first, or check the topic name"
        )
    consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
    if from_beginning:
        consumer.seek_to_beginning()
    else:
        consumer.seek_to_end()
    return consumer
