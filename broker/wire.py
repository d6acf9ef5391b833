"""Binary wire format of activation messages (schema version 2; version 1 is still read).

One Kafka message carries the kept first-layer activations of one window. Layout, little-endian::

    offset size  field
    0      4     magic b"DSAM"
    4      1     schema version (2; 1 in old topics)
    5      1     flags: bit 0 set = values are float32, clear = float16; bit 1 set = a recording
                 time follows the values; other bits must be 0
    6      4     model version (uint32)
    10     8     sequence number of the window in its stream (uint64)
    18     8     window start on the LSL clock, seconds (float64)
    26     8     window start on the wall clock, Unix seconds (float64)
    34     8     sample rate, Hz (float64)
    42     4     window length, samples (uint32)
    46     4     hop, samples (uint32)
    50     4     first-layer width m (uint32)
    54     4     number of kept units K (uint32)
    58     1+1+1 byte lengths of model id, device id, stream id (each 1..255)
    61     8     v2 only: unencoded signal before this window, seconds (float64, 0..1e9)
    61|69  ...   model id, device id, stream id (UTF-8)
    ...    K*i   kept unit indices, strictly increasing, < m (uint16 if m <= 65536, else uint32)
    ...    K*v   their activation values (float16 or float32, finite)
    ...    8     only with flag bit 1: the window's first sample in seconds into the replayed
                 recording (float64, finite, >= 0); set by devices reading ``dropstream replay``
    ...    32    v2 only: authentication tag, HMAC-SHA256 over the Kafka key and every byte
                 before it (written and checked by :mod:`dropstream.broker.auth`)

The message key is the device id, so one device's windows stay ordered in one partition.
Version 2 adds the unencoded-signal field (time the device did not encode, e.g. while its agent
was down) and the authentication tag. Version 1 carries neither and is decoded only to read old
topics (``unencoded_s`` reads 0). :func:`decode_activation` validates every field and raises
:class:`WireFormatError` on anything malformed; it never raises anything else. It does not check
the tag: that needs the device's key (:class:`dropstream.broker.auth.DeviceKeys`).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from dropstream.errors import DropstreamError

MAGIC = b"DSAM"
SCHEMA_VERSION = 2
#: Versions :func:`decode_activation` reads.
READABLE_VERSIONS = (1, 2)
FLAG_FLOAT32 = 0x01
#: A recording time (float64) follows the values (the stream is a replayed recording).
FLAG_RECORDING_TIME = 0x02
#: Every flag a reader of this schema understands.
KNOWN_FLAGS = FLAG_FLOAT32 | FLAG_RECORDING_TIME
#: Largest message accepted, in bytes (a 1 MiB message would be ~130k kept units).
MAX_MESSAGE_BYTES = 1 << 20
#: Largest first-layer width accepted.
MAX_WIDTH = 1 << 20
#: Sample rates accepted, Hz.
MIN_SFREQ, MAX_SFREQ = 1e-3, 1e6
#: Longest window and hop accepted, seconds (``(window - 1) / sfreq`` and ``hop / sfreq``).
MAX_SPAN_S = 86_400.0
#: Largest magnitude of an LSL-clock time accepted, seconds (~317 years).
MAX_ABS_LSL_TIME = 1e10
#: Wall-clock window starts accepted, Unix seconds (1970 .. ~5138).
MAX_WALL_TIME = 1e11


class WireHeader(NamedTuple):
    """The fixed header of an activation message, fields in wire order (see the module
    docstring for units). :data:`HEADER` packs exactly these fields, one struct code each.
    Version 2 follows it with the unencoded-signal field (:data:`UNENCODED`)."""

    magic: bytes
    version: int
    flags: int
    model_version: int
    sequence: int
    lsl_time: float
    wall_time: float
    sfreq: float
    window_samples: int
    hop_samples: int
    width: int
    keep: int
    n_model: int
    n_device: int
    n_stream: int


#: The header's struct: one code per :class:`WireHeader` field, in the same order.
HEADER = struct.Struct("<4sBBIQdddIIIIBBB")
#: Bytes of the fixed header of version 1 (version 2 shares these first 61 bytes).
HEADER_BYTES = HEADER.size
#: Version 2's unencoded-signal field (float64 seconds), right after :data:`HEADER`.
UNENCODED = struct.Struct("<d")
#: Bytes of the fixed header of version 2 (the v1 header then the unencoded-signal field).
HEADER_BYTES_V2 = HEADER_BYTES + UNENCODED.size
#: The optional recording time after the values (flag bit 1).
RECORDING_TIME = struct.Struct("<d")
#: Bytes of the authentication tag that ends every version-2 message.
TAG_BYTES = 32
#: Largest unencoded-signal duration accepted, seconds (about 31 years).
MAX_UNENCODED_S = 1e9


def header_bytes(version: int) -> int:
    """Bytes of the fixed header before the ids, for schema ``version`` (1 or 2)."""
    return HEADER_BYTES if version == 1 else HEADER_BYTES_V2


def trailer_bytes(version: int) -> int:
    """Bytes after the values (the authentication tag of version 2; none in version 1)."""
    return 0 if version == 1 else TAG_BYTES


def unpack_header(data: bytes) -> WireHeader:
    """The :class:`WireHeader` at the start of ``data`` (at least :data:`HEADER_BYTES` long);
    unpacked only, not validated."""
    return WireHeader._make(HEADER.unpack_from(data))


class WireFormatError(DropstreamError):
    """A message that is malformed, truncated, oversized, of another version or inconsistent."""


@dataclass(eq=False)
class ActivationMessage:
    """The kept activations of one window, as sent from a device to the server.

    Attributes
    ----------
    model_id : str
        Model that produced the activations (1..255 UTF-8 bytes).
    model_version : int
    device_id : str
        The device (also the Kafka key).
    stream_id : str
        The LSL stream the window was cut from (its source id).
    sequence : int
        Window number within the stream, starting at 0; gaps show lost windows.
    lsl_time : float
        Start of the window on the device's LSL clock, seconds.
    wall_time : float
        Start of the window on the wall clock, Unix seconds.
    sfreq : float
        Sample rate of the window, Hz.
    window_samples, hop_samples : int
        Window length and hop, samples.
    width : int
        First-layer width ``m``.
    indices : numpy.ndarray of uint, shape (K,)
        Kept unit indices, strictly increasing.
    values : numpy.ndarray of float, shape (K,)
        Activations of the kept units.
    unencoded_s : float
        Seconds of signal just before this window that the device did not encode: its agent
        was down (the first window after a restart) or the stream broke. 0 when the window
        follows its predecessor; the server treats a positive value as a gap in the stream.
    recording_time : float | None
        The window's first sample in seconds into the replayed recording, when the stream is a
        ``dropstream replay`` (``None`` for live sensors).
    """

    model_id: str
    model_version: int
    device_id: str
    stream_id: str
    sequence: int
    lsl_time: float
    wall_time: float
    sfreq: float
    window_samples: int
    hop_samples: int
    width: int
    indices: np.ndarray = field(repr=False)
    values: np.ndarray = field(repr=False)
    unencoded_s: float = 0.0
    recording_time: float | None = None

    @property
    def keep(self) -> int:
        """Number of kept units ``K``."""
        return int(self.indices.shape[0])

    @property
    def window_end_lsl(self) -> float:
        """Time of the window's last sample on the LSL clock, seconds."""
        return self.lsl_time + (self.window_samples - 1) / self.sfreq

    def dense(self) -> np.ndarray:
        """The width-``m`` activation vector with dropped units as zeros (float32)."""
        out = np.zeros(self.width, np.float32)
        out[self.indices] = self.values
        return out


