"""Offset tracking: which offset of each partition is safe to commit.

Pure bookkeeping, no Kafka: partitions are opaque hashables (the service uses
:class:`kafka.structs.TopicPartition`). A partition may be committed up to its last *clean
point*: the offset after the latest record after which no stream of that partition was
*dirty* (a candidate, open event, merge gap, refractory period or adaptation in progress, see
:attr:`dropstream.inference.alerting.EventDetector.clean`). A process that takes the partition
over replays from there with fresh detectors and re-creates the same alerts.

Per partition: the dirty streams, the safe offset, the last committed offset and the next
offset to consume (for the lag).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable


class OffsetTracker:
    """Dirty streams and safe, committed and next offsets per partition."""

    def __init__(self) -> None:
        self.dirty: dict[Hashable, set[Hashable]] = {}
        self.safe: dict[Hashable, int] = {}
        self.committed: dict[Hashable, int] = {}
        self.next: dict[Hashable, int] = {}

    def walk(
        self,
        partitions: list[Hashable],
        offsets: list[int],
        streams: dict[int, tuple[Hashable, bool]],
    ) -> None:
        """Account for a batch of records, in consumption order.

        Parameters
        ----------
        partitions, offsets : list
            Partition and offset of each record.
        streams : dict
            Record position -> (its stream, whether that stream is clean after it), for the
            records that fed a detector.
        """
        dirty_of, safe, nxt = self.dirty, self.safe, self.next
        for row, (p, off) in enumerate(zip(partitions, offsets, strict=True)):
            dirty = dirty_of.get(p)
            mark = streams.get(row)
            if mark is not None:
                if dirty is None:  # not setdefault(p, set()): no new set per record
                    dirty = dirty_of[p] = set()
                if mark[1]:
                    dirty.discard(mark[0])
                else:
                    dirty.add(mark[0])
            if not dirty:
                safe[p] = off + 1
            nxt[p] = off + 1

    def release(self, partition: Hashable, stream: Hashable) -> None:
        """``stream``'s state in progress was discarded (expired or restarted): not dirty."""
        dirty = self.dirty.get(partition)
        if dirty is not None:
            dirty.discard(stream)

    def dirty_streams(self) -> list[tuple[Hashable, Hashable]]:
        """Every (partition, stream) with state in progress."""
        return [(p, s) for p, streams in self.dirty.items() for s in streams]

    def settle(self) -> None:
        """Partitions left without dirty streams (after releases) are safe up to their next
        offset."""
        for partition, dirty in self.dirty.items():
            if not dirty and partition in self.next:
                self.safe[partition] = self.next[partition]

    def to_commit(self) -> dict[Hashable, int]:
        """Safe offsets not committed yet."""
        return {p: off for p, off in self.safe.items() if self.committed.get(p) != off}

    def committed_ok(self, offsets: dict[Hashable, int]) -> None:
        """``offsets`` (from :meth:`to_commit`) were committed."""
        self.committed.update(offsets)

    def reset(self, partition: Hashable) -> None:
        """``partition``'s log was reset (its offsets start again): forget its offsets but keep
        its dirty streams (their state in progress is still real)."""
        for d in (self.safe, self.committed, self.next):
            d.pop(partition, None)

    def revoke(self, partitions: Iterable[Hashable]) -> None:
        """Forget ``partitions``: their next owner replays from their last commit."""
        for p in partitions:
            for d in (self.dirty, self.safe, self.committed, self.next):
                d.pop(p, None)

    def lag(self, highwater: Callable[[Hashable], int | None]) -> int:
        """Records behind the partition ends, ``highwater(p)`` being one past the last offset
        (``None``: unknown yet, counted as 0)."""
        lag = 0
        for p, nxt in self.next.items():
            hw = highwater(p)
            if hw is not None:
                lag += max(0, hw - nxt)
        return lag
