"""The service's parts without a broker: stream tracking, offset tracking and the outbox.

The same logic runs against the real broker in tests/test_service_kafka.py and
tests/test_service_crash.py; here each part is driven directly, case by case.
"""

from __future__ import annotations

import json

import numpy as np
from kafka.consumer.fetcher import ConsumerRecord

from dropstream.broker.alert_message import decode_alert, make_alert_id
from dropstream.inference.alerting import AlertPolicy
from dropstream.inference.metrics import ServiceMetrics
from dropstream.inference.offsets import OffsetTracker
from dropstream.inference.outbox import REASON_HEADER, SOURCE_HEADER, Outbox
from dropstream.inference.streams import ScoredWindow, StreamTracker

HOP = 0.25
KEY = ("dev", "stm")
# no minimum duration or merge gap: a window >= high opens an event, the next one < low closes
POLICY = AlertPolicy(high=1.0, low=0.5, min_duration_s=0.0, merge_gap_s=0.0)


def tracker(limit=16, classes=None, policy=POLICY):
    return StreamTracker(policy, limit, ServiceMetrics(), classes)


def window(seq, score, key=KEY, top=None):
    return ScoredWindow(key, seq, float(score), seq * HOP, seq * HOP + 1.0, HOP, top)


def admit(t, seqs, key=KEY, partition="p0"):
    asked = []

    def partition_of(i):
        asked.append(i)
        return partition

    adm = t.admit([key] * len(seqs), seqs, partition_of)
    return adm, asked


def feed(t, seq_scores, key=KEY, now=0.0, top=None):
    out = []
    clean = [t.feed(window(q, s, key, top), now, out) for q, s in seq_scores]
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
    assert t.streams[KEY].missing == set(range(992, 1000))
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
    assert (st.highest, st.seen_max, st.missing) == (-1, 0, set())
    events, clean = feed(t, [(0, 0.0)])
    assert events == [] and clean == [True]


def test_classifier_events_keep_the_label_of_their_opening():
    t = tracker(classes=["normal", "seizure", "artefact"])
    admit(t, [0, 1, 2, 3])
    out = []
    t.feed(window(0, 2.0, top=1), 0.0, out)  # opens as "seizure"
    t.feed(window(1, 2.0, top=2), 0.0, out)
    t.feed(window(2, 0.0, top=2), 0.0, out)  # closes: still "seizure"
    assert [(u.event.status, u.label) for u in out] == [("open", "seizure"), ("closed", "seizure")]
    assert t.streams[KEY].labels == {}


def test_silent_streams_expire_with_their_label_and_partitions_are_forgotten():
    t = tracker(classes=["normal", "seizure"])
    admit(t, [0], partition="p0")
    admit(t, [0], key=("other", "s"), partition="p1")
    out = []
    t.feed(window(0, 2.0, top=1), 100.0, out)
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
    o.window("p0", KEY, clean=True)
    o.consumed("p0", 0)
    o.window("p0", KEY, clean=False)  # an event starts at offset 1
    o.consumed("p0", 1)
    o.consumed("p0", 2)  # a record without a window (e.g. a dead letter)
    o.window("p1", ("x", "y"), clean=True)
    o.consumed("p1", 7)
    assert o.to_commit() == {"p0": 1, "p1": 8}
    o.committed_ok(o.to_commit())
    assert o.to_commit() == {}
    o.window("p0", KEY, clean=True)  # the event closed
    o.consumed("p0", 3)
    assert o.to_commit() == {"p0": 4}
    assert o.lag(lambda p: {"p0": 10, "p1": None}[p]) == 6


def test_released_streams_let_the_partition_commit_to_its_end():
    o = OffsetTracker()
    o.window("p0", KEY, clean=False)
    o.consumed("p0", 41)
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


def test_the_outbox_renders_alerts_and_dead_letters():
    metrics = ServiceMetrics()
    box = Outbox("alerts", "dead", metrics, "m", 3, "anomaly", clock=lambda: 101.0)
    box.dead_letter(record(), "malformed", "malformed message: truncated")
    t = tracker()
    admit(t, [0, 1])
    out = []
    t.feed(window(0, 2.0), 0.0, out)
    t.feed(window(1, 0.0), 0.0, out)
    msgs = [box.alert(u) for u in out]
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
        o.window("p0", KEY, t.feed(window(offset, s), 0.0, []))
        o.consumed("p0", offset)
        safe.append(o.safe["p0"])
    assert safe == [1, 2, 2, 2, 5, 6]
    assert np.all(np.diff(safe) >= 0)