#: Fields an :class:`ActivationMessage` and its :class:`WireHeader` share, name for name.
_SHARED_FIELDS = (
    "model_version",
    "sequence",
    "lsl_time",
    "wall_time",
    "sfreq",
    "window_samples",
    "hop_samples",
)


def _shared_fields(source: ActivationMessage | WireHeader) -> dict:
    """The shared fields of a message or header, to build the other from it (the one
    place the encoder and the decoder copy them)."""
    return {name: getattr(source, name) for name in _SHARED_FIELDS}


def _index_dtype(width: int) -> np.dtype:
    return np.dtype("<u2") if width <= 65536 else np.dtype("<u4")


def _check_text(name: str, raw: bytes) -> str:
    if not 1 <= len(raw) <= 255:
        raise WireFormatError(f"{name} must be 1..255 UTF-8 bytes, got {len(raw)}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireFormatError(f"{name} is not valid UTF-8") from exc
    if not text.isprintable():
        raise WireFormatError(f"{name} contains control characters")
    return text


def check_header(h: tuple) -> None:
    """Validate the range of every fixed-header field; both decoders (and the encoder) use it.

    Parameters
    ----------
    h : WireHeader or tuple
        The header, or the plain tuple ``HEADER.unpack_from`` returns (the batch decoder's
        case: no :class:`WireHeader` is built for a valid message).

    Raises
    ------
    WireFormatError
        Naming the first field out of range.
    """
    # the common case in one expression (~0.3 us; the field-by-field checks below cost ~1 us)
    (magic, version, flags, mver, seq, lsl, wall, sfreq, window, hop, width, keep, a, b, c) = h
    if (  # comparisons are False for NaN and infinities: no separate isfinite checks needed
        magic == MAGIC
        and version in READABLE_VERSIONS
        and not flags & ~KNOWN_FLAGS
        and -MAX_ABS_LSL_TIME <= lsl <= MAX_ABS_LSL_TIME
        and 0.0 <= wall <= MAX_WALL_TIME
        and MIN_SFREQ <= sfreq <= MAX_SFREQ
        and window >= 1
        and hop >= 1
        and window - 1 <= MAX_SPAN_S * sfreq
        and hop <= MAX_SPAN_S * sfreq
        and 1 <= keep <= width <= MAX_WIDTH
        and 0 <= mver < 2**32
        and 0 <= seq < 2**64
        and a
        and b
        and c
    ):
        return
    _header_error(WireHeader._make(h))


def _header_error(h: WireHeader) -> None:
    """Raise the :class:`WireFormatError` naming the first field of ``h`` out of range."""
    if h.magic != MAGIC:
        raise WireFormatError("not a dropstream activation message (bad magic)")
    if h.version not in READABLE_VERSIONS:
        raise WireFormatError(
            f"schema version {h.version} is not supported (this reader speaks "
            f"{READABLE_VERSIONS}); upgrade dropstream on the server"
        )
    if h.flags & ~KNOWN_FLAGS:
        raise WireFormatError(f"unknown flags 0x{h.flags:02x}")
    if not (
        -MAX_ABS_LSL_TIME <= h.lsl_time <= MAX_ABS_LSL_TIME and 0.0 <= h.wall_time <= MAX_WALL_TIME
    ):
        raise WireFormatError(
            f"window start times out of range (LSL {h.lsl_time}, must be finite and within "
            f"+-{MAX_ABS_LSL_TIME:g} s; wall {h.wall_time}, must be in 0..{MAX_WALL_TIME:g})"
        )
    sfreq = h.sfreq
    if not MIN_SFREQ <= sfreq <= MAX_SFREQ:
        raise WireFormatError(
            f"sample rate must be in [{MIN_SFREQ:g}, {MAX_SFREQ:g}] Hz, got {sfreq}"
        )
    window, hop = h.window_samples, h.hop_samples
    if window < 1 or hop < 1:
        raise WireFormatError(f"window ({window}) and hop ({hop}) must be >= 1 sample")
    if (window - 1) / sfreq > MAX_SPAN_S or hop / sfreq > MAX_SPAN_S:
        raise WireFormatError(
            f"window ({window}) or hop ({hop}) samples at {sfreq} Hz last over {MAX_SPAN_S:g} s"
        )
    if not 1 <= h.width <= MAX_WIDTH:
        raise WireFormatError(f"first-layer width must be in 1..{MAX_WIDTH}, got {h.width}")
    if not 1 <= h.keep <= h.width:
        raise WireFormatError(f"kept units K={h.keep} must be in 1..width ({h.width})")
    if not (0 <= h.model_version < 2**32 and 0 <= h.sequence < 2**64):
        raise WireFormatError("model version or sequence number out of range")
    if 0 in (h.n_model, h.n_device, h.n_stream):
        raise WireFormatError("model id, device id and stream id must be non-empty")
    raise WireFormatError(f"header fields out of range: {h}")  # unreachable if both agree


def _check_arrays(indices: np.ndarray, values: np.ndarray, width: int) -> None:
    if indices.size and (indices[-1] >= width or np.any(np.diff(indices.astype(np.int64)) <= 0)):
        raise WireFormatError(f"kept indices must be strictly increasing and < width ({width})")
    if not np.all(np.isfinite(values)):
        raise WireFormatError("activation values must be finite")


def encode_activation(
    msg: ActivationMessage, value_dtype: str = "float16", version: int = SCHEMA_VERSION
) -> bytes:
    """Serialise an :class:`ActivationMessage`.

    A version-2 message ends with a zeroed authentication tag: sign it with
    :meth:`dropstream.broker.auth.DeviceKey.sign` before sending (the service refuses it
    otherwise).

    Parameters
    ----------
    msg : ActivationMessage
    value_dtype : {"float16", "float32"}
        Precision of the values on the wire; float16 halves the bytes and is the default.
    version : {2, 1}
        Schema version; 1 only to produce old-format messages (tests, old topics).

    Raises
    ------
    WireFormatError
        If a field is out of range, or a value does not fit ``value_dtype`` (use float32).
    """
    if value_dtype not in ("float16", "float32"):
        raise WireFormatError(f"value_dtype must be float16 or float32, not {value_dtype!r}")
    if version not in READABLE_VERSIONS:
        raise WireFormatError(f"schema version must be one of {READABLE_VERSIONS}, not {version}")
    check_unencoded(msg.unencoded_s)
    if version == 1 and msg.unencoded_s:
        raise WireFormatError("schema version 1 cannot carry unencoded_s; use version 2")
    indices = np.asarray(msg.indices)
    values = np.asarray(msg.values)
    if indices.ndim != 1 or values.shape != indices.shape:
        raise WireFormatError("indices and values must be 1-D arrays of the same length")
    if indices.size and (indices.min() < 0):
        raise WireFormatError("kept indices must be non-negative")
    wire_idx = indices.astype(_index_dtype(msg.width))
    with np.errstate(over="ignore", invalid="ignore"):
        wire_val = values.astype("<f2" if value_dtype == "float16" else "<f4")
    _check_arrays(wire_idx, values, msg.width)
    if not np.all(np.isfinite(wire_val)):
        raise WireFormatError("a value overflows float16; encode with value_dtype='float32'")
    texts = [s.encode("utf-8") for s in (msg.model_id, msg.device_id, msg.stream_id)]
    for name, raw in zip(("model id", "device id", "stream id"), texts, strict=True):
        _check_text(name, raw)
    n_model, n_device, n_stream = map(len, texts)
    header = WireHeader(
        magic=MAGIC,
        version=version,
        flags=(FLAG_FLOAT32 if value_dtype == "float32" else 0)
        | (0 if msg.recording_time is None else FLAG_RECORDING_TIME),
        **_shared_fields(msg),
        width=msg.width,
        keep=indices.size,
        n_model=n_model,
        n_device=n_device,
        n_stream=n_stream,
    )
    check_header(header)
    parts = [HEADER.pack(*header), *texts, wire_idx.tobytes(), wire_val.tobytes()]
    if msg.recording_time is not None:
        check_recording_time(msg.recording_time)
        parts.append(RECORDING_TIME.pack(msg.recording_time))
    if version == 2:
        parts.insert(1, UNENCODED.pack(float(msg.unencoded_s)))
        parts.append(bytes(TAG_BYTES))
    data = b"".join(parts)
    if len(data) > MAX_MESSAGE_BYTES:
        raise WireFormatError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return data


def check_recording_time(value: float) -> None:
    """Refuse a recording time that is not finite and >= 0 s (both decoders use it)."""
    if not (math.isfinite(value) and value >= 0.0):
        raise WireFormatError(f"recording time must be finite and >= 0 s, got {value}")


def check_unencoded(unencoded_s: float) -> None:
    """Refuse unencoded signal outside [0, MAX_UNENCODED_S] s (both decoders use it)."""
    if not (math.isfinite(unencoded_s) and 0.0 <= unencoded_s <= MAX_UNENCODED_S):
        raise WireFormatError(
            f"unencoded signal must be in [0, {MAX_UNENCODED_S:g}] s, got {unencoded_s}"
        )


def decode_activation(data: bytes) -> ActivationMessage:
    """Parse and validate one activation message (version 2, or 1 from old topics).

    The authentication tag of version 2 is not checked here: call
    :meth:`dropstream.broker.auth.DeviceKeys.verify` first.

    Raises
    ------
    WireFormatError
        On any malformed, truncated, oversized, wrong-version or inconsistent input.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireFormatError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_MESSAGE_BYTES:
        raise WireFormatError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    if len(data) < HEADER_BYTES:
        raise WireFormatError(f"truncated: {len(data)} bytes, the header alone is {HEADER_BYTES}")
    h = unpack_header(data)
    check_header(h)
    width, keep = h.width, h.keep
    unencoded_s = 0.0
    start = header_bytes(h.version)
    if h.version == 2:
        if len(data) < start:
            raise WireFormatError(f"truncated: {len(data)} bytes, the header alone is {start}")
        (unencoded_s,) = UNENCODED.unpack_from(data, HEADER_BYTES)
        check_unencoded(unencoded_s)
    idx_dtype = _index_dtype(width)
    val_dtype = np.dtype("<f4" if h.flags & FLAG_FLOAT32 else "<f2")
    ids_end = start + h.n_model
    pos = ids_end + h.n_device + h.n_stream
    values_end = pos + keep * (idx_dtype.itemsize + val_dtype.itemsize)
    has_recording = bool(h.flags & FLAG_RECORDING_TIME)
    expected = values_end + (RECORDING_TIME.size if has_recording else 0) + trailer_bytes(h.version)
    if len(data) != expected:
        raise WireFormatError(f"length {len(data)} bytes does not match its header ({expected})")
    model_id = _check_text("model id", data[start:ids_end])
    device_id = _check_text("device id", data[ids_end : ids_end + h.n_device])
    stream_id = _check_text("stream id", data[pos - h.n_stream : pos])
    indices = np.frombuffer(data, idx_dtype, keep, pos)
    values = np.frombuffer(data, val_dtype, keep, pos + keep * idx_dtype.itemsize)
    _check_arrays(indices, values, width)
    recording_time = None
    if has_recording:
        (recording_time,) = RECORDING_TIME.unpack_from(data, values_end)
        check_recording_time(recording_time)
    return ActivationMessage(
        model_id=model_id,
        device_id=device_id,
        stream_id=stream_id,
        **_shared_fields(h),
        width=width,
        indices=indices,
        values=values,
        unencoded_s=unencoded_s,
        recording_time=recording_time,
    )


def device_id_bytes(data: bytes) -> bytes:
    """The raw device id inside a message of either version (no other validation).

    Raises
    ------
    WireFormatError
        If ``data`` is too short to hold its header and ids.
    """
    if len(data) < HEADER_BYTES or data[:4] != MAGIC:
        raise WireFormatError("not a dropstream activation message")
    start = header_bytes(data[4]) + data[58]
    end = start + data[59]
    if len(data) < end:
        raise WireFormatError("truncated before the end of the device id")
    return bytes(data[start:end])
