"""The outbox: alert updates and dead letters waiting for delivery, and their delivery.

Everything the service produces for one batch goes through one :class:`Outbox`: alert updates
(rendered to :class:`dropstream.broker.alert_message.AlertMessage`, id computed once per update)
and dead letters (the original key and value, with the reason and source topic in headers).
:meth:`Outbox.send` hands them to the producer at once (the service does so after every batch,
so an alert goes out without waiting for the next commit); :meth:`Outbox.deliver` sends what is
left, flushes and checks every acknowledgement before the service commits any offset; records
leave the outbox only once acknowledged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from dropstream.broker.alert_message import AlertMessage, make_alert_id
from dropstream.inference.metrics import ServiceMetrics, wall_latency
from dropstream.inference.streams import StreamUpdate

log = logging.getLogger("dropstream.inference.service")

REASON_HEADER = "dropstream.reason"
SOURCE_HEADER = "dropstream.source-topic"
PARTITION_HEADER = "dropstream.source-partition"
OFFSET_HEADER = "dropstream.source-offset"
#: Headers of a dead letter sent by reference (its value, and key, left out).
SIZE_HEADER = "dropstream.value-size"
SHA256_HEADER = "dropstream.value-sha256"


class OutgoingRecord(NamedTuple):
    """One record to produce."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None


