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

This module keeps the loop and the lifecycle (connect, rebalance, close); the parts, each
testable without a broker, are:

=====================================  ===================================================
:mod:`dropstream.inference.settings`   :class:`ServiceSettings`, :class:`ServiceError`
:mod:`dropstream.inference.batching`   decoding a batch of messages
:mod:`dropstream.inference.streams`    duplicates, gaps, restarts, event detectors
:mod:`dropstream.inference.scoring`    dense activations -> scores; the alert policy
:mod:`dropstream.inference.offsets`    dirty streams, safe/committed/next offsets, lag
:mod:`dropstream.inference.outbox`     alert updates and dead letters until acknowledged
=====================================  ===================================================
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from kafka import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from dropstream.broker.clients import KafkaClientError, make_consumer, make_producer
from dropstream.broker.config import ClientConfig
from dropstream.inference.batching import BatchDecoder, WindowGroup
from dropstream.inference.drift import DriftReference
from dropstream.inference.head import ServerModel
from dropstream.inference.metrics import ServiceMetrics
from dropstream.inference.offsets import OffsetTracker
from dropstream.inference.outbox import REASON_HEADER, SOURCE_HEADER, Outbox
from dropstream.inference.scoring import Scorer, policy_for
from dropstream.inference.settings import ServiceError, ServiceSettings
from dropstream.inference.streams import ScoredWindow, StreamTracker, StreamUpdate
from dropstream.inference.torch_device import torch_device as select_torch_device

__all__ = [
    "REASON_HEADER",
    "SOURCE_HEADER",
    "InferenceService",
    "Scorer",
    "ServiceError",
    "ServiceSettings",
    "policy_for",
    "torch_device",
]

log = logging.getLogger("dropstream.inference.service")


