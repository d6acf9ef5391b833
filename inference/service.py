"""The inference service behind ``dropstream serve``.

One :class:`InferenceService` is one member of a Kafka consumer group on the activations topic.
Several processes with the same group id share the partitions; when one dies the group
rebalances and another takes its partitions over from their last committed offsets.

Loop::

    poll -> micro-batch (until max_batch windows or max_wait_ms after the first one)
         -> decode the whole batch at once (dropstream.inference.batching), bad input ->
            dead letters
         -> per stream: drop duplicate windows, note gaps and late windows
         -> score all new windows in one forward pass (CUDA when present, else CPU)
         -> event detectors (dropstream.inference.alerting) -> alert updates
         -> produce alerts and dead letters, flush (acks=all)        # first
         -> commit offsets up to the last *clean* point per partition  # after

Delivery is at-least-once and alerts are never lost: offsets are committed only after the
alerts those windows caused are acknowledged by the broker, and only up to a point where every
stream of the partition is *clean* (no candidate, open event, merge gap or refractory period in
progress). A process that replaces a dead one replays from that point with fresh detectors and
therefore produces the same alerts under the same deterministic ids (duplicates, if any, repeat
an id already seen; consumers deduplicate on ``alert_id`` + ``status``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pylsl
import torch
from kafka import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from dropstream.broker.alert_message import AlertMessage, make_alert_id
from dropstream.broker.clients import KafkaClientError, make_consumer, make_producer
from dropstream.broker.config import ClientConfig
from dropstream.errors import DropstreamError
from dropstream.inference.alerting import AlertEvent, AlertPolicy, EventDetector
from dropstream.inference.batching import BatchDecoder, WindowGroup
from dropstream.inference.head import ServerModel
from dropstream.inference.metrics import ServiceMetrics
from dropstream.inference.torch_device import torch_device as select_torch_device

log = logging.getLogger("dropstream.inference.service")

REASON_HEADER = "dropstream.reason"
SOURCE_HEADER = "dropstream.source-topic"


class ServiceError(DropstreamError):
    """The service cannot start or lost its connection to Kafka for good."""


@dataclass(frozen=True)
class ServiceSettings:
    """Batching, device and alert settings of one service process.

    Attributes
    ----------
    max_batch : int
        Most windows scored in one forward pass.
    max_wait_ms : float
        Longest a window waits for its batch to fill, milliseconds (the latency cap).
    device : str
        ``"auto"`` (CUDA when present, else CPU), ``"cpu"`` or ``"cuda"``.
    threshold_level, hysteresis_level : float or None
        Calibration quantile levels for the high and low thresholds of a novelty model
        (``None``: the bundle's stored threshold; low = high).
    class_threshold : float
        For a classifier: alert when ``1 - P(normal)`` reaches this.
    min_duration_s, merge_gap_s, refractory_s : float
        Event timing (see :class:`dropstream.inference.alerting.AlertPolicy`).
    adapt_windows : int
        Per-device threshold adaptation from its first windows (0: off).
    dedup_windows : int
        How far back (in windows) a stream's missing sequence numbers are remembered: a window
        that fills such a gap later is *late* (scored); anything else at or below the newest
        sequence seen is a duplicate and dropped. Memory per stream is O(open gaps).
    stale_after_s : float
        A stream with an event (or candidate, merge gap, refractory period) in progress that
        sends nothing for this long (wall clock) is expired: its open event is closed at its
        last active window, and its partition can commit past it again.
    log_interval_s : float
        Seconds between metric log lines.
    torch_threads : int or None
        Sets torch's intra-op CPU threads for the whole process (``None``: leave torch's
        setting alone, right for a library call). ``dropstream serve`` uses 1: it keeps torch's
        OpenMP workers from spinning on the cores the Kafka client threads need; on the 2-core
        dev box that cut the p99 alert latency with 100 devices from ~190 ms to ~40 ms
        (docs/bench/inference.md).
    """

    max_batch: int = 1024
    max_wait_ms: float = 5.0
    device: str = "auto"
    threshold_level: float | None = None
    hysteresis_level: float | None = 0.95
    class_threshold: float = 0.5
    min_duration_s: float = 0.5
    merge_gap_s: float = 1.0
    refractory_s: float = 2.0
    adapt_windows: int = 0
    adapt_level: float = 0.99
    dedup_windows: int = 4096
    stale_after_s: float = 30.0
    log_interval_s: float = 10.0
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_wait_ms < 0:
            raise ServiceError("max_batch must be >= 1 and max_wait_ms >= 0")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ServiceError(f"device must be auto, cpu or cuda, not {self.device!r}")


def torch_device(name: str) -> torch.device:
    """The torch device for ``"auto"``, ``"cpu"`` or ``"cuda"``; :class:`ServiceError` if absent."""
    return select_torch_device(name, ServiceError)


@dataclass
class _Stream:
    """Per (device, stream) state."""

    detector: EventDetector
    partition: TopicPartition
    last_seen: float = 0.0  # monotonic time of the stream's last window
    highest: int = -1  # last sequence fed to the detector
    seen_max: int = -1  # highest sequence seen
    missing: set[int] = field(default_factory=set)  # gaps below seen_max not yet filled


class Scorer:
    """The bundle's head on a torch device: dense activations ``(N, m)`` -> scores ``(N,)``."""

    def __init__(self, model: ServerModel, device: torch.device) -> None:
        self.model = model
        self.device = device
        self.head = model.head.to(device).eval()
        self.kind = model.kind
        classes = list(model.device.classes)
        self.classes = classes
        if self.kind == "classifier":
            if "normal" not in classes:
                raise ServiceError(
                    f"classifier bundle {model.device.model_id} has no 'normal' class "
                    f"({classes}); alerts need one"
                )
            self.normal = classes.index("normal")

    @torch.inference_mode()
    def __call__(self, dense: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Scores (higher = more anomalous) and, for a classifier, the top abnormal class."""
        x = torch.from_numpy(dense).to(self.device, non_blocking=True)
        out = self.head(x)
        if self.kind != "classifier":
            return out.float().cpu().numpy(), None
        proba = torch.softmax(out.float(), dim=1)
        score = 1.0 - proba[:, self.normal]
        proba[:, self.normal] = -1.0
        return score.cpu().numpy(), proba.argmax(dim=1).cpu().numpy()


def policy_for(model: ServerModel, settings: ServiceSettings) -> AlertPolicy:
    """The alert policy of ``model`` under ``settings`` (calibrated thresholds, timing)."""
    s = settings
    timing = {
        "min_duration_s": s.min_duration_s,
        "merge_gap_s": s.merge_gap_s,
        "refractory_s": s.refractory_s,
        "adapt_windows": s.adapt_windows,
        "adapt_level": s.adapt_level,
    }
    if model.kind == "classifier":
        return AlertPolicy(
            high=s.class_threshold, low=s.class_threshold, kind="class", label="class", **timing
        )
    cal = model.device.head_config.get("calibration")
    if not cal:
        raise ServiceError(
            f"novelty bundle {model.device.model_id} has no calibration; retrain it "
            "with 'dropstream train' (it stores the calibration)"
        )
    return AlertPolicy.from_calibration(cal, s.threshold_level, s.hysteresis_level, **timing)


class InferenceService:
    """One serve process: consumer group member, micro-batching scorer, alert producer.

    Parameters
    ----------
    config : ClientConfig
        Kafka connection and topics.
    bundle : path-like or ServerModel
        The model bundle (``.dsb``) whose head scores the windows.
    settings : ServiceSettings, optional
    metrics : ServiceMetrics, optional
    """

    def __init__(
        self,
        config: ClientConfig,
        bundle: str | Path | ServerModel,
        settings: ServiceSettings | None = None,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.config = config
        self.settings = settings or ServiceSettings()
        self.model = bundle if isinstance(bundle, ServerModel) else ServerModel.load(bundle)
        self.metrics = metrics or ServiceMetrics(interval_s=self.settings.log_interval_s)
        self.device = torch_device(self.settings.device)
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        self.scorer = Scorer(self.model, self.device)
        self.policy = policy_for(self.model, self.settings)
        bundle_dev = self.model.device
        self.model_id = bundle_dev.model_id
        self.model_version = bundle_dev.model_version
        self.width = bundle_dev.layer.width
        self.keep = bundle_dev.keep
        self.decoder = BatchDecoder()
        self.streams: dict[tuple[str, str], _Stream] = {}
        self._dirty: dict[TopicPartition, set[tuple[str, str]]] = {}
        self._safe: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._next: dict[TopicPartition, int] = {}
        self._labels: dict[str, str] = {}
        self._restart_events: list[tuple[AlertEvent, str]] = []
        self._pending: list[Any] = []
        self._stop = threading.Event()
        self._consumer: Any = None
        self._producer: Any = None
        self.ready = threading.Event()

    # ------------------------------------------------------------------ setup
    def stop(self) -> None:
        """Ask :meth:`run` to finish its current batch, commit and return."""
        self._stop.set()

    def _connect(self) -> None:
        self._producer = make_producer(self.config)
        self._consumer = make_consumer(self.config, [self.config.activations_topic])
        service = self

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
                service._revoke(set(revoked))

            def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
                log.info("assigned partitions %s", sorted(tp.partition for tp in assigned))
                service.ready.set()

        self._consumer.unsubscribe()  # subscribe again, with the rebalance listener
        self._consumer.subscribe([self.config.activations_topic], listener=Listener())

    def _revoke(self, revoked: set[TopicPartition]) -> None:
        """Forget everything about revoked partitions: their next owner replays from the last
        committed clean point (everything processed so far is already committed)."""
        if not revoked:
            return
        log.info("partitions revoked %s", sorted(tp.partition for tp in revoked))
        self._pending = [
            r for r in self._pending if TopicPartition(r.topic, r.partition) not in revoked
        ]
        for key in [k for k, s in self.streams.items() if s.partition in revoked]:
            del self.streams[key]
        for tp in revoked:
            for d in (self._dirty, self._safe, self._committed, self._next):
                d.pop(tp, None)

    # ------------------------------------------------------------------ main loop
    def run(self, max_seconds: float | None = None) -> ServiceMetrics:
        """Consume, score and alert until :meth:`stop` (or ``max_seconds``); returns metrics."""
        try:
            self._connect()
        except (KafkaClientError, KafkaError) as exc:
            raise ServiceError(f"cannot start the service: {exc}") from exc
        s = self.settings
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        first_at: float | None = None
        last_lag = 0.0
        log.info(
            "serving model %s v%d (%s, m=%d, K=%d) on %s; group %s, topic %s",
            self.model_id,
            self.model_version,
            self.model.kind,
            self.width,
            self.keep,
            self.device,
            self.config.group_id,
            self.config.activations_topic,
        )
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                if self._pending and first_at is not None:
                    wait = max(0.0, first_at + s.max_wait_ms / 1000.0 - now)
                else:
                    wait = 0.1
                polled = self._consumer.poll(
                    timeout_ms=int(wait * 1000), max_records=s.max_batch - len(self._pending)
                )
                for records in polled.values():
                    self._pending.extend(records)
                now = time.monotonic()
                if self._pending and first_at is None:
                    first_at = now
                if self._pending and (
                    len(self._pending) >= s.max_batch or now - first_at >= s.max_wait_ms / 1000.0  # type: ignore[operator]
                ):
                    batch, self._pending, first_at = self._pending, [], None
                    self.process(batch)
                if not self._pending:
                    first_at = None
                if now - last_lag >= 1.0:
                    self._update_lag()
                    self._expire_stale(now)
                    last_lag = now
                self.metrics.maybe_log()
            if self._pending:
                batch, self._pending = self._pending, []
                self.process(batch)
        except KafkaError as exc:
            raise ServiceError(
                f"Kafka failed ({exc!r}); offsets were committed only up to alerts already "
                "delivered, so restarting the service resumes without losing any"
            ) from exc
        finally:
            self.metrics.maybe_log(force=True)
            self._close()
        return self.metrics

    def _close(self) -> None:
        if self._producer is not None:
            try:
                self._producer.flush(timeout=10)
                self._producer.close(timeout=5)
            except KafkaError as exc:  # pragma: no cover - broker gone at shutdown
                log.warning("closing the producer failed: %r", exc)
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=False)
            except KafkaError as exc:  # pragma: no cover
                log.warning("closing the consumer failed: %r", exc)
        self._producer = self._consumer = None

    def _update_lag(self) -> None:
        lag = 0
        for tp, nxt in self._next.items():
            hw = self._consumer.highwater(tp)
            if hw is not None:
                lag += max(0, hw - nxt)
        self.metrics.set_lag(lag)

    # ------------------------------------------------------------------ one batch
    def process(self, records: list[Any]) -> None:
        """Score one micro-batch of consumer records, produce alerts, then commit."""
        decoded = self.decoder.decode([r.value for r in records])
        outgoing: list[tuple[str, bytes | None, bytes | None, list | None]] = []
        for row, reason in decoded.rejected:
            self._dead_letter(outgoing, records[row], "malformed", f"malformed message: {reason}")
        servable: list[WindowGroup] = []
        for group in decoded.groups:
            problem = self._mismatch(group)
            if problem is None:
                servable.append(group)  # e.g. float16 and float32 messages of this model
                continue
            kind, text = problem
            for row in group.rows.tolist():
                self._dead_letter(outgoing, records[row], kind, text)
        events: list[tuple[AlertEvent, str]] = []
        scored_rows: dict[int, int] = {}
        # per scored window, as python scalars converted once per batch (not a numpy scalar per
        # window and field): (device, stream), sequence, score, start, end, hop, top class
        windows: list[tuple] = []
        usable = WindowGroup.concat(servable) if servable else None
        if usable is not None and len(usable):
            fresh = self._deduplicate(usable, records)
            group = usable.take(fresh) if not fresh.all() else usable
            if len(group):
                scores, classes = self.scorer(group.dense())
                self.metrics.batch(len(group), _now_lsl() - group.window_end_lsl)
                finite = np.isfinite(scores)
                scored_rows = {row: i for i, row in enumerate(group.rows.tolist()) if finite[i]}
                windows = list(
                    zip(
                        zip(group.device_id, group.stream_id, strict=True),
                        group.sequence.tolist(),
                        scores.tolist(),
                        group.window_start_lsl.tolist(),
                        group.window_end_lsl.tolist(),
                        group.hop_s.tolist(),
                        [None] * len(group) if classes is None else classes.tolist(),
                        strict=True,
                    )
                )
                for i in np.flatnonzero(~finite).tolist():
                    self._dead_letter(
                        outgoing,
                        records[int(group.rows[i])],
                        "non-finite-score",
                        "the model's score of this window is not finite: activation values "
                        "out of the range the model was trained on",
                    )
        # walk the batch in order: feed detectors, track clean points per partition
        for row, rec in enumerate(records):
            tp = TopicPartition(rec.topic, rec.partition)
            i = scored_rows.get(row)
            if i is not None:
                self._feed(*windows[i], tp, events)
            if not self._dirty.get(tp):
                self._safe[tp] = rec.offset + 1
            self._next[tp] = rec.offset + 1
        if self._restart_events:
            events[:0], self._restart_events = self._restart_events, []
        for event, label in events:
            self._alert(outgoing, event, label)
        self._deliver(outgoing)
        self._commit()

    def _expire_stale(self, now: float) -> None:
        """Close the events of streams that went silent, then commit past them."""
        outgoing: list = []
        for tp, dirty in self._dirty.items():
            for key in list(dirty):
                st = self.streams.get(key)
                if st is None or now - st.last_seen < self.settings.stale_after_s:
                    continue
                log.info(
                    "stream %s/%s silent for %.0f s: expiring its event state",
                    *key,
                    now - st.last_seen,
                )
                for ev, label in self._expire(st.detector):
                    self._alert(outgoing, ev, label)
                dirty.discard(key)
            if not dirty and tp in self._next:
                self._safe[tp] = self._next[tp]
        self._deliver(outgoing)
        self._commit()

    def _expire(self, detector: EventDetector) -> list[tuple[AlertEvent, str]]:
        """Expire ``detector``: its closing updates, each with the label its opening had."""
        out: list[tuple[AlertEvent, str]] = []
        for ev in detector.expire():
            aid = make_alert_id(ev.device_id, ev.stream_id, ev.onset_sequence)
            out.append((ev, self._labels.pop(aid, self.policy.label)))
        return out

    def _mismatch(self, group: WindowGroup) -> tuple[str, str] | None:
        if group.model_id != self.model_id:
            return (
                "other-model",
                f"window for model {group.model_id!r}; this service serves {self.model_id!r}",
            )
        if group.model_version != self.model_version:
            return (
                "unknown-model-version",
                f"model {group.model_id!r} version {group.model_version} is unknown; this "
                f"service serves version {self.model_version}",
            )
        if group.width != self.width or group.keep != self.keep:
            return (
                "layout-mismatch",
                f"window has m={group.width}, K={group.keep}; model {self.model_id} "
                f"v{self.model_version} has m={self.width}, K={self.keep}",
            )
        return None

    def _deduplicate(self, group: WindowGroup, records: list[Any]) -> np.ndarray:
        """Mark duplicate windows (already seen (device, stream, sequence)); note late ones."""
        fresh = np.ones(len(group), bool)
        limit = self.settings.dedup_windows
        streams = self.streams
        n_dup = n_late = 0
        seqs = group.sequence.tolist()
        for i, (dev, stm, seq) in enumerate(
            zip(group.device_id, group.stream_id, seqs, strict=True)
        ):
            st = streams.get((dev, stm))
            if st is None:
                rec = records[int(group.rows[i])]
                st = streams[(dev, stm)] = _Stream(
                    EventDetector(dev, stm, self.policy), TopicPartition(rec.topic, rec.partition)
                )
            if 0 <= seq < st.seen_max - limit:
                # far behind everything seen: the device restarted its sequence numbers (e.g. a
                # wiped spool) or the newest one was bogus; start the stream afresh
                self._restart_stream((dev, stm), st, seq)
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
        return fresh

    def _restart_stream(self, key: tuple[str, str], st: _Stream, seq: int) -> None:
        log.warning(
            "stream %s/%s went back from sequence %d to %d: treating it as restarted",
            *key,
            st.seen_max,
            seq,
        )
        self.metrics.restart()
        self._restart_events.extend(self._expire(st.detector))
        st.detector = EventDetector(key[0], key[1], self.policy)
        st.highest, st.seen_max = -1, seq
        st.missing.clear()
        self._dirty.get(st.partition, set()).discard(key)

    def _feed(
        self,
        key: tuple[str, str],
        seq: int,
        score: float,
        window_start: float,
        window_end: float,
        hop_s: float,
        top_class: int | None,
        tp: TopicPartition,
        events: list[tuple[AlertEvent, str]],
    ) -> None:
        st = self.streams[key]
        if seq <= st.highest:
            return  # a late window: scored, but the detector has moved past it
        if st.highest >= 0 and seq > st.highest + 1:
            self.metrics.lost_windows(seq - st.highest - 1)
        st.highest = seq
        st.last_seen = time.monotonic()
        det = st.detector
        new = det.update(seq, score, window_start, window_end, hop_s)
        for ev in new:
            label = self.policy.label
            if top_class is not None:
                aid = make_alert_id(ev.device_id, ev.stream_id, ev.onset_sequence)
                if ev.status == "open":
                    label = self._labels[aid] = self.scorer.classes[top_class]
                else:
                    label = self._labels.pop(aid, self.scorer.classes[top_class])
            events.append((ev, label))
        dirty = self._dirty.get(tp)
        if dirty is None:  # not setdefault(tp, set()): no new set per window
            dirty = self._dirty[tp] = set()
        if det.clean:
            dirty.discard(key)
        else:
            dirty.add(key)

    # ------------------------------------------------------------------ output
    def _dead_letter(self, outgoing: list, rec: Any, kind: str, reason: str) -> None:
        self.metrics.dead_letter(kind)
        headers = [
            (REASON_HEADER, reason.encode("utf-8")),
            (SOURCE_HEADER, rec.topic.encode("utf-8")),
        ]
        outgoing.append((self.config.dead_letter_topic, rec.key, rec.value, headers))
        log.warning("dead letter from %s[%d]@%d: %s", rec.topic, rec.partition, rec.offset, reason)

    def _alert(self, outgoing: list, ev: AlertEvent, label: str) -> None:
        latency = _now_lsl() - ev.deciding_window_end
        msg = AlertMessage(
            alert_id=make_alert_id(ev.device_id, ev.stream_id, ev.onset_sequence),
            status=ev.status,
            device_id=ev.device_id,
            stream_id=ev.stream_id,
            kind=self.policy.kind,
            label=label,
            onset_time=ev.onset_time,
            offset_time=ev.offset_time,
            onset_sequence=ev.onset_sequence,
            offset_sequence=ev.offset_sequence,
            score=float(ev.score),
            threshold=float(ev.threshold),
            model_id=self.model_id,
            model_version=self.model_version,
            produced_at=time.time(),
            detection_latency_s=float(latency),
        )
        self.metrics.alert(ev.status, latency)
        outgoing.append((self.config.alerts_topic, ev.device_id.encode(), msg.to_json(), None))
        log.info(
            "alert %s %s device=%s stream=%s onset_seq=%d score=%.4g latency=%.1f ms",
            msg.alert_id,
            msg.status,
            msg.device_id,
            msg.stream_id,
            msg.onset_sequence,
            msg.score,
            latency * 1000,
        )

    def _deliver(self, outgoing: list) -> None:
        """Produce alerts and dead letters and wait for the broker's acks (before committing)."""
        if not outgoing:
            return
        futures = [
            self._producer.send(topic, key=key, value=value, headers=headers)
            for topic, key, value, headers in outgoing
        ]
        self._producer.flush(timeout=30)
        for fut in futures:
            fut.get(timeout=30)  # raises if a message was not acknowledged: nothing is committed

    def _commit(self) -> None:
        offsets = {
            tp: OffsetAndMetadata(off, "", -1)
            for tp, off in self._safe.items()
            if self._committed.get(tp) != off
        }
        if not offsets:
            return
        try:
            self._consumer.commit(offsets)
        except KafkaError as exc:
            # e.g. a rebalance took the partitions: their next owner replays from the last
            # commit and re-emits the same alert ids
            log.warning(
                "offset commit failed (%r); windows since the last commit will be "
                "replayed by the partition's next owner",
                exc,
            )
            return
        for tp, meta in offsets.items():
            self._committed[tp] = meta.offset


_now_lsl = pylsl.local_clock
