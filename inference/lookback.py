"""Find the stream blocks behind unresolved references by reading back their partition.

A device sends its version-3 stream block (model, shape, model, device and stream ids) in full
once every ``block_every`` windows and an 8-byte reference in the others
(:class:`dropstream.broker.wire.StreamBlocks`). A service that restarted, or took a partition
over from another process, meets references whose full block went by before its committed
offset. The block is still in the partition: the same device's earlier window, same key, same
partition, at a lower offset. :class:`BlockLookback` reads the partition backwards from the
first unresolved window, in steps, until every wanted reference is found (or ``max_records``
were read), and adds the blocks to the decoder's registry; the service then decodes the batch
again, so nothing is lost. Content-addressed: a block is taken only if it hashes to a wanted
reference, so no record read back (authenticated or not) can change what a reference means.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from dropstream.broker.config import ClientConfig
from dropstream.broker.wire import StreamBlocks, block_field, stream_ref

log = logging.getLogger(__name__)


class BlockLookback:
    """Reads partitions back to learn the stream blocks that unresolved references name.

    Parameters
    ----------
    config : ClientConfig
        Connection and security settings (a consumer outside any group is made on first use).
    max_records : int
        Records read back per partition and call at most (the device resends its block every
        ``block_every`` windows, so with ``D`` devices on a partition it lies about
        ``block_every * D`` records back).
    step : int
        Records read per backward step.
    """

    def __init__(self, config: ClientConfig, max_records: int = 200_000, step: int = 4096) -> None:
        self.config = config
        self.max_records = int(max_records)
        self.step = int(step)
        self._consumer: KafkaConsumer | None = None
        #: Records read back so far (all calls).
        self.records_read = 0

    def learn(self, blocks: StreamBlocks, records: Sequence[Any]) -> int:
        """Add to ``blocks`` the full blocks that the references in ``records`` (Kafka records
        whose stream reference ``blocks`` could not resolve) stand for; returns how many."""
        wanted: dict[tuple[str, int], tuple[int, set[bytes]]] = {}
        for r in records:
            field = block_field(r.value)
            if field is None or not field[1]:
                continue
            ref = field[0]
            first, refs = wanted.get((r.topic, r.partition), (r.offset, set()))
            refs.add(ref)
            wanted[(r.topic, r.partition)] = (min(first, r.offset), refs)
        learned = 0
        for (topic, partition), (offset, refs) in wanted.items():
            try:
                learned += self._read_back(TopicPartition(topic, partition), offset, refs, blocks)
            except KafkaError as exc:
                log.warning("reading partition %d back for stream blocks: %r", partition, exc)
        return learned

    def _read_back(
        self, tp: TopicPartition, end: int, refs: set[bytes], blocks: StreamBlocks
    ) -> int:
        consumer = self._client()
        consumer.assign([tp])
        start_of_log = consumer.beginning_offsets([tp])[tp]
        learned = read = 0
        while refs and end > start_of_log and read < self.max_records:
            start = max(start_of_log, end - self.step)
            consumer.seek(tp, start)
            pos = start
            while pos < end:
                got = consumer.poll(timeout_ms=2000, max_records=min(self.step, end - pos))
                batch = got.get(tp, [])
                if not batch:
                    break
                for rec in batch:
                    pos = rec.offset + 1
                    if rec.offset >= end:
                        break
                    field = block_field(rec.value)
                    if field is None or field[1]:
                        continue
                    ref = stream_ref(field[0])
                    if ref in refs:
                        blocks.add(field[0], ref)
                        refs.discard(ref)
                        learned += 1
                read += len(batch)
            end = start
        self.records_read += read
        if refs:
            log.warning(
                "%d stream references not found in the %d records before offset %d of "
                "partition %d",
                len(refs),
                read,
                end,
                tp.partition,
            )
        return learned

    def _client(self) -> KafkaConsumer:
        if self._consumer is None:
            self._consumer = KafkaConsumer(
                **(self.config.common_kwargs() | {"enable_auto_commit": False})
            )
        return self._consumer

    def close(self) -> None:
        """Close the consumer, if one was made."""
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=False)
            except KafkaError as exc:  # pragma: no cover - broker gone at shutdown
                log.warning("closing the lookback consumer failed: %r", exc)
            self._consumer = None