def torch_device(name: str) -> torch.device:
    """The torch device for ``"auto"``, ``"cpu"`` or ``"cuda"``; :class:`ServiceError` if absent."""
    return select_torch_device(name, ServiceError)


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

    Attributes
    ----------
    torch_device : torch.device
        Where the head runs.
    streams : StreamTracker
        Per-stream state (duplicates, gaps, detectors).
    offsets : OffsetTracker
        Clean points and commits per partition.
    outbox : Outbox
        Alert updates and dead letters until the broker acknowledged them.
    """

    def __init__(
        self,
        config: ClientConfig,
        bundle: str | Path | ServerModel,
        settings: ServiceSettings | None = None,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.config = config
        self.settings = s = settings or ServiceSettings()
        self.model = bundle if isinstance(bundle, ServerModel) else ServerModel.load(bundle)
        self.metrics = metrics or ServiceMetrics(interval_s=s.log_interval_s)
        self.torch_device = torch_device(s.device)
        if s.torch_threads:
            torch.set_num_threads(s.torch_threads)
        self.scorer = Scorer(self.model, self.torch_device)
        self.policy = policy_for(self.model, s)
        meta = self.model.bundle
        self.model_id = meta.model_id
        self.model_version = meta.model_version
        self.width = meta.layer.width
        self.keep = meta.keep
        self.decoder = BatchDecoder()
        classes = self.scorer.classes if self.model.kind == "classifier" else None
        drift = DriftReference.from_config(meta.head_config.get("drift"))
        self.streams = StreamTracker(self.policy, s.dedup_windows, self.metrics, classes, drift)
        self.offsets = OffsetTracker()
        self.outbox = Outbox(
            config.alerts_topic,
            config.dead_letter_topic,
            self.metrics,
            self.model_id,
            self.model_version,
            self.policy.kind,
        )
        self._pending: list[Any] = []
        self._stop = threading.Event()
        self._consumer: Any = None
        self._producer: Any = None
        self.ready = threading.Event()

    # ------------------------------------------------------------------ lifecycle
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
        self.streams.forget(revoked)
        self.offsets.revoke(revoked)

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
            self.torch_device,
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
                    self.metrics.set_lag(self.offsets.lag(self._consumer.highwater))
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

    # ------------------------------------------------------------------ one batch
    def process(self, records: list[Any]) -> None:
        """Score one micro-batch of consumer records, produce alerts, then commit."""
        outbox = self.outbox
        decoded = self.decoder.decode([r.value for r in records])
        for row, reason in decoded.rejected:
            outbox.dead_letter(records[row], "malformed", f"malformed message: {reason}")
        servable: list[WindowGroup] = []
        for group in decoded.groups:
            problem = self._mismatch(group)
            if problem is None:
                servable.append(group)  # e.g. float16 and float32 messages of this model
                continue
            kind, text = problem
            for row in group.rows.tolist():
                outbox.dead_letter(records[row], kind, text)
        updates: list[StreamUpdate] = []
        scored: dict[int, ScoredWindow] = {}  # batch row -> its scored window
        restarted: list = []
        usable = WindowGroup.concat(servable) if servable else None
        if usable is not None and len(usable):
            keys = list(zip(usable.device_id, usable.stream_id, strict=True))
            admission = self.streams.admit(
                keys,
                usable.sequence.tolist(),
                lambda i: _partition(records[int(usable.rows[i])]),
            )
            updates.extend(admission.updates)
            restarted = admission.restarted
            fresh = admission.fresh
            group = usable.take(fresh) if not fresh.all() else usable
            if len(group):
                scored = self._score(group, records)
        for partition, key in restarted:
            self.offsets.release(partition, key)
        # walk the batch in order: feed detectors, track clean points per partition
        now = time.monotonic()
        feed, window, consumed = self.streams.feed, self.offsets.window, self.offsets.consumed
        for row, rec in enumerate(records):
            tp = TopicPartition(rec.topic, rec.partition)
            w = scored.get(row)
            if w is not None:
                window(tp, w.key, feed(w, now, updates))
            consumed(tp, rec.offset)
        for update in updates:
            outbox.alert(update)
        outbox.deliver(self._producer)
        self._commit()

    def _score(self, group: WindowGroup, records: list[Any]) -> dict[int, ScoredWindow]:
        """Score ``group`` in one forward pass: its finite scores by batch row; windows whose
        score is not finite go to dead letters."""
        scores, classes = self.scorer(group.dense())
        self.metrics.batch(len(group), time.time() - (group.window_end_lsl + group.wall_offset))
        finite = np.isfinite(scores)
        rows = group.rows.tolist()
        # python scalars converted once per batch, not a numpy scalar per window and field
        windows = map(
            ScoredWindow,
            zip(group.device_id, group.stream_id, strict=True),
            group.sequence.tolist(),
            scores.tolist(),
            group.window_start_lsl.tolist(),
            group.window_end_lsl.tolist(),
            group.hop_s.tolist(),
            [None] * len(group) if classes is None else classes.tolist(),
            group.wall_offset.tolist(),
            group.recording_offset.tolist(),
            self.streams.drift_statistic(group.indices, group.values).tolist(),
        )
        scored = {row: w for row, w, ok in zip(rows, windows, finite.tolist(), strict=True) if ok}
        for i in np.flatnonzero(~finite).tolist():
            self.outbox.dead_letter(
                records[rows[i]],
                "non-finite-score",
                "the model's score of this window is not finite: activation values "
                "out of the range the model was trained on",
            )
        return scored

    def _expire_stale(self, now: float) -> None:
        """Close the events of streams that went silent, then commit past them."""
        after = self.settings.stale_after_s
        for partition, key in self.offsets.dirty_streams():
            if not self.streams.silent(key, now, after):
                continue
            log.info("stream %s/%s silent for over %.0f s: expiring its event state", *key, after)
            for update in self.streams.expire(key):
                self.outbox.alert(update)
            self.offsets.release(partition, key)
        self.offsets.settle()
        self.outbox.deliver(self._producer)
        self._commit()

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

    def _commit(self) -> None:
        offsets = self.offsets.to_commit()
        if not offsets:
            return
        try:
            self._consumer.commit(
                {tp: OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()}
            )
        except KafkaError as exc:
            # e.g. a rebalance took the partitions: their next owner replays from the last
            # commit and re-emits the same alert ids
            log.warning(
                "offset commit failed (%r); windows since the last commit will be "
                "replayed by the partition's next owner",
                exc,
            )
            return
        self.offsets.committed_ok(offsets)


def _partition(record: Any) -> TopicPartition:
    return TopicPartition(record.topic, record.partition)
