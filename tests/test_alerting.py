"""Event semantics of dropstream.inference.alerting: hysteresis, minimum duration, merge gap,
refractory."""

from __future__ import annotations

import numpy as np
import pytest

from dropstream.inference.alerting import AlertPolicy, AlertPolicyError, EventDetector

HOP = 0.25  # seconds per window


def run(scores, policy, sequences=None):
    det = EventDetector("dev", "stm", policy)
    seqs = range(len(scores)) if sequences is None else sequences
    out = []
    for seq, s in zip(seqs, scores, strict=True):
        out += det.update(seq, float(s), seq * HOP, seq * HOP + 1.0, HOP)
    return [(e.status, e.onset_sequence, e.offset_sequence) for e in out], det


def policy(**kw):
    base = {"high": 1.0, "low": 0.5, "min_duration_s": 0.0, "merge_gap_s": 0.0}
    return AlertPolicy(**(base | kw))


def test_single_event_has_onset_and_offset():
    events, det = run([0, 0, 2, 2, 0.7, 0, 0], policy())
    # hysteresis: 0.7 >= low keeps the event going; 0 ends it
    assert events == [("open", 2, None), ("closed", 2, 4)]
    assert det.clean


def test_below_high_never_starts_an_event():
    events, _ = run([0.9, 0.9, 0.7, 0.99], policy())
    assert events == []


def test_minimum_duration_drops_short_bursts():
    p = policy(min_duration_s=0.5)  # 2 windows
    assert run([0, 2, 0, 0], p)[0] == []
    events, _ = run([0, 2, 0.6, 0, 0], p)
    assert events == [("open", 1, None), ("closed", 1, 2)]


def test_merge_gap_joins_bursts_and_closes_after_it():
    p = policy(merge_gap_s=0.5)  # 2 quiet windows allowed
    events, _ = run([2, 0, 0, 2, 0, 0, 0, 0], p)
    assert events == [("open", 0, None), ("closed", 0, 3)]
    # a gap of 3 quiet windows splits them
    events, _ = run([2, 0, 0, 0, 2, 0, 0, 0], p)
    assert events == [("open", 0, None), ("closed", 0, 0), ("open", 4, None), ("closed", 4, 4)]


def test_inside_merge_gap_low_scores_do_not_resume():
    p = policy(merge_gap_s=0.5)
    events, _ = run([2, 0, 0.7, 0, 0], p)  # 0.7 is above low but below high: still quiet
    assert events == [("open", 0, None), ("closed", 0, 0)]


def test_refractory_period_suppresses_new_onsets():
    p = policy(refractory_s=1.0)  # 4 windows after the event closes
    events, det = run([2, 0, 2, 2, 0, 0, 0, 2, 0], p)
    assert events == [("open", 0, None), ("closed", 0, 0), ("open", 7, None), ("closed", 7, 7)]
    assert not det.clean  # still in the refractory period after the second event


def test_lost_windows_count_as_quiet():
    p = policy(merge_gap_s=0.5)
    events, _ = run([2, 2, 2], p, sequences=[0, 1, 10])
    assert events[:2] == [("open", 0, None), ("closed", 0, 1)]
    assert events[2] == ("open", 10, None)
    # a lost window breaks a candidate run too
    events, _ = run([2, 2, 0], policy(min_duration_s=0.5), sequences=[0, 2, 3])
    assert events == []


def test_clean_only_when_nothing_is_in_progress():
    p = policy(merge_gap_s=0.5, refractory_s=0.5)
    det = EventDetector("d", "s", p)
    states = []
    for seq, s in enumerate([0, 2, 0, 0, 0, 0, 0, 0]):
        det.update(seq, s, 0.0, 1.0, HOP)
        states.append(det.clean)
    # open at 1, quiet 2-3 (gap), closed at 4, refractory until 2 windows after 1 -> seq 4
    assert states == [True, False, False, False, True, True, True, True]


def test_replay_from_a_clean_point_gives_the_same_events():
    rng = np.random.default_rng(3)
    scores = np.where(rng.random(400) < 0.08, 3.0, rng.random(400) * 0.8)
    p = policy(min_duration_s=0.25, merge_gap_s=0.5, refractory_s=0.75)
    full, _ = run(scores, p)
    det = EventDetector("dev", "stm", p)
    clean_points = []
    for seq, s in enumerate(scores):
        det.update(seq, float(s), 0.0, 1.0, HOP)
        if det.clean:
            clean_points.append(seq + 1)
    assert len(clean_points) > 10 and full
    for start in clean_points[::7]:
        tail, _ = run(scores[start:], p, sequences=range(start, len(scores)))
        assert tail == [e for e in full if e[1] >= start]


