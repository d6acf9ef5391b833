"""The service's parts without a broker: stream tracking, offset tracking and the outbox.

The same logic runs against the real broker in tests/test_service_kafka.py and
tests/test_service_crash.py; here each part is driven directly, case by case.
"""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
from kafka.consumer.fetcher import ConsumerRecord

from dropstream.broker.alert_message import decode_alert, make_alert_id
from dropstream.inference.alerting import AlertPolicy
from dropstream.inference.metrics import ServiceMetrics, wall_latency
from dropstream.inference.offsets import OffsetTracker
from dropstream.inference.outbox import REASON_HEADER, SOURCE_HEADER, Outbox
from dropstream.inference.streams import ScoredBatch, StreamTracker

HOP = 0.25
KEY = ("dev", "stm")
# no minimum duration or merge gap: a window >= high opens an event, the next one < low closes
POLICY = AlertPolicy(high=1.0, low=0.5, min_duration_s=0.0, merge_gap_s=0.0)


def tracker(limit=16, classes=None, policy=POLICY):
    return StreamTracker(policy, limit, ServiceMetrics(), classes)


def window(seq, score, key=KEY, top=None):
    """A batch of one scored window."""
    return ScoredBatch(
        [0], [key], [seq], [float(score)], [seq * HOP], [seq * HOP + 1.0], [HOP], [top]
    )


def feed1(t, seq, score, now=0.0, out=None, key=KEY, top=None):
    """Feed one window; whether its stream is clean after it."""
    fed = t.feed(window(seq, score, key, top), now, [] if out is None else out)
    assert fed.failed == []
    return fed.clean[0]


def step(o, partition, offset, stream=None, clean=True):
    """One record through the offset tracker (with a window of ``stream``, if given)."""
    o.walk([partition], [offset], {} if stream is None else {0: (stream, clean)})


def admit(t, seqs, key=KEY, partition="p0"):
    asked = []

    def partition_of(i):
        asked.append(i)
        return partition

    adm = t.admit([key] * len(seqs), seqs, partition_of)
    return adm, asked


def feed(t, seq_scores, key=KEY, now=0.0, top=None):
    out = []
    clean = [feed1(t, q, s, now, out, key, top) for q, s in seq_scores]
    return [(u.event.status, u.event.onset_sequence, u.label) for u in out], clean


# ---------------------------------------------------------------- stream tracking
def test_duplicates_are_dropped_and_a_gap_filled_later_is_late():
    t = tracker()
    adm, asked = admit(t, [0, 1, 2, 5])
    assert adm.fresh.tolist() == [True] * 4 and asked == [0]  # partition asked once per stream
    feed(t, [(0, 0), (1, 0), (2, 0), (5, 0)])
    assert t.metrics.lost == 2  # 3 and 4 missing
    adm, asked = admit(t, [1, 4, 5, 4, 6])
    # 1 and 5 were seen, 4 fills a gap once (the second 4 is a duplicate)
    assert adm.fresh.tolist() == [False, True, False, False, True] and asked == []
    assert (t.metrics.duplicates, t.metrics.late) == (3, 1)
    events, _ = feed(t, [(4, 5.0), (6, 0)])  # the late window is not fed to the detector
    assert events == []
    assert t.streams[KEY].highest == 6


def test_missing_sequences_are_bounded_by_the_dedup_window():
    t = tracker(limit=8)
    admit(t, [0, 1000])
    assert t.streams[KEY].missing == [[992, 1000]]
    adm, _ = admit(t, [995, 500])  # 500 is far behind: a restart, not a duplicate
    assert adm.fresh.tolist() == [True, True]
    assert t.metrics.restarts == 1 and adm.restarted == [("p0", KEY)]


def test_a_restart_closes_the_open_event_and_starts_afresh():
    t = tracker(limit=4)
    admit(t, [10, 11])
    events, clean = feed(t, [(10, 2.0), (11, 2.0)])
    assert events == [("open", 10, "anomaly")] and clean == [False, False]
    adm, _ = admit(t, [0])
    assert [(u.event.status, u.event.onset_sequence) for u in adm.updates] == [("closed", 10)]
    st = t.streams[KEY]
    assert (st.highest, st.seen_max, st.missing) == (-1, 0, [])
    events, clean = feed(t, [(0, 0.0)])
    assert events == [] and clean == [True]


def test_classifier_events_keep_the_label_of_their_opening():
    t = tracker(classes=["normal", "seizure", "artefact"])
    admit(t, [0, 1, 2, 3])
    out = []
    feed1(t, 0, 2.0, top=1, now=0.0, out=out)  # opens as "seizure"
    feed1(t, 1, 2.0, top=2, now=0.0, out=out)
    feed1(t, 2, 0.0, top=2, now=0.0, out=out)  # closes: still "seizure"
    assert [(u.event.status, u.label) for u in out] == [("open", "seizure"), ("closed", "seizure")]
    assert t.streams[KEY].labels == {}


