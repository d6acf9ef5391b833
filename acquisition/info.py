"""What a stream is: name, type, source id, rate and channel metadata from the LSL header."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pylsl

from dropstream.acquisition.units import UnitPlan, plan_units

_FORMAT_NAMES = {
    pylsl.cf_float32: "float32",
    pylsl.cf_double64: "double64",
    pylsl.cf_string: "string",
    pylsl.cf_int32: "int32",
    pylsl.cf_int16: "int16",
    pylsl.cf_int8: "int8",
    pylsl.cf_int64: "int64",
}


@dataclass(frozen=True)
class ReplayClock:
    """How a ``dropstream replay`` stream's timestamps map to times in its recording.

    Read from the header (``desc/dropstream_replay``): sample ``p`` of the playback is stamped
    ``t0 + p / (sfreq * speed)`` on the publisher's LSL clock and is the recording's sample at
    ``start_s + p / sfreq`` (modulo ``loop_s`` when looping).

    Attributes
    ----------
    t0 : float
        Publisher's LSL-clock time of the first published sample, seconds.
    start_s : float
        Seconds into the recording of that sample.
    speed : float
        Playback speed.
    loop_s : float | None
        Seconds of recording played per loop, ``None`` without ``--loop``.
    t0_utc : float | None
        Wall-clock (Unix) time of the first published sample on the publisher.
    """

    t0: float
    start_s: float
    speed: float = 1.0
    loop_s: float | None = None
    t0_utc: float | None = None

    def recording_time(self, publisher_lsl_time: float) -> float:
        """Seconds into the recording of the sample stamped ``publisher_lsl_time``."""
        played = max(0.0, (publisher_lsl_time - self.t0) * self.speed)
        if self.loop_s:
            played %= self.loop_s
        return self.start_s + played


@dataclass(frozen=True)
class StreamInfo:
    """Description of one LSL stream, as read from its header.

    Attributes
    ----------
    name, type, source_id : str
        LSL name, content type (``"EEG"``, ``"ECG"``, ``"Markers"``...) and source id.
    sfreq : float
        Nominal sampling rate in Hz; ``0.0`` for irregular streams (markers).
    channel_names, channel_types, units : tuple of str
        One entry per channel from ``desc/channels/channel`` (``label``, ``type``, ``unit``);
        missing labels become ``"ch1"``, ``"ch2"``...; missing types take the stream type.
        For an inlet's info the units are those the inlet *delivers* (see
        :mod:`dropstream.acquisition.units`).
    channel_format : str
        ``"float32"``, ``"double64"``, ``"string"``, ``"int16"``...
    hostname, uid : str
        Machine that publishes the stream and the outlet's unique id (changes on restart).
    speed : float
        Playback speed of a replayed stream (``desc/dropstream_replay/speed``; 1.0 for live
        sensors): samples arrive at ``sfreq * speed`` per second of wall-clock time.
    replay : ReplayClock | None
        For a ``dropstream replay`` stream whose clock start was fixed when it was published:
        how its timestamps map to recording times (``None`` for live sensors).
    """

    name: str
    type: str
    source_id: str
    sfreq: float
    channel_names: tuple[str, ...]
    channel_types: tuple[str, ...]
    units: tuple[str, ...]
    channel_format: str = "float32"
    hostname: str = ""
    uid: str = field(default="", compare=False)
    speed: float = 1.0
    replay: ReplayClock | None = field(default=None, compare=False)

    @property
    def n_channels(self) -> int:
        """Number of channels."""
        return len(self.channel_names)

    def describe(self) -> str:
        """One human-readable line, used in error messages and logs."""
        rate = f"{self.sfreq:g} Hz" if self.sfreq > 0 else "irregular"
        host = f", host={self.hostname!r}" if self.hostname else ""
        return (
            f"{self.name!r} (type={self.type!r}, source_id={self.source_id!r}, "
            f"{self.n_channels} ch, {rate}{host})"
        )


def _channel_values(info: pylsl.StreamInfo, key: str) -> list[str]:
    values: list[str] = []
    channel = info.desc().child("channels").child("channel")
    while not channel.empty():
        values.append(channel.child_value(key))
        channel = channel.next_sibling("channel")
    return values


def from_lsl(info: pylsl.StreamInfo) -> StreamInfo:
    """Read a :class:`StreamInfo` from a pylsl info (use the inlet's full info for metadata).

    The units are reported as written in the header (no conversion).
    """
    n = info.channel_count()
    labels = _channel_values(info, "label")
    types = _channel_values(info, "type")
    units = _channel_values(info, "unit")

    def pad(values: list[str], default: list[str]) -> tuple[str, ...]:
        return tuple(values[i] if i < len(values) and values[i] else default[i] for i in range(n))

    return StreamInfo(
        name=info.name(),
        type=info.type(),
        source_id=info.source_id(),
        sfreq=float(info.nominal_srate()),
        channel_names=pad(labels, [f"ch{i + 1}" for i in range(n)]),
        channel_types=pad(types, [info.type()] * n),
        units=pad(units, [""] * n),
        channel_format=_FORMAT_NAMES.get(info.channel_format(), "unknown"),
        hostname=info.hostname(),
        uid=info.uid(),
        speed=_replay_speed(info),
        replay=_replay_clock(info),
    )


def _replay_speed(info: pylsl.StreamInfo) -> float:
    text = info.desc().child("dropstream_replay").child_value("speed")
    try:
        speed = float(text)
    except ValueError:
        return 1.0
    return speed if speed > 0 else 1.0


def _replay_clock(info: pylsl.StreamInfo) -> ReplayClock | None:
    node = info.desc().child("dropstream_replay")
    try:
        t0 = float(node.child_value("t0"))
        start = float(node.child_value("start_s") or 0.0)
    except ValueError:
        return None
    loop = node.child_value("loop_s")
    t0_utc = node.child_value("t0_utc")
    return ReplayClock(
        t0=t0,
        start_s=start,
        speed=_replay_speed(info),
        loop_s=float(loop) if loop else None,
        t0_utc=float(t0_utc) if t0_utc else None,
    )


def delivered(info: StreamInfo, units: str | None = None) -> tuple[StreamInfo, UnitPlan]:
    """The info an inlet reports after unit conversion, and the conversion it applies.

    Voltage channels are reported in ``"microvolts"`` (see :mod:`dropstream.acquisition.units`);
    ``units`` states the unit of every voltage channel when the header is wrong or unreadable.

    Raises
    ------
    dropstream.acquisition.units.UnitError
        When a voltage channel declares a unit that is not a voltage and ``units`` is not given.
    """
    plan = plan_units(
        info.channel_names, info.channel_types, info.units, units, source=f"stream {info.name!r}"
    )
    return replace(info, units=plan.units), plan


def to_lsl(info: StreamInfo) -> pylsl.StreamInfo:
    """Build a pylsl info (with the channel description) for an outlet publishing ``info``."""
    fmt = {v: k for k, v in _FORMAT_NAMES.items()}.get(info.channel_format, pylsl.cf_float32)
    out = pylsl.StreamInfo(info.name, info.type, info.n_channels, info.sfreq, fmt, info.source_id)
    channels = out.desc().append_child("channels")
    for label, ctype, unit in zip(info.channel_names, info.channel_types, info.units, strict=True):
        ch = channels.append_child("channel")
        ch.append_child_value("label", label)
        ch.append_child_value("type", ctype)
        ch.append_child_value("unit", unit)
    return out
