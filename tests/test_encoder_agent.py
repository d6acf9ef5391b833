"""The encoder agent end to end: real LSL replay of a real recording, real embedded broker.

Slow tests (marked ``slow``): the 30 s replay (run at 4x speed, ~9 s), the 10 s broker
outage (~17 s) and the unreachable broker with a restart (~7 s).
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from kafka import KafkaConsumer, TopicPartition

from dropstream.acquisition import LiveStream
from dropstream.broker.auth import DeviceKey, DeviceKeys
from dropstream.broker.config import ClientConfig
from dropstream.broker.embedded import EmbeddedBroker, free_port
from dropstream.broker.topics import ensure_topics, partition_count
from dropstream.broker.wire import decode_activation
from dropstream.local_encoder.agent import EncoderAgent
from dropstream.local_encoder.spool import Spool
from tests.encoder_support import (
    consume_all,
    eeg_track,
    load_eeg,
    make_bundle,
    start_replay,
    unique_source,
)

SPEED = 4.0


@pytest.fixture(scope="module")
def eeg(data_dir):
    return load_eeg(data_dir)


def expected_windows(n_samples: int, window: int = 160, hop: int = 80) -> int:
    return (n_samples - window) // hop + 1


def wait_until(predicate, timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


@pytest.mark.slow
def test_replay_30s_every_window_arrives_exactly_once_in_order(eeg, kafka_config, tmp_path):
    data, sfreq, names = eeg
    data = data[: int(30 * sfreq)]
    bundle = make_bundle(data, sfreq, names)
    src = unique_source()
    pub = start_replay(eeg_track(data, sfreq, names, src), speed=SPEED)
    inlet = LiveStream.connect(source_id=src, timeout=10.0)
    spool = Spool(tmp_path / "spool")
    key = DeviceKey.generate("device-A")
    try:
        agent = EncoderAgent(bundle, inlet, kafka_config, spool, key).start()
        assert pub.wait(30.0 / SPEED + 15.0), "replay did not finish"
        n = expected_windows(len(data))
        assert wait_until(lambda: agent.stats.windows_made == n, 5.0), agent.stats
        stats = agent.stop()
    finally:
        inlet.close()
        pub.stop()
        spool.close()
    assert stats.windows_made == stats.windows_sent == n
    assert stats.spool_depth == 0 and stats.lost_samples == 0 and stats.windows_dropped == 0
    got = consume_all(kafka_config, expected=n)
    assert [m.sequence for m, _, _ in got] == list(range(n))  # exactly once, in order
    assert {key for _, key, _ in got} == {b"device-A"}
    m0 = got[0][0]
    assert (m0.device_id, m0.stream_id, m0.model_id) == ("device-A", src, bundle.model_id)
    assert all(m.keep == bundle.keep and m.width == 256 for m, _, _ in got)
    times = [m.lsl_time for m, _, _ in got]
    assert all(b > a for a, b in zip(times, times[1:], strict=False))
    # every message that went through the broker is signed: the service's check accepts it,
    # and refuses it under another key or with one byte changed
    keys = DeviceKeys({"device-A": key.secret})
    assert keys.check_batch([k for _, k, _ in got], [v for _, _, v in got]) == []
    other = DeviceKeys({"device-A": DeviceKey.generate("device-A").secret})
    assert len(other.check_batch([k for _, k, _ in got], [v for _, _, v in got])) == n
    assert all(m.unencoded_s == 0.0 for m, _, _ in got)  # an unbroken stream


class TopicReader:
    """Reads a topic from the beginning in a background thread (no consumer group)."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.messages: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        c = KafkaConsumer(
            **self.config.common_kwargs(), fetch_max_wait_ms=10, enable_auto_commit=False
        )
        try:
            n = partition_count(self.config, self.config.activations_topic)
            parts = [TopicPartition(self.config.activations_topic, p) for p in range(n)]
            c.assign(parts)
            c.seek_to_beginning(*parts)
            while not self._stop.is_set():
                for records in c.poll(timeout_ms=20).values():
                    self.messages += [decode_activation(r.value) for r in records]
        except Exception:  # the broker goes away under it; what was read is kept
            pass
        finally:
            c.close(autocommit=False)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10.0)


