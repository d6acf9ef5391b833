"""Binary wire format of activation messages (schema version 3; versions 1 and 2 still read).

One Kafka message carries the kept first-layer activations of one window. Version 3 (what
devices send; layout in ``docs/wire-format.md`` and at :func:`parse_v3_header`) has a varint
header, a float32 sample rate when exact, and the kept-unit set as a 64-bit seed
(:func:`kept_units_from_seed`, a fixed SplitMix64-based derivation) instead of K indices; values
are float16, float32 or 8-bit scaled. Version 2 layout, little-endian::

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

import functools
import hashlib
import math
import os
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from dropstream.errors import DropstreamError

MAGIC = b"DSAM"
SCHEMA_VERSION = 3
#: Versions :func:`decode_activation` reads.
READABLE_VERSIONS = (1, 2, 3)
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
#: Bytes of the authentication tag that ends every version-2 message (HMAC-SHA256).
TAG_BYTES = 32
#: Bytes of the version-3 tag: HMAC-SHA256 truncated to its first 16 bytes (128 bits; RFC 2104
#: section 5 allows truncation to at least half the hash output and 80 bits).
TAG_BYTES_V3 = 16
#: Largest unencoded-signal duration accepted, seconds (about 31 years).
MAX_UNENCODED_S = 1e9


def header_bytes(version: int) -> int:
    """Bytes of the fixed header before the ids, for schema ``version`` (1 or 2)."""
    return HEADER_BYTES if version == 1 else HEADER_BYTES_V2


def trailer_bytes(version: int) -> int:
    """Bytes of the authentication tag that ends a message of ``version`` (none in version 1;
    the optional recording time of version 2 comes before it)."""
    return 0 if version == 1 else TAG_BYTES if version == 2 else TAG_BYTES_V3


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
    seed : int or None
        Version 3: the 64-bit seed the kept set derives from
        (:func:`kept_units_from_seed`); ``None`` sends the indices themselves.
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
    seed: int | None = None
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
        and not flags & ~(KNOWN_FLAGS if version < 3 else V3_FLAGS)
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
    if h.flags & ~(V3_FLAGS if h.version == 3 else KNOWN_FLAGS):
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
    msg: ActivationMessage,
    value_dtype: str = "float16",
    version: int = SCHEMA_VERSION,
    by_reference: bool = False,
) -> bytes:
    """Serialise an :class:`ActivationMessage`.

    A version-2 or 3 message ends with a zeroed authentication tag: sign it with
    :meth:`dropstream.broker.auth.DeviceKey.sign` before sending (the service refuses it
    otherwise).

    Parameters
    ----------
    msg : ActivationMessage
    value_dtype : {"float16", "float32", "uint8"}
        Precision of the values on the wire; float16 halves the bytes and is the default;
        ``"uint8"`` (version 3) sends 8-bit scaled values (:func:`quantise_uint8`).
    version : {3, 2, 1}
        Schema version; 1 and 2 only to produce old-format messages (tests, old topics).
    by_reference : bool
        Version 3: send the stream block as its 8-byte reference (:func:`stream_ref`) instead
        of in full; a reader resolves it only if it has seen the block in full
        (:class:`StreamBlocks`).

    Raises
    ------
    WireFormatError
        If a field is out of range, or a value does not fit ``value_dtype`` (use float32).
    """
    if value_dtype not in _VALUE_CODES or (value_dtype == "uint8" and version < 3):
        raise WireFormatError(
            f"value_dtype must be float16 or float32 (or uint8 from version 3), not {value_dtype!r}"
        )
    if version not in READABLE_VERSIONS:
        raise WireFormatError(f"schema version must be one of {READABLE_VERSIONS}, not {version}")
    check_unencoded(msg.unencoded_s)
    if version == 1 and msg.unencoded_s:
        raise WireFormatError("schema version 1 cannot carry unencoded_s; use version 2")
    if version < 3 and (msg.seed is not None or by_reference):
        raise WireFormatError("a kept-unit seed or a stream reference needs schema version 3")
    indices = np.asarray(msg.indices)
    values = np.asarray(msg.values)
    if indices.ndim != 1 or values.shape != indices.shape:
        raise WireFormatError("indices and values must be 1-D arrays of the same length")
    # the set a valid seed derives is sorted, distinct and < width by construction (the device's
    # case: the index checks are skipped); any other set is checked
    derived = (
        version == 3
        and msg.seed is not None
        and 0 <= int(msg.seed) < 1 << 64
        and 1 <= indices.size <= msg.width <= MAX_WIDTH
        and np.array_equal(kept_units_from_seed(int(msg.seed), msg.width, indices.size), indices)
    )
    if not derived and indices.size and (indices.min() < 0):
        raise WireFormatError("kept indices must be non-negative")
    wire_idx = indices.astype(_index_dtype(msg.width))
    with np.errstate(over="ignore", invalid="ignore"):
        wire_val = values.astype("<f2" if value_dtype == "float16" else "<f4")
    if derived:
        if not np.isfinite(values).all():
            raise WireFormatError("activation values must be finite")
    else:
        _check_arrays(wire_idx, values, msg.width)
    if value_dtype == "float16" and not np.isfinite(wire_val).all():
        raise WireFormatError("a value overflows float16; encode with value_dtype='float32'")
    ids = (msg.model_id, msg.device_id, msg.stream_id)
    texts = _checked_ids.get(ids)
    if texts is None:
        texts = [s.encode("utf-8") for s in ids]
        for name, raw in zip(("model id", "device id", "stream id"), texts, strict=True):
            _check_text(name, raw)
        if len(_checked_ids) >= 1024:
            _checked_ids.clear()
        _checked_ids[ids] = texts
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
    if msg.recording_time is not None:
        check_recording_time(msg.recording_time)
    if version == 3 and msg.seed is not None and not derived:  # derived: checked above
        if not 0 <= int(msg.seed) < 1 << 64:
            raise WireFormatError("seed must be an unsigned 64-bit integer")
        if not np.array_equal(kept_units_from_seed(int(msg.seed), msg.width, msg.keep), indices):
            raise WireFormatError("indices are not the set the seed derives")
    if version == 3:
        data = _encode_v3(msg, value_dtype, header, texts, wire_idx, wire_val, by_reference)
    else:
        parts = [HEADER.pack(*header), *texts, wire_idx.tobytes(), wire_val.tobytes()]
        if msg.recording_time is not None:
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


def decode_activation(data: bytes, blocks: StreamBlocks | None = None) -> ActivationMessage:
    """Parse and validate one activation message (version 3, or 2 and 1 from old topics).

    The authentication tag is not checked here: call
    :meth:`dropstream.broker.auth.DeviceKeys.verify` first.

    Parameters
    ----------
    data : bytes
        The Kafka value.
    blocks : StreamBlocks, optional
        Version-3 stream blocks seen so far: a message carrying its block in full adds it, one
        carrying only the block's reference is resolved from it. Default: this process's
        :data:`SEEN_BLOCKS` (sharing is safe: a reference resolves only to the block it is the
        hash of); the service's :class:`~dropstream.inference.batching.BatchDecoder` keeps its
        own.

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
    if len(data) >= 5 and data[:4] == MAGIC and data[4] == 3:
        return _decode_v3(data, SEEN_BLOCKS if blocks is None else blocks)
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
    return _message(
        h,
        (model_id, device_id, stream_id),
        indices,
        values,
        unencoded_s=unencoded_s,
        recording_time=recording_time,
    )


