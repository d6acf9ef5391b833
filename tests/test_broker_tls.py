"""Kafka over TLS with a throwaway CA and client certificates; plaintext is refused.

tansu (the embedded broker) cannot terminate TLS itself, so a TLS proxy stands in front of a real
tansu broker that advertises the proxy's address: what is tested is dropstream's client-side
TLS configuration (CA, client certificate and key) end to end with kafka-python.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("cryptography")

from dropstream.broker.clients import KafkaClientError, make_consumer, make_producer  # noqa: E402
from dropstream.broker.config import ClientConfig  # noqa: E402
from dropstream.broker.embedded import EmbeddedBroker, free_port  # noqa: E402
from dropstream.broker.topics import ensure_topics  # noqa: E402
from tests.tls_proxy import TLSProxy, make_ca  # noqa: E402


@pytest.fixture(scope="module")
def tls_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict]]:
    paths = make_ca(tmp_path_factory.mktemp("ca"))
    proxy_port = free_port()
    with EmbeddedBroker(advertised=f"127.0.0.1:{proxy_port}") as tansu:
        proxy = TLSProxy(proxy_port, (tansu.host, tansu.port), paths).start()
        yield f"127.0.0.1:{proxy_port}", paths
        proxy.stop()


def test_tls_client_round_trip(tls_endpoint: tuple[str, dict]) -> None:
    bootstrap, paths = tls_endpoint
    tag = uuid.uuid4().hex[:8]
    config = ClientConfig(
        bootstrap=bootstrap,
        security_protocol="SSL",
        ssl_cafile=str(paths["ca"]),
        ssl_certfile=str(paths["client_cert"]),
        ssl_keyfile=str(paths["client_key"]),
        activations_topic=f"tls.{tag}.a",
        alerts_topic=f"tls.{tag}.b",
        dead_letter_topic=f"tls.{tag}.c",
        partitions=1,
        group_id=f"tls.{tag}",
        session_timeout_ms=2000,
        fetch_max_wait_ms=10,
    )
    ensure_topics(config)
    producer = make_producer(config)
    for i in range(50):
        producer.send(config.activations_topic, key=b"dev", value=f"m{i}".encode())
    producer.flush()
    producer.close()
    consumer = make_consumer(config, [config.activations_topic])
    got: list[bytes] = []
    for _ in range(100):
        for records in consumer.poll(timeout_ms=200).values():
            got.extend(r.value for r in records)
        if len(got) >= 50:
            break
    consumer.close()
    assert got == [f"m{i}".encode() for i in range(50)]


def test_plaintext_client_is_refused(tls_endpoint: tuple[str, dict]) -> None:
    bootstrap, _ = tls_endpoint
    with pytest.raises(KafkaClientError):
        make_producer(ClientConfig(bootstrap=bootstrap), bootstrap_timeout_ms=3000)


def test_untrusted_ca_is_refused(tls_endpoint: tuple[str, dict], tmp_path: Path) -> None:
    bootstrap, _ = tls_endpoint
    other = make_ca(tmp_path)  # a different CA: the server certificate does not verify
    config = ClientConfig(bootstrap=bootstrap, security_protocol="SSL", ssl_cafile=str(other["ca"]))
    with pytest.raises(KafkaClientError):
        make_producer(config, bootstrap_timeout_ms=3000)