def test_thresholds_from_calibration_and_adaptation():
    cal = {"levels": [0.5, 0.95, 0.99], "quantiles": [0.1, 0.5, 1.0], "threshold": 1.0}
    p = AlertPolicy.from_calibration(cal, hysteresis_level=0.95)
    assert (p.high, p.low) == (1.0, 0.5)
    assert AlertPolicy.from_calibration(cal, level=0.95, hysteresis_level=None).high == 0.5
    # a device whose normal scores sit higher gets its own threshold after 20 windows
    adapt = AlertPolicy.from_calibration(cal, adapt_windows=20, adapt_level=0.99)
    det = EventDetector("d", "s", adapt)
    for seq in range(20):
        det.update(seq, 1.5 + 0.01 * seq, 0.0, 1.0, HOP)
    assert det.high == pytest.approx(np.quantile(1.5 + 0.01 * np.arange(20), 0.99))
    assert det.low == pytest.approx(det.high * 0.5)


def test_bad_policies_are_refused():
    with pytest.raises(AlertPolicyError, match="hysteresis"):
        AlertPolicy(high=1.0, low=2.0)
    with pytest.raises(AlertPolicyError):
        AlertPolicy(high=1.0, low=0.5, merge_gap_s=-1)
    with pytest.raises(AlertPolicyError, match="incomplete"):
        AlertPolicy.from_calibration({"levels": [0.5]})


def test_expire_closes_an_open_event_at_its_last_active_window():
    p = policy(merge_gap_s=0.5, refractory_s=1.0)
    det = EventDetector("d", "s", p)
    for seq, s in enumerate([0, 2, 2]):
        det.update(seq, s, seq * HOP, seq * HOP + 1.0, HOP)
    assert not det.clean
    (closed,) = det.expire()
    assert (closed.status, closed.onset_sequence, closed.offset_sequence) == ("closed", 1, 2)
    assert closed.offset_time == 2 * HOP + 1.0
    assert det.clean and det.expire() == []


@pytest.mark.parametrize("seed", range(6))
def test_unencoded_windows_count_exactly_like_a_sequence_gap(seed):
    """Issue 15: signal the device did not encode (its agent was down; the sequence numbers run
    on) is a gap. A detector told of k unencoded windows before a window gives the same events,
    and is clean at the same points, as one that sees k sequence numbers missing there."""
    rng = np.random.default_rng(seed)
    p = policy(min_duration_s=0.5, merge_gap_s=0.75, refractory_s=1.0)
    scores = rng.choice([0.1, 0.7, 1.5], size=300, p=[0.5, 0.2, 0.3])
    gaps = {int(i): int(rng.integers(1, 8)) for i in rng.choice(300, 25, replace=False)}
    by_number, by_report, plain = (EventDetector("dev", "stm", p) for _ in range(3))
    got_number, got_report, got_plain = [], [], []
    index_of, shift = {}, 0  # by_number's sequence number -> window index
    for i, score in enumerate(scores.tolist()):
        k = gaps.get(i, 0)
        shift += k
        index_of[i + shift] = i
        t = i * HOP
        got_number += by_number.update(i + shift, score, t, t + 1.0, HOP)
        got_report += by_report.update(i, score, t, t + 1.0, HOP, unencoded_windows=k)
        got_plain += plain.update(i, score, t, t + 1.0, HOP)
        assert by_report.clean == by_number.clean

    def rows(events, index):
        return [(e.status, index(e.onset_sequence), e.offset_sequence and index(e.offset_sequence))
                for e in events]  # fmt: skip

    expected = rows(got_number, index_of.__getitem__)
    assert rows(got_report, int) == expected
    assert rows(got_plain, int) != expected  # the gaps matter: ignoring them gives other events


def test_located_anomalies_set_onset_and_offset_times_not_the_decision():
    """The head says where in each window the anomaly lies: the event's times use it, while the
    deciding window's end (latency) and the sequences stay the window's."""
    det = EventDetector("dev", "stm", policy())
    out = []
    for seq, s in enumerate([0, 2, 2, 0]):
        start = seq * HOP
        out += det.update(seq, float(s), start, start + 1.0, HOP, 0, (start + 0.75, start + 1.0))
    opened, closed = out
    assert (opened.onset_time, opened.deciding_window_end) == (0.25 + 0.75, 0.25 + 1.0)
    assert (closed.onset_sequence, closed.offset_sequence) == (1, 2)
    assert closed.offset_time == 0.5 + 1.0 and closed.onset_time == 1.0
    plain, _ = run([0, 2, 2, 0], policy())
    assert plain == [("open", 1, None), ("closed", 1, 2)]