def _message(
    h: WireHeader, ids: tuple[str, ...], indices: np.ndarray, values: np.ndarray, **optional
) -> ActivationMessage:
    """The :class:`ActivationMessage` of a checked header, its ids (model, device, stream), its
    arrays and the optional fields (both decoders' last step)."""
    return ActivationMessage(
        model_id=ids[0],
        device_id=ids[1],
        stream_id=ids[2],
        **_shared_fields(h),
        width=h.width,
        indices=indices,
        values=values,
        **optional,
    )


def device_id_bytes(data: bytes) -> bytes | None:
    """The raw device id inside a message of any version (no other validation); ``None`` for a
    version-3 message that carries its stream block by reference (the block it stands for holds
    the device id: the reader compares it with the Kafka key once resolved).

    Raises
    ------
    WireFormatError
        If ``data`` is too short to hold its header and ids.
    """
    if len(data) >= 6 and data[:4] == MAGIC and data[4] == 3:
        if data[5] & V3_BLOCK_REF and not data[5] & ~V3_FLAGS:
            return None
        # structure only (the decoders range-check the header): skip the per-window fields and
        # the sequence number's varint; the stream block is parsed once per distinct block
        pos = _V3_PREFIX_BYTES[data[5] >> 3 & 7]
        last = min(pos + 9, len(data) - 2)  # a varint has at most 10 bytes
        while pos < last and data[pos] & 0x80:
            pos += 1
        if (
            pos <= last
            and data[pos] < 0x80
            and data[pos + 1] < 0x80  # a one-byte block length
            and pos + 2 + data[pos + 1] <= len(data)
        ):
            block = bytes(data[pos + 2 : pos + 2 + data[pos + 1]])
        else:  # anything else: the general parse (raises if malformed)
            p = parse_v3_prefix(data)
            block = bytes(data[p.block_start : p.block_end])
        b = cached_v3_block(block)
        start = b.ids_offset + 2 + b.n_model
        return block[start : start + b.n_device]
    if len(data) < HEADER_BYTES or data[:4] != MAGIC:
        raise WireFormatError("not a dropstream activation message")
    start = header_bytes(data[4]) + data[58]
    end = start + data[59]
    if len(data) < end:
        raise WireFormatError("truncated before the end of the device id")
    return bytes(data[start:end])


