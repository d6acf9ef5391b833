"""Issue 15 on the real broker: no record stops the service (a fuzz corpus, then a restart on
the same offsets), and a broker restart loses no alert update."""

from __future__ import annotations

import dataclasses
import hashlib
import struct
import threading
import time
import uuid

import numpy as np
import pytest

from dropstream.broker.alert_message import decode_alert
from dropstream.broker.clients import make_producer, make_topic_reader
from dropstream.broker.config import ClientConfig
from dropstream.broker.embedded import EmbeddedBroker
from dropstream.broker.topics import ensure_topics
from dropstream.broker.wire import decode_activation, encode_activation
from dropstream.inference.demo import (
    DEMO_ALERTS,
    DEMO_BUNDLE,
    DEMO_RECORDING,
    read_recording,
    reference_alerts,
)
from dropstream.inference.outbox import REASON_HEADER, SHA256_HEADER, SIZE_HEADER
from dropstream.inference.service import InferenceService, ServiceSettings
from dropstream.local_encoder.bundle import load_device_bundle
from dropstream.local_encoder.simulated import encode_recording

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def recording_messages():
    bundle = load_device_bundle(DEMO_BUNDLE)
    samples, _, _ = read_recording(DEMO_RECORDING)
    return {
        d: [raw for _, raw in encode_recording(bundle, samples, d, seed=i)]
        for i, d in enumerate(("sim-0", "sim-1"))
    }


def read_topic(config, topic, until, timeout=60.0):
    """Every record of ``topic`` until ``until(records)`` (or ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:  # the topic may not exist yet on a restarted broker
        try:
            reader = make_topic_reader(config, topic)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    records = []
    try:
        while time.monotonic() < deadline and not until(records):
            for recs in reader.poll(timeout_ms=200).values():
                records.extend(recs)
    finally:
        reader.close()
    return records


def own_broker_config(broker, prefix):
    """Client config with fresh topics on a broker of the test's own (one it restarts)."""
    tag = uuid.uuid4().hex[:8]
    return ClientConfig(
        bootstrap=broker.bootstrap,
        activations_topic=f"{prefix}.{tag}.activations",
        alerts_topic=f"{prefix}.{tag}.alerts",
        dead_letter_topic=f"{prefix}.{tag}.dead",
        partitions=2,
        group_id=f"{prefix}-{tag}",
        session_timeout_ms=2000,
        fetch_max_wait_ms=10,
    )


