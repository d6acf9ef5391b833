"""Decode a batch of activation messages into dense tensors without a Python loop per value.

The service receives thousands of small messages per second.
:func:`dropstream.broker.wire.decode_activation` validates one message at a time (tens of
microseconds each); :func:`decode_batch` does the same validation for a whole batch at once:

* version 3 (what devices send): the messages are joined into one buffer and every fixed-size
  field, both varints (sequence number, block length) and every range check of the reference
  decoder is one numpy operation over all of them; the only per-message Python step is looking
  up the message's stream block (model, window, hop, ``m``, ``K``, ids), which is parsed and
  checked once per distinct block and cached with its validated ids;
* versions 1 and 2 (old topics): per message, only the fixed header is unpacked (one
  ``struct`` call) and range-checked by :func:`~dropstream.broker.wire.check_header`, the
  reference decoder's own check; ids are validated once per distinct id triple and cached;
* the kept indices (or seeds) and values of all messages with the same layout (width, K, value
  precision) are read as one array each and checked together (indices strictly increasing and
  below ``m``, values finite);
* any message that fails a fast check is handed to
  :func:`~dropstream.broker.wire.decode_activation`, whose
  :class:`~dropstream.broker.wire.WireFormatError` message becomes the rejection reason. The fast
  path accepts exactly what the reference decoder accepts (tests compare them on mutated
  messages).

:func:`scatter_dense` then writes the kept values of ``N`` windows into a NaN ``(N, m)`` matrix
with one fancy-indexing assignment.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from dropstream.broker.wire import (
    FLAG_FLOAT32,
    FLAG_RECORDING_TIME,
    HEADER,
    HEADER_BYTES,
    MAGIC,
    MAX_ABS_LSL_TIME,
    MAX_MESSAGE_BYTES,
    MAX_SFREQ,
    MAX_SPAN_S,
    MAX_UNENCODED_S,
    MAX_WALL_TIME,
    MAX_WIDTH,
    MIN_SFREQ,
    RECORDING_TIME,
    REF_BYTES,
    TAG_BYTES_V3,
    UNENCODED,
    V3_BLOCK_REF,
    V3_FLAGS,
    V3_RECORDING_TIME,
    V3_SEED,
    V3_SFREQ64,
    V3_UINT8,
    V3_UNENCODED,
    V3_VALUES_MASK,
    StreamBlocks,
    V3Block,
    WireFormatError,
    WireHeader,
    cached_v3_block,
    check_header,
    check_recording_time,
    check_unencoded,
    decode_activation,
    dequantise_uint8,
    header_bytes,
    kept_units_from_seed,
    stream_ref,
    trailer_bytes,
    unresolved_reason,
)

_IDS_CACHE_LIMIT = 100_000
# positions of the header fields in the tuple HEADER.unpack_from returns (from WireHeader's names)
_F = {name: i for i, name in enumerate(WireHeader._fields)}
_FVERSION, _FFLAGS, _FMVER, _FSEQ, _FLSL, _FWALL = (
    _F[n] for n in ("version", "flags", "model_version", "sequence", "lsl_time", "wall_time")
)
_FSFREQ, _FWINDOW, _FHOP, _FWIDTH, _FKEEP = (
    _F[n] for n in ("sfreq", "window_samples", "hop_samples", "width", "keep")
)
_FNMODEL, _FNDEVICE, _FNSTREAM = (_F[n] for n in ("n_model", "n_device", "n_stream"))


@dataclass
class WindowGroup:
    """Windows of one layout (same model, width ``m``, ``K``) decoded from a batch.

    Attributes
    ----------
    rows : numpy.ndarray of int64, shape (n,)
        Position of each window in the batch given to :func:`decode_batch`.
    model_id : str
    model_version : int
    width, keep : int
        First-layer width ``m`` and kept units ``K``.
    device_id, stream_id : list of str
    sequence : numpy.ndarray of uint64, shape (n,)
    window_start_lsl, window_end_lsl : numpy.ndarray of float64, shape (n,)
        LSL-clock times of each window's first and last sample, seconds.
    wall_time : numpy.ndarray of float64, shape (n,)
        Wall-clock start of each window, Unix seconds.
    hop_s : numpy.ndarray of float64, shape (n,)
        Hop between windows, seconds.
    recording_offset : numpy.ndarray of float64, shape (n,)
        Seconds into the replayed recording minus LSL time, NaN for live streams.
    unencoded_s : numpy.ndarray of float64, shape (n,)
        Seconds of signal just before each window that its device did not encode (agent down,
        stream break; 0 in version 1): a gap in the stream.
    indices : numpy.ndarray of int64, shape (n, K)
    values : numpy.ndarray of float32, shape (n, K)
    """

    rows: np.ndarray
    model_id: str
    model_version: int
    width: int
    keep: int
    device_id: list[str]
    stream_id: list[str]
    sequence: np.ndarray
    window_start_lsl: np.ndarray
    window_end_lsl: np.ndarray
    wall_time: np.ndarray
    hop_s: np.ndarray
    recording_offset: np.ndarray
    unencoded_s: np.ndarray
    indices: np.ndarray = field(repr=False)
    values: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def take(self, mask: np.ndarray) -> WindowGroup:
        """The windows selected by boolean ``mask``."""
        pick = np.flatnonzero(mask)
        return WindowGroup(
            rows=self.rows[pick],
            model_id=self.model_id,
            model_version=self.model_version,
            width=self.width,
            keep=self.keep,
            device_id=[self.device_id[i] for i in pick],
            stream_id=[self.stream_id[i] for i in pick],
            sequence=self.sequence[pick],
            window_start_lsl=self.window_start_lsl[pick],
            window_end_lsl=self.window_end_lsl[pick],
            wall_time=self.wall_time[pick],
            hop_s=self.hop_s[pick],
            recording_offset=self.recording_offset[pick],
            unencoded_s=self.unencoded_s[pick],
            indices=self.indices[pick],
            values=self.values[pick],
        )

    @staticmethod
    def concat(groups: list[WindowGroup]) -> WindowGroup:
        """One group from groups of the same model, width and K (e.g. float16 and float32
        messages), in batch order."""
        if len(groups) == 1:
            return groups[0]
        rows = np.concatenate([g.rows for g in groups])
        order = np.argsort(rows, kind="stable")
        devices = [d for g in groups for d in g.device_id]
        streams = [t for g in groups for t in g.stream_id]
        first = groups[0]
        return WindowGroup(
            rows=rows[order],
            model_id=first.model_id,
            model_version=first.model_version,
            width=first.width,
            keep=first.keep,
            device_id=[devices[i] for i in order],
            stream_id=[streams[i] for i in order],
            sequence=np.concatenate([g.sequence for g in groups])[order],
            window_start_lsl=np.concatenate([g.window_start_lsl for g in groups])[order],
            window_end_lsl=np.concatenate([g.window_end_lsl for g in groups])[order],
            wall_time=np.concatenate([g.wall_time for g in groups])[order],
            hop_s=np.concatenate([g.hop_s for g in groups])[order],
            recording_offset=np.concatenate([g.recording_offset for g in groups])[order],
            unencoded_s=np.concatenate([g.unencoded_s for g in groups])[order],
            indices=np.concatenate([g.indices for g in groups])[order],
            values=np.concatenate([g.values for g in groups])[order],
        )

    def dense(self) -> np.ndarray:
        """Dense ``(n, m)`` float32 activations, NaN at dropped units (the head's input)."""
        return scatter_dense(self.indices, self.values, self.width)


@dataclass
class DecodedBatch:
    """Result of :func:`decode_batch`: valid windows by layout, and rejected messages."""

    groups: list[WindowGroup]
    rejected: list[tuple[int, str]]  # (position in the batch, reason)

    @property
    def n_windows(self) -> int:
        """Number of valid windows."""
        return sum(len(g) for g in self.groups)


def scatter_dense(
    indices: np.ndarray, values: np.ndarray, width: int, fill: float = np.nan
) -> np.ndarray:
    """Scatter kept values ``(N, K)`` at ``indices`` ``(N, K)`` into an ``(N, m)`` matrix.

    Dropped units hold ``fill``: NaN by default, which is how a head
    (:class:`dropstream.inference.model.Head`) tells a dropped unit from a kept one (kept values
    are finite: the wire refuses others). One numpy assignment, no loop over windows or values.
    """
    n = indices.shape[0]
    out = np.full((n, width), fill, np.float32)
    out[np.arange(n)[:, None], indices] = values
    return out


class _IdCache:
    """Validated (model id, device id, stream id) per raw id bytes: the ids of versions 1 and 2
    (:meth:`get`) and of version-3 stream blocks (:meth:`block`), one bounded cache for both."""

    def __init__(self) -> None:
        self._cache: dict[object, tuple[str, str, str] | None] = {}

    def get(self, raw: bytes, n_model: int, n_device: int) -> tuple[str, str, str] | None:
        # the key includes the split lengths: the same bytes split differently are other ids
        key = (raw, n_model, n_device)
        hit = self._cache.get(key, False)
        if hit is not False:
            return hit  # type: ignore[return-value]
        value: tuple[str, str, str] | None
        try:
            texts = (raw[:n_model], raw[n_model : n_model + n_device], raw[n_model + n_device :])
            decoded = tuple(t.decode("utf-8") for t in texts)
            ok = all(1 <= len(t) <= 255 for t in texts) and all(s.isprintable() for s in decoded)
            value = decoded if ok else None  # type: ignore[assignment]
        except UnicodeDecodeError:
            value = None
        self._put(key, value)
        return value

    def block(self, raw: bytes) -> tuple[V3Block, tuple[str, str, str], bytes] | None:
        """A version-3 stream block, its ids and its reference (:func:`stream_ref`); ``None``
        if it is malformed, its ids are invalid or its fixed fields are out of range
        (:func:`check_header`'s rules)."""
        hit = self._cache.get(raw, False)
        if hit is not False:
            return hit  # type: ignore[return-value]
        value = None
        try:
            b = cached_v3_block(raw)
        except WireFormatError:
            b = None
        if b is not None and (
            b.window_samples >= 1
            and b.hop_samples >= 1
            and 1 <= b.keep <= b.width <= MAX_WIDTH
            and b.model_version < 2**32
        ):
            o, a, d = b.ids_offset, b.n_model, b.n_device
            plain = raw[o + 1 : o + 1 + a] + raw[o + 2 + a : o + 2 + a + d] + raw[o + 3 + a + d :]
            ids = self.get(plain, a, d)
            value = None if ids is None else (b, ids, stream_ref(raw))
        self._put(raw, value)  # type: ignore[arg-type]
        return value

    def _put(self, key: object, value: object) -> None:
        if len(self._cache) >= _IDS_CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = value  # type: ignore[assignment]


@dataclass
class _Columns:
    """Fields of the windows of one layout, before the index/value checks of
    :func:`_build_group` (``idx`` and ``val``: each window's raw bytes, one row each)."""

    rows: np.ndarray
    sequence: np.ndarray
    start: np.ndarray
    end: np.ndarray
    hop: np.ndarray
    wall: np.ndarray
    recording_offset: np.ndarray
    unencoded: np.ndarray
    device: list[str]
    stream: list[str]
    idx: np.ndarray
    val: np.ndarray

    @classmethod
    def of_items(cls, items: list) -> _Columns:
        """From the per-message tuples of the version 1 and 2 loop."""
        n = len(items)

        def col(i: int, dtype: type) -> np.ndarray:
            return np.fromiter((it[i] for it in items), dtype, n)

        def raw(i: int) -> np.ndarray:
            return np.frombuffer(b"".join([it[i] for it in items]), np.uint8).reshape(n, -1)

        return cls(
            rows=col(0, np.int64),
            sequence=col(1, np.uint64),
            start=col(2, np.float64),
            end=col(3, np.float64),
            hop=col(4, np.float64),
            wall=col(8, np.float64),
            recording_offset=col(9, np.float64),
            unencoded=col(10, np.float64),
            device=[it[5][1] for it in items],
            stream=[it[5][2] for it in items],
            idx=raw(6),
            val=raw(7),
        )


class BatchDecoder:
    """Decodes batches of raw activation message values (keeps an id cache across batches, and
    the version-3 stream blocks seen in full, to resolve windows that send only their block's
    reference: :class:`~dropstream.broker.wire.StreamBlocks`)."""

    def __init__(self) -> None:
        self._ids = _IdCache()
        self.stream_blocks = StreamBlocks()

    def decode(self, payloads: Sequence[bytes | None]) -> DecodedBatch:
        """Validate and decode ``payloads``; see the module docstring.

        Parameters
        ----------
        payloads : sequence of bytes
            Kafka message values, in consumption order.
        """
        rejected: list[tuple[int, str]] = []
        v3 = [
            row for row, data in enumerate(payloads) if type(data) is bytes and data[4:5] == b"\x03"
        ]
        columns: dict[tuple, list[_Columns]] = {}
        if len(v3) < len(payloads):  # older versions, bytearrays, anything else
            v3 = self._decode_others(payloads, set(v3), columns, rejected)
        if v3:
            msgs = payloads if len(v3) == len(payloads) else [payloads[r] for r in v3]
            bad, unresolved = self._decode_v3(v3, msgs, columns)  # type: ignore[arg-type]
            rejected.extend((row, _reason(payloads[row], self.stream_blocks)) for row in bad)
            rejected.extend(unresolved)
        groups = []
        for key, parts in columns.items():
            built = []
            for part in parts:
                group, bad = _build_group(*key, part)
                rejected.extend((row, _reason(payloads[row], self.stream_blocks)) for row in bad)
                if group is not None:
                    built.append(group)
            if built:
                groups.append(WindowGroup.concat(built))
        rejected.sort()
        return DecodedBatch(groups, rejected)

    def _decode_others(
        self,
        payloads: Sequence[bytes | None],
        v3: set[int],
        columns: dict[tuple, list[_Columns]],
        rejected: list[tuple[int, str]],
    ) -> list[int]:
        """Versions 1 and 2, one message at a time (old topics; rows in ``v3`` skipped); adds
        their windows to ``columns`` and refusals to ``rejected``. Returns the rows of version
        3 (``v3`` and version-3 bytearrays), in order."""
        # layout key -> list of (row, header tuple, ids, index bytes, value bytes)
        layouts: dict[tuple, list] = {}
        unpack = HEADER.unpack_from
        unpack_unencoded = UNENCODED.unpack_from
        for row, data in enumerate(payloads):
            if row in v3:
                continue
            if isinstance(data, bytearray) and data[4:5] == b"\x03":
                v3.add(row)
                continue
            if (
                not isinstance(data, (bytes, bytearray))
                or len(data) < HEADER_BYTES
                or len(data) > MAX_MESSAGE_BYTES
            ):
                rejected.append((row, _reason(data, self.stream_blocks)))
                continue
            h = unpack(data)  # a plain tuple in WireHeader order, read by the _F* indices
            try:
                check_header(h)  # the reference decoder's own range checks
            except WireFormatError as exc:
                rejected.append((row, str(exc)))
                continue
            flags, sfreq, lsl, width, keep = h[_FFLAGS], h[_FSFREQ], h[_FLSL], h[_FWIDTH], h[_FKEEP]
            a, b, c = h[_FNMODEL], h[_FNDEVICE], h[_FNSTREAM]
            isz = 2 if width <= 65536 else 4
            vsz = 4 if flags & FLAG_FLOAT32 else 2
            version = h[_FVERSION]
            start = header_bytes(version)
            pos = start + a + b + c
            end = len(data) - trailer_bytes(version)
            timed = flags & FLAG_RECORDING_TIME
            if timed:
                end -= RECORDING_TIME.size
            if end != pos + keep * (isz + vsz):
                rejected.append((row, _reason(data, self.stream_blocks)))
                continue
            recording, unencoded = math.nan, 0.0
            try:  # the reference decoder's own checks of the optional fields, in its order
                if version == 2:
                    (unencoded,) = unpack_unencoded(data, HEADER_BYTES)
                    check_unencoded(unencoded)
                if timed:
                    (recording,) = RECORDING_TIME.unpack_from(data, end)
                    check_recording_time(recording)
            except WireFormatError as exc:
                rejected.append((row, str(exc)))
                continue
            ids = self._ids.get(bytes(data[start:pos]), a, b)
            if ids is None:
                rejected.append((row, _reason(data, self.stream_blocks)))
                continue
            split = pos + keep * isz
            key = (ids[0], h[_FMVER], width, keep, isz, vsz)
            layouts.setdefault(key, []).append(
                (
                    row,
                    h[_FSEQ],
                    lsl,
                    lsl + (h[_FWINDOW] - 1) / sfreq,
                    h[_FHOP] / sfreq,
                    ids,
                    data[pos:split],
                    data[split:end],
                    h[_FWALL],
                    recording - lsl,
                    unencoded,
                )
            )
        for key, items in layouts.items():
            columns[key] = [_Columns.of_items(items)]
        return sorted(v3)

    def _decode_v3(
        self, rows: list[int], msgs: list[bytes], columns: dict[tuple, list[_Columns]]
    ) -> tuple[list[int], list[tuple[int, str]]]:
        """Version 3, every message at once: the fixed-size fields and both varints are read
        with numpy from the joined messages, the stream block (model, window, hop, m, K, ids:
        the same for every window of a stream; or the reference that stands for it) is parsed
        and checked once per distinct block (:meth:`_blocks_of`), and every check of the
        reference decoder is one array operation. Adds the windows to ``columns`` by layout;
        returns the rows it refuses, and ``(row, reason)`` of those whose stream reference it
        cannot resolve."""
        n = len(msgs)
        lens = np.fromiter(map(len, msgs), np.int64, n)
        at = np.zeros(n, np.int64)
        np.cumsum(lens[:-1], out=at[1:])
        joined = b"".join(msgs)
        buf = np.frombuffer(joined + bytes(_V3_PAD), np.uint8)
        flags = buf[at + 5].astype(np.int64)
        ok = (lens >= _V3_MIN_BYTES) & (lens <= MAX_MESSAGE_BYTES)
        ok &= _gather(buf, at, 4).view("<u4")[:, 0] == _MAGIC32
        ok &= ((flags & ~V3_FLAGS) == 0) & ((flags & V3_VALUES_MASK) != 3)
        lsl = _gather(buf, at + 6, 8).view("<f8")[:, 0]
        wall = _gather(buf, at + 14, 8).view("<f8")[:, 0]
        wide = (flags & V3_SFREQ64) != 0
        with np.errstate(invalid="ignore"):  # a signalling NaN widens to NaN: refused below
            sfreq = np.where(
                wide,
                _gather(buf, at + 22, 8).view("<f8")[:, 0],
                _gather(buf, at + 22, 4).view("<f4")[:, 0].astype(np.float64),
            )
        pos = at + 26 + 4 * wide
        has_unencoded = (flags & V3_UNENCODED) != 0
        unencoded = np.where(has_unencoded, _gather(buf, pos, 8).view("<f8")[:, 0], 0.0)
        pos += 8 * has_unencoded
        has_recording = (flags & V3_RECORDING_TIME) != 0
        recording = np.where(has_recording, _gather(buf, pos, 8).view("<f8")[:, 0], np.nan)
        pos += 8 * has_recording
        sequence, size, good = _varints(buf, pos)
        ok &= good
        pos += size
        by_ref = (flags & V3_BLOCK_REF) != 0  # the block's 8-byte reference, no length
        block_len, size, good = _varints(buf, pos)
        ok &= by_ref | (good & (block_len <= MAX_MESSAGE_BYTES))
        block_start = np.where(by_ref, pos, pos + size)
        block_end = block_start + np.where(
            by_ref, REF_BYTES, np.where(ok, block_len, 0).astype(np.int64)
        )
        ok &= block_end <= at + lens
        with np.errstate(invalid="ignore"):  # NaN compares False: refused, as in check_header
            ok &= (
                (np.abs(lsl) <= MAX_ABS_LSL_TIME)
                & (wall >= 0.0)
                & (wall <= MAX_WALL_TIME)
                & (sfreq >= MIN_SFREQ)
                & (sfreq <= MAX_SFREQ)
                & (~has_unencoded | ((unencoded > 0.0) & (unencoded <= MAX_UNENCODED_S)))
                & (~has_recording | (np.isfinite(recording) & (recording >= 0.0)))
            )
        code, blocks, unresolved = self._blocks_of(
            joined, block_start, block_end, by_ref, ok, sfreq
        )
        valid, window, hop, width, keep = _block_fields(blocks, code)
        ok &= valid & (window - 1 <= MAX_SPAN_S * sfreq) & (hop <= MAX_SPAN_S * sfreq)
        # the length the header implies, to the byte
        value_code = flags & V3_VALUES_MASK
        seeded = (flags & V3_SEED) != 0
        idx_bytes = np.where(seeded, 8, keep * np.where(width <= 65536, 2, 4)).astype(np.int64)
        val_bytes = keep * np.take([2, 4, 1, 0], value_code) + 8 * (value_code == V3_UINT8)
        ok &= lens - block_end + at == idx_bytes + val_bytes.astype(np.int64) + TAG_BYTES_V3
        # windows by layout, from their distinct (block, value code, seed flag)
        live = np.flatnonzero(ok)
        combos, inverse = np.unique(code[live] * 8 + (flags[live] & 7), return_inverse=True)
        keys: dict[tuple, int] = {}
        of_combo = []
        for combo in combos.tolist():
            b, ids, _ = blocks[combo // 8]  # type: ignore[misc]
            isz = 8 if combo & V3_SEED else (2 if b.width <= 65536 else 4)
            vsz = (2, 4, 1)[combo & V3_VALUES_MASK]
            key = (ids[0], b.model_version, b.width, b.keep, isz, vsz)
            of_combo.append(keys.setdefault(key, len(keys)))
        layout = np.asarray(of_combo, np.int64)[inverse] if len(keys) > 1 else None
        rows_arr = np.asarray(rows, np.int64)
        for key, j in keys.items():
            sel = live if layout is None else live[layout == j]
            _, _, _, k, isz, vsz = key
            nidx = 8 if isz == 8 else k * isz
            nval = k * vsz + (8 if vsz == 1 else 0)
            start_at = block_end[sel]
            columns.setdefault(key, []).append(
                _Columns(
                    rows=rows_arr[sel],
                    sequence=sequence[sel],
                    start=lsl[sel],
                    end=lsl[sel] + (window[sel] - 1) / sfreq[sel],
                    hop=hop[sel] / sfreq[sel],
                    wall=wall[sel],
                    recording_offset=recording[sel] - lsl[sel],
                    unencoded=unencoded[sel],
                    device=[blocks[c][1][1] for c in code[sel].tolist()],  # type: ignore[index]
                    stream=[blocks[c][1][2] for c in code[sel].tolist()],  # type: ignore[index]
                    idx=_gather(buf, start_at, nidx),
                    val=_gather(buf, start_at + nidx, nval),
                )
            )
        ok[unresolved] = True  # refused with their own reason
        return rows_arr[~ok].tolist(), [
            (rows[i], unresolved_reason(joined[s : s + REF_BYTES]))
            for i, s in zip(unresolved, block_start[unresolved].tolist(), strict=True)
        ]

    def _blocks_of(
        self,
        joined: bytes,
        start: np.ndarray,
        end: np.ndarray,
        by_ref: np.ndarray,
        ok: np.ndarray,
        sfreq: np.ndarray,
    ) -> tuple[np.ndarray, list, list[int]]:
        """Each message's stream block: ``(code, blocks, unresolved)`` with ``blocks[code[i]]``
        the ``(block, ids, reference)`` of message ``i`` (``None``: invalid; ``code`` -1: none,
        for messages not ``ok``), and the messages whose reference names no block known.

        The full blocks of windows that pass their header checks are remembered in
        :attr:`stream_blocks` first, so a reference resolves from the blocks seen in full
        before this batch or anywhere in it (content-addressed: the order cannot change what
        a reference means)."""
        code = np.full(len(ok), -1, np.int64)
        distinct: dict[bytes, int] = {}
        full = np.flatnonzero(ok & ~by_ref)
        code[full] = [
            distinct.setdefault(joined[s:e], len(distinct))
            for s, e in zip(start[full].tolist(), end[full].tolist(), strict=True)
        ]
        blocks = [self._ids.block(raw) for raw in distinct]
        valid, window, hop, _, _ = _block_fields(blocks, code[full])
        passing = (
            valid & (window - 1 <= MAX_SPAN_S * sfreq[full]) & (hop <= MAX_SPAN_S * sfreq[full])
        )
        if passing.any():
            raws, add = list(distinct), self.stream_blocks.add
            for c in dict.fromkeys(code[full[passing]].tolist()):
                add(raws[c], blocks[c][2])  # type: ignore[index]
        refs = np.flatnonzero(ok & by_ref)
        if not len(refs):
            return code, blocks, []
        named = [joined[s : s + REF_BYTES] for s in start[refs].tolist()]
        of_ref = {}  # each distinct reference resolved once: its block's code, -1 if unknown
        for ref in dict.fromkeys(named):
            raw = self.stream_blocks.get(ref)
            of_ref[ref] = -1 if raw is None else distinct.setdefault(raw, len(distinct))
        code[refs] = [of_ref[ref] for ref in named]
        blocks += [self._ids.block(raw) for raw in list(distinct)[len(blocks) :]]
        unresolved = refs[code[refs] < 0].tolist()
        return code, blocks, unresolved


def _block_fields(blocks: list, code: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per message (``blocks[code[i]]``; -1 or ``None``: invalid): valid, then window, hop,
    width and K as floats (they compare with the sample rate as check_header's Python ints
    do: every one below 2**53 once the header passed)."""
    invalid = (0.0, 1.0, 1.0, 1.0, 1.0)
    table = np.array(
        [invalid if e is None else (1.0, *(float(v) for v in e[0][1:5])) for e in [*blocks, None]]
    )[code]
    return table[:, 0] > 0, table[:, 1], table[:, 2], table[:, 3], table[:, 4]


#: Zero bytes after the joined version-3 messages: every fixed-position read of a (possibly
#: truncated) last message stays inside the buffer.
_V3_PAD = 96
#: The shortest version-3 message the reference decoder reads past its prefix.
_V3_MIN_BYTES = 28
_MAGIC32 = int.from_bytes(MAGIC, "little")
_TEN = np.arange(10)
_SEVENS = (7 * _TEN).astype(np.uint64)


def _gather(buf: np.ndarray, at: np.ndarray, size: int) -> np.ndarray:
    """``(len(at), size)`` bytes of ``buf`` from each position in ``at`` (a copy)."""
    return buf[at[:, None] + np.arange(size)]


def _varints(buf: np.ndarray, at: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The unsigned LEB128 varints at positions ``at`` of ``buf``: ``(values as uint64, bytes
    each, valid)``; valid as :func:`dropstream.broker.wire`'s reader: at most 10 bytes, below
    2**64, minimal (no trailing zero byte)."""
    raw = _gather(buf, at, 10)
    stop = raw < 0x80
    size = stop.argmax(axis=1) + 1
    last = raw[np.arange(len(at)), size - 1]
    good = stop.any(axis=1) & ((size == 1) | (last != 0)) & ((size < 10) | (raw[:, 9] <= 1))
    digits = (raw & 0x7F).astype(np.uint64) << _SEVENS
    digits[size[:, None] <= _TEN] = 0
    return digits.sum(axis=1, dtype=np.uint64), size, good


def _build_group(
    model_id: str, mver: int, width: int, keep: int, isz: int, vsz: int, cols: _Columns
) -> tuple[WindowGroup | None, list[int]]:
    n = len(cols.rows)
    if isz == 8:  # version 3, kept set derived from the seeds
        seeds = cols.idx.view("<u8")[:, 0]
        idx = kept_units_from_seed(seeds, width, keep).astype(np.int64)
    else:
        idx = cols.idx.view("<u2" if isz == 2 else "<u4").reshape(n, keep).astype(np.int64)
    if vsz == 1:  # version 3, 8-bit: (lo, step) float32 then K bytes per message
        scale = cols.val[:, :8].copy().view("<f4")
        val = dequantise_uint8(scale[:, :1], scale[:, 1:], cols.val[:, 8:])
    else:
        val = cols.val.view("<f2" if vsz == 2 else "<f4").reshape(n, keep)
    ok = (idx[:, -1] < width) & np.isfinite(val).all(axis=1)
    if keep > 1:
        ok &= (np.diff(idx, axis=1) > 0).all(axis=1)
    bad = cols.rows[~ok].tolist()
    if not ok.any():
        return None, bad
    group = WindowGroup(
        rows=cols.rows,
        model_id=model_id,
        model_version=mver,
        width=width,
        keep=keep,
        device_id=cols.device,
        stream_id=cols.stream,
        sequence=cols.sequence,
        window_start_lsl=cols.start,
        window_end_lsl=cols.end,
        wall_time=cols.wall,
        hop_s=cols.hop,
        recording_offset=cols.recording_offset,
        unencoded_s=cols.unencoded,
        indices=idx,
        values=val.astype(np.float32),
    )
    return (group.take(ok) if bad else group), bad


def _reason(data: object, blocks: StreamBlocks) -> str:
    """Why the reference decoder (with the stream blocks ``blocks``) rejects ``data`` (the fast
    path found it invalid)."""
    try:
        decode_activation(data, blocks)  # type: ignore[arg-type]
    except WireFormatError as exc:
        return str(exc)
    # The fast path is stricter than the reference only where it cannot be (defensive).
    return "message rejected by the batch decoder's consistency checks"


def decode_batch(payloads: Sequence[bytes | None]) -> DecodedBatch:
    """Decode ``payloads`` with a fresh :class:`BatchDecoder` (see the module docstring)."""
    return BatchDecoder().decode(payloads)
