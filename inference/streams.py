"""Stream tracking: per (device, stream) duplicates, gaps, restarts and event detectors.

Pure bookkeeping, no Kafka: the service hands it the decoded windows of a batch and gets back
which ones are fresh (to be scored) and, per scored window, the alert updates it causes. A
stream is remembered with the *partition* it arrived on, an opaque hashable the caller chooses
(the service uses :class:`kafka.structs.TopicPartition`), so a revoked partition's streams can
be forgotten together.

Per stream:

* **duplicates** - a window at or below the newest sequence seen that does not fill a known gap
  (e.g. re-sent by the device spool after a lost acknowledgement) is dropped before scoring;
* **gaps** - sequence numbers skipped below the newest one are remembered (at most
  ``dedup_windows`` back); a window filling one later is *late*: scored, counted, but not fed
  to the detector, which has moved on; gaps count as lost windows;
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
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from dropstream.inference.alerting import AlertEvent, AlertPolicy, EventDetector
from dropstream.inference.drift import DriftMonitor, DriftReference
from dropstream.inference.metrics import ServiceMetrics

log = logging.getLogger("dropstream.inference.service")

#: A stream's identity: (device id, stream id).
StreamKey = tuple[str, str]


class ScoredWindow(NamedTuple):
    """One scored window, in Python scalars, as fed to :meth:`StreamTracker.feed`."""

    key: StreamKey
    sequence: int
    score: float
    window_start: float  # LSL-clock time of the first sample, seconds
    window_end: float  # LSL-clock time of the last sample, seconds
    hop_s: float  # hop between windows, seconds
    top_class: int | None  # classifier: index of the most probable abnormal class
    wall_offset: float = 0.0  # the device's wall clock minus its LSL clock, seconds
    recording_offset: float = float("nan")  # recording time minus LSL time (NaN: live)
    drift: float = float("nan")  # drift statistic (NaN: no drift reference)


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

    fresh: np.ndarray  # bool (n,): windows to score (not duplicates)
    restarted: list[tuple[Hashable, StreamKey]]  # (partition, stream) started afresh
    updates: list[StreamUpdate]  # closing updates of the restarted streams' open events


@dataclass
class _Stream:
    """Per (device, stream) state."""

    detector: EventDetector
    partition: Hashable
    last_seen: float = 0.0  # monotonic time of the stream's last window fed
    highest: int = -1  # last sequence fed to the detector
    seen_max: int = -1  # highest sequence seen
    missing: set[int] = field(default_factory=set)  # gaps below seen_max not yet filled
    labels: dict[int, str] = field(default_factory=dict)  # open event onset -> its label
    wall_offset: float = 0.0  # of the newest window fed (see ScoredWindow)
    recording_offset: float = float("nan")
    drift: DriftMonitor | None = None
    drift_onset: tuple[int, float] = (0, 0.0)  # (sequence, LSL time) of the drift's start
    last_end: float = 0.0  # LSL time of the newest window's last sample


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
    drift : DriftReference, optional
        The bundle's training statistics; ``None`` disables the drift guard.
    """

    def __init__(
        self,
        policy: AlertPolicy,
        dedup_windows: int,
        metrics: ServiceMetrics,
        class_names: Sequence[str] | None = None,
        drift: DriftReference | None = None,
    ) -> None:
        self.drift = drift
        self.policy = policy
        self.dedup_windows = int(dedup_windows)
        self.metrics = metrics
        self.class_names = list(class_names) if class_names is not None else None
        self.streams: dict[StreamKey, _Stream] = {}

    def admit(
        self,
        keys: Sequence[StreamKey],
        sequences: Sequence[int],
        partition_of: Callable[[int], Hashable],
    ) -> Admission:
        """Mark duplicate windows (already seen (device, stream, sequence)); note late ones.

        Parameters
        ----------
        keys, sequences : sequence
            Stream and sequence number of each window, in consumption order.
        partition_of : callable
            ``partition_of(i)``: the partition window ``i`` arrived on (asked only for a
            stream seen for the first time).
        """
        fresh = np.ones(len(keys), bool)
        limit = self.dedup_windows
        streams = self.streams
        restarted: list[tuple[Hashable, StreamKey]] = []
        updates: list[StreamUpdate] = []
        n_dup = n_late = 0
        for i, (key, seq) in enumerate(zip(keys, sequences, strict=True)):
            st = streams.get(key)
            if st is None:
                st = streams[key] = _Stream(
                    EventDetector(key[0], key[1], self.policy), partition_of(i)
                )
                st.drift = DriftMonitor(self.drift) if self.drift is not None else None
            if 0 <= seq < st.seen_max - limit:
                # far behind everything seen: the device restarted its sequence numbers (e.g. a
                # wiped spool) or the newest one was bogus; start the stream afresh
                updates.extend(self._restart(key, st, seq))
                restarted.append((st.partition, key))
            elif seq > st.seen_max:
                if st.seen_max >= 0 and seq > st.seen_max + 1:
                    st.missing.update(range(max(st.seen_max + 1, seq - limit), seq))
                    if len(st.missing) > limit:
                        st.missing = {q for q in st.missing if q > seq - limit}
                st.seen_max = seq
            elif seq in st.missing:
                st.missing.discard(seq)
                n_late += 1
            else:
                fresh[i] = False
                n_dup += 1
        if n_dup:
            self.metrics.duplicate(n_dup)
        if n_late:
            self.metrics.late_window(n_late)
        return Admission(fresh, restarted, updates)

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
        st.missing.clear()
        return updates

    def feed(self, window: ScoredWindow, now: float, out: list[StreamUpdate]) -> bool:
        """Feed one scored, admitted window to its stream's detector (batch order).

        Parameters
        ----------
        window : ScoredWindow
        now : float
            Monotonic time, seconds (when the stream was last seen).
        out : list
            Receives the alert updates the window causes.

        Returns
        -------
        bool
            Whether the stream is *clean* afterwards (replaying from the next window with a
            fresh detector gives the same alerts).
        """
        st = self.streams[window.key]
        det = st.detector
        seq = window.sequence
        if seq <= st.highest:
            return det.clean  # a late window: scored, but the detector has moved past it
        if st.highest >= 0 and seq > st.highest + 1:
            self.metrics.lost_windows(seq - st.highest - 1)
        st.highest = seq
        st.last_seen = now
        st.wall_offset, st.recording_offset = window.wall_offset, window.recording_offset
        st.last_end = window.window_end
        if st.drift is not None and not math.isnan(window.drift):
            if self._watch_drift(window, st, out):
                # drifting: the anomaly scores mean nothing; like an open event, the drift holds
                # the stream dirty until it ends or the stream goes silent (then it is closed)
                return False
            det = st.detector
        new = det.update(seq, window.score, window.window_start, window.window_end, window.hop_s)
        top = window.top_class
        for ev in new:
            label = self.policy.label
            if top is not None and self.class_names is not None:
                if ev.status == "open":
                    label = st.labels[ev.onset_sequence] = self.class_names[top]
                else:
                    label = st.labels.pop(ev.onset_sequence, self.class_names[top])
            out.append(StreamUpdate(ev, label, st.wall_offset, st.recording_offset))
        return det.clean

    def drift_statistic(self, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Drift statistic of windows ``(N, K)`` (NaN without a drift reference)."""
        if self.drift is None:
            return np.full(len(indices), np.nan)
        return self.drift.statistic(indices, values)

    def _watch_drift(self, window: ScoredWindow, st: _Stream, out: list[StreamUpdate]) -> bool:
        """Feed the drift monitor; publish drift start/end; True while the stream drifts."""
        mon = st.drift
        assert mon is not None
        change = mon.update(window.drift)
        key = window.key
        level = mon.reference.level
        if change == "start":
            log.warning(
                "stream %s/%s does not look like the training data (drift statistic %.3g, "
                "level %.3g): anomaly alerts paused until it does - check the sensor, its "
                "placement and units, or train a model for this device",
                *key,
                mon.median,
                level,
            )
            out.extend(self._expire_detector(st))
            st.drift_onset = (window.sequence, window.window_start)
            ev = AlertEvent(
                "open", *key, window.sequence, window.window_start, None, None,
                mon.median, level, window.window_end,
            )  # fmt: skip
            out.append(self._drift_update(ev, st))
        elif change == "end":
            out.append(self._drift_closed(key, st, window.sequence, window.window_end))
            st.detector = EventDetector(key[0], key[1], self.policy)
        return mon.active

    def _drift_closed(self, key: StreamKey, st: _Stream, seq: int, end: float) -> StreamUpdate:
        mon = st.drift
        assert mon is not None
        onset_seq, onset_time = st.drift_onset
        ev = AlertEvent(
            "closed", *key, onset_seq, onset_time, seq, end, mon.median,
            mon.reference.level, end,
        )  # fmt: skip
        return self._drift_update(ev, st)

    def _drift_update(self, ev: AlertEvent, st: _Stream) -> StreamUpdate:
        return StreamUpdate(ev, "drift", st.wall_offset, st.recording_offset, "drift")

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
        return [
            StreamUpdate(
                ev,
                st.labels.pop(ev.onset_sequence, self.policy.label),
                st.wall_offset,
                st.recording_offset,
            )
            for ev in st.detector.expire()
        ]

    def forget(self, partitions: Iterable[Hashable]) -> None:
        """Forget every stream of ``partitions`` (revoked: their next owner replays them)."""
        gone = set(partitions)
        for key in [k for k, s in self.streams.items() if s.partition in gone]:
            del self.streams[key]