# ---------------------------------------------------------------------------------------------
# Version 3: varint header, kept units derived from a seed, 8-bit values
# ---------------------------------------------------------------------------------------------

#: Version-3 flags: value encoding in bits 0-1, seed-derived indices, float64 sample rate,
#: unencoded-signal field present, recording time present, stream block by reference.
V3_VALUES_MASK = 0x03
V3_FLOAT16, V3_FLOAT32, V3_UINT8 = 0, 1, 2
V3_SEED = 0x04
V3_SFREQ64 = 0x08
V3_UNENCODED = 0x10
V3_RECORDING_TIME = 0x20
V3_BLOCK_REF = 0x40
V3_FLAGS = V3_VALUES_MASK | V3_SEED | V3_SFREQ64 | V3_UNENCODED | V3_RECORDING_TIME | V3_BLOCK_REF
#: Bytes of a stream reference (:func:`stream_ref`).
REF_BYTES = 8
_REF_DOMAIN = b"dropstream.stream-block.v3\x00"
#: Stream blocks a :class:`StreamBlocks` holds at most (the oldest is forgotten first).
MAX_STREAM_BLOCKS = 100_000
_V3_FIXED = struct.Struct("<4sBBdd")  # magic, version, flags, lsl_time, wall_time
_V3_COMMON = struct.Struct("<4sBBddf")  # ... and a float32 sample rate
#: Bytes before the sequence number, per ``flags >> 3 & 7`` (the optional per-window fields:
#: float64 sample rate instead of float32, unencoded signal, recording time).
_V3_PREFIX_BYTES = tuple(
    _V3_COMMON.size + 4 * (i & 1) + 8 * (i >> 1 & 1) + 8 * (i >> 2) for i in range(8)
)
_V3_SCALE = struct.Struct("<ff")  # 8-bit values: lowest value, step
_VALUE_CODES = {"float16": V3_FLOAT16, "float32": V3_FLOAT32, "uint8": V3_UINT8}
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def kept_units_from_seed(seeds: np.ndarray | int, width: int, keep: int) -> np.ndarray:
    """The kept-unit set a version-3 seed stands for: ``(K,)`` (or ``(N, K)`` for ``N`` seeds).

    Derivation "splitmix64-rank", fixed by the wire version (not by numpy): unit ``u`` of a
    layer of width ``m`` gets the key ``splitmix64(seed + (u + 1) * 0x9E3779B97F4A7C15)``
    (the ``u``-th output of Steele, Lea and Flood's SplitMix64 seeded with ``seed``; 64-bit
    wrap-around arithmetic), and the ``K`` units with the smallest keys are kept, in increasing
    order (the keys of one seed are distinct: no ties). A uniform random ``K``-subset of ``m``
    for a uniform seed; only unsigned 64-bit integer arithmetic, so every numpy version and any
    other language derives the same set (a known-answer test pins it).
    """
    global _last_set
    scalar = isinstance(seeds, (int, np.integer))
    if scalar and _last_set is not None and _last_set[0] == (int(seeds), width, keep):
        return _last_set[1]  # the encoder derives a set, then encode_activation checks it
    s = np.asarray(seeds, dtype=np.uint64)
    rows = max(1, _CHUNK_KEYS // width)
    if s.ndim == 1 and s.shape[0] > rows:  # a batch: in chunks whose keys stay in the cache
        return np.concatenate(
            [kept_units_from_seed(s[i : i + rows], width, keep) for i in range(0, len(s), rows)]
        )
    steps = _unit_steps.get(width)
    if steps is None:
        with np.errstate(over="ignore"):
            steps = np.arange(1, width + 1, dtype=np.uint64) * _GAMMA
        if len(_unit_steps) < 64:
            _unit_steps[width] = steps
    # unsigned integer array arithmetic wraps around (64-bit) without warnings; in place, one
    # temporary (the device derives a set per window)
    z = s[..., None] + steps
    t = z >> _S30
    z ^= t
    z *= _MIX1
    np.right_shift(z, _S27, out=t)
    z ^= t
    z *= _MIX2
    np.right_shift(z, _S31, out=t)
    z ^= t
    # the keys are distinct (the mixer is a bijection of distinct states): no ties to break,
    # so a partial selection picks the same set as a full sort
    if keep < width:
        order = np.argpartition(z, keep - 1, axis=-1)[..., :keep]
    else:
        order = np.broadcast_to(np.arange(width), z.shape)
    out = np.sort(order, axis=-1).astype(_index_dtype(width))
    if scalar:
        out.setflags(write=False)  # shared with the next call for the same seed
        _last_set = ((int(seeds), width, keep), out)
    return out


#: Keys derived at once for a batch of seeds (a chunk of 256 KiB of uint64 keys, ~1.6x faster
#: than the whole batch at once for 1,024 seeds of m=128).
_CHUNK_KEYS = 32_768
#: Id triples the encoder checked (-> their UTF-8 bytes), and stream blocks it built
#: (-> the block and its reference); each cleared beyond 1024 entries.
_checked_ids: dict[tuple[str, str, str], list[bytes]] = {}
_blocks_made: dict[tuple, tuple[bytes, bytes]] = {}
#: ``(u + 1) * 0x9E3779B97F4A7C15`` per layer width, and the last scalar derivation.
_unit_steps: dict[int, np.ndarray] = {}
_last_set: tuple[tuple[int, int, int], np.ndarray] | None = None


def draw_seed() -> int:
    """A fresh 64-bit seed from the operating system's CSPRNG (one per window)."""
    return int.from_bytes(os.urandom(8), "little")


def _varint(n: int) -> bytes:
    if n < 0 or n >= 1 << 64:
        raise WireFormatError(f"value {n} does not fit an unsigned 64-bit varint")
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    for i in range(pos, min(pos + 10, len(data))):
        b = data[i]
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            if n >= 1 << 64 or (i > pos and b == 0):
                raise WireFormatError("malformed varint (over 64 bits or not minimal)")
            return n, i + 1
        shift += 7
    raise WireFormatError("truncated or over-long varint")


def quantise_uint8(values: np.ndarray) -> tuple[float, float, np.ndarray]:
    """8-bit form of the values: ``lo + q * step`` with ``q`` in 0..255 (``step`` 0: all equal)."""
    v = np.asarray(values, dtype=np.float32)
    lo = float(v.min()) if v.size else 0.0
    hi = float(v.max()) if v.size else 0.0
    step = np.float32((hi - lo) / 255.0)
    if not (math.isfinite(lo) and math.isfinite(float(step))):
        raise WireFormatError("activation values must be finite")
    lo32 = np.float32(lo)
    if step == 0:
        return float(lo32), float(step), np.zeros(v.shape, np.uint8)
    x = np.subtract(v, lo32)  # float32 throughout, in place: rint((v - lo) / step) in 0..255
    x /= step
    np.rint(x, out=x)
    np.maximum(x, 0, out=x)
    np.minimum(x, 255, out=x)
    return float(lo32), float(step), x.astype(np.uint8)


def _encode_v3(
    msg: ActivationMessage,
    value_dtype: str,
    header: WireHeader,
    texts: list[bytes],
    wire_idx: np.ndarray,
    wire_val: np.ndarray,
    by_reference: bool = False,
) -> bytes:
    """Version-3 bytes from the fields :func:`encode_activation` already checked and cast
    (``wire_val``: float16 or float32, finite; a seed: matched with the indices); the stream
    block in full or by reference."""
    flags = _VALUE_CODES[value_dtype] | (V3_BLOCK_REF if by_reference else 0)
    if msg.seed is not None:
        flags |= V3_SEED
    sfreq32 = struct.pack("<f", msg.sfreq)
    exact32 = struct.unpack("<f", sfreq32)[0] == msg.sfreq
    if not exact32:
        flags |= V3_SFREQ64
    if msg.unencoded_s:
        flags |= V3_UNENCODED
    if msg.recording_time is not None:
        flags |= V3_RECORDING_TIME
    # the stream block: what every window of a stream repeats (decoders cache its parse; so
    # does the encoder, with its reference)
    fields = (header.model_version, header.window_samples, header.hop_samples, header.width)
    key = (*fields, header.keep, *texts)
    cached = _blocks_made.get(key)
    if cached is None:
        block = b"".join(_varint(int(v)) for v in (*fields, header.keep)) + b"".join(
            bytes([len(raw)]) + raw for raw in texts
        )
        if len(_blocks_made) >= 1024:
            _blocks_made.clear()
        cached = _blocks_made[key] = (block, stream_ref(block))
    block, ref = cached
    parts = [
        _V3_FIXED.pack(MAGIC, 3, flags, msg.lsl_time, msg.wall_time),
        sfreq32 if exact32 else struct.pack("<d", msg.sfreq),
        struct.pack("<d", msg.unencoded_s) if msg.unencoded_s else b"",
        b"" if msg.recording_time is None else RECORDING_TIME.pack(msg.recording_time),
        _varint(int(header.sequence)),
        *((ref,) if by_reference else (_varint(len(block)), block)),
    ]
    if msg.seed is not None:
        parts.append(struct.pack("<Q", int(msg.seed)))
    else:
        parts.append(wire_idx.tobytes())
    if value_dtype == "uint8":
        lo, step, q = quantise_uint8(wire_val)
        parts += [_V3_SCALE.pack(lo, step), q.tobytes()]
    else:
        parts.append(wire_val.tobytes())
    parts.append(bytes(TAG_BYTES_V3))
    return b"".join(parts)


class V3Prefix(NamedTuple):
    """The per-window fields of a version-3 message, and where its stream block lies."""

    flags: int
    lsl_time: float
    wall_time: float
    sfreq: float
    unencoded_s: float
    recording_time: float | None
    sequence: int
    block_start: int
    block_end: int


class V3Block(NamedTuple):
    """A version-3 stream block: fields every window of a stream repeats, and its id lengths.

    ``ids_offset`` is where the three length-prefixed ids start inside the block."""

    model_version: int
    window_samples: int
    hop_samples: int
    width: int
    keep: int
    n_model: int
    n_device: int
    n_stream: int
    ids_offset: int


def parse_v3_prefix(data: bytes) -> V3Prefix:
    """Unpack the per-window part of a version-3 message (structure only, no range checks)."""
    if len(data) < _V3_COMMON.size + 2:
        raise WireFormatError(f"truncated: {len(data)} bytes")
    magic, _, flags, lsl_time, wall_time, sfreq = _V3_COMMON.unpack_from(data)
    if magic != MAGIC:
        raise WireFormatError("not a dropstream activation message (bad magic)")
    if flags & ~V3_FLAGS or flags & V3_VALUES_MASK == 3:
        raise WireFormatError(f"unknown flags 0x{flags:02x}")
    pos = _V3_FIXED.size
    if not flags & (V3_SFREQ64 | V3_UNENCODED | V3_RECORDING_TIME):  # the usual case:
        seq, n = data[26], data[27]  # both varints of one byte (or a reference after seq)?
        if flags & V3_BLOCK_REF:
            if seq < 0x80 and len(data) >= 27 + REF_BYTES:
                return V3Prefix(flags, lsl_time, wall_time, sfreq, 0.0, None, seq, 27, 35)
        elif seq < 0x80 and n < 0x80 and len(data) >= 28 + n:
            return V3Prefix(flags, lsl_time, wall_time, sfreq, 0.0, None, seq, 28, 28 + n)
    if flags & V3_SFREQ64:
        if len(data) < pos + 8:
            raise WireFormatError("truncated in the sample rate")
        (sfreq,) = struct.unpack_from("<d", data, pos)
        pos += 8
    else:
        (sfreq,) = struct.unpack_from("<f", data, pos)
        pos += 4
    unencoded_s = 0.0
    if flags & V3_UNENCODED:
        if len(data) < pos + 8:
            raise WireFormatError("truncated in the unencoded-signal field")
        (unencoded_s,) = struct.unpack_from("<d", data, pos)
        pos += 8
        if not unencoded_s:
            raise WireFormatError("the unencoded-signal field is present but 0 (not canonical)")
    recording_time = None
    if flags & V3_RECORDING_TIME:
        if len(data) < pos + RECORDING_TIME.size:
            raise WireFormatError("truncated in the recording time")
        (recording_time,) = RECORDING_TIME.unpack_from(data, pos)
        pos += RECORDING_TIME.size
    sequence, pos = _read_varint(data, pos)
    if flags & V3_BLOCK_REF:
        n = REF_BYTES
    else:
        n, pos = _read_varint(data, pos)
    if pos + n > len(data):
        raise WireFormatError("truncated in the stream block")
    return V3Prefix(
        flags, lsl_time, wall_time, sfreq, unencoded_s, recording_time, sequence, pos, pos + n
    )


def parse_v3_block(block: bytes) -> V3Block:
    """Unpack a version-3 stream block (structure only; ids are not decoded here)."""
    pos = 0
    fields = []
    for _ in range(5):
        v, pos = _read_varint(block, pos)
        fields.append(v)
    ids_offset = pos
    lens = []
    for _ in range(3):
        if pos >= len(block):
            raise WireFormatError("truncated in the ids")
        lens.append(block[pos])
        pos += 1 + block[pos]
    if pos != len(block):
        raise WireFormatError("the stream block's length does not match its ids")
    return V3Block(*fields, *lens, ids_offset)


@functools.lru_cache(maxsize=1 << 14)
def cached_v3_block(block: bytes) -> V3Block:
    """:func:`parse_v3_block`, remembered per raw block (every window of a stream repeats its
    block; bounded, so a flood of distinct blocks costs parsing, never memory)."""
    return parse_v3_block(block)


def checked_v3_header(p: V3Prefix, b: V3Block) -> WireHeader:
    """The :class:`WireHeader` a version-3 prefix and stream block stand for, range-checked by
    :func:`check_header` (and the optional unencoded-signal and recording-time fields by their
    own checks); both decoders use it."""
    h = WireHeader(
        MAGIC, 3, p.flags, b.model_version, p.sequence, p.lsl_time, p.wall_time, p.sfreq,
        b.window_samples, b.hop_samples, b.width, b.keep, b.n_model, b.n_device, b.n_stream,
    )  # fmt: skip
    check_header(h)
    check_unencoded(p.unencoded_s)
    if p.recording_time is not None:
        check_recording_time(p.recording_time)
    return h


def dequantise_uint8(lo: ArrayLike, step: ArrayLike, q: np.ndarray) -> np.ndarray:
    """Values from their 8-bit form (:func:`quantise_uint8`): ``lo + q * step`` in float32;
    ``lo`` and ``step`` are scalars or broadcast against ``q`` (``(N, 1)`` for a batch)."""
    return np.asarray(lo, np.float32) + q.astype(np.float32) * np.asarray(step, np.float32)


def parse_v3_header(
    data: bytes, blocks: StreamBlocks | None = None
) -> tuple[WireHeader, V3Prefix, bytes, int, int | None]:
    """Header of a version-3 message, range-checked by :func:`check_header` (and the optional
    unencoded-signal and recording-time fields by their own checks).

    A block sent by reference is resolved from ``blocks`` (:meth:`StreamBlocks.resolve`); one
    sent in full is added to it.

    Returns ``(header, prefix, stream block, ids start in the block, seed)``; the indices (or
    seed) start at ``prefix.block_end``.
    """
    p = parse_v3_prefix(data)
    raw = bytes(data[p.block_start : p.block_end])
    if p.flags & V3_BLOCK_REF:
        raw = StreamBlocks.resolve(blocks, raw)
    b = parse_v3_block(raw)
    h = checked_v3_header(p, b)
    if blocks is not None and not p.flags & V3_BLOCK_REF:
        blocks.add(raw)
    seed = None
    if p.flags & V3_SEED:
        if len(data) < p.block_end + 8:
            raise WireFormatError("truncated in the seed")
        (seed,) = struct.unpack_from("<Q", data, p.block_end)
    return h, p, raw, b.ids_offset, seed


def _decode_v3(data: bytes, blocks: StreamBlocks | None = None) -> ActivationMessage:
    h, p, raw, pos, seed = parse_v3_header(data, blocks)
    idx_pos = p.block_end
    ids = []
    for name in ("model id", "device id", "stream id"):
        n = raw[pos]
        ids.append(_check_text(name, raw[pos + 1 : pos + 1 + n]))
        pos += 1 + n
    width, keep, code = h.width, h.keep, h.flags & V3_VALUES_MASK
    idx_dtype = _index_dtype(width)
    idx_bytes = 8 if seed is not None else keep * idx_dtype.itemsize
    val_bytes = keep * (2, 4, 1)[code] + (_V3_SCALE.size if code == V3_UINT8 else 0)
    expected = idx_pos + idx_bytes + val_bytes + TAG_BYTES_V3
    if len(data) != expected:
        raise WireFormatError(f"length {len(data)} bytes does not match its header ({expected})")
    if seed is not None:
        indices = kept_units_from_seed(seed, width, keep)
    else:
        indices = np.frombuffer(data, idx_dtype, keep, idx_pos)
    pos = idx_pos + idx_bytes
    if code == V3_UINT8:
        lo, step = _V3_SCALE.unpack_from(data, pos)
        q = np.frombuffer(data, np.uint8, keep, pos + _V3_SCALE.size)
        values = dequantise_uint8(lo, step, q)
    else:
        values = np.frombuffer(data, "<f2" if code == V3_FLOAT16 else "<f4", keep, pos)
    _check_arrays(indices, values, width)
    return _message(
        h,
        tuple(ids),
        indices,
        values,
        unencoded_s=p.unencoded_s,
        seed=seed,
        recording_time=p.recording_time,
    )


def stream_ref(block: bytes) -> bytes:
    """The 8-byte reference of a version-3 stream block: the first 8 bytes of
    SHA-256(``"dropstream.stream-block.v3\\0"`` + block). The block holds the model, its
    shape and the model, device and stream ids, so equal references mean equal blocks (a
    second block with a given reference takes about 2^64 tries to find)."""
    return hashlib.sha256(_REF_DOMAIN + block).digest()[:REF_BYTES]


class StreamBlocks:
    """The version-3 stream blocks a reader has seen in full, by reference (:func:`stream_ref`).

    A device sends its stream block in full in the first window it sends and every so many
    windows after (:class:`dropstream.local_encoder.encoder.WindowEncoder`'s ``block_every``),
    and an 8-byte reference in the others. Content-addressed: a reference resolves only to the
    block it is the hash of, so no message can redirect another stream's reference. Bounded:
    beyond ``limit`` blocks the oldest is forgotten (its stream's next full block adds it back).

    Parameters
    ----------
    limit : int
        Blocks held at most.
    """

    def __init__(self, limit: int = MAX_STREAM_BLOCKS) -> None:
        self.limit = int(limit)
        self._blocks: dict[bytes, bytes] = {}

    def __len__(self) -> int:
        return len(self._blocks)

    def add(self, block: bytes, ref: bytes | None = None) -> bytes:
        """Remember ``block`` (already parsed and checked by the caller); returns its reference
        (``ref``: its :func:`stream_ref`, when the caller has it already)."""
        ref = stream_ref(block) if ref is None else ref
        if ref not in self._blocks:
            if len(self._blocks) >= self.limit:
                del self._blocks[next(iter(self._blocks))]
            self._blocks[ref] = bytes(block)
        return ref

    def get(self, ref: bytes) -> bytes | None:
        """The block of ``ref``, or ``None`` if it was not seen."""
        return self._blocks.get(bytes(ref))

    @staticmethod
    def resolve(blocks: StreamBlocks | None, ref: bytes) -> bytes:
        """The block of ``ref`` from ``blocks``.

        Raises
        ------
        WireFormatError
            If ``blocks`` is ``None`` or has not seen the block: the message cannot be read
            (one line that says so and what brings the block).
        """
        block = None if blocks is None else blocks.get(ref)
        if block is None:
            raise WireFormatError(unresolved_reason(ref))
        return block


def unresolved_reason(ref: bytes) -> str:
    """The one-line reason of a window whose stream reference ``ref`` names no block seen."""
    return (
        f"{UNRESOLVED_REF}: stream reference {bytes(ref).hex()} names a stream block "
        "this reader has not seen in full (it restarted or took over the partition "
        "since); the device resends the block within its block_every windows"
    )


#: How the reason of a window whose stream reference cannot be resolved starts.
UNRESOLVED_REF = "unresolved stream reference"
#: The stream blocks :func:`decode_activation` has seen in this process (its default).
SEEN_BLOCKS = StreamBlocks()


def block_field(data: bytes | None) -> tuple[bytes, bool] | None:
    """The stream block a version-3 message carries, or its reference: ``(bytes, by
    reference)``, unchecked; ``None`` for anything else (the lookback's scan of a partition)."""
    if not isinstance(data, (bytes, bytearray)) or data[4:5] != b"\x03" or len(data) < 6:
        return None
    try:
        p = parse_v3_prefix(data)
    except WireFormatError:
        return None
    return bytes(data[p.block_start : p.block_end]), bool(p.flags & V3_BLOCK_REF)
