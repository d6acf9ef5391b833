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
         -> hand alerts and dead letters to the producer (sent at once, not waited for)
         -> every ``commit_interval_ms``: flush, check every acknowledgement (acks=all)  # first
            then commit offsets up to the last *clean* point per partition               # after

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

import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from kafka import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from dropstream.broker.clients import KafkaClientError, make_consumer, make_producer
from dropstream.broker.config import ClientConfig
from dropstream.broker.wire import UNRESOLVED_REF
from dropstream.inference.batching import BatchDecoder, WindowGroup
from dropstream.inference.drift import DriftReference
from dropstream.inference.head import ServerModel
from dropstream.inference.lookback import BlockLookback
from dropstream.inference.metrics import ServiceMetrics, wall_latency
from dropstream.inference.offsets import OffsetTracker
from dropstream.inference.outbox import REASON_HEADER, SOURCE_HEADER, Outbox
from dropstream.inference.ratelimit import DeviceRateLimiter
from dropstream.inference.scoring import Scorer, policy_for
from dropstream.inference.settings import ServiceError, ServiceSettings
from dropstream.inference.streams import ScoredBatch, StreamTracker, StreamUpdate
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


class AlertSigning(Protocol):
    """What the service needs of an alert signer (``dropstream.broker.auth.AlertSigner``)."""

    def headers(self, key: bytes | None, value: bytes) -> list[tuple[str, bytes]]:
        """The Kafka headers that sign ``value`` under ``key``."""
        ...


