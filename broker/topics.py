"""The three dropstream topics, created explicitly.

Kafka brokers (tansu included) auto-create unknown topics with their own defaults, so dropstream
never relies on that: :func:`ensure_topics` creates each topic with the configured partitions and
replication before any client uses it.

``activations``
    keyed by device id, so one device's windows stay ordered within one partition;
``alerts``
    keyed by device id, JSON alert events (:mod:`dropstream.broker.alert_message`);
``dead letters``
    messages the service could not process, with the reason in a header.
"""

from __future__ import annotations

import contextlib
import time

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from dropstream.broker.config import ClientConfig
from dropstream.errors import DropstreamError


class TopicError(DropstreamError):
    """A topic could not be created, described or deleted."""


def topic_names(config: ClientConfig) -> list[str]:
    """The activations, alerts and dead-letter topic names of ``config``."""
    return [config.activations_topic, config.alerts_topic, config.dead_letter_topic]


def admin_client(config: ClientConfig) -> KafkaAdminClient:
    """A kafka-python admin client for ``config`` (close it after use)."""
    try:
        return KafkaAdminClient(**config.common_kwargs(), request_timeout_ms=15_000)
    except KafkaError as exc:
        raise TopicError(f"cannot reach Kafka at {config.bootstrap}: {exc!r}") from exc


def ensure_topics(
    config: ClientConfig, names: list[str] | None = None, timeout: float = 15.0
) -> None:
    """Create the topics that do not exist yet, with ``config.partitions`` and ``replication``.

    Existing topics are left alone (their partition count is not changed).
    """
    names = topic_names(config) if names is None else names
    admin = admin_client(config)
    try:
        missing = [n for n in names if n not in set(admin.list_topics())]
        if missing:
            new = [NewTopic(n, config.partitions, config.replication) for n in missing]
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(new)
        deadline = time.monotonic() + timeout
        while set(names) - set(admin.list_topics()):
            if time.monotonic() > deadline:
                raise TopicError(f"topics {names} did not appear within {timeout} s")
            time.sleep(0.05)
    except KafkaError as exc:
        raise TopicError(f"creating topics {names} on {config.bootstrap} failed: {exc!r}") from exc
    finally:
        admin.close()


def partition_count(config: ClientConfig, name: str) -> int:
    """Number of partitions of topic ``name``."""
    admin = admin_client(config)
    try:
        described = admin.describe_topics([name])
    except KafkaError as exc:
        raise TopicError(f"describing topic {name} failed: {exc!r}") from exc
    finally:
        admin.close()
    return len(described[0]["partitions"])


def delete_topics(config: ClientConfig, names: list[str]) -> None:
    """Delete topics (missing ones are ignored)."""
    admin = admin_client(config)
    try:
        present = set(admin.list_topics())
        doomed = [n for n in names if n in present]
        if doomed:
            admin.delete_topics(doomed)
    except KafkaError as exc:
        raise TopicError(f"deleting topics {names} failed: {exc!r}") from exc
    finally:
        admin.close()