def wait_for(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def start(config, **settings):
    service = InferenceService(
        config, DEMO_BUNDLE, ServiceSettings(max_wait_ms=5, device="cpu", **DEMO_ALERTS, **settings)
    )
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    assert service.ready.wait(30)
    return service, thread


def dead_letter_kinds(service):
    reg = service.metrics.registry
    kinds = {}
    for metric in reg.collect():
        for sample in metric.samples:
            if sample.name == "dropstream_serve_dead_letters_total" and sample.value:
                kinds[sample.labels["reason"]] = int(sample.value)
    return kinds


def test_a_fuzz_corpus_never_stops_the_service_even_replayed(kafka_config, recording_messages):
    good = recording_messages["sim-0"][:30]  # quiet windows: the stream stays clean
    rng = np.random.default_rng(15)
    now = time.time()
    first, last = decode_activation(good[0]), decode_activation(good[-1])
    assert good[5][4] == 3 and good[5][5] & 0x08 == 0  # version 3, float32 sample rate
    assert good[7][5] & 0x40 and not good[0][5] & 0x40  # stream block by reference / in full

    def patched(raw, offset, fmt, value):
        out = bytearray(raw)
        struct.pack_into(fmt, out, offset, value)
        return bytes(out)

    def variant(msg, **changes):
        return encode_activation(dataclasses.replace(msg, **changes))

    garbage = bytes(rng.integers(0, 256, 1_048_000, dtype=np.uint8))
    hostile = [  # (key, value, dead-letter kind)
        # a denormal sample rate (v2's float64 at 34 crash-looped serve; v3's float32 at 22)
        (b"sim-0", patched(good[5], 22, "<f", 1e-45), "malformed"),
        (b"sim-0", garbage, "malformed"),  # could not be dead-lettered: serve exited
        (b"sim-0", None, "malformed"),
        (b"sim-0", good[3][:-7], "malformed"),
        (b"sim-9", good[7], "key-mismatch"),  # by reference (flag 0x40) to sim-0's block
        # a stream with no high-water mark here: the freshness bound applies
        (b"sim-0", variant(first, stream_id="old", wall_time=now - 10_000), "stale"),
        (b"sim-0", variant(first, sequence=10_001, wall_time=now + 3_600), "from-the-future"),
        *[
            (b"sim-0", bytes(rng.integers(0, 256, int(n), dtype=np.uint8)), "malformed")
            for n in rng.integers(0, 400, 20)
        ],
    ]
    # after the good windows: 100 ahead of the newest with the newest's wall clock (forged)
    late = [(b"sim-0", variant(last, sequence=last.sequence + 100), "implausible-sequence")]
    producer = make_producer(kafka_config, max_request_size=4 << 20)
    sent = [(b"sim-0", raw) for raw in good[:15]]
    sent += [(k, v) for k, v, _ in hostile] + [(b"sim-0", raw) for raw in good[15:]]
    sent += [(k, v) for k, v, _ in late]
    for key, value in sent:
        producer.send(kafka_config.activations_topic, key=key, value=value, partition=0)
    producer.flush()
    producer.close()
    expected = {}
    for _, _, kind in hostile + late:
        expected[kind] = expected.get(kind, 0) + 1
    n_bad = len(hostile) + len(late)

    service, thread = start(kafka_config)
    dead = read_topic(kafka_config, kafka_config.dead_letter_topic, lambda r: len(r) >= n_bad)
    wait_for(
        lambda: service.offsets.committed.get(next(iter(service.offsets.next), None)) == len(sent)
    )
    assert thread.is_alive()
    service.stop()
    thread.join(15)
    assert service.metrics.windows == len(good) and service.metrics.alerts == 0
    assert dead_letter_kinds(service) == expected
    assert len(dead) == n_bad
    by_ref = [r for r in dead if SHA256_HEADER in dict(r.headers)]
    assert len(by_ref) == 1  # the 1 MB value, by reference only
    headers = {k: v.decode() for k, v in by_ref[0].headers}
    assert by_ref[0].key is None and len(by_ref[0].value) < 300
    assert headers[SIZE_HEADER] == str(len(garbage))
    assert headers[SHA256_HEADER] == hashlib.sha256(garbage).hexdigest()
    assert "sample rate" in " ".join(dict(r.headers)[REASON_HEADER].decode() for r in dead)

    # restart on the same offsets: the same group resumes after them, a new group replays them
    again, thread = start(kafka_config)
    time.sleep(1.0)
    assert thread.is_alive() and again.metrics.windows == 0 and again.metrics.dead_letters == 0
    again.stop()
    thread.join(15)
    replay, thread = start(kafka_config.replace(group_id=f"replay-{uuid.uuid4().hex[:6]}"))
    wait_for(lambda: replay.metrics.dead_letters >= n_bad and replay.metrics.windows >= len(good))
    time.sleep(0.5)
    assert thread.is_alive()
    replay.stop()
    thread.join(15)
    assert dead_letter_kinds(replay) == expected and replay.metrics.windows == len(good)


def test_a_broker_restart_loses_no_alert_update(recording_messages):
    """The broker (memory storage) stops while an alert update is pending and comes back on the
    same port, empty: the service keeps running, recreates its producer, delivers the pending
    update, notices the partition's log was reset and serves what arrives next."""
    broker = EmbeddedBroker().start()  # its own: this test restarts it
    config = own_broker_config(broker, "restart")
    first = recording_messages["sim-0"][:45]  # stops inside its first event
    second = recording_messages["sim-1"]
    expected_first = reference_alerts(DEMO_BUNDLE, first, DEMO_ALERTS)
    assert [s for _, s in expected_first] == ["open"]
    expected_second = set(reference_alerts(DEMO_BUNDLE, second, DEMO_ALERTS))
    try:
        ensure_topics(config)
        service, thread = start(config, stale_after_s=2.0)
        producer = make_producer(config)
        for raw in first:
            producer.send(config.activations_topic, key=b"sim-0", value=raw, partition=1)
        producer.flush()
        producer.close()
        read_topic(config, config.alerts_topic, lambda r: len(r) >= 1)
        broker.stop()  # the "closed" of the silent stream's event falls due while it is down
        time.sleep(5.0)
        assert thread.is_alive()
        broker.start()  # same port, empty (memory storage)
        ensure_topics(config)
        alerts = read_topic(config, config.alerts_topic, lambda r: len(r) >= 1, timeout=90)
        closed = [decode_alert(r.value) for r in alerts]
        assert [(a.alert_id, a.status) for a in closed] == [(expected_first[0][0], "closed")]
        # the partition starts again at offset 0, below what the service consumed before
        producer = make_producer(config)
        for raw in second:
            producer.send(config.activations_topic, key=b"sim-1", value=raw, partition=1)
        producer.flush()
        producer.close()
        alerts = read_topic(
            config, config.alerts_topic, lambda r: len(r) >= 1 + len(expected_second), timeout=60
        )
        got = {(a.alert_id, a.status) for a in map(decode_alert, (r.value for r in alerts))}
        assert expected_second <= got
        assert thread.is_alive()
        service.stop()
        thread.join(15)
        assert service.metrics.producer_restarts >= 1 or service.metrics.offset_resets >= 1
    finally:
        broker.stop()


def test_a_reset_broker_log_is_read_from_its_start_and_its_streams_go_on(recording_messages):
    """The documented reset policy on the real broker: the embedded broker (memory storage)
    restarts empty on the same port while a device's event is open, and the device's spool
    at once delivers its next windows. The new log's offsets start again at 0, below what serve
    consumed: serve must not serve it from its old position (issue 15 skipped 52 windows), nor
    forget the stream in the middle of its event: every alert update of the whole recording
    arrives, exactly as without the restart."""
    broker = EmbeddedBroker().start()  # its own: this test restarts it
    config = own_broker_config(broker, "reset")
    sim0 = recording_messages["sim-0"]
    expected = reference_alerts(DEMO_BUNDLE, sim0, DEMO_ALERTS)
    assert [s for _, s in expected] == ["open", "closed", "open", "closed"]
    try:
        ensure_topics(config)
        service, thread = start(config)
        producer = make_producer(config)
        for raw in sim0[:45]:  # into the first event, which opens
            producer.send(config.activations_topic, key=b"sim-0", value=raw, partition=1)
        producer.flush()
        producer.close()
        alerts = read_topic(config, config.alerts_topic, lambda r: len(r) >= 1)
        assert [(a.alert_id, a.status) for a in map(decode_alert, (r.value for r in alerts))] == [
            expected[0]
        ]
        # the reset policy rests on the group holding serve's commits: wait for the first one
        # (made within commit_interval_ms of a batch)
        wait_for(lambda: service.metrics.windows == 45 and any(service.offsets.committed.values()))
        broker.stop()
        time.sleep(3.0)
        broker.start()  # same port, empty: the log and the group's commits are gone
        ensure_topics(config)
        producer = make_producer(config)
        for raw in sim0[45:]:  # the spool drains at once: more windows than serve consumed
            producer.send(config.activations_topic, key=b"sim-0", value=raw, partition=1)
        producer.flush()
        producer.close()
        alerts = read_topic(config, config.alerts_topic, lambda r: len(r) >= 3, timeout=90)
        wait_for(lambda: service.metrics.windows >= len(sim0))
        time.sleep(1.0)
        assert thread.is_alive()
        service.stop()
        thread.join(15)
        got = [(a.alert_id, a.status) for a in map(decode_alert, (r.value for r in alerts))]
        assert got == expected[1:]  # the event's close and the next event, none lost
        m = service.metrics
        assert m.offset_resets >= 1 and m.windows == len(sim0)  # each window scored once
        assert (m.late, m.lost, m.dead_letters) == (0, 0, 0)  # no window served out of order
    finally:
        broker.stop()


def test_a_flooding_device_is_rate_limited_and_the_others_are_served(
    kafka_config, recording_messages
):
    flood, quiet = recording_messages["sim-0"][:30], recording_messages["sim-1"][:5]
    producer = make_producer(kafka_config)
    for i, raw in enumerate(flood):
        producer.send(kafka_config.activations_topic, key=b"sim-0", value=raw, partition=0)
        if i < len(quiet):
            producer.send(kafka_config.activations_topic, key=b"sim-1", value=quiet[i], partition=0)
    producer.flush()
    producer.close()
    service, thread = start(kafka_config, device_rate=0.01, device_burst=10)
    dead = read_topic(kafka_config, kafka_config.dead_letter_topic, lambda r: len(r) >= 20)
    wait_for(lambda: service.metrics.windows >= 15)
    time.sleep(0.5)
    newest = service.streams.streams[("sim-0", decode_activation(flood[0]).stream_id)].seen_max
    service.stop()
    thread.join(15)
    assert service.metrics.windows == 15  # sim-0's burst of 10 and all 5 of sim-1
    assert service.metrics.rate_limited == 20 and dead_letter_kinds(service) == {"rate-limited": 20}
    assert all(r.key is None and SHA256_HEADER in dict(r.headers) for r in dead)
    assert newest == 9  # the windows over the rate never touched the stream


def test_replayed_windows_are_refused_after_a_restart(kafka_config, recording_messages, tmp_path):
    """Issue 15: after a serve restart, windows captured minutes earlier were accepted as new.
    The high-water marks saved with the committed offsets make them duplicates after it."""
    genuine = recording_messages["sim-0"][:30]
    producer = make_producer(kafka_config)
    for raw in genuine:
        producer.send(kafka_config.activations_topic, key=b"sim-0", value=raw, partition=0)
    producer.flush()
    state = {"state_dir": str(tmp_path), "marks_interval_s": 0.0}
    service, thread = start(kafka_config, **state)
    wait_for(lambda: service.offsets.committed.get(next(iter(service.offsets.next), None)) == 30)
    service.stop()
    thread.join(15)
    for raw in genuine[10:20]:  # an attacker re-injects captured windows, byte for byte
        producer.send(kafka_config.activations_topic, key=b"sim-0", value=raw, partition=0)
    producer.send(
        kafka_config.activations_topic,
        key=b"sim-0",
        value=recording_messages["sim-0"][30],
        partition=0,
    )
    producer.flush()
    producer.close()
    again, thread = start(kafka_config, **state)
    wait_for(lambda: again.metrics.windows + again.metrics.duplicates >= 11)
    time.sleep(0.5)
    again.stop()
    thread.join(15)
    assert again.metrics.duplicates == 10  # the replays
    assert again.metrics.windows == 1 and again.metrics.late == 0  # the next genuine window


def test_forged_windows_never_touch_a_stream_and_alerts_are_signed(kafka_config, tmp_path):
    """Issue 15's attack: 4 forged windows for a real device id (sequences 9-12) and one 4,000
    ahead. With the device key store as authenticator they are dead-lettered
    ``unauthenticated`` before anything reads them: no false alert, no genuine window late or
    duplicate; every alert carries a signature the service's public key verifies."""
    from dropstream.broker.auth import AlertSigner, AlertVerifier, DeviceKey, DeviceKeys

    bundle = load_device_bundle(DEMO_BUNDLE)
    samples, _, _ = read_recording(DEMO_RECORDING)
    key, thief = DeviceKey.generate("sim-0"), DeviceKey.generate("sim-0")
    genuine = [raw for _, raw in encode_recording(bundle, samples, "sim-0", seed=0, key=key)]
    genuine = genuine[:45]
    forged = [raw for _, raw in encode_recording(bundle, samples * 50, "sim-0", seed=9, key=thief)]
    attack = [forged[i] for i in (9, 10, 11, 12)] + [
        thief.sign(
            encode_activation(dataclasses.replace(decode_activation(forged[9]), sequence=4005))
        )
    ]
    signer = AlertSigner.create(tmp_path / "alert.key")
    service = InferenceService(
        kafka_config,
        DEMO_BUNDLE,
        ServiceSettings(max_wait_ms=5, device="cpu", **DEMO_ALERTS),
        authenticator=DeviceKeys({"sim-0": key.secret}),
        signer=signer,
    )
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    assert service.ready.wait(30)
    producer = make_producer(kafka_config)
    for i, raw in enumerate(genuine):
        producer.send(kafka_config.activations_topic, key=b"sim-0", value=raw)
        if i == 5:
            for bad in attack:
                producer.send(kafka_config.activations_topic, key=b"sim-0", value=bad)
    producer.flush()
    producer.close()
    expected = reference_alerts(DEMO_BUNDLE, genuine, DEMO_ALERTS)
    alerts = read_topic(kafka_config, kafka_config.alerts_topic, lambda r: len(r) >= len(expected))
    wait_for(lambda: service.metrics.windows >= len(genuine))
    time.sleep(0.5)
    service.stop()
    thread.join(15)
    assert dead_letter_kinds(service) == {"unauthenticated": len(attack)}
    assert service.metrics.windows == len(genuine)
    assert (service.metrics.duplicates, service.metrics.late) == (0, 0)
    assert [
        (a.alert_id, a.status) for a in map(decode_alert, (r.value for r in alerts))
    ] == expected
    verifier = AlertVerifier.load([tmp_path / "alert.key"])
    assert alerts and all(verifier.verify(r.key, r.value, r.headers) for r in alerts)


def test_signal_a_restarted_agent_never_encoded_is_a_gap_for_the_service(kafka_config, tmp_path):
    """Issue 15: while ``connect`` was down the signal was never encoded and nothing reported
    it. A real agent reads the demo recording over LSL (real time), is stopped for 2 s and
    restarted on its spool: the sequence numbers run on, its first window after the restart
    carries ``unencoded_s``, and the service counts that signal as lost windows of the stream
    (``ceil(unencoded_s / hop)``, what the detector is fed too)."""
    import math

    from dropstream.acquisition import LiveStream
    from dropstream.acquisition.replay import RecordingReplay
    from dropstream.broker.auth import DeviceKey, DeviceKeys
    from dropstream.local_encoder.agent import EncoderAgent
    from dropstream.local_encoder.spool import Spool

    bundle = load_device_bundle(DEMO_BUNDLE)
    hop_s = bundle.hop_samples / bundle.sfreq
    key = DeviceKey.generate("gap-dev")
    service = InferenceService(
        kafka_config,
        DEMO_BUNDLE,
        ServiceSettings(max_wait_ms=5, device="cpu", **DEMO_ALERTS),
        authenticator=DeviceKeys({"gap-dev": key.secret}),
    )
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    assert service.ready.wait(30)
    source = f"gap-{uuid.uuid4().hex[:8]}"
    replay = RecordingReplay(  # the last 12 s, in real time, from when the first inlet connects
        [DEMO_RECORDING], start=18.0, source_id=source, wait_for_consumers=30.0
    ).start()
    sent = 0
    try:
        for run in range(2):
            inlet = LiveStream.connect(source_id=source, timeout=10.0)
            with Spool(tmp_path / "spool") as spool:
                agent = EncoderAgent(bundle, inlet, kafka_config, spool, key).start()
                made = sent + 4  # a few windows in each run, however loaded the machine
                wait_for(lambda: agent.stats.next_sequence >= made, timeout=20.0)  # noqa: B023
                if run == 1:
                    replay.wait(30.0)
                    time.sleep(0.5)
                stats = agent.stop(flush_timeout=10.0)
            inlet.close()
            assert stats.spool_depth == 0 and agent.error is None
            sent = stats.next_sequence
            if run == 0:
                time.sleep(2.0)  # connect is down: this signal is never encoded
    finally:
        replay.stop()
    wait_for(lambda: service.metrics.windows + service.metrics.dead_letters >= sent)
    time.sleep(0.5)
    service.stop()
    thread.join(15)
    msgs = [decode_activation(r.value) for r in read_topic(
        kafka_config, kafka_config.activations_topic, lambda r: len(r) >= sent)]  # fmt: skip
    assert [m.sequence for m in msgs] == list(range(sent))  # the numbering ran on
    reported = [m.unencoded_s for m in msgs if m.unencoded_s > 0]
    assert reported and reported[0] >= 1.5  # the 2 s pause, less at most a hop of slack
    assert service.metrics.windows == sent and service.metrics.dead_letters == 0
    assert service.metrics.unencoded_s == pytest.approx(sum(reported))
    assert service.metrics.lost == sum(math.ceil(u / hop_s - 1e-6) for u in reported)


def test_windows_spooled_through_a_long_outage_are_served_and_old_replays_are_not(
    kafka_config, tmp_path
):
    """Issue 15: the 15 min freshness bound dead-lettered genuine windows a device spooled
    through a longer broker outage. Windows above their stream's high-water mark (here restored
    by a restarted serve from --state-dir) are served whatever their age; old windows at or
    below it (captured and replayed), or of a stream with no mark, are still refused."""
    bundle = load_device_bundle(DEMO_BUNDLE)
    samples, _, _ = read_recording(DEMO_RECORDING)
    hour_ago = time.time() - 3600.0  # every window below is an hour old

    def captured(device, seed):
        sent = encode_recording(bundle, samples, device, seed=seed, wall_start=hour_ago)
        return [raw for _, raw in sent]

    sim0, sim1 = captured("sim-0", 0), captured("sim-1", 1)
    producer = make_producer(kafka_config)

    def send(key, values):
        for raw in values:
            producer.send(kafka_config.activations_topic, key=key, value=raw, partition=0)
        producer.flush()

    state = {"state_dir": str(tmp_path), "marks_interval_s": 0.0}
    # an hour ago, live: windows 0-29 served (no freshness bound to pass then)
    send(b"sim-0", sim0[:30])
    service, thread = start(kafka_config, freshness_s=None, **state)
    wait_for(lambda: service.offsets.committed.get(next(iter(service.offsets.next), None)) == 30)
    service.stop()
    thread.join(15)
    # now, after the outage: replays of 10-19, the spooled 30-59, an unknown stream's windows
    send(b"sim-0", sim0[10:20])
    send(b"sim-0", sim0[30:60])
    send(b"sim-1", sim1[:5])
    producer.close()
    again, thread = start(kafka_config, **state)  # the default bound: 900 s
    assert again.settings.freshness_s == 900.0
    wait_for(lambda: again.metrics.windows + again.metrics.dead_letters >= 45)
    decode_activation(sim0[0])  # its stream block: sim0[30:60] carry only its reference
    expected = reference_alerts(DEMO_BUNDLE, sim0[30:60], DEMO_ALERTS)
    assert [s for _, s in expected] == ["open", "closed"]  # the 9-12 s artefact
    alerts = read_topic(kafka_config, kafka_config.alerts_topic, lambda r: len(r) >= 2)
    time.sleep(0.5)
    again.stop()
    thread.join(15)
    assert again.metrics.windows == 30 and again.metrics.duplicates == 0
    assert dead_letter_kinds(again) == {"stale": 15}
    got = [(a.alert_id, a.status) for a in map(decode_alert, (r.value for r in alerts))]
    assert got == expected  # the spooled windows' alert, neither lost nor duplicated


def test_4000_device_ids_jumping_far_ahead_leave_state_bounded(kafka_config, recording_messages):
    """Issue 15's memory attack through the real broker: 8,000 small messages, 4,000 device
    ids each jumping 5,000 sequence numbers (once 1 GB, never freed). Every window is served,
    and the service holds at most ``max_streams`` streams and ``max_gaps_total`` gap ranges."""
    template = decode_activation(recording_messages["sim-0"][0])
    now = time.time()
    producer = make_producer(kafka_config, linger_ms=20)
    for d in range(4000):
        device = f"id-{d:05d}"
        for seq, wall in ((0, now - 5.0), (5000, now - 1.0)):  # past the jump check's reach
            raw = encode_activation(
                dataclasses.replace(template, device_id=device, sequence=seq, wall_time=wall)
            )
            producer.send(kafka_config.activations_topic, key=device.encode(), value=raw)
    producer.flush()
    producer.close()
    service, thread = start(kafka_config, max_streams=500, max_gaps_total=300)
    wait_for(lambda: service.metrics.windows + service.metrics.dead_letters >= 8000, 120)
    time.sleep(1.5)  # a housekeeping round
    assert thread.is_alive()
    service.stop()
    thread.join(15)
    assert service.metrics.windows == 8000 and service.metrics.dead_letters == 0
    assert len(service.streams.streams) <= 500 and service.streams.n_gaps <= 300
    assert len(service.streams.retired) <= 500  # the forgotten streams' marks: bounded too