class Authenticator(Protocol):
    """What the service needs of an authenticator (e.g. ``dropstream.broker.auth.DeviceKeys``)."""

    def check_batch(
        self, keys: list[bytes | None], values: list[bytes | None]
    ) -> list[tuple[int, str]]:
        """``(row, reason)`` of every record refused, in order."""
        ...


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
    authenticator : Authenticator, optional
        Checks every record before anything else (e.g. the device key store); refused records
        go to dead letters and never touch stream state.
    signer : AlertSigning, optional
        Signs every alert (e.g. ``dropstream.broker.auth.AlertSigner``: its headers go with it).

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
        authenticator: Authenticator | None = None,
        signer: AlertSigning | None = None,
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
        #: Reads a partition back for the stream blocks of windows sent by reference whose full
        #: block went by before this process read the partition (restart, takeover).
        self.lookback = BlockLookback(config)
        classes = self.scorer.classes if self.model.kind == "classifier" else None
        self.streams = StreamTracker(
            self.policy,
            s.dedup_windows,
            self.metrics,
            classes,
            max_gaps=s.max_gaps,
            max_gaps_total=s.max_gaps_total,
            jump_tolerance_s=s.jump_tolerance_s,
            drift=DriftReference.from_config(meta.head_config.get("drift")),
        )
        self.offsets = OffsetTracker()
        self.outbox = Outbox(
            config.alerts_topic,
            config.dead_letter_topic,
            self.metrics,
            self.model_id,
            self.model_version,
            self.policy.kind,
            inline_bytes=s.dead_letter_inline_bytes,
            signer=signer,
        )
        self.limiter = (
            DeviceRateLimiter(s.device_rate, s.device_burst) if s.device_rate is not None else None
        )
        #: Verifies records before anything else reads them: ``check_batch(keys, values)`` ->
        #: ``[(row, reason), ...]`` refused (see docs/security-service.md). ``None``: none.
        self.authenticator: Authenticator | None = authenticator
        self._marks: dict[str, str] = {}  # partition -> marks text, saved in state_dir
        self._marks_at = -1e9
        self._to_restore: list[TopicPartition] = []
        self._revoked: set[TopicPartition] = set()  # settled once the assignment is known
        self._rebalanced = False  # an assignment arrived: settle the revoked partitions
        # the broker may have restarted (coordinator lost, a delivery failed): check that the
        # group still has our commits before serving anything more
        self._suspect = False
        self._was_reset: set[TopicPartition] = set()
        self._pending: list[Any] = []
        self._committed_at = -1e9  # monotonic time of the last flush and commit
        self._tps: dict[int, TopicPartition] = {}  # partition number -> its TopicPartition
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
                # settle revocations and read marks from the main loop: no client calls inside
                # this callback
                service._to_restore.extend(assigned)
                service._rebalanced = True
                service.ready.set()

        self._consumer.unsubscribe()  # subscribe again, with the rebalance listener
        self._consumer.subscribe([self.config.activations_topic], listener=Listener())

    def _marks_path(self) -> Path | None:
        d = self.settings.state_dir
        if d is None:
            return None
        name = f"marks-{self.config.group_id}-{self.config.activations_topic}.json"
        return Path(d) / "".join(c if c.isalnum() or c in "-_." else "_" for c in name)

    def _settle_partitions(self) -> None:
        """After a rebalance (from the main loop, before any record of it is processed):
        forget the partitions revoked for good, keep the state of those taken back from a
        reset broker, then restore the saved marks of the assigned ones.

        A partition revoked and assigned again at once whose offsets this process had
        committed but the group no longer has was *reset* under it (a broker with memory
        storage restarted empty: it lost the log and the commits, nobody can replay them), so
        its streams and their events in progress are kept (the documented reset policy: the
        devices' next windows continue them; forgetting them would lose the updates of open
        events); the consumer reads the new log from its start (no commit: ``earliest``).
        Otherwise the partition is forgotten and replayed from its last commit, as before.
        """
        revoked, self._revoked, self._rebalanced = self._revoked, set(), False
        assigned = set(self._to_restore)
        gone: set[TopicPartition] = set()
        for tp in revoked:
            if tp in self._was_reset and tp in assigned:
                self.offsets.reset(tp)  # found reset before the group was: read from the start
            elif tp in assigned and self.offsets.committed.get(tp) and self._lost_commit(tp):
                # the consumer itself starts it at ``earliest`` (the group has no commit)
                self._reset_partition(tp, "lost the offsets this service committed", seek=False)
            else:
                gone.add(tp)
        self._was_reset.clear()
        if gone:
            self.streams.forget(gone)
            self.offsets.revoke(gone)
        self._restore_marks()

    def _lost_commit(self, tp: TopicPartition) -> bool:
        """Whether the group has no committed offset for ``tp`` (``False`` if unknown)."""
        try:
            return self._group_offset(tp) is None
        except (KafkaError, AssertionError) as exc:
            log.warning("cannot read the committed offset of %s[%d]: %r", *tp, exc)
            return False

    def _group_offset(self, tp: TopicPartition) -> int | None:
        """The group's committed offset of ``tp`` (``None``: none); raises ``KafkaError``
        while the broker cannot tell."""
        try:
            return self._consumer.committed(tp, timeout_ms=2000)
        except TypeError:  # kafka-python before 3.0 has no timeout here
            return self._consumer.committed(tp)

    def _restore_marks(self) -> None:
        """Seed the high-water marks saved for each newly assigned partition (replay
        protection that survives a restart of the service)."""
        assigned, self._to_restore = self._to_restore, []
        path = self._marks_path()
        if path is None or not path.exists():
            return
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("cannot read the high-water marks in %s (%r): starting without", path, exc)
            return
        now = time.monotonic()
        for tp in assigned:
            text = saved.get(str(tp.partition)) if isinstance(saved, dict) else None
            if isinstance(text, str):
                n = self.streams.restore(tp, text, now)
                log.info("partition %d: %d streams' high-water marks restored", tp.partition, n)

    def _save_marks(self, offsets: dict[TopicPartition, int]) -> None:
        """Save the high-water marks of partitions clean up to their end (never beyond what
        their committed offset covers: a process resuming there accepts every genuine window
        after it and refuses replays at or below the marks), at most every
        ``marks_interval_s``."""
        path, s, now = self._marks_path(), self.settings, time.monotonic()
        if path is None or now - self._marks_at < s.marks_interval_s:
            return
        clean = [tp for tp, off in offsets.items() if self.offsets.next.get(tp) == off]
        if not clean:
            return
        self._marks.update(
            {str(tp.partition): m for tp, m in self.streams.marks(clean, s.max_marks_bytes).items()}
        )
        tmp = path.with_suffix(".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self._marks))
            os.replace(tmp, path)  # atomic: a crash leaves the old or the new file
        except OSError as exc:
            log.warning("cannot save high-water marks to %s: %r", path, exc)
        self._marks_at = now

    def _revoke(self, revoked: set[TopicPartition]) -> None:
        """Drop the pending records of revoked partitions; their state is forgotten by
        :meth:`_settle_partitions` (their next owner replays from the last committed clean
        point: everything processed so far is already committed) unless they come straight
        back from a reset broker."""
        if not revoked:
            return
        log.info("partitions revoked %s", sorted(tp.partition for tp in revoked))
        self._pending = [
            r for r in self._pending if TopicPartition(r.topic, r.partition) not in revoked
        ]
        self._revoked |= revoked
        for tp in revoked:
            self._marks.pop(str(tp.partition), None)

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
        self.lookback.close()
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
                if self._rebalanced:
                    self._settle_partitions()
                for records in polled.values():
                    self._pending.extend(records)
                    self.metrics.fetched(_fetch_latency(records))
                self._suspect = self._suspect or self._coordinator_lost()
                if self._suspect and self._pending and not self._commits_checked():
                    continue  # the broker is not answering yet: serve nothing meanwhile
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
                self._maybe_commit(now)
                if now - last_lag >= 1.0:
                    try:
                        self._housekeeping(now)
                    except KafkaError:
                        raise
                    except Exception:  # noqa: BLE001 - bookkeeping must not stop the service
                        log.exception("housekeeping failed; going on")
                    last_lag = now
                self.metrics.maybe_log()
            if self._pending:
                batch, self._pending = self._pending, []
                self.process(batch)
            self._maybe_commit(time.monotonic(), force=True)
        except KafkaError as exc:
            raise ServiceError(
                f"Kafka failed ({exc!r}; deliveries are retried for {s.delivery_timeout_s:g} s "
                f"first); offsets were committed only up to alerts already delivered "
                f"({len(self.outbox)} records were still waiting). Restarting the service "
                "replays from those offsets if the broker kept its log (a reset broker lost "
                "them: see docs/service.md, Broker restarts)"
            ) from exc
        finally:
            self.metrics.maybe_log(force=True)
            self._close()
        return self.metrics

    def _housekeeping(self, now: float) -> None:
        """Once a second: lag, reset logs, silent streams, idle state."""
        if not self._revoked:  # mid-rebalance the revoked partitions' ends are not ours to ask
            self._check_resets()
            self.metrics.set_lag(self.offsets.lag(self._consumer.highwater))
        self._expire_stale(now)
        s = self.settings
        self.streams.forget_idle(now, s.idle_forget_s, s.max_streams)
        if self.limiter is not None:
            self.limiter.prune(now)

    def _check_resets(self) -> None:
        """A partition whose log now ends before what was already consumed was reset under
        the service (e.g. a broker with memory storage restarted): read it from its start.

        Stream state is kept (devices keep numbering their windows, so whatever the reset log
        holds again is recognised as duplicates or scored as new); offsets restart from zero.
        """
        for tp, nxt in list(self.offsets.next.items()):
            hw = self._consumer.highwater(tp)
            if hw is None or hw >= nxt:
                continue
            self._reset_partition(tp, f"ends at offset {hw} but {nxt} were already consumed")

    def _reset_partition(self, tp: TopicPartition, why: str, seek: bool = True) -> None:
        """The documented reset policy for a partition whose log was reset under the service:
        keep its streams (devices keep numbering their windows, so whatever the new log holds
        is recognised as duplicates or scored as new), forget its offsets, drop what was
        fetched from it at old offsets and read it again from its start."""
        log.warning(
            "partition %s[%d] %s: its log was reset (a restarted in-memory broker?); keeping "
            "its streams and reading it again from its start",
            tp.topic,
            tp.partition,
            why,
        )
        self.metrics.offset_reset()
        self.offsets.reset(tp)
        self._was_reset.add(tp)
        self._pending = [r for r in self._pending if _partition(r) != tp]
        if seek:
            try:
                self._consumer.seek_to_beginning(tp)
            except (KafkaError, AssertionError) as exc:  # not assigned any more
                log.warning("cannot rewind %s[%d]: %r", tp.topic, tp.partition, exc)

    def _coordinator_lost(self) -> bool:
        """Whether the consumer lost its group coordinator (e.g. the broker went away)."""
        coordinator = getattr(self._consumer, "_coordinator", None)
        try:
            return bool(coordinator is not None and coordinator.coordinator_unknown())
        except Exception:  # noqa: BLE001 - a client without it: rely on the other checks
            return False

    def _commits_checked(self) -> bool:
        """After the broker may have restarted, before serving what was fetched since: every
        partition whose offsets this process committed must still have a commit in the group;
        one without was reset under us (the fetch position is stale: the new log's first
        windows would be skipped, issue 15's 52 windows). False while the broker cannot tell."""
        try:
            for tp in [tp for tp, off in self.offsets.committed.items() if off]:
                if self._group_offset(tp) is None:
                    self._reset_partition(tp, "lost the offsets this service committed")
        except KafkaError as exc:
            log.info("cannot check the committed offsets yet (%r); waiting", exc)
            return False
        self._suspect = False
        return True

    # ------------------------------------------------------------------ one batch
    def process(self, records: list[Any]) -> None:
        """Score one micro-batch of consumer records, produce alerts, then commit.

        No record can stop the service: a record refused for a reason goes to dead letters
        with it; an unexpected error in the batch dead-letters the batch (reason
        ``internal-error``) and the service goes on. Only Kafka failures that outlast
        ``delivery_timeout_s`` propagate.
        """
        try:
            self._process(records)
        except KafkaError:
            raise
        except Exception as exc:  # noqa: BLE001 - the last resort: never stop on one batch
            log.exception("processing a batch of %d records failed", len(records))
            for rec in records:
                self.outbox.dead_letter(
                    rec,
                    "internal-error",
                    f"internal error while processing this record's batch: {exc!r}"[:2000],
                )
            self.offsets.walk(self._partitions(records), [r.offset for r in records], {})
            self._maybe_commit(time.monotonic(), force=True)

    def _process(self, records: list[Any]) -> None:
        outbox = self.outbox
        live = self._admit_records(records)
        batch = records if live is None else [records[i] for i in live]
        updates: list[StreamUpdate] = []
        scored: ScoredBatch | None = None
        restarted: list = []
        usable = self._decode(batch)
        if usable is not None:
            now_mono = time.monotonic()
            keys = list(zip(usable.device_id, usable.stream_id, strict=True))
            admission = self.streams.admit(
                keys,
                usable.sequence.tolist(),
                lambda i: _partition(batch[int(usable.rows[i])]),
                usable.wall_time.tolist(),
                usable.hop_s.tolist(),
                now_mono,
            )
            for i, reason in admission.implausible:
                outbox.dead_letter(batch[int(usable.rows[i])], "implausible-sequence", reason)
            updates.extend(admission.updates)
            restarted = admission.restarted
            fresh = admission.fresh
            group = usable.take(fresh) if not fresh.all() else usable
            if len(group):
                scored = self._score(group, batch)
        for partition, key in restarted:
            self.offsets.release(partition, key)
        marks: dict[int, tuple[Any, bool]] = {}
        if scored is not None and scored.rows:
            rows = scored.rows if live is None else [live[r] for r in scored.rows]
            fed = self.streams.feed(scored, time.monotonic(), updates)
            marks = dict(zip(rows, zip(scored.keys, fed.clean, strict=True), strict=True))
            for i, reason in fed.failed:
                outbox.dead_letter(records[rows[i]], "internal-error", reason)
        # clean points per partition, in consumption order
        self.offsets.walk(self._partitions(records), [r.offset for r in records], marks)
        for update in updates:
            outbox.alert(update)
        self._send()
        self._maybe_commit(time.monotonic())
        if len(self.streams.streams) > self.settings.max_streams:
            s = self.settings
            self.streams.forget_idle(time.monotonic(), s.idle_forget_s, s.max_streams)

    def _partitions(self, records: list[Any]) -> list[TopicPartition]:
        """The TopicPartition of each record, one object per partition (not one per record)."""
        tps, topic, out = self._tps, self.config.activations_topic, []
        for r in records:
            tp = tps.get(r.partition) if r.topic == topic else None
            if tp is None:
                tp = _partition(r)
                if r.topic == topic:
                    tps[r.partition] = tp
            out.append(tp)
        return out

    def _admit_records(self, records: list[Any]) -> list[int] | None:
        """Authenticate, then rate-limit each record, before anything decodes it; the rows
        that go on (``None``: all of them)."""
        refused: dict[int, tuple[str, str]] = {}
        if self.authenticator is not None:
            keys = [r.key for r in records]
            values = [r.value for r in records]
            for row, reason in self.authenticator.check_batch(keys, values):
                refused[row] = ("unauthenticated", reason)
        if self.limiter is not None:
            keys = [r.key or b"" for r in records]
            counts = Counter(
                keys if not refused else (k for row, k in enumerate(keys) if row not in refused)
            )
            now, over = time.monotonic(), {}
            for key, n in counts.items():
                granted = self.limiter.take(key, n, now)
                if granted < n:
                    over[key] = granted  # its first ``granted`` windows pass
            if over:
                n_limited = 0
                for row, key in enumerate(keys):
                    if key in over and row not in refused:
                        if over[key] > 0:
                            over[key] -= 1
                        else:
                            refused[row] = ("rate-limited", "")
                            n_limited += 1
                self.metrics.rate_limit(n_limited)
                rate = self.settings.device_rate
                log.warning("%d windows over the rate limit (%g/s per device)", n_limited, rate)
        if not refused:
            return None
        for row, (kind, reason) in refused.items():
            if kind == "rate-limited":
                rec = records[row]
                self.outbox.dead_letter(
                    rec,
                    kind,
                    f"device {rec.key!r:.80} sends over {self.settings.device_rate:g} windows/s",
                    by_reference=True,
                    quiet=True,
                )
            else:
                self.outbox.dead_letter(records[row], kind, reason)
        return [row for row in range(len(records)) if row not in refused]

    def _decode(self, batch: list[Any]) -> WindowGroup | None:
        """Decode ``batch``; everything that cannot be served goes to dead letters. Returns the
        servable windows (rows of ``batch``), or ``None``."""
        outbox = self.outbox
        values = [r.value for r in batch]
        decoded = self.decoder.decode(values)
        unresolved = [batch[row] for row, why in decoded.rejected if why.startswith(UNRESOLVED_REF)]
        if unresolved and self.lookback.learn(self.decoder.stream_blocks, unresolved):
            decoded = self.decoder.decode(values)  # after a restart or a takeover: once more
        for row, reason in decoded.rejected:
            outbox.dead_letter(batch[row], "malformed", f"malformed message: {reason}")
        servable: list[WindowGroup] = []
        for group in decoded.groups:
            problem = self._mismatch(group)
            if problem is None:
                servable.append(group)  # e.g. float16 and float32 messages of this model
                continue
            kind, text = problem
            for row in group.rows.tolist():
                outbox.dead_letter(batch[row], kind, text)
        if not servable:
            return None
        group = WindowGroup.concat(servable)
        ok = np.ones(len(group), bool)
        rows = group.rows.tolist()
        keys = [batch[row].key for row in rows]
        # the key must be the device id: checked per distinct pair, per record only on a mismatch
        if any(k != d.encode("utf-8") for k, d in set(zip(keys, group.device_id, strict=True))):
            for i, (key, device) in enumerate(zip(keys, group.device_id, strict=True)):
                if key != device.encode("utf-8"):
                    ok[i] = False
                    outbox.dead_letter(
                        batch[rows[i]],
                        "key-mismatch",
                        f"Kafka key {key!r:.80} is not the device id {device!r} inside the message",
                    )
        s = self.settings
        if s.freshness_s is not None:
            # an old window is served only above its stream's high-water mark (a window spooled
            # through a long outage); at or below it, or with no mark known, it may be a replay
            now = time.time()
            wall = group.wall_time
            for i in np.flatnonzero(ok & (wall < now - s.freshness_s)).tolist():
                seq = int(group.sequence[i])
                mark = self.streams.high_water((group.device_id[i], group.stream_id[i]))
                if mark is not None and seq > mark:
                    continue
                ok[i] = False
                known = (
                    "no high-water mark is known for its stream (start serve with --state-dir "
                    "to keep them across restarts)"
                    if mark is None
                    else f"its sequence {seq} is not above its stream's high-water mark {mark}"
                )
                outbox.dead_letter(
                    batch[rows[i]],
                    "stale",
                    f"window started {now - wall[i]:.0f} s ago, over the freshness bound of "
                    f"{s.freshness_s:g} s, and {known}: refused as a possible replay",
                )
        if s.max_clock_skew_s is not None:
            now = time.time()
            wall = group.wall_time
            for i in np.flatnonzero(ok & (wall > now + s.max_clock_skew_s)).tolist():
                ok[i] = False
                outbox.dead_letter(
                    batch[rows[i]],
                    "from-the-future",
                    f"window starts {wall[i] - now:.0f} s ahead of the server's clock (more "
                    f"than {s.max_clock_skew_s:g} s): check the device's clock",
                )
        if not ok.all():
            group = group.take(ok)
        return group if len(group) else None

    def _score(self, group: WindowGroup, records: list[Any]) -> ScoredBatch:
        """Score ``group`` in one forward pass: its windows with a finite score; the others go
        to dead letters."""
        scores, classes, span = self.scorer(group.dense())
        # wall clocks (NTP), never two machines' LSL clocks
        wall_end = group.wall_time + (group.window_end_lsl - group.window_start_lsl)
        produced = _record_times(records, group.rows)
        self.metrics.batch(
            len(group), wall_latency(time.time(), wall_end), wall_latency(produced, wall_end)
        )
        finite = np.isfinite(scores)
        if not finite.all():
            for i in np.flatnonzero(~finite).tolist():
                self.outbox.dead_letter(
                    records[int(group.rows[i])],
                    "non-finite-score",
                    "the model's score of this window is not finite: activation values "
                    "out of the range the model was trained on",
                )
            group, scores = group.take(finite), scores[finite]
            classes = None if classes is None else classes[finite]
            span = None if span is None else span[finite]
        return self.streams.batch_of(group, scores, classes, span)

    def _expire_stale(self, now: float) -> None:
        """Close the events of streams that went silent, then commit past them."""
        after = self.settings.stale_after_s
        for partition, key in self.offsets.dirty_streams():
            if partition in self._revoked or not self.streams.silent(key, now, after):
                continue  # (a revoked partition's state waits for the new assignment)
            log.info("stream %s/%s silent for over %.0f s: expiring its event state", *key, after)
            for update in self.streams.expire(key):
                self.outbox.alert(update)
            self.offsets.release(partition, key)
        self.offsets.settle()
        self._send()
        self._maybe_commit(now)

    def _send(self) -> None:
        """Hand the outbox to the producer now, without waiting (a failure is left to the next
        :meth:`_deliver`, which recreates the producer and sends everything again)."""
        if not len(self.outbox) or self._producer is None:
            return
        try:
            self.outbox.send(self._producer)
        except (KafkaError, KafkaClientError) as exc:
            log.warning("sending %d records failed (%r); retrying at the next commit",
                        len(self.outbox), exc)  # fmt: skip

    def _maybe_commit(self, now: float, force: bool = False) -> None:
        """Every ``commit_interval_ms`` (or when ``force``): deliver the outbox (flush, every
        acknowledgement checked), then commit the safe offsets."""
        if not force and now - self._committed_at < self.settings.commit_interval_ms / 1000.0:
            return
        self._committed_at = now
        self._deliver()
        self._commit()

    def _deliver(self) -> None:
        """Deliver the outbox; on a Kafka error recreate the producer and deliver again, for up
        to ``delivery_timeout_s`` (then the error propagates and the service stops). Nothing
        is committed until the outbox is delivered."""
        if not len(self.outbox):
            return
        give_up = None
        pause = 0.2
        while True:
            try:
                if self._producer is None:
                    self._producer = make_producer(self.config)
                    self.metrics.producer_restart()
                self.outbox.deliver(self._producer)
                return
            except (KafkaError, KafkaClientError) as exc:
                now = time.monotonic()
                give_up = give_up or now + self.settings.delivery_timeout_s
                if now >= give_up:
                    raise exc if isinstance(exc, KafkaError) else KafkaError(str(exc)) from exc
                self._suspect = True  # a broker restart? check the commits before serving on
                log.warning(
                    "delivering %d alert updates / dead letters failed (%r); recreating the "
                    "producer and delivering them again",
                    len(self.outbox),
                    exc,
                )
                self._drop_producer()
                time.sleep(pause)
                pause = min(5.0, pause * 2)

    def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=0)
            except Exception as exc:  # noqa: BLE001 - it failed already; just let it go
                log.debug("closing the failed producer: %r", exc)

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
        """Commit the safe offsets (then save the high-water marks they cover)."""
        offsets = self.offsets.to_commit()
        if self._revoked:  # mid-rebalance: not ours to commit any more
            offsets = {tp: off for tp, off in offsets.items() if tp not in self._revoked}
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
        self._save_marks(offsets)


def _partition(record: Any) -> TopicPartition:
    return TopicPartition(record.topic, record.partition)


def _record_times(records: list[Any], rows: np.ndarray | None = None) -> np.ndarray:
    """The producer timestamps (Unix s) of ``records[rows]`` (all of them: ``rows`` ``None``);
    NaN where a record has none."""
    chosen = records if rows is None else [records[i] for i in rows.tolist()]
    return np.array([getattr(r, "timestamp", None) or np.nan for r in chosen], float) / 1000.0


def _fetch_latency(records: list[Any]) -> np.ndarray:
    """Seconds from each record's producer timestamp to now (wall clock), floored at 0; records
    without a timestamp are left out."""
    ts = _record_times(records)
    return wall_latency(time.time(), ts[np.isfinite(ts)])