@pytest.mark.slow
def test_broker_down_10s_mid_stream_loses_no_window(eeg, tmp_path):
    data, sfreq, names = eeg
    data = data[: int(56 * sfreq)]  # 14 s at 4x: before, during and after the outage
    bundle = make_bundle(data, sfreq, names)
    port = free_port()
    broker = EmbeddedBroker(port=port).start()
    tag = uuid.uuid4().hex[:8]
    config = ClientConfig(
        bootstrap=broker.bootstrap,
        activations_topic=f"outage.{tag}.activations",
        alerts_topic=f"outage.{tag}.alerts",
        dead_letter_topic=f"outage.{tag}.dead-letters",
        partitions=4,
        session_timeout_ms=2000,
        fetch_max_wait_ms=10,
    )
    ensure_topics(config)
    src = unique_source()
    pub = start_replay(eeg_track(data, sfreq, names, src), speed=SPEED)
    inlet = LiveStream.connect(source_id=src, timeout=10.0)
    spool = Spool(tmp_path / "spool")
    reader = TopicReader(config)
    try:
        agent = EncoderAgent(bundle, inlet, config, spool, DeviceKey.generate("device-B")).start()
        assert wait_until(lambda: agent.stats.windows_sent >= 8, 10.0), agent.stats
        # stop the broker right after an acknowledgement that the reader has seen, so that
        # everything the old broker acknowledged is known (its memory storage dies with it)
        sent = agent.stats.windows_sent
        assert wait_until(lambda: agent.stats.windows_sent > sent, 5.0)
        assert wait_until(lambda: len(reader.messages) >= agent.stats.windows_sent, 5.0)
        broker.stop()
        reader.stop()
        before = [m.sequence for m in reader.messages]
        made_at_stop = agent.stats.windows_made
        time.sleep(10.0)
        during = agent.stats
        assert during.windows_made > made_at_stop + 40  # the stream went on, into the spool
        assert during.spool_depth >= during.windows_made - len(before) - 1
        assert not during.broker_ok
        broker.start()  # same port, empty memory: recreate the topic
        ensure_topics(config)
        assert pub.wait(30.0), "replay did not finish"
        n = expected_windows(len(data))
        assert wait_until(lambda: agent.stats.windows_made == n, 5.0), agent.stats
        assert wait_until(lambda: agent.stats.spool_depth == 0, 30.0), agent.stats
        stats = agent.stop()
        after = [m.sequence for m, _, _ in consume_all(config, expected=n - len(before))]
    finally:
        reader.stop()
        inlet.close()
        pub.stop()
        spool.close()
        broker.stop()
    assert before == list(range(len(before)))
    assert after == sorted(after) and len(set(after)) == len(after)  # order kept, no repeats
    assert sorted(set(before) | set(after)) == list(range(n))  # 0 windows lost
    assert stats.windows_made == n and stats.lost_samples == 0 and stats.windows_dropped == 0


@pytest.mark.slow
def test_broker_unreachable_spools_everything_then_a_restart_drains_it(eeg, kafka_config, tmp_path):
    data, sfreq, names = eeg
    data = data[: int(8 * sfreq)]
    bundle = make_bundle(data, sfreq, names)
    src = unique_source()
    dead = kafka_config.replace(bootstrap=f"127.0.0.1:{free_port()}")
    pub = start_replay(eeg_track(data, sfreq, names, src), speed=SPEED)
    inlet = LiveStream.connect(source_id=src, timeout=10.0)
    n = expected_windows(len(data))
    key = DeviceKey.generate("device-C")
    try:
        with Spool(tmp_path / "spool") as spool:
            agent = EncoderAgent(bundle, inlet, dead, spool, key).start()
            assert pub.wait(15.0)
            assert wait_until(lambda: agent.stats.windows_made == n, 5.0), agent.stats
            assert wait_until(lambda: not agent.stats.broker_ok, 10.0), agent.stats
            t0 = time.monotonic()
            stats = agent.stop(flush_timeout=1.0)
            assert time.monotonic() - t0 < 8.0  # a clean, prompt shutdown
            assert stats.windows_sent == 0 and stats.spool_depth == n
    finally:
        inlet.close()
        pub.stop()
    down_from = time.time()
    time.sleep(2.0)  # the agent is down: this signal is never encoded
    # a new agent on the same spool with the broker reachable: it drains, in order
    pub = start_replay(eeg_track(data[: int(2 * sfreq)], sfreq, names, src), speed=SPEED)
    inlet = LiveStream.connect(source_id=src, timeout=10.0)
    try:
        with Spool(tmp_path / "spool") as spool:
            agent = EncoderAgent(bundle, inlet, kafka_config, spool, key)
            assert agent.stats.next_sequence == n  # numbering continues
            agent.start()
            assert pub.wait(10.0)
            m = n + expected_windows(int(2 * sfreq))
            assert wait_until(lambda: agent.stats.windows_sent == m, 10.0), agent.stats
            stats = agent.stop()
    finally:
        inlet.close()
        pub.stop()
    assert stats.spool_depth == 0
    msgs = consume_all(kafka_config, expected=m)
    assert [msg.sequence for msg, _, _ in msgs] == list(range(m))
    # the first window after the restart reports the downtime, and only that one
    unencoded = [msg.unencoded_s for msg, _, _ in msgs]
    assert unencoded[:n] == [0.0] * n and unencoded[n + 1 :] == [0.0] * (m - n - 1)
    # at least the 2 s pause less one hop (0.5 s), at most the time since the first run stopped
    assert 1.5 <= unencoded[n] <= time.time() - down_from + 10.0
    assert stats.unencoded_s == unencoded[n]
    keys = DeviceKeys({"device-C": key.secret})
    assert keys.check_batch([k for _, k, _ in msgs], [v for _, _, v in msgs]) == []