def test_silent_streams_expire_with_their_label_and_partitions_are_forgotten():
    t = tracker(classes=["normal", "seizure"])
    admit(t, [0], partition="p0")
    admit(t, [0], key=("other", "s"), partition="p1")
    out = []
    feed1(t, 0, 2.0, top=1, now=100.0, out=out)
    assert not t.silent(KEY, 105.0, 10.0) and t.silent(KEY, 110.0, 10.0)
    assert not t.silent(("nobody", "x"), 1e9, 10.0)
    closing = t.expire(KEY)
    assert [(u.event.status, u.label) for u in closing] == [("closed", "seizure")]
    assert t.streams[KEY].detector.clean
    t.forget({"p1"})
    assert list(t.streams) == [KEY]


# ---------------------------------------------------------------- offsets
def test_commits_stop_at_the_last_clean_point_of_a_partition():
    o = OffsetTracker()
    step(o, "p0", 0, KEY, clean=True)
    step(o, "p0", 1, KEY, clean=False)  # an event starts at offset 1
    step(o, "p0", 2)  # a record without a window (e.g. a dead letter)
    step(o, "p1", 7, ("x", "y"), clean=True)
    assert o.to_commit() == {"p0": 1, "p1": 8}
    o.committed_ok(o.to_commit())
    assert o.to_commit() == {}
    step(o, "p0", 3, KEY, clean=True)  # the event closed
    assert o.to_commit() == {"p0": 4}
    assert o.lag(lambda p: {"p0": 10, "p1": None}[p]) == 6


def test_released_streams_let_the_partition_commit_to_its_end():
    o = OffsetTracker()
    step(o, "p0", 41, KEY, clean=False)
    assert o.dirty_streams() == [("p0", KEY)] and o.to_commit() == {}
    o.release("p0", KEY)
    o.settle()
    assert o.to_commit() == {"p0": 42}
    o.revoke(["p0"])
    assert (o.dirty, o.safe, o.committed, o.next) == ({}, {}, {}, {})
    o.release("p9", KEY)  # unknown partition: nothing to do


# ---------------------------------------------------------------- outbox
def record(value=b"raw", key=b"dev", offset=3):
    return ConsumerRecord(
        "acts", 2, 0, offset, 0, 0, key, value, [], None, len(key), len(value), -1
    )


def test_the_outbox_renders_alerts_and_dead_letters(caplog):
    metrics = ServiceMetrics()
    box = Outbox("alerts", "dead", metrics, "m", 3, "anomaly", clock=lambda: 101.0)
    box.dead_letter(record(), "malformed", "malformed message: truncated")
    t = tracker()
    admit(t, [0, 1])
    out = []
    feed1(t, 0, 2.0, now=0.0, out=out)
    feed1(t, 1, 0.0, now=0.0, out=out)
    with caplog.at_level(logging.INFO, logger="dropstream.inference.service"):
        msgs = [box.alert(u) for u in out]
        assert not [r for r in caplog.records if "alert " in r.getMessage()]  # not yet
        box.log_alerts()  # (send() does it first): the batch's alerts in one record
    logged = [r.getMessage() for r in caplog.records if "alert " in r.getMessage()]
    assert len(logged) == 1 and len(logged[0].splitlines()) == 2
    assert re.match(r"alert \S+ open device=dev stream=stm", logged[0].splitlines()[0])
    assert len(box) == 3
    dead, opened, closed = box.pending
    assert (dead.topic, dead.key, dead.value) == ("dead", b"dev", b"raw")
    headers = dict(dead.headers)
    assert headers[REASON_HEADER] == b"malformed message: truncated"
    assert headers[SOURCE_HEADER] == b"acts"
    aid = make_alert_id("dev", "stm", 0)
    assert [m.alert_id for m in msgs] == [aid, aid]
    for rec, status in ((opened, "open"), (closed, "closed")):
        assert (rec.topic, rec.key, rec.headers) == ("alerts", b"dev", None)
        alert = decode_alert(rec.value)
        assert (alert.alert_id, alert.status, alert.model_version) == (aid, status, 3)
    assert json.loads(opened.value)["detection_latency_s"] == 101.0 - 1.0
    assert (metrics.alerts, metrics.dead_letters) == (2, 1)


def test_windows_of_a_batch_walk_through_tracker_and_offsets_like_the_service():
    """A stream that opens an event holds its partition's commit until the event closes."""
    t, o = tracker(), OffsetTracker()
    scores = [0, 0, 2, 2, 0, 0]
    adm, _ = admit(t, list(range(6)))
    assert adm.fresh.all()
    safe = []
    for offset, s in enumerate(scores):
        step(o, "p0", offset, KEY, feed1(t, offset, s))
        safe.append(o.safe["p0"])
    assert safe == [1, 2, 2, 2, 5, 6]
    assert np.all(np.diff(safe) >= 0)