class Outbox:
    """Alert updates and dead letters of the service, until the broker acknowledged them.

    Parameters
    ----------
    alerts_topic, dead_letter_topic : str
    metrics : ServiceMetrics
        Counts alerts (with their latency) and dead letters (by reason).
    model_id : str
    model_version : int
    kind : str
        The alert kind of the policy (``"novelty"`` or ``"class"``).
    clock : callable
        The wall clock, Unix seconds. Alert latency = now - the deciding window's last sample
        on the device's wall clock: two machines' clocks, as close as NTP keeps them (never
        the difference of two machines' LSL clocks, which is meaningless), floored at 0
        (:func:`~dropstream.inference.metrics.wall_latency`: producers that stamp samples ahead).
    inline_bytes : int
        Dead letters whose key and value together exceed this are sent by reference.
    signer : object with ``headers(key, value)``, optional
        Signs every alert (``dropstream.broker.auth.AlertSigner``): its headers go with it.
    """

    def __init__(
        self,
        alerts_topic: str,
        dead_letter_topic: str,
        metrics: ServiceMetrics,
        model_id: str,
        model_version: int,
        kind: str,
        clock: Callable[[], float] = time.time,
        inline_bytes: int = 256 * 1024,
        signer: Any = None,
    ) -> None:
        self.inline_bytes = int(inline_bytes)
        self.signer = signer
        self.alerts_topic = alerts_topic
        self.dead_letter_topic = dead_letter_topic
        self.metrics = metrics
        self.model_id = model_id
        self.model_version = model_version
        self.kind = kind
        self.clock = clock
        self.pending: list[OutgoingRecord] = []  # until acknowledged
        self._futures: list[Any] = []  # of pending[:len(_futures)], handed to the producer
        self._alert_lines: list[str] = []  # logged together by send(): one log record a batch

    def __len__(self) -> int:
        return len(self.pending)

    def dead_letter(
        self,
        record: Any,
        kind: str,
        reason: str,
        by_reference: bool = False,
        quiet: bool = False,
    ) -> None:
        """Queue consumer ``record`` (``topic``, ``partition``, ``offset``, ``key``, ``value``)
        for the dead-letter topic; ``kind`` labels the metric, ``reason`` goes in a header.

        The dead letter keeps the original key and value, with the reason, source topic,
        partition and offset in headers; one whose key and value exceed ``inline_bytes`` is sent
        *by reference* instead: no key or value, their size and the value's SHA-256 in headers
        (the original stays in the source topic for its retention). ``by_reference`` forces
        that; ``quiet`` skips the log line (the caller logs a summary).
        """
        self.metrics.dead_letter(kind)
        key, value = record.key, record.value
        headers = [
            (REASON_HEADER, reason.encode("utf-8")),
            (SOURCE_HEADER, record.topic.encode("utf-8")),
            (PARTITION_HEADER, str(record.partition).encode()),
            (OFFSET_HEADER, str(record.offset).encode()),
        ]
        size = len(key or b"") + len(value or b"")
        if by_reference or size > self.inline_bytes:
            digest = hashlib.sha256(value or b"").hexdigest()
            headers += [
                (SIZE_HEADER, str(len(value or b"")).encode()),
                (SHA256_HEADER, digest.encode()),
            ]
            key = None
            value = _reference(record, digest)
        elif key is None and value is None:
            value = b""  # a record must carry a key or a value
        self.pending.append(OutgoingRecord(self.dead_letter_topic, key, value, headers))
        if quiet:
            return
        log.warning(
            "dead letter from %s[%d]@%d%s: %s",
            record.topic,
            record.partition,
            record.offset,
            " (by reference)" if by_reference or size > self.inline_bytes else "",
            reason[:500],
        )

    def alert(self, update: StreamUpdate) -> AlertMessage | None:
        """Queue the alert message of ``update``; returns it (``None``: it could not be
        rendered, and a dead letter describing it is queued instead)."""
        try:
            return self._alert(update)
        except (ValueError, TypeError, OverflowError) as exc:
            # checked input makes this unreachable; if not, say so instead of stopping
            self.metrics.dead_letter("unrenderable-alert")
            ev = update.event
            self.pending.append(
                OutgoingRecord(
                    self.dead_letter_topic,
                    ev.device_id.encode("utf-8"),
                    repr(ev).encode("utf-8"),
                    [(REASON_HEADER, f"alert update cannot be rendered: {exc!r}".encode())],
                )
            )
            log.error(
                "alert update of %s/%s cannot be rendered: %r", ev.device_id, ev.stream_id, exc
            )
            return None

    def _alert(self, update: StreamUpdate) -> AlertMessage:
        ev = update.event
        wall, rec = update.wall_offset, update.recording_offset
        now = self.clock()
        latency = float(wall_latency(now, ev.deciding_window_end + wall))
        live = math.isnan(rec)
        msg = AlertMessage(
            alert_id=make_alert_id(ev.device_id, ev.stream_id, ev.onset_sequence),
            status=ev.status,
            device_id=ev.device_id,
            stream_id=ev.stream_id,
            kind=update.kind or self.kind,
            label=update.label,
            onset_time=ev.onset_time,
            offset_time=ev.offset_time,
            onset_sequence=ev.onset_sequence,
            offset_sequence=ev.offset_sequence,
            score=float(ev.score),
            threshold=float(ev.threshold),
            model_id=self.model_id,
            model_version=self.model_version,
            produced_at=now,
            detection_latency_s=float(latency),
            onset_utc=ev.onset_time + wall,
            offset_utc=None if ev.offset_time is None else ev.offset_time + wall,
            recording_onset=None if live else max(0.0, ev.onset_time + rec),
            recording_offset=None
            if live or ev.offset_time is None
            else max(0.0, ev.offset_time + rec),
            onset_window_time=None if ev.onset_window in (None, ev.onset_time) else ev.onset_window,
        )
        self.metrics.alert(ev.status, latency)
        key, value = ev.device_id.encode(), msg.to_json()
        headers = self.signer.headers(key, value) if self.signer is not None else None
        self.pending.append(OutgoingRecord(self.alerts_topic, key, value, headers))
        self._alert_lines.append(
            f"alert {msg.alert_id} {msg.status} device={msg.device_id} stream={msg.stream_id} "
            f"onset_seq={msg.onset_sequence:d} score={msg.score:.4g} "
            f"latency={latency * 1000:.1f} ms"
        )
        if len(self._alert_lines) >= 256:
            self.log_alerts()
        return msg

    def log_alerts(self) -> None:
        """Log the alert updates queued since the last call, one line each, in one log record
        (a burst of a thousand alerts costs one trip through the logging handlers, not a
        thousand)."""
        if self._alert_lines:
            lines, self._alert_lines = self._alert_lines, []
            log.info("%s", "\n".join(lines))

    def send(self, producer: Any) -> None:
        """Hand every record not sent yet to ``producer`` (a kafka-python ``KafkaProducer``)
        without waiting for acknowledgements; they stay in the outbox until :meth:`deliver`
        saw them acknowledged. On a client error nothing counts as sent any more (the next
        :meth:`deliver` sends everything again: resending repeats ids)."""
        self.log_alerts()
        futures = self._futures
        try:
            for i in range(len(futures), len(self.pending)):
                r = self.pending[i]
                try:
                    fut = producer.send(r.topic, key=r.key, value=r.value, headers=r.headers)
                except (ValueError, TypeError, AssertionError) as exc:
                    # the client refuses this record itself (not the broker): send why instead
                    log.error("record for %s refused by the Kafka client: %r", r.topic, exc)
                    self.metrics.dead_letter("undeliverable")
                    note = json.dumps({"undeliverable_to": r.topic, "error": repr(exc)[:500]})
                    self.pending[i] = OutgoingRecord(
                        self.dead_letter_topic, None, note.encode(), None
                    )
                    fut = producer.send(self.dead_letter_topic, value=note.encode())
                futures.append(fut)
        except Exception:
            self._futures = []
            raise

    def deliver(self, producer: Any, timeout_s: float = 30.0) -> None:
        """Send what is not sent yet (:meth:`send`), flush ``producer`` and wait for every
        acknowledgement. Raises the first failure, leaving every record in the outbox (nothing
        is committed after a failure; resending repeats ids)."""
        if not self.pending:
            return
        self.send(producer)
        try:
            producer.flush(timeout=timeout_s)
            for fut in self._futures:
                fut.get(timeout=timeout_s)  # raises if a record was not acknowledged
        except Exception:
            self._futures = []  # all of them are sent again, to the next producer
            raise
        self.pending.clear()
        self._futures = []


def _reference(record: Any, digest: str) -> bytes:
    """The value of a by-reference dead letter: where the original is, its size and hash."""
    size = len(record.value or b"")
    ref = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
    return json.dumps(ref | {"size": size, "sha256": digest}).encode()
