"""Replay recordings as live LSL streams at real-time pace (``dropstream replay``).

Example (in-process, e.g. in a demo or a test)::

    from dropstream.acquisition.replay import RecordingReplay

    with RecordingReplay(["S001R02.edf"], source_id="demo") as replay:
        ...  # LiveStream.connect(source_id=replay.streams[0].source_id) receives it

Each file becomes one stream (an XDF file with several data streams becomes several), published
with its channel labels, types and units; the file's annotations go to a companion string
marker stream ``<name>-markers`` at their times. All files share one clock: sample ``i`` of
every stream is stamped ``t0 + i / (sfreq * speed)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dropstream.acquisition.errors import RecordingError
from dropstream.acquisition.info import StreamInfo
from dropstream.acquisition.publish import Publisher, Track, marker_info
from dropstream.acquisition.recording import MNE_SUFFIXES, XDF_SUFFIXES, file_stem, load_tracks


class RecordingReplay:
    """Publish one or more recordings as LSL streams, in a background thread.

    Parameters
    ----------
    paths : sequence of str or Path
        Recordings (EDF/EDF+, BDF, GDF, FIF, BrainVision, EEGLAB, XDF).
    speed, loop, start, chunk_size, wait_for_consumers :
        See :class:`~dropstream.acquisition.publish.Publisher`.
    name : str | None
        Stream name prefix: one file -> exactly this name; several files -> ``<name>-<stem>``.
        Default: the file stem.
    source_id : str | None
        Source-id prefix, same rule; default ``dropstream-replay-<stem>``. Restarting a replay
        with the same source id lets running inlets reconnect by themselves.
    units : str | None
        The unit the files' voltage values are really in (``--units``), see
        :func:`~dropstream.acquisition.recording.load_tracks`.

    Raises
    ------
    RecordingError
        For any file that is missing, unreadable, unsupported or empty (all files are loaded
        before anything is published).
    UnitError
        For a voltage channel whose unit or amplitude cannot be right (see
        :mod:`dropstream.acquisition.units`).
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        *,
        speed: float = 1.0,
        loop: bool = False,
        start: float = 0.0,
        chunk_size: int | None = None,
        name: str | None = None,
        source_id: str | None = None,
        wait_for_consumers: float = 0.0,
        units: str | None = None,
    ) -> None:
        if not paths:
            raise RecordingError("no recording given; pass at least one file to replay")
        self.paths = [Path(p) for p in paths]
        multi = len(self.paths) > 1
        self.tracks: list[Track] = []
        for i, path in enumerate(self.paths):
            stem = file_stem(path)
            if multi and any(q.name == path.name for q in self.paths[:i]):
                stem = f"{stem}-{i}"
            stream_name = (f"{name}-{stem}" if multi else name) if name else stem
            sid = (
                (f"{source_id}-{stem}" if multi else source_id)
                if source_id
                else f"dropstream-replay-{stem}"
            )
            self.tracks.extend(load_tracks(path, name=stream_name, source_id=sid, units=units))
        for track in self.tracks:
            n = track.data.shape[0]
            if start * track.info.sfreq >= n:
                raise RecordingError(
                    f"start offset {start:g} s is past the end of {track.info.name!r} "
                    f"({n / track.info.sfreq:g} s)"
                )
        self.publisher = Publisher(
            self.tracks,
            speed=speed,
            loop=loop,
            start=start,
            chunk_size=chunk_size,
            wait_for_consumers=wait_for_consumers,
        )

    @property
    def streams(self) -> list[StreamInfo]:
        """Headers of the data streams, in file order."""
        return [t.info for t in self.tracks]

    @property
    def marker_streams(self) -> list[StreamInfo]:
        """Headers of the companion marker streams (only tracks with annotations have one)."""
        return [marker_info(t.info) for t in self.tracks if t.annotations]

    @property
    def t0(self) -> float | None:
        """Local LSL clock time of the first published sample (``None`` before the start)."""
        return self.publisher.t0

    def start(self) -> RecordingReplay:
        """Create the outlets and start publishing in the background; returns ``self``."""
        self.publisher.start()
        return self

    def stop(self) -> None:
        """Stop publishing; the streams disappear from the network."""
        self.publisher.stop()

    def pause(self) -> None:
        """Pause publishing (inlets will see a gap as long as the pause)."""
        self.publisher.pause()

    def resume(self) -> None:
        """Resume after :meth:`pause`."""
        self.publisher.resume()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until everything was published (never with ``loop``); False on timeout."""
        return self.publisher.wait(timeout)

    def wait_started(self, timeout: float | None = None) -> bool:
        """Wait until the clock started; False on timeout."""
        return self.publisher.wait_started(timeout)

    def expected(self, name: str, n_samples: int) -> np.ndarray:
        """The first ``n_samples`` samples stream ``name`` publishes (after the start offset,
        looping if enabled), in the published units."""
        for track in self.tracks:
            if track.info.name == name:
                idx = self.publisher.file_index(name, np.arange(n_samples))
                return track.data[idx]
        raise KeyError(f"no stream named {name!r}; streams: {[t.info.name for t in self.tracks]}")

    def __enter__(self) -> RecordingReplay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


SUPPORTED_SUFFIXES = MNE_SUFFIXES + XDF_SUFFIXES
