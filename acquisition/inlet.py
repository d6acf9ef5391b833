"""Live LSL inlets: poll chunks with corrected timestamps, loss accounting and reconnection.

Typical use (what ``dropstream connect`` does)::

    from dropstream.acquisition import LiveStream

    with LiveStream.connect(type="EEG", timeout=5.0) as eeg:
        print(eeg.info.channel_names, eeg.info.sfreq)
        while True:
            chunk = eeg.poll()          # never blocks
            if chunk.n_samples:
                handle(chunk.data, chunk.timestamps)   # (n, C) microvolts, (n,) seconds
            for gap in chunk.gaps:
                log(gap.start, gap.duration, gap.lost_samples)
            time.sleep(0.01)

Timestamps are on the *local* LSL clock (:func:`pylsl.local_clock`): liblsl corrects the
sender's clock offset (``proc_clocksync``), and :class:`~dropstream.acquisition.loss.SampleTimeline`
removes jitter per contiguous segment. Voltage channels are delivered in microvolts
(:mod:`dropstream.acquisition.units`): the inlet reads every unit convention of the header, holds
the first ``unit_check_s`` seconds back until their amplitude fits the channel type, and refuses
the stream (:class:`~dropstream.acquisition.units.UnitError`) when it does not.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import pylsl
from pylsl.util import LostError
from pylsl.util import TimeoutError as LslTimeoutError

from dropstream.acquisition.errors import (
    NonFiniteSampleError,
    RateChangedError,
    StreamLostError,
    StreamNotFoundError,
    UnsupportedStreamError,
)
from dropstream.acquisition.info import StreamInfo, delivered, from_lsl
from dropstream.acquisition.loss import Gap, SampleTimeline
from dropstream.acquisition.resolve import resolve_stream
from dropstream.acquisition.units import check_amplitude

log = logging.getLogger(__name__)

Policy = Literal["flag", "raise"]


@dataclass(frozen=True)
class Chunk:
    """Samples received by one :meth:`LiveStream.poll`.

    Attributes
    ----------
    data : np.ndarray
        ``(n_samples, n_channels)`` float64 in the units of :attr:`LiveStream.info` (voltage
        channels in microvolts).
    timestamps : np.ndarray
        ``(n_samples,)`` seconds on the local LSL clock, after clock-offset correction and dejitter.
    gaps : tuple of Gap
        Lost samples detected before or between these samples (against the nominal rate).
    nonfinite : np.ndarray
        ``(n_samples,)`` bool, True where any channel is NaN or infinite. Such samples are kept
        as received (never silently repaired); consumers must skip or reject them.
    stream_lost : bool
        True when the stream has delivered nothing for ``lost_after`` seconds and is considered
        lost (the inlet keeps trying to reconnect).
    rate_changed : bool
        True when the measured rate differs from the nominal rate (see ``measured_rate``).
    measured_rate : float | None
        Effective rate in Hz over the last seconds of data, ``None`` until enough data arrived.
    received_at : float
        Local LSL clock time at which the chunk was pulled.
    """

    data: np.ndarray
    timestamps: np.ndarray
    gaps: tuple[Gap, ...] = ()
    nonfinite: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    stream_lost: bool = False
    rate_changed: bool = False
    measured_rate: float | None = None
    received_at: float = 0.0

    @property
    def n_samples(self) -> int:
        """Number of samples in the chunk."""
        return int(self.timestamps.shape[0])

    @property
    def lost_samples(self) -> int:
        """Samples lost in the gaps reported with this chunk."""
        return sum(g.lost_samples for g in self.gaps)


class LiveStream:
    """A polled inlet on one regular- or irregular-rate numeric LSL stream.

    Opens a pylsl inlet with ``recover=True`` and ``proc_clocksync`` (clock-offset correction).
    Dejitter and loss accounting are done by :class:`~dropstream.acquisition.loss.SampleTimeline`
    (liblsl's dejitter smears gaps, see :mod:`dropstream.acquisition.loss`).

    Parameters
    ----------
    stream : pylsl.StreamInfo
        A resolved stream (see :func:`dropstream.acquisition.resolve.resolve_stream` or
        :meth:`connect`).
    timeout : float
        Seconds to wait for the full header, the connection and the first clock offset.
    lost_after : float
        Seconds without data after which the stream is reported lost (``Chunk.stream_lost``).
        liblsl reconnects by itself when a stream with the same source id comes back; the gap
        is then reported with ``Gap.reconnected=True``.
    give_up_after : float | None
        Seconds without data after which :meth:`poll` raises
        :class:`~dropstream.acquisition.errors.StreamLostError` instead of waiting for the stream to
        come back; ``None`` (default) waits forever.
    max_buffer : float
        Seconds of data liblsl buffers when polls fall behind (older samples are dropped and
        show up as gaps).
    dejitter, jitter_tolerance, rate_tolerance :
        Passed to :class:`~dropstream.acquisition.loss.SampleTimeline`.
    on_nonfinite : {"flag", "raise"}
        ``"flag"`` marks NaN/inf samples in ``Chunk.nonfinite``; ``"raise"`` raises
        :class:`~dropstream.acquisition.errors.NonFiniteSampleError` carrying the chunk.
    on_rate_change : {"flag", "raise"}
        ``"flag"`` sets ``Chunk.rate_changed``; ``"raise"`` raises
        :class:`~dropstream.acquisition.errors.RateChangedError` carrying the chunk.
    units : str | None
        The unit of every voltage channel (``"V"``, ``"uV"``, ``"-6"``...) when the header's is
        wrong or unreadable (``--units``); ``None`` reads the header.
    unit_check_s : float
        Seconds of signal held back at the start and checked for a plausible amplitude
        (:func:`~dropstream.acquisition.units.check_amplitude`) before anything is delivered;
        ``0`` disables the check. Only streams with voltage channels are held.

    Notes
    -----
    One thread polls a given inlet (the class is not thread-safe); use one inlet per thread.

    Raises
    ------
    UnsupportedStreamError
        For string streams (use :class:`MarkerStream`).
    StreamNotFoundError
        When the stream disappears before the header could be read.
    UnitError
        When a voltage channel's unit is not a voltage (here), or the first ``unit_check_s``
        seconds do not fit the channel type in microvolts (from :meth:`poll`).
    """

    def __init__(
        self,
        stream: pylsl.StreamInfo,
        *,
        timeout: float = 5.0,
        lost_after: float = 2.0,
        give_up_after: float | None = None,
        max_buffer: float = 60.0,
        dejitter: bool = True,
        jitter_tolerance: float = 0.002,
        rate_tolerance: float = 0.02,
        on_nonfinite: Policy = "flag",
        on_rate_change: Policy = "flag",
        units: str | None = None,
        unit_check_s: float = 1.0,
    ) -> None:
        if stream.channel_format() == pylsl.cf_string:
            raise UnsupportedStreamError(
                f"stream {stream.name()!r} carries strings; open it with MarkerStream instead"
            )
        self.lost_after = lost_after
        self.give_up_after = give_up_after
        self.on_nonfinite = on_nonfinite
        self.on_rate_change = on_rate_change
        self._max_buflen = max(1, int(np.ceil(max_buffer)))
        self._inlet: pylsl.StreamInlet | None = self._open_inlet(stream)
        try:
            header = from_lsl(self._inlet.info(timeout=timeout))
            self._inlet.open_stream(timeout=timeout)
            self._clock_offset = float(self._inlet.time_correction(timeout=timeout))
        except (LslTimeoutError, LostError) as exc:
            self.close()
            raise StreamNotFoundError(
                f"stream {stream.name()!r} (source_id={stream.source_id()!r}) did not answer "
                f"within {timeout:g} s ({exc}); is its outlet still running?"
            ) from exc
        #: Header as published (units as written by the sender).
        self.header = header
        try:
            #: What the inlet delivers (voltage channels in microvolts).
            self.info: StreamInfo
            self.info, self.units = delivered(header, units)
        except Exception:
            self.close()
            raise
        self._scale = np.array(self.units.factors, dtype=np.float64)
        if self.units.assumed:
            names = self.units.assumed
            log.warning(
                "stream %s: %d voltage channel(s) (%s) declare no unit; read as microvolts and "
                "checked against their amplitude - make the sender declare one, or pass --units",
                header.describe(),
                len(names),
                ", ".join(names[:5]) + ("..." if len(names) > 5 else ""),
            )
        self._needs_scale = self.units.needs_scale
        voltage = any(u == "microvolts" for u in self.info.units)
        self._check_samples = (
            int(np.ceil(unit_check_s * header.sfreq))
            if voltage and unit_check_s > 0 and header.sfreq > 0
            else 0
        )
        self._held: list[Chunk] = []
        self.timeline = (
            SampleTimeline(
                header.sfreq * header.speed,
                dejitter=dejitter,
                jitter_tolerance=jitter_tolerance,
                rate_tolerance=rate_tolerance,
            )
            if header.sfreq > 0
            else None
        )
        self._max_pull = max(1024, int(header.sfreq) * 2)
        self._irregular_count = 0
        #: Timestamp of the first sample received, ``None`` before.
        self.first_timestamp: float | None = None
        self._lost = False
        self._last_arrival = pylsl.local_clock()
        self._resolver: pylsl.ContinuousResolver | None = None

    @classmethod
    def connect(
        cls,
        *,
        name: str | None = None,
        type: str | None = None,
        source_id: str | None = None,
        timeout: float = 5.0,
        **options: object,
    ) -> LiveStream:
        """Resolve one stream by name, type and/or source id and open it.

        Raises :class:`~dropstream.acquisition.errors.StreamNotFoundError` (listing what was found)
        when nothing matches within ``timeout`` seconds. ``options`` go to the constructor.
        """
        stream = resolve_stream(name=name, type=type, source_id=source_id, timeout=timeout)
        return cls(stream, timeout=timeout, **options)  # type: ignore[arg-type]

    # -- reading ---------------------------------------------------------------------------

    @property
    def clock_offset(self) -> float:
        """Latest estimate (seconds) of the sender clock's offset to the local LSL clock."""
        if self._inlet is not None:
            with contextlib.suppress(LslTimeoutError, LostError):
                self._clock_offset = float(self._inlet.time_correction(timeout=0.1))
        return self._clock_offset

    def recording_time(self, lsl_time: float) -> float | None:
        """Seconds into the replayed recording of the sample stamped ``lsl_time`` (local LSL
        clock), or ``None`` when the stream is not a replay that published its clock start
        (:class:`~dropstream.acquisition.info.ReplayClock`)."""
        clock = self.header.replay
        if clock is None:
            return None
        return clock.recording_time(lsl_time - self._clock_offset)

    @property
    def lost(self) -> bool:
        """True while the stream is considered lost (no data for ``lost_after`` seconds)."""
        return self._lost

    @property
    def total_samples(self) -> int:
        """Samples delivered since the inlet was opened."""
        return self.timeline.total_samples if self.timeline else self._irregular_count

    @property
    def total_lost(self) -> int:
        """Samples lost (nominal rate) since the inlet was opened."""
        return self.timeline.total_lost if self.timeline else 0

    @property
    def gaps(self) -> list[Gap]:
        """Every gap reported since the inlet was opened."""
        return list(self.timeline.gaps) if self.timeline else []

    def _pull_all(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        datas: list[np.ndarray] = []
        stamps: list[np.ndarray] = []
        if self._inlet is None:
            self._try_reopen()
            if self._inlet is None:
                return datas, stamps
        while True:
            try:
                data, ts = self._inlet.pull_chunk(
                    timeout=0.0, max_samples=self._max_pull, as_numpy=True
                )
            except LostError:
                log.warning("stream %s lost (liblsl); re-resolving", self.info.describe())
                self._lost = True
                self._drop_inlet()
                self._try_reopen()
                break
            if len(ts):
                datas.append(np.asarray(data))
                stamps.append(np.asarray(ts, dtype=np.float64))
            if len(ts) < self._max_pull:
                break
        return datas, stamps

    def poll(self) -> Chunk:
        """Everything that arrived since the last poll; never blocks.

        Returns
        -------
        Chunk
            Possibly empty (``n_samples == 0``); ``stream_lost`` tells whether the stream is
            currently considered lost.

        Raises
        ------
        NonFiniteSampleError, RateChangedError
            Only with the ``"raise"`` policies; the exception carries the chunk.
        StreamLostError
            When ``give_up_after`` is set and the stream has been silent that long.
        UnitError
            When the first ``unit_check_s`` seconds do not fit their channel types in
            microvolts (the message names the ``--units`` that would fit).
        """
        chunk = self._receive()
        if self._check_samples:
            chunk = self._hold(chunk)
        if self.on_nonfinite == "raise" and chunk.nonfinite.any():
            raise NonFiniteSampleError(
                f"stream {self.info.name!r}: {int(chunk.nonfinite.sum())} of {chunk.n_samples} "
                "samples contain NaN or infinite values; fix the sensor or open the inlet with "
                "on_nonfinite='flag' and skip the flagged samples",
                chunk,
            )
        if self.on_rate_change == "raise" and chunk.rate_changed:
            raise RateChangedError(
                f"stream {self.info.name!r} runs at {chunk.measured_rate:.3f} Hz but its header "
                f"says {self.info.sfreq:g} Hz; restart the sender with the right nominal rate",
                chunk,
            )
        return chunk

    def _hold(self, chunk: Chunk) -> Chunk:
        """Hold chunks back until ``unit_check_s`` seconds arrived, check them, release them."""
        if chunk.n_samples:
            self._held.append(chunk)
        held = sum(c.n_samples for c in self._held)
        if held < self._check_samples and not (chunk.stream_lost and held):
            return replace(
                chunk,
                data=chunk.data[:0],
                timestamps=chunk.timestamps[:0],
                gaps=(),
                nonfinite=chunk.nonfinite[:0],
            )
        parts, self._held = self._held, []
        self._check_samples = 0
        merged = Chunk(
            data=np.concatenate([c.data for c in parts]),
            timestamps=np.concatenate([c.timestamps for c in parts]),
            gaps=tuple(g for c in parts for g in c.gaps),
            nonfinite=np.concatenate([c.nonfinite for c in parts]),
            stream_lost=chunk.stream_lost,
            rate_changed=chunk.rate_changed,
            measured_rate=chunk.measured_rate,
            received_at=chunk.received_at,
        )
        for line in check_amplitude(
            merged.data,
            self.info.sfreq,
            self.info.channel_types,
            source=f"stream {self.info.name!r}",
            declared=self.header.units,
            factors=self.units.factors,
            stated=self.units.stated,
        ):
            log.warning(line)
        return merged

    def _receive(self) -> Chunk:
        """Pull, scale and time-stamp everything that arrived (no hold, no policy)."""
        datas, stamps = self._pull_all()
        now = pylsl.local_clock()
        n_ch = self.info.n_channels
        if not stamps:
            silent = now - self._last_arrival
            if not self._lost and silent > self.lost_after:
                self._lost = True
                log.warning(
                    "stream %s delivered nothing for %.1f s: considered lost, waiting for it",
                    self.info.describe(),
                    silent,
                )
            if self.give_up_after is not None and silent > self.give_up_after:
                raise StreamLostError(
                    f"stream {self.info.describe()} delivered nothing for {silent:.1f} s "
                    f"(give_up_after={self.give_up_after:g} s); check the sensor or the replay, "
                    "then open a new inlet"
                )
            return Chunk(
                data=np.zeros((0, n_ch)),
                timestamps=np.zeros(0),
                stream_lost=self._lost,
                rate_changed=bool(self.timeline and self.timeline.rate_changed),
                measured_rate=self.timeline.measured_rate if self.timeline else None,
                received_at=now,
            )
        data = np.concatenate(datas).astype(np.float64, copy=False).reshape(-1, n_ch)
        raw = np.concatenate(stamps)
        if self._needs_scale:
            data = data * self._scale
        was_lost = self._lost
        if was_lost:
            log.warning("stream %s is back", self.info.describe())
        self._lost = False
        self._last_arrival = now
        if self.timeline is not None:
            timestamps, gaps = self.timeline.process(raw, reconnected=was_lost)
            rate_changed = self.timeline.rate_changed
            measured = self.timeline.measured_rate
        else:
            timestamps, gaps, rate_changed, measured = raw, [], False, None
            self._irregular_count += raw.size
        if self.first_timestamp is None:
            self.first_timestamp = float(timestamps[0])
        return Chunk(
            data=data,
            timestamps=timestamps,
            gaps=tuple(gaps),
            nonfinite=~np.isfinite(data).all(axis=1),
            stream_lost=False,
            rate_changed=rate_changed,
            measured_rate=measured,
            received_at=now,
        )

    # -- lifecycle -------------------------------------------------------------------------

    def _open_inlet(self, stream: pylsl.StreamInfo) -> pylsl.StreamInlet:
        return pylsl.StreamInlet(
            stream,
            max_buflen=self._max_buflen,
            recover=True,
            processing_flags=pylsl.proc_clocksync,
        )

    def _drop_inlet(self) -> None:
        inlet, self._inlet = self._inlet, None
        if inlet is not None:
            try:
                inlet.close_stream()
            finally:
                del inlet

    def _try_reopen(self) -> None:
        """Non-blocking re-resolution for streams liblsl cannot recover by itself."""
        q = self.header
        if self._resolver is None:
            pred = f"name='{q.name}' and type='{q.type}'"
            pred += (
                f" and source_id='{q.source_id}'"
                if q.source_id
                else f" and hostname='{q.hostname}'"
            )
            self._resolver = pylsl.ContinuousResolver(pred=pred)
            return
        found = self._resolver.results()
        if not found:
            return
        self._inlet = self._open_inlet(found[0])
        self._resolver = None

    def close(self) -> None:
        """Close the inlet (close inlets before their outlets)."""
        self._resolver = None
        self._drop_inlet()

    def __enter__(self) -> LiveStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LiveStream({self.info.describe() if hasattr(self, 'info') else '?'})"


@dataclass(frozen=True)
class Marker:
    """One string marker: local LSL clock time (seconds) and text."""

    timestamp: float
    text: str


class MarkerStream:
    """A polled inlet on a string marker stream (annotations, events), clock-corrected.

    Parameters
    ----------
    stream : pylsl.StreamInfo
        A resolved string stream.
    timeout : float
        Seconds to wait for the header, the connection and the first clock offset.
    """

    def __init__(self, stream: pylsl.StreamInfo, *, timeout: float = 5.0) -> None:
        if stream.channel_format() != pylsl.cf_string:
            raise UnsupportedStreamError(
                f"stream {stream.name()!r} is numeric; open it with LiveStream instead"
            )
        self._inlet: pylsl.StreamInlet | None = pylsl.StreamInlet(
            stream, recover=True, processing_flags=pylsl.proc_clocksync
        )
        try:
            self.info = from_lsl(self._inlet.info(timeout=timeout))
            self._inlet.open_stream(timeout=timeout)
            self._inlet.time_correction(timeout=timeout)
        except (LslTimeoutError, LostError) as exc:
            self.close()
            raise StreamNotFoundError(
                f"marker stream {stream.name()!r} did not answer within {timeout:g} s ({exc})"
            ) from exc

    @classmethod
    def connect(
        cls,
        *,
        name: str | None = None,
        type: str | None = None,
        source_id: str | None = None,
        timeout: float = 5.0,
    ) -> MarkerStream:
        """Resolve one marker stream and open it (see :func:`resolve_stream`)."""
        stream = resolve_stream(name=name, type=type, source_id=source_id, timeout=timeout)
        return cls(stream, timeout=timeout)

    def poll(self) -> list[Marker]:
        """Markers that arrived since the last poll (never blocks); multi-channel markers are
        joined with ``"|"``."""
        if self._inlet is None:
            return []
        samples, stamps = self._inlet.pull_chunk(timeout=0.0, max_samples=4096)
        return [
            Marker(float(t), "|".join(s)) for s, t in zip(samples or [], stamps or [], strict=True)
        ]

    def close(self) -> None:
        """Close the inlet."""
        inlet, self._inlet = self._inlet, None
        if inlet is not None:
            inlet.close_stream()
            del inlet

    def __enter__(self) -> MarkerStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
