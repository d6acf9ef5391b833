"""Publish in-memory signals as LSL streams at real-time pace, several streams on one clock.

:class:`Publisher` is the engine under ``dropstream replay`` (:mod:`dropstream.acquisition.replay`)
and the body-sensor simulator (:mod:`dropstream.acquisition.simulator`). One background thread
serves every track: sample ``i`` of every track is stamped and pushed at ``t0 + i / (sfreq *
speed)`` on the local LSL clock - an absolute schedule, so there is no drift however long it runs -
and each track's annotations go to a companion string marker stream at their own scheduled times.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pylsl

from dropstream.acquisition.info import StreamInfo, to_lsl

log = logging.getLogger(__name__)

#: Name of the header node carrying replay parameters (read by the inlet).
REPLAY_NODE = "dropstream_replay"


@dataclass(frozen=True)
class Annotation:
    """An event of a recording: onset (seconds from the first sample), duration (s), text."""

    onset: float
    duration: float
    description: str


@dataclass
class Track:
    """One stream to publish.

    Attributes
    ----------
    info : StreamInfo
        Header to publish (name, type, source id, sfreq, channel labels/types/units).
    data : np.ndarray
        ``(n_samples, n_channels)`` float64 in the units written in ``info.units``.
    annotations : list of Annotation
        Published on a companion marker stream ``<name>-markers`` (type ``"Markers"``,
        source id ``<source_id>-markers``) when not empty.
    """

    info: StreamInfo
    data: np.ndarray
    annotations: list[Annotation] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.data = np.ascontiguousarray(self.data, dtype=np.float64)
        if self.data.ndim != 2 or self.data.shape[1] != self.info.n_channels:
            raise ValueError(
                f"track {self.info.name!r}: data shape {self.data.shape} does not match "
                f"{self.info.n_channels} channels"
            )


def marker_info(info: StreamInfo) -> StreamInfo:
    """Header of the companion marker stream of ``info``."""
    return StreamInfo(
        name=f"{info.name}-markers",
        type="Markers",
        source_id=f"{info.source_id}-markers" if info.source_id else "",
        sfreq=0.0,
        channel_names=("marker",),
        channel_types=("Markers",),
        units=("",),
        channel_format="string",
    )


def _first_played(start: float, sfreq: float, n: int) -> int:
    """Index of the first sample played when playback begins ``start`` seconds into ``n``."""
    return min(int(round(start * sfreq)), n)


class _Lane:
    """Publishing state of one track."""

    def __init__(
        self,
        track: Track,
        start: float,
        chunk_size: int,
        speed: float,
        clock: tuple[float, float] | None,
        loop: bool,
    ) -> None:
        self.track = track
        self.sfreq = track.info.sfreq
        self.n = track.data.shape[0]
        self.first = _first_played(start, self.sfreq, self.n)
        self.chunk_size = chunk_size
        self.rate = self.sfreq * speed  # samples per wall-clock second
        self.sent = 0  # samples pushed since t0 (index in the played sequence)
        info = to_lsl(track.info)
        node = info.desc().append_child(REPLAY_NODE)
        node.append_child_value("speed", repr(speed))
        node.append_child_value("start_s", repr(self.first / self.sfreq))
        if clock is not None:  # the clock start is known now: recording times can be derived
            node.append_child_value("t0", repr(clock[0]))
            node.append_child_value("t0_utc", repr(clock[1]))
            if loop:
                node.append_child_value("loop_s", repr(self.played_len / self.sfreq))
        self.outlet = pylsl.StreamOutlet(info, chunk_size=0, max_buffered=360)
        self.markers: list[tuple[float, str]] = []  # (seconds of played time, text) within a loop
        self.marker_outlet: pylsl.StreamOutlet | None = None
        first_s = self.first / self.sfreq
        end_s = self.n / self.sfreq
        for a in sorted(track.annotations, key=lambda a: a.onset):
            if first_s - 1e-9 <= a.onset < end_s:  # events outside the played data are skipped
                self.markers.append((a.onset - first_s, a.description))
        if track.annotations:
            self.marker_outlet = pylsl.StreamOutlet(to_lsl(marker_info(track.info)))
        self.markers_sent = 0  # counts across loops

    @property
    def played_len(self) -> int:
        return self.n - self.first


class Publisher:
    """Publish tracks as LSL streams in a background thread, on one shared clock.

    Parameters
    ----------
    tracks : list of Track
        Streams to publish (outlets are created by :meth:`start`).
    speed : float
        Playback speed factor (2.0 = twice real time). The header keeps the true rate and
        records the speed (``desc/dropstream_replay/speed``) so inlets account for it.
    loop : bool
        Start over at the end (timestamps stay continuous).
    start : float
        Offset in seconds into every track where playback begins.
    chunk_size : int | None
        Samples per push; ``None`` pushes whatever is due every ~10 ms.
    wait_for_consumers : float
        Seconds to wait, after the outlets exist, for every data stream to have an inlet before
        the clock starts (0: start at once, like a live device).

    Attributes
    ----------
    t0 : float | None
        Local LSL clock time of the first published sample (set when the clock starts).
    t0_utc : float | None
        Wall-clock (Unix) time of the first published sample.

    Notes
    -----
    Without ``wait_for_consumers`` the clock starts when the outlets are created, and each
    header carries it (``desc/dropstream_replay/t0``, ``t0_utc``, ``start_s``, ``loop_s``): an
    inlet maps any timestamp to a time in the recording
    (:class:`~dropstream.acquisition.info.ReplayClock`). With ``wait_for_consumers`` the start is
    unknown when the headers are written, so they do not carry it; :meth:`pause` also shifts
    the clock after the fact.
    """

    def __init__(
        self,
        tracks: list[Track],
        *,
        speed: float = 1.0,
        loop: bool = False,
        start: float = 0.0,
        chunk_size: int | None = None,
        wait_for_consumers: float = 0.0,
    ) -> None:
        if not tracks:
            raise ValueError("nothing to publish: give at least one track")
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        if start < 0:
            raise ValueError(f"start offset must be >= 0 s, got {start}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk size must be >= 1 sample, got {chunk_size}")
        self.tracks = tracks
        self.speed = float(speed)
        self.loop = loop
        self.start_offset = float(start)
        self.chunk_size = chunk_size
        self.wait_for_consumers = wait_for_consumers
        self.t0: float | None = None
        self.t0_utc: float | None = None
        self._lanes: list[_Lane] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._running = threading.Event()
        self._finished = threading.Event()
        self._lock = threading.Lock()
        self._paused_at: float | None = None
        self.error: BaseException | None = None
        self._final_sent: dict[str, int] = {}

    # -- control ---------------------------------------------------------------------------

    def start(self) -> Publisher:
        """Create the outlets and start publishing in a background thread; returns ``self``."""
        if self._thread is not None:
            raise RuntimeError("publisher already started")
        clock = None
        if self.wait_for_consumers <= 0:
            self._start_clock()
            clock = (self.t0, self.t0_utc)
        for track in self.tracks:
            cs = self.chunk_size or max(1, int(round(track.info.sfreq * self.speed * 0.01)))
            lane = _Lane(track, self.start_offset, cs, self.speed, clock, self.loop)  # type: ignore[arg-type]
            if lane.played_len <= 0:
                raise ValueError(
                    f"start offset {self.start_offset:g} s is past the end of "
                    f"{track.info.name!r} ({lane.n / lane.sfreq:g} s)"
                )
            self._lanes.append(lane)
        self._thread = threading.Thread(target=self._run, name="dropstream-publisher", daemon=True)
        self._thread.start()
        return self

    def wait_started(self, timeout: float | None = None) -> bool:
        """Wait until the clock started (``t0`` is set); False on timeout."""
        return self._running.wait(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every track has been published (never, with ``loop``); False on timeout."""
        return self._finished.wait(timeout)

    @property
    def finished(self) -> bool:
        """True when publishing ended (end of data, stop or error)."""
        return self._finished.is_set()

    def pause(self) -> None:
        """Stop pushing (like a sensor that stalls); :meth:`resume` continues with the next
        sample, stamped at the time it is pushed, so inlets see a gap as long as the pause."""
        with self._lock:
            if self._paused_at is None:
                self._paused_at = pylsl.local_clock()

    def resume(self) -> None:
        """Continue after :meth:`pause`."""
        with self._lock:
            if self._paused_at is not None:
                if self.t0 is not None:
                    self.t0 += pylsl.local_clock() - self._paused_at
                self._paused_at = None

    def stop(self, timeout: float = 5.0) -> None:
        """Stop publishing and destroy the outlets (streams disappear from the network)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._final_sent = self.samples_sent()
        for lane in self._lanes:
            lane.outlet = None  # type: ignore[assignment]
            lane.marker_outlet = None
        self._lanes.clear()

    def __enter__(self) -> Publisher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def samples_sent(self) -> dict[str, int]:
        """Samples pushed so far per stream name (kept after :meth:`stop`)."""
        if not self._lanes:
            return dict(self._final_sent)
        return {lane.track.info.name: lane.sent for lane in self._lanes}

    def file_index(self, name: str, played: np.ndarray | int) -> np.ndarray | int:
        """Index in the track's data of the ``played``-th published sample of stream ``name``."""
        for track in self.tracks:
            if track.info.name == name:
                n = track.data.shape[0]
                first = _first_played(self.start_offset, track.info.sfreq, n)
                return first + (np.asarray(played) % max(1, n - first))
        raise KeyError(name)

    # -- worker ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            if self.wait_for_consumers > 0:
                deadline = pylsl.local_clock() + self.wait_for_consumers
                for lane in self._lanes:
                    left = deadline - pylsl.local_clock()
                    if left <= 0 or not lane.outlet.wait_for_consumers(left):
                        log.warning("no consumer for %s; starting anyway", lane.track.info.name)
                        break
            if self.t0 is None:
                self._start_clock()
            self._running.set()
            while not self._stop.is_set():
                if not self._tick():
                    break
        except BaseException as exc:  # surfaced through .error; the thread must not die silently
            self.error = exc
            log.exception("publisher failed")
        finally:
            self._running.set()
            self._finished.set()

    def _start_clock(self) -> None:
        with self._lock:
            self.t0, self.t0_utc = pylsl.local_clock(), time.time()

    def _tick(self) -> bool:
        """Push everything due; sleep until the next push. False when all tracks are done."""
        with self._lock:
            if self._paused_at is not None:
                now, t0 = None, None
            else:
                now, t0 = pylsl.local_clock(), self.t0
        if now is None or t0 is None:
            self._stop.wait(0.005)
            return True
        elapsed = now - t0
        next_due = np.inf
        active = False
        for lane in self._lanes:
            total = np.inf if self.loop else lane.played_len
            due = min(int(np.floor(elapsed * lane.rate)) + 1, total)
            self._push_markers(lane, t0, elapsed)
            while due - lane.sent >= lane.chunk_size or (due == total and due > lane.sent):
                n = int(min(lane.chunk_size, due - lane.sent))
                self._push(lane, t0, n)
            if lane.sent < total:
                active = True
                next_due = min(next_due, t0 + (lane.sent + lane.chunk_size - 1) / lane.rate)
            if self.loop or lane.markers_sent < len(lane.markers):
                m = self._next_marker_time(lane, t0)
                if m is not None:
                    next_due = min(next_due, m)
                    active = True
        if not active:
            return False
        delay = max(0.0, min(next_due - pylsl.local_clock(), 0.05))
        self._stop.wait(delay)
        return True

    def _push(self, lane: _Lane, t0: float, n: int) -> None:
        played = lane.sent + np.arange(n)
        idx = lane.first + played % lane.played_len
        stamps = t0 + played / lane.rate
        lane.outlet.push_chunk(lane.track.data[idx], stamps.tolist())
        lane.sent += n

    def _marker_time(self, lane: _Lane, k: int, t0: float) -> float:
        loop_no, j = divmod(k, len(lane.markers))
        return t0 + (loop_no * lane.played_len / lane.sfreq + lane.markers[j][0]) / self.speed

    def _next_marker_time(self, lane: _Lane, t0: float) -> float | None:
        if not lane.markers or lane.marker_outlet is None:
            return None
        if not self.loop and lane.markers_sent >= len(lane.markers):
            return None
        return self._marker_time(lane, lane.markers_sent, t0)

    def _push_markers(self, lane: _Lane, t0: float, elapsed: float) -> None:
        while True:
            t = self._next_marker_time(lane, t0)
            if t is None or t > t0 + elapsed:
                return
            text = lane.markers[lane.markers_sent % len(lane.markers)][1]
            assert lane.marker_outlet is not None
            lane.marker_outlet.push_sample([text], t)
            lane.markers_sent += 1
