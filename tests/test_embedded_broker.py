"""The embedded broker starts, answers, stops with SIGINT, and never outlives its owner."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dropstream.broker.config import ClientConfig
from dropstream.broker.embedded import BrokerError, EmbeddedBroker
from dropstream.broker.topics import ensure_topics, topic_names

ROOT = Path(__file__).resolve().parents[1]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_start_answer_stop(tmp_path: Path) -> None:
    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log").start()
    assert broker.running
    config = ClientConfig(bootstrap=broker.bootstrap, partitions=2)
    ensure_topics(config)
    broker.stop()
    assert not broker.running
    assert "listening on" in broker.log()


def test_port_in_use_is_a_clear_error() -> None:
    with EmbeddedBroker() as first, pytest.raises(BrokerError, match="already in use"):
        EmbeddedBroker(port=first.port).start(timeout=3)


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signal is Linux-only")
def test_broker_dies_with_a_killed_owner() -> None:
    code = (
        "from dropstream.broker.embedded import EmbeddedBroker; import time; "
        "b = EmbeddedBroker().start(); print(b._proc.pid, flush=True); time.sleep(60)"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    pid = int(owner.stdout.readline())  # type: ignore[union-attr]
    assert _alive(pid)
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


def test_broker_command_prints_address_and_creates_topics() -> None:
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dropstream", "broker", "--partitions", "3"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    try:
        bootstrap = proc.stdout.readline().strip()  # type: ignore[union-attr]
        assert proc.stdout.readline().startswith("broker ready")  # type: ignore[union-attr]
        config = ClientConfig(bootstrap=bootstrap, partitions=3)
        from dropstream.broker.topics import partition_count

        for name in topic_names(config):
            assert partition_count(config, name) == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


@pytest.mark.skipif(sys.platform != "linux", reason="resident memory is read from /proc")
def test_broker_command_stops_at_its_memory_limit() -> None:
    """tansu's memory storage never frees messages: the command stops it at --max-memory-mb
    with a clear message instead of letting it grow without bound."""
    from kafka.errors import KafkaError

    from dropstream.broker.clients import make_producer

    proc = subprocess.Popen(
        [sys.executable, "-m", "dropstream", "broker", "--partitions", "1",
         "--max-memory-mb", "64"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        bootstrap = proc.stdout.readline().strip()  # type: ignore[union-attr]
        config = ClientConfig(bootstrap=bootstrap, partitions=1)
        producer = make_producer(config, max_block_ms=2000, request_timeout_ms=3000)
        value = os.urandom(100_000)
        with contextlib.suppress(KafkaError):
            for i in range(2000):  # up to 200 MB, far past the limit
                if proc.poll() is not None:
                    break
                producer.send(config.activations_topic, value=value)
                if i % 100 == 99:  # 10 MB, then give the command time to look
                    producer.flush(3)
                    time.sleep(0.6)  # the command checks every 0.5 s
        with contextlib.suppress(Exception):
            producer.close(timeout=1)
        assert proc.wait(20) == 3
        err = proc.stderr.read()  # type: ignore[union-attr]
        assert "over --max-memory-mb 64" in err and "Kafka cluster" in err
        assert "warning: the embedded broker holds" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
