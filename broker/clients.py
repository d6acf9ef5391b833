"""kafka-python producers and consumers built from a :class:`~broker.config.ClientConfig`.

Use these rather than constructing kafka-python clients by hand, so that security settings and
the tuned defaults (acks=all with idempotence, manual commits, short fetch waits) apply
everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError

from broker.config import ClientConfig
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
