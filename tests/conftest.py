"""Shared pytest fixtures: the real recordings in ``../shared/data`` and a real Kafka broker."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dropstream.broker.config import ClientConfig
from dropstream.broker.embedded import EmbeddedBroker
from dropstream.broker.topics import delete_topics, ensure_topics, topic_names

#: Real recordings shipped beside the checkout (read-only); see ``MANIFEST.json`` there.
DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Path of ``../shared/data``; skips the test when the recordings are not there."""
    if not (DATA_DIR / "MANIFEST.json").exists():
        pytest.skip(f"real recordings not found at {DATA_DIR}")
    return DATA_DIR


# --------------------------------------------------------------------------- Kafka broker
@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """One real embedded Kafka-protocol broker (tansu) for the whole test session."""
    with EmbeddedBroker() as running:
        yield running


@pytest.fixture()
def kafka_config(broker: EmbeddedBroker) -> Iterator[ClientConfig]:
    """Client config with unique, freshly created topics, deleted after the test.

    tansu's memory storage never frees data, so every test gets its own topics.
    """
    tag = uuid.uuid4().hex[:10]
    config = ClientConfig(
        bootstrap=broker.bootstrap,
        activations_topic=f"test.{tag}.activations",
        alerts_topic=f"test.{tag}.alerts",
        dead_letter_topic=f"test.{tag}.dead-letters",
        partitions=4,
        group_id=f"test.{tag}",
        session_timeout_ms=2000,
        fetch_max_wait_ms=10,
    )
    ensure_topics(config)
    yield config
    delete_topics(config, topic_names(config))