# ---------------------------------------------------------------- hostile sequences, bounds
def admit_walls(t, seqs, walls, key=KEY):
    return t.admit([key] * len(seqs), seqs, lambda i: "p0", walls, [HOP] * len(seqs), 0.0)


def test_a_jump_the_wall_clock_does_not_back_is_refused_without_touching_the_stream():
    t = tracker(limit=4096)
    admit_walls(t, [0, 1, 2], [1000.0, 1000.25, 1000.5])
    feed(t, [(0, 0), (1, 0), (2, 0)])
    # forged: 4,000 ahead with the wall clock of a genuine window (the issue-15 attack)
    adm = admit_walls(t, [4002], [1000.75])
    assert adm.fresh.tolist() == [False] and "4000 windows ahead" in adm.implausible[0][1]
    st = t.streams[KEY]
    assert (st.seen_max, st.missing) == (2, [])
    # the genuine windows after it are neither late nor duplicates: all fed to the detector
    adm = admit_walls(t, [3, 4], [1000.75, 1001.0])
    assert adm.fresh.all() and t.metrics.late == 0 and t.metrics.duplicates == 0
    feed(t, [(3, 0), (4, 0)])
    assert st.highest == 4
    # a real gap (windows lost on the way) has the wall clock behind it: accepted
    adm = admit_walls(t, [10], [1002.5])
    assert adm.fresh.all() and st.missing == [[5, 10]]


def test_gap_ranges_are_bounded_per_stream_and_in_total():
    t = StreamTracker(POLICY, 4096, ServiceMetrics(), max_gaps=3, max_gaps_total=4)
    admit(t, [0, 2, 4, 6, 8])  # four gaps of one: only the newest three kept
    assert t.streams[KEY].missing == [[3, 4], [5, 6], [7, 8]] and t.n_gaps == 3
    admit(t, [0, 2], key=("b", "s"))  # the fourth range of the total budget
    admit(t, [0, 2, 4], key=("c", "s"))  # budget spent: c's gaps are not remembered
    assert t.n_gaps == 4 and t.streams[("c", "s")].missing == []
    adm, _ = admit(t, [5, 1])  # 5 fills a remembered gap (late); 1 was forgotten: duplicate
    assert adm.fresh.tolist() == [True, False]
    assert t.metrics.c_gap_drop._value.get() == 3  # 1 of KEY; 1 and 3 of c
    t.forget({"p0"})
    assert t.n_gaps == 0


def test_idle_and_excess_streams_are_forgotten_but_not_ones_in_progress():
    t = tracker()
    for d in range(10):
        key = (f"dev{d}", "s")
        admit(t, [0], key=key)
        feed(t, [(0, 2.0 if d == 0 else 0.0)], key=key, now=float(d))  # dev0 opens an event
    assert t.forget_idle(now=100.0, idle_s=1000.0, max_streams=5) == 5  # down to 90 % of 5
    assert sorted(t.streams) == [
        ("dev0", "s"),
        ("dev6", "s"),
        ("dev7", "s"),
        ("dev8", "s"),
        ("dev9", "s"),
    ]
    assert t.forget_idle(now=2000.0, idle_s=1000.0, max_streams=100) == 4  # idle; dev0 is not clean
    assert list(t.streams) == [("dev0", "s")] and t.metrics.streams_forgotten == 9


@pytest.mark.slow
def test_a_stream_forgotten_while_idle_keeps_its_high_water_mark():
    """The mark is what lets the service serve windows spooled through a long outage (and
    refuse replays): forgetting an idle stream's detector must not forget it."""
    t = tracker()
    admit(t, [0, 1, 2])
    assert t.forget_idle(100.0, idle_s=10.0, max_streams=10) == 1 and KEY not in t.streams
    assert t.high_water(KEY) == 2 and t.high_water(("dev", "other")) is None
    assert json.loads(t.marks(["p0"], 1000)["p0"]) == {"dev\x1fstm": 2}
    adm, _ = admit(t, [1, 3])  # back: a replay of 1 is a duplicate, 3 is new
    assert adm.fresh.tolist() == [False, True] and t.high_water(KEY) == 3 and not t.retired
    # at most max_streams marks are kept, the oldest go first; revoking forgets them
    for d in range(20):
        admit(t, [5], key=(f"dev-{d}", "stm"))
        t.forget_idle(200.0 + d, idle_s=0.0, max_streams=5)
    assert list(t.retired) == [(f"dev-{d}", "stm") for d in range(15, 20)]
    t.forget(["p0"])
    assert not t.retired and not t.streams


