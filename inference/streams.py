"""Stream tracking: per (device, stream) duplicates, gaps, restarts and event detectors.

Pure bookkeeping, no Kafka: the service hands it the decoded windows of a batch and gets back
which ones are fresh (to be scored) and, per scored window, the alert updates it causes. A
stream is remembered with the *partition* it arrived on, an opaque hashable the caller chooses
(the service uses :class:`kafka.structs.TopicPartition`), so a revoked partition's streams can
be forgotten together.

Per stream:

* **duplicates** - a window at or below the newest sequence seen that does not fill a known gap
  (e.g. re-sent by the device spool after a lost acknowledgement) is dropped before scoring;
* **gaps** - sequence numbers skipped below the newest one are remembered as ranges (at most
  ``dedup_windows`` back, at most ``max_gaps`` ranges per stream, ``max_gaps_total`` in all: the
  oldest range goes first); a window filling one later is *late*: scored, counted, but not fed
  to the detector, which has moved on; gaps count as lost windows;
* **unencoded signal** - a window whose device reports ``unencoded_s`` seconds of signal before
  it that it never encoded (its agent was down, the stream broke: the sequence numbers run on)
  is a gap too: ``ceil(unencoded_s / hop)`` lost windows, counted and fed to the detector exactly
  like a sequence gap of that many windows (a candidate is dropped; an open event whose merge
  gap the missing windows use up is closed at its last active window);
* **implausible jumps** - a window 2..``dedup_windows`` ahead of the newest must have a
  wall-clock start that many hops later (``jump_tolerance_s`` of slack); otherwise it is refused
  without touching the stream, so a forged or bogus sequence number cannot make the genuine
  windows after it late or duplicate (a jump beyond ``dedup_windows`` makes the next genuine
  window restart the stream, below);
* **restarts** - a window more than ``dedup_windows`` behind the newest one means the device
  restarted its numbering (a wiped spool) or the newest number was bogus: the stream's open
  event is closed and its state starts afresh;
* **detector** - :class:`dropstream.inference.alerting.EventDetector` turns scores into alert
  updates; for a classifier the label of an event's opening is kept until it closes;
* **drift** - with a bundle's :class:`~dropstream.inference.drift.DriftReference`, a
  :class:`~dropstream.inference.drift.DriftMonitor` watches each window's drift statistic; when
  the stream no longer looks like the training data it closes the open anomaly event, publishes
  one ``kind="drift"`` event (label ``"drift"``) and stops feeding the anomaly detector until the
  drift ends (then a fresh detector starts).

Memory is bounded: :meth:`StreamTracker.forget_idle` drops clean streams silent for a while and,
above ``max_streams``, the least recently seen clean ones. A stream forgotten that way keeps its
high-water mark (one integer, at most ``max_streams`` of them, the oldest go first): a stream
that comes back after a long silence (a long outage) still has one (:meth:`high_water`).

Replay protection across restarts: :meth:`StreamTracker.marks` renders a partition's per-stream
high-water marks as text the service saves with its committed offsets (``state_dir``);
:meth:`StreamTracker.restore` seeds them back when the partition is assigned again, so windows
at or below a mark are duplicates even for a fresh process.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import NamedTuple

import numpy as np

from dropstream.inference.alerting import AlertEvent, AlertPolicy, EventDetector
from dropstream.inference.batching import WindowGroup
from dropstream.inference.drift import DRIFT_KIND, DriftMonitor, DriftReference
from dropstream.inference.metrics import ServiceMetrics

log = logging.getLogger("dropstream.inference.service")

#: A stream's identity: (device id, stream id).
StreamKey = tuple[str, str]


class ScoredBatch(NamedTuple):
    """The scored windows of a batch, column by column in Python scalars, in batch order
    (columns rather than one object per window: nothing to build per window on the hot path)."""

    rows: list[int]  # position of each window in the batch
    keys: list[StreamKey]
    sequences: list[int]
    scores: list[float]
    starts: list[float]  # LSL-clock time of each window's first sample, seconds
    ends: list[float]  # LSL-clock time of each window's last sample, seconds
    hops: list[float]  # hop between windows, seconds
    top_classes: list[int | None]  # classifier: index of the most probable abnormal class
    wall_offsets: list[float] | None = None  # device wall clock minus its LSL clock, seconds
    recording_offsets: list[float] | None = None  # recording time minus LSL time (NaN: live)
    drifts: list[float] | None = None  # drift statistic of each window (NaN: no reference)
    unencoded: list[float] | None = None  # signal not encoded before each window, seconds
    located: list[tuple[float, float] | None] | None = None  # anomaly within each window (LSL)


class Fed(NamedTuple):
    """Result of :meth:`StreamTracker.feed`."""

    clean: list[bool]  # per window: the stream is clean after it
    failed: list[tuple[int, str]]  # (window, error) the detector could not take


class StreamUpdate(NamedTuple):
    """An alert update of a stream, with the label of its event and the stream's clock offsets
    (to render LSL times as wall-clock and recording times)."""

    event: AlertEvent
    label: str
    wall_offset: float = 0.0
    recording_offset: float = float("nan")
    kind: str | None = None  # "drift" for drift events; None: the policy's kind


class Admission(NamedTuple):
    """Result of :meth:`StreamTracker.admit` for a batch of windows."""

    fresh: np.ndarray  # bool (n,): windows to score (not duplicates, not implausible)
    restarted: list[tuple[Hashable, StreamKey]]  # (partition, stream) started afresh
    updates: list[StreamUpdate]  # closing updates of the restarted streams' open events
    implausible: list[tuple[int, str]]  # (window, reason) refused: sequence jump vs wall clock


@dataclass
class _Stream:
    """Per (device, stream) state."""

    detector: EventDetector
    partition: Hashable
    last_seen: float = 0.0  # monotonic time of the stream's last window
    highest: int = -1  # last sequence fed to the detector
    seen_max: int = -1  # highest sequence seen
    seen_wall: float = 0.0  # wall-clock start of the window with sequence seen_max
    missing: list[list[int]] = field(
        default_factory=list
    )  # unfilled gaps [start, end), oldest first
    labels: dict[int, str] = field(default_factory=dict)  # open event onset -> its label
    wall_offset: float = 0.0  # of the newest window fed (see ScoredBatch)
    recording_offset: float = float("nan")
    drift: DriftMonitor | None = None
    drift_onset: tuple[int, float] = (0, 0.0)  # (sequence, LSL time) of the drift's start
    last_end: float = 0.0  # LSL time of the newest window's last sample

    @property
    def clean(self) -> bool:
        """No event, candidate or drift in progress (see :attr:`EventDetector.clean`)."""
        return self.detector.clean and not (self.drift is not None and self.drift.active)


class StreamTracker:
    """Duplicates, gaps, restarts and event detectors of every stream (see the module docs).

    Parameters
    ----------
    policy : AlertPolicy
        The policy of every stream's detector.
    dedup_windows : int
        How far back (in windows) missing sequence numbers are remembered.
    metrics : ServiceMetrics
        Counts duplicates, late and lost windows and restarts.
    class_names : sequence of str, optional
        A classifier's classes: an event's label is its top abnormal class at opening.
    max_gaps, max_gaps_total : int
        Most gap ranges remembered per stream and over all streams.
    jump_tolerance_s : float or None
        Slack of the sequence-jump check, seconds (``None``: no check).
    drift : DriftReference, optional
        The bundle's training statistics; ``None`` disables the drift guard.
    """

    def __init__(
        self,
        policy: AlertPolicy,
        dedup_windows: int,
        metrics: ServiceMetrics,
        class_names: Sequence[str] | None = None,
        max_gaps: int = 64,
        max_gaps_total: int = 100_000,
        jump_tolerance_s: float | None = 2.0,
        drift: DriftReference | None = None,
    ) -> None:
        self.drift = drift
        self.policy = policy
        self.dedup_windows = int(dedup_windows)
        self.metrics = metrics
        self.class_names = list(class_names) if class_names is not None else None
        self.max_gaps = int(max_gaps)
        self.max_gaps_total = int(max_gaps_total)
        self.jump_tolerance_s = jump_tolerance_s
        self.streams: dict[StreamKey, _Stream] = {}
        self.n_gaps = 0  # gap ranges over all streams
        # high-water marks of streams forgotten while idle: stream -> (partition, newest sequence)
        self.retired: dict[StreamKey, tuple[Hashable, int]] = {}

    def high_water(self, key: StreamKey) -> int | None:
        """The newest sequence number seen of stream ``key`` (restored from saved marks, or kept
        after the stream was forgotten while idle); ``None``: none known."""
        st = self.streams.get(key)
        if st is not None:
            return st.seen_max if st.seen_max >= 0 else None
        retired = self.retired.get(key)
        return None if retired is None else retired[1]

    def admit(
        self,
        keys: Sequence[StreamKey],
        sequences: Sequence[int],
        partition_of: Callable[[int], Hashable],
        walls: Sequence[float] | None = None,
        hops: Sequence[float] | None = None,
        now: float = 0.0,
    ) -> Admission:
        """Mark duplicate windows (already seen (device, stream, sequence)); note late ones.

        Parameters
        ----------
        keys, sequences : sequence
            Stream and sequence number of each window, in consumption order.
        partition_of : callable
            ``partition_of(i)``: the partition window ``i`` arrived on (asked only for a
            stream seen for the first time).
        walls, hops : sequence of float, optional
            Wall-clock start (Unix seconds) and hop (seconds) of each window, for the
            sequence-jump check (skipped without them).
        now : float
            Monotonic time, seconds (a new stream's first sighting).
        """
        n = len(keys)
        fresh = np.ones(n, bool)
        limit = self.dedup_windows
        streams = self.streams
        restarted: list[tuple[Hashable, StreamKey]] = []
        updates: list[StreamUpdate] = []
        implausible: list[tuple[int, str]] = []
        tol = self.jump_tolerance_s if walls is not None and hops is not None else None
        n_dup = n_late = 0
        for i, (key, seq) in enumerate(zip(keys, sequences, strict=True)):
            st = streams.get(key)
            if st is None:
                st = streams[key] = _Stream(
                    EventDetector(key[0], key[1], self.policy), partition_of(i), last_seen=now
                )
                st.drift = DriftMonitor(self.drift) if self.drift is not None else None
                if self.retired:
                    retired = self.retired.pop(key, None)
                    if retired is not None:  # back after a long silence: its mark still holds
                        st.seen_max = retired[1]
            seen = st.seen_max
            if 0 <= seq < seen - limit:
                # far behind everything seen: the device restarted its sequence numbers (e.g. a
                # wiped spool) or the newest one was bogus; start the stream afresh
                updates.extend(self._restart(key, st, seq))
                restarted.append((st.partition, key))
                if walls is not None:
                    st.seen_wall = walls[i]
            elif seq > seen:
                if seen >= 0 and seq > seen + 1:
                    if tol is not None and seq - seen <= limit:
                        # a jump within the dedup window would make the genuine windows it
                        # skipped late: it must agree with the wall clock (a jump beyond it
                        # restarts the stream at the next genuine window instead, see above)
                        span = walls[i] - st.seen_wall  # type: ignore[index]
                        if (seq - seen - 1) * hops[i] > span + tol:  # type: ignore[index]
                            fresh[i] = False
                            implausible.append(
                                (
                                    i,
                                    f"sequence {seq} is {seq - seen} windows ahead of {seen} but "
                                    f"its wall-clock start is only {span:.3f} s later",
                                )
                            )
                            continue
                    self._add_gap(st, max(seen + 1, seq - limit), seq)
                st.seen_max = seq
                if walls is not None:
                    st.seen_wall = walls[i]
                if st.missing and st.missing[0][0] < seq - limit:
                    self._prune(st, seq - limit - 1)  # below seq - limit is a restart anyway
            elif self._fill(st, seq):
                n_late += 1
            else:
                fresh[i] = False
                n_dup += 1
        if n_dup:
            self.metrics.duplicate(n_dup)
        if n_late:
            self.metrics.late_window(n_late)
        return Admission(fresh, restarted, updates, implausible)

    # -- gap ranges --------------------------------------------------------------------------
    def _add_gap(self, st: _Stream, start: int, end: int) -> None:
        if len(st.missing) >= self.max_gaps or self.n_gaps >= self.max_gaps_total:
            if not st.missing:
                self.metrics.gaps_dropped(end - start)
                return  # the total budget is spent: this gap is not remembered
            lo, hi = st.missing.pop(0)
            self.n_gaps -= 1
            self.metrics.gaps_dropped(hi - lo)
        st.missing.append([start, end])
        self.n_gaps += 1

    def _prune(self, st: _Stream, floor: int) -> None:
        """Forget missing numbers at or below ``floor`` (too far back to matter)."""
        missing = st.missing
        while missing and missing[0][1] <= floor + 1:
            missing.pop(0)
            self.n_gaps -= 1
        if missing and missing[0][0] <= floor:
            missing[0][0] = floor + 1

    def _fill(self, st: _Stream, seq: int) -> bool:
        """Remove ``seq`` from the stream's gaps; whether it was missing."""
        for j, gap in enumerate(st.missing):
            lo, hi = gap
            if lo <= seq < hi:
                if hi - lo == 1:
                    del st.missing[j]
                    self.n_gaps -= 1
                elif seq == lo:
                    gap[0] = seq + 1
                elif seq == hi - 1:
                    gap[1] = seq
                else:  # split: the budget may go one over until the next gap is added
                    gap[1] = seq
                    st.missing.insert(j + 1, [seq + 1, hi])
                    self.n_gaps += 1
                return True
        return False

    def _restart(self, key: StreamKey, st: _Stream, seq: int) -> list[StreamUpdate]:
        log.warning(
            "stream %s/%s went back from sequence %d to %d: treating it as restarted",
            *key,
            st.seen_max,
            seq,
        )
        self.metrics.restart()
        updates = self._expire(st)
        st.detector = EventDetector(key[0], key[1], self.policy)
        st.drift = DriftMonitor(self.drift) if self.drift is not None else None
        st.highest, st.seen_max = -1, seq
        self.n_gaps -= len(st.missing)
        st.missing.clear()
        return updates

    def feed(self, batch: ScoredBatch, now: float, out: list[StreamUpdate]) -> Fed:
        """Feed scored, admitted windows to their streams' detectors, in batch order.

        Parameters
        ----------
        batch : ScoredBatch
        now : float
            Monotonic time, seconds (when the streams were last seen).
        out : list
            Receives the alert updates the windows cause.

        Returns
        -------
        Fed
            Per window, whether its stream is *clean* afterwards (replaying from the next
            window with a fresh detector gives the same alerts); windows the detector failed on.
        """
        streams, names, label0 = self.streams, self.class_names, self.policy.label
        clean: list[bool] = []
        failed: list[tuple[int, str]] = []
        n = len(batch.rows)
        walls = batch.wall_offsets or [0.0] * n
        recs = batch.recording_offsets or [math.nan] * n
        drifts = batch.drifts or [math.nan] * n
        unencoded = batch.unencoded or [0.0] * n
        located = batch.located or [None] * n
        columns = (*batch[1:8], walls, recs, drifts, unencoded, located)
        for i, (key, seq, score, start, end, hop, top, wall, rec, drift, gap_s, where) in enumerate(
            zip(*columns, strict=True)
        ):
            st = streams[key]
            det = st.detector
            if seq <= st.highest:
                clean.append(st.clean)  # late: scored, but the detector has moved past it
                continue
            lost = seq - st.highest - 1 if st.highest >= 0 else 0
            skipped = self._unencoded_windows(key, seq, gap_s, hop) if gap_s > 0.0 else 0
            if lost + skipped:
                self.metrics.lost_windows(lost + skipped)
            st.highest = seq
            st.last_seen = now
            st.wall_offset, st.recording_offset, st.last_end = wall, rec, end
            if st.drift is not None and not math.isnan(drift):
                if self._watch_drift(key, st, seq, start, end, drift, out):
                    # drifting: the anomaly scores mean nothing; like an open event, the drift
                    # holds the stream dirty until it ends or the stream goes silent
                    clean.append(False)
                    continue
                det = st.detector
            try:
                new = det.update(seq, score, start, end, hop, skipped, where)
            except Exception as exc:  # noqa: BLE001 - one window must not stop the others
                log.exception("the event detector of %s/%s failed", *key)
                failed.append((i, f"event detector failed: {exc!r}"))
                new = []
            for ev in new:
                label = label0
                if top is not None and names is not None:
                    if ev.status == "open":
                        label = st.labels[ev.onset_sequence] = names[top]
                    else:
                        label = st.labels.pop(ev.onset_sequence, names[top])
                out.append(StreamUpdate(ev, label, wall, rec))
            clean.append(st.clean)
        return Fed(clean, failed)

    def _unencoded_windows(self, key: StreamKey, seq: int, gap_s: float, hop_s: float) -> int:
        """The windows that would have been cut from ``gap_s`` seconds of unencoded signal
        (the windows due in it: a fraction of a hop still displaced one)."""
        n = max(1, math.ceil(gap_s / max(hop_s, 1e-9) - 1e-6))
        self.metrics.unencoded(gap_s)
        log.warning(
            "stream %s/%s: its device did not encode %.3f s of signal before window %d (agent "
            "down or stream broken): a gap of %d windows",
            *key,
            gap_s,
            seq,
            n,
        )
        return n

    def drift_statistic(self, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Drift statistic of windows ``(N, K)`` (NaN without a drift reference)."""
        if self.drift is None:
            return np.full(len(indices), np.nan)
        return self.drift.statistic(indices, values)

    def batch_of(
        self,
        group: WindowGroup,
        scores: np.ndarray,
        classes: np.ndarray | None,
        span: np.ndarray | None = None,
    ) -> ScoredBatch:
        """The :class:`ScoredBatch` of a decoded group and its scores (and top classes, and
        where in each window the head located the anomaly: ``span`` ``(N, 2)`` fractions of the
        window, :meth:`dropstream.inference.energy.EnergyScorer.scores_and_spans`), with the clock
        offsets and drift statistics; python scalars converted once per batch."""
        located = None
        if span is not None:
            length = group.window_end_lsl - group.window_start_lsl
            at = group.window_start_lsl[:, None] + span * length[:, None]
            located = list(map(tuple, at.tolist()))
        return ScoredBatch(
            group.rows.tolist(),
            list(zip(group.device_id, group.stream_id, strict=True)),
            group.sequence.tolist(),
            scores.tolist(),
            group.window_start_lsl.tolist(),
            group.window_end_lsl.tolist(),
            group.hop_s.tolist(),
            [None] * len(group) if classes is None else classes.tolist(),
            (group.wall_time - group.window_start_lsl).tolist(),
            group.recording_offset.tolist(),
            self.drift_statistic(group.indices, group.values).tolist(),
            group.unencoded_s.tolist(),
            located,
        )

    def _watch_drift(
        self,
        key: StreamKey,
        st: _Stream,
        seq: int,
        start: float,
        end: float,
        statistic: float,
        out: list[StreamUpdate],
    ) -> bool:
        """Feed the drift monitor; publish drift start/end; True while the stream drifts."""
        mon = st.drift
        assert mon is not None
        change = mon.update(statistic)
        level = mon.reference.level
        if change == "start":
            log.warning(
                "stream %s/%s does not look like the training data (drift statistic %.3g, "
                "level %.3g): anomaly alerts paused until it does - check the sensor, its "
                "placement and units, or train a model for this device",
                *key,
                mon.value,
                level,
            )
            out.extend(self._expire_detector(st))
            st.drift_onset = (seq, start)
            ev = AlertEvent("open", *key, seq, start, None, None, mon.value, level, end)
            out.append(self._drift_update(ev, st))
        elif change == "end":
            out.append(self._drift_closed(key, st, seq, end))
            st.detector = EventDetector(key[0], key[1], self.policy)
        return mon.active

    def _drift_closed(self, key: StreamKey, st: _Stream, seq: int, end: float) -> StreamUpdate:
        mon = st.drift
        assert mon is not None
        onset_seq, onset_time = st.drift_onset
        level = mon.reference.level
        ev = AlertEvent("closed", *key, onset_seq, onset_time, seq, end, mon.value, level, end)
        return self._drift_update(ev, st)

    def _drift_update(self, ev: AlertEvent, st: _Stream) -> StreamUpdate:
        return StreamUpdate(ev, DRIFT_KIND, st.wall_offset, st.recording_offset, DRIFT_KIND)

    def silent(self, key: StreamKey, now: float, after_s: float) -> bool:
        """Whether stream ``key`` is known and sent nothing for ``after_s`` seconds."""
        st = self.streams.get(key)
        return st is not None and now - st.last_seen >= after_s

    def expire(self, key: StreamKey) -> list[StreamUpdate]:
        """Expire stream ``key``'s detector (it went silent): its closing updates."""
        return self._expire(self.streams[key])

    def _expire(self, st: _Stream) -> list[StreamUpdate]:
        out = self._expire_detector(st)
        if st.drift is not None and st.drift.active:  # a silent drifting stream: close it
            key = (st.detector.device_id, st.detector.stream_id)
            out.append(self._drift_closed(key, st, max(st.highest, 0), st.last_end))
            st.drift = DriftMonitor(st.drift.reference)
        return out

    def _expire_detector(self, st: _Stream) -> list[StreamUpdate]:
        label = self.policy.label
        return [
            StreamUpdate(ev, st.labels.pop(ev.onset_sequence, label), st.wall_offset,
                         st.recording_offset)
            for ev in st.detector.expire()
        ]  # fmt: skip

    def forget(self, partitions: Iterable[Hashable]) -> None:
        """Forget every stream of ``partitions`` (revoked: their next owner replays them)."""
        gone = set(partitions)
        for key in [k for k, s in self.streams.items() if s.partition in gone]:
            self._drop(key)
        for key in [k for k, (p, _) in self.retired.items() if p in gone]:
            del self.retired[key]

    def _drop(self, key: StreamKey) -> _Stream:
        st = self.streams.pop(key)
        self.n_gaps -= len(st.missing)
        return st

    def _retire(self, key: StreamKey) -> None:
        """Forget stream ``key`` but keep its high-water mark."""
        st = self._drop(key)
        if st.seen_max >= 0:
            self.retired.pop(key, None)
            self.retired[key] = (st.partition, st.seen_max)

    def forget_idle(self, now: float, idle_s: float, max_streams: int) -> int:
        """Forget clean streams silent for ``idle_s`` seconds and, while more than
        ``max_streams`` remain, the least recently seen clean ones; returns how many.

        A forgotten stream that comes back starts afresh with a fresh detector, but its
        high-water mark is kept (at most ``max_streams`` marks, the oldest go first): windows at
        or below it are still duplicates, and :meth:`high_water` still knows it.
        """
        streams = self.streams
        idle = [k for k, st in streams.items() if now - st.last_seen >= idle_s and st.clean]
        for key in idle:
            self._retire(key)
        n = len(idle)
        excess = len(streams) - max_streams
        if excess > 0:
            clean = sorted((st.last_seen, k) for k, st in streams.items() if st.clean)
            # down to 90 % of the limit, so that a full tracker does not sort on every batch
            excess += max_streams // 10
            for _, key in clean[:excess]:
                self._retire(key)
            n += min(excess, len(clean))
        for key in list(islice(self.retired, max(0, len(self.retired) - max_streams))):
            del self.retired[key]  # the oldest marks (insertion order)
        if n:
            self.metrics.forgot_streams(n)
        self.metrics.set_tracked(len(streams), self.n_gaps)
        return n

    # -- high-water marks across restarts ----------------------------------------------------
    def marks(self, partitions: Iterable[Hashable], max_bytes: int) -> dict[Hashable, str]:
        """Per partition, ``{"device\\x1fstream": newest sequence}`` of its streams as JSON of
        at most ``max_bytes`` (the most recently seen streams first when they do not all fit)."""
        wanted = set(partitions)
        by_partition: dict[Hashable, list[tuple[float, str, int]]] = {p: [] for p in wanted}
        for (dev, stm), st in self.streams.items():
            if st.partition in wanted and st.seen_max >= 0:
                by_partition[st.partition].append((st.last_seen, f"{dev}\x1f{stm}", st.seen_max))
        for (dev, stm), (partition, seq) in self.retired.items():  # after every live stream
            if partition in wanted:
                by_partition[partition].append((-math.inf, f"{dev}\x1f{stm}", seq))
        out = {}
        for p, rows in by_partition.items():
            rows.sort(reverse=True)
            marks: dict[str, int] = {}
            size = 2
            for _, name, seq in rows:
                size += len(json.dumps(name)) + len(str(seq)) + 2
                if size > max_bytes:
                    break
                marks[name] = seq
            out[p] = json.dumps(marks, separators=(",", ":"))
        return out

    def restore(self, partition: Hashable, text: str, now: float = 0.0) -> int:
        """Seed the streams of ``partition`` from :meth:`marks` text; returns how many (bad
        text, e.g. another tool's metadata, seeds nothing)."""
        try:
            marks = json.loads(text) if text else {}
            items = [(name.split("\x1f", 1), int(seq)) for name, seq in marks.items()]
        except (ValueError, TypeError, AttributeError):
            return 0
        n = 0
        for key_parts, seq in items:
            if len(key_parts) != 2 or seq < 0:
                continue
            key = (key_parts[0], key_parts[1])
            st = self.streams.get(key)
            if st is None:
                st = self.streams[key] = _Stream(
                    EventDetector(key[0], key[1], self.policy), partition, last_seen=now
                )
                st.seen_max = self.retired.pop(key, (None, -1))[1]
            if seq > st.seen_max:
                st.seen_max = seq
                n += 1
        return n
