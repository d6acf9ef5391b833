"""The embedded broker starts, answers, stops with SIGINT, and never outlives its owner."""

from __future__ import annotations

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