def test_100k_device_ids_leave_memory_flat():
    """Issue 15: 4,000 device ids each jumping 4,096 sequence numbers cost 1 GB. Now 100,000
    ids each jumping 4,096 hold at most max_streams streams and one gap range each."""
    import gc

    t = StreamTracker(POLICY, 4096, ServiceMetrics(), max_gaps_total=10_000)
    cap, batch = 5_000, 1_000
    sizes = {}
    # memory measured as the objects the garbage collector tracks: every stream, detector,
    # gap range and label dict is one or more
    for start in range(0, 100_000, batch):
        keys = [(f"device-{d:06d}", "s") for d in range(start, start + batch)]
        # each device: window 0, then one 4,096 ahead (its wall clock agrees: a real gap)
        pairs = [k for k in keys for _ in range(2)]
        seqs = [0, 4096] * batch
        walls = [0.0, 4096 * HOP] * batch
        adm = t.admit(pairs, seqs, lambda i: "p0", walls, [HOP] * len(seqs), float(start))
        assert adm.fresh.all()
        n = len(pairs)
        scored = ScoredBatch(
            list(range(n)), pairs, seqs, [0.0] * n, walls, walls, [HOP] * n, [None] * n
        )
        t.feed(scored, float(start), [])
        t.forget_idle(float(start), idle_s=1e9, max_streams=cap)
        if start + batch in (20_000, 100_000):
            gc.collect()
            sizes[start + batch] = len(gc.get_objects())
    assert len(t.streams) <= cap and t.n_gaps <= 10_000
    # objects after 100,000 ids are those after 20,000 (as many streams held), within 10 %
    assert sizes[100_000] < 1.1 * sizes[20_000], sizes
    assert t.metrics.streams_forgotten >= 95_000


# ---------------------------------------------------------------- rate limit, by reference
def test_a_device_over_its_rate_is_refused_and_others_are_not():
    from dropstream.inference.ratelimit import DeviceRateLimiter

    lim = DeviceRateLimiter(rate=4.0, burst=8.0)
    flood = [lim.allow(b"noisy", 0.0) for _ in range(100)]
    assert sum(flood) == 8  # the burst, then nothing until tokens come back
    assert all(lim.allow(b"quiet", 0.0) for _ in range(8))
    assert lim.allow(b"noisy", 0.25) and not lim.allow(b"noisy", 0.25)  # 4/s: one per 0.25 s
    lim.prune(now=100.0)
    assert len(lim) == 0


def test_an_oversized_dead_letter_goes_by_reference():
    import hashlib

    from dropstream.inference.outbox import OFFSET_HEADER, SHA256_HEADER, SIZE_HEADER

    box = Outbox("alerts", "dead", ServiceMetrics(), "m", 1, "anomaly", inline_bytes=1000)
    big = bytes(range(256)) * 4096  # 1 MiB
    box.dead_letter(record(big, offset=17), "malformed", "too big")
    box.dead_letter(record(b"x" * 10), "rate-limited", "over", by_reference=True)
    (ref, forced) = box.pending
    headers = dict(ref.headers)
    digest = hashlib.sha256(big).hexdigest()
    assert ref.key is None and json.loads(ref.value) == {
        "topic": "acts",
        "partition": 2,
        "offset": 17,
        "size": len(big),
        "sha256": digest,
    }
    assert headers[SIZE_HEADER] == str(len(big)).encode()
    assert headers[SHA256_HEADER] == digest.encode()
    assert headers[OFFSET_HEADER] == b"17"
    assert forced.key is None and json.loads(forced.value)["size"] == 10


def test_a_reset_partition_forgets_offsets_but_keeps_streams_in_progress():
    o = OffsetTracker()
    step(o, "p0", 500, KEY, clean=False)
    o.reset("p0")
    assert o.dirty == {"p0": {KEY}} and (o.safe, o.next, o.committed) == ({}, {}, {})
    step(o, "p0", 0)  # the new log starts at 0; the stream is still dirty
    assert o.next == {"p0": 1} and o.to_commit() == {}


def test_latency_is_floored_at_zero_when_the_producer_stamps_samples_ahead():
    """mne-lsl's PlayerLSL stamps a chunk's last sample with the time the next chunk is due
    (chunk_size / sfreq ahead): the deciding window ends after the server's clock says now."""
    metrics = ServiceMetrics()
    box = Outbox("alerts", "dead", metrics, "m", 3, "anomaly", clock=lambda: 0.929)
    t = tracker()
    admit(t, [0, 1])
    out = []
    feed1(t, 0, 2.0, now=0.0, out=out)  # the deciding window ends at 1.0 on the device clock
    opened = decode_alert(box.alert(out[0]).to_json())
    assert opened.detection_latency_s == 0.0 and list(metrics.alert_latencies) == [0.0]
    assert wall_latency(2.5, np.array([1.0, 3.0])).tolist() == [1.5, 0.0]
