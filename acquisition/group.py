"""Several live streams of one person (e.g. EEG and ECG), each with its own clock correction."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pylsl

from dropstream.acquisition.inlet import Chunk, LiveStream


class StreamGroup(Mapping[str, LiveStream]):
    """Poll several :class:`~dropstream.acquisition.inlet.LiveStream` together.

    Every inlet corrects its own sender's clock offset, so all timestamps are on this
    machine's LSL clock and chunks of different streams can be aligned by timestamp.

    Parameters
    ----------
    streams : Mapping[str, LiveStream]
        Key (e.g. ``"eeg"``, ``"ecg"``) -> open inlet. The group owns and closes them.

    Examples
    --------
    >>> group = StreamGroup.connect({"eeg": {"type": "EEG"}, "ecg": {"source_id": "chest-ecg"}})
    >>> chunks = group.poll()   # {"eeg": Chunk, "ecg": Chunk}
    """

    def __init__(self, streams: Mapping[str, LiveStream]) -> None:
        self._streams = dict(streams)

    @classmethod
    def connect(
        cls, queries: Mapping[str, Mapping[str, str]], *, timeout: float = 5.0, **options: object
    ) -> StreamGroup:
        """Open one inlet per query (``name``/``type``/``source_id`` keys of
        :meth:`LiveStream.connect`); already opened inlets are closed if one fails."""
        opened: dict[str, LiveStream] = {}
        try:
            for key, query in queries.items():
                opened[key] = LiveStream.connect(timeout=timeout, **query, **options)  # type: ignore[arg-type]
        except BaseException:
            for stream in opened.values():
                stream.close()
            raise
        return cls(opened)

    def __getitem__(self, key: str) -> LiveStream:
        return self._streams[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._streams)

    def __len__(self) -> int:
        return len(self._streams)

    def poll(self) -> dict[str, Chunk]:
        """Poll every stream once (never blocks)."""
        return {key: stream.poll() for key, stream in self._streams.items()}

    def common_start(self) -> float | None:
        """Latest first-sample time over all streams: from here every stream has data.

        ``None`` until every stream delivered a sample.
        """
        firsts = [s.first_timestamp for s in self._streams.values()]
        if any(f is None for f in firsts):
            return None
        return max(f for f in firsts if f is not None)

    def clock_offsets(self) -> dict[str, float]:
        """Latest clock offset (seconds, sender clock -> local clock) of each stream."""
        return {key: s.clock_offset for key, s in self._streams.items()}

    @staticmethod
    def now() -> float:
        """This machine's LSL clock in seconds (the clock every timestamp is on)."""
        return pylsl.local_clock()

    def close(self) -> None:
        """Close every inlet."""
        for stream in self._streams.values():
            stream.close()

    def __enter__(self) -> StreamGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
