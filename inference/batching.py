"""Decode a batch of activation messages into dense tensors without a Python loop per value.

The service receives thousands of small messages per second.
:func:`dropstream.broker.wire.decode_activation` validates one message at a time (tens of
microseconds each); :func:`decode_batch` does the same
validation for a whole batch at once:

* per message, only the fixed header is unpacked (one ``struct`` call) and its fields are
  range-checked by :func:`~dropstream.broker.wire.check_header`, the reference decoder's own
  check; model/device/stream ids are validated once per distinct id triple and cached;
* the kept indices and values of all messages with the same layout (width, K, value precision)
  are joined into one buffer and read with one ``np.frombuffer`` each, then checked together
  (indices strictly increasing and below ``m``, values finite) with array operations;
* any message that fails a fast check is handed to
:func:`~dropstream.broker.wire.decode_activation`, whose
  :class:`~dropstream.broker.wire.WireFormatError` message becomes the rejection reason. The fast
  path therefore never accepts anything the reference decoder rejects.

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
    MAX_MESSAGE_BYTES,
    RECORDING_TIME,
    TAG_BYTES_V3,
    UNENCODED,
    UNRESOLVED_REF,
    V3_BLOCK_REF,
    V3_SEED,
    V3_UINT8,
    V3_VALUES_MASK,
    StreamBlocks,
    V3Block,
    WireFormatError,
    WireHeader,
    check_header,
    check_recording_time,
    check_unencoded,
    checked_v3_header,
    decode_activation,
    dequantise_uint8,
    header_bytes,
    kept_units_from_seed,
    parse_v3_block,
    parse_v3_prefix,
    trailer_bytes,
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
    """Validated (model id, device id, stream id) per raw id bytes."""

    def __init__(self) -> None:
        self._cache: dict[tuple[bytes, int, int], tuple[str, str, str] | None] = {}

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
        if len(self._cache) >= _IDS_CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = value
        return value


class BatchDecoder:
    """Decodes batches of raw activation message values (keeps an id cache across batches, and
    the version-3 stream blocks seen in full, to resolve windows that send only their block's
    reference: :class:`~dropstream.broker.wire.StreamBlocks`)."""

    def __init__(self) -> None:
        self._ids = _IdCache()
        self._blocks = _BlockCache(self._ids)
        self.stream_blocks = StreamBlocks()

    def decode(self, payloads: Sequence[bytes | None]) -> DecodedBatch:
        """Validate and decode ``payloads``; see the module docstring.

        Parameters
        ----------
        payloads : sequence of bytes
            Kafka message values, in consumption order.
        """
        rejected: list[tuple[int, str]] = []
        # layout key -> list of (row, header tuple, ids, index bytes, value bytes)
        layouts: dict[tuple, list] = {}
        unpack = HEADER.unpack_from
        unpack_unencoded = UNENCODED.unpack_from
        for row, data in enumerate(payloads):
            if isinstance(data, (bytes, bytearray)) and data[4:5] == b"\x03":
                self._add_v3(row, data, layouts, rejected)  # checks its own size and magic
                continue
            if (
                not isinstance(data, (bytes, bytearray))
                or len(data) < HEADER_BYTES
                or len(data) > MAX_MESSAGE_BYTES
            ):
                rejected.append((row, _reason(data)))
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
                rejected.append((row, _reason(data)))
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
                rejected.append((row, _reason(data)))
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
        groups = []
        for (model_id, mver, width, keep, isz, vsz), items in layouts.items():
            group, bad = _build_group(model_id, mver, width, keep, isz, vsz, items)
            for row in bad:
                rejected.append((row, _reason(payloads[row], self.stream_blocks)))
            if group is not None:
                groups.append(group)
        rejected.sort()
        return DecodedBatch(groups, rejected)

    def _add_v3(self, row: int, data: bytes, layouts: dict, rejected: list) -> None:
        """Version 3: the per-window prefix is unpacked per message; the stream block (model,
        window, hop, m, K, ids: the same for every window of a stream) is parsed and its ids
        validated once per distinct block and cached. Indices (explicit or derived from the
        seed) and values are decoded per layout in :func:`_build_group`."""
        try:
            if len(data) > MAX_MESSAGE_BYTES:
                raise WireFormatError("oversized")
            p = parse_v3_prefix(data)
            raw = bytes(data[p.block_start : p.block_end])
            by_ref = p.flags & V3_BLOCK_REF
            if by_ref:
                raw = StreamBlocks.resolve(self.stream_blocks, raw)
            b, ids = self._blocks.get(raw)
            checked_v3_header(p, b)
            recording = math.nan if p.recording_time is None else p.recording_time
            if ids is None:
                raise WireFormatError("ids")
            if not by_ref:
                self.stream_blocks.add(raw)
        except WireFormatError as exc:
            unresolved = str(exc).startswith(UNRESOLVED_REF)
            rejected.append((row, str(exc) if unresolved else _reason(data, self.stream_blocks)))
            return
        width, keep, code = b.width, b.keep, p.flags & V3_VALUES_MASK
        seeded = p.flags & V3_SEED
        isz = 8 if seeded else (2 if width <= 65536 else 4)
        vsz = (2, 4, 1)[code]
        pos = p.block_end
        split = pos + (8 if seeded else keep * isz)
        end = len(data) - TAG_BYTES_V3
        if end != split + keep * vsz + (8 if code == V3_UINT8 else 0):
            rejected.append((row, _reason(data)))
            return
        sfreq = p.sfreq
        layouts.setdefault((ids[0], b.model_version, width, keep, isz, vsz), []).append(
            (
                row,
                p.sequence,
                p.lsl_time,
                p.lsl_time + (b.window_samples - 1) / sfreq,
                b.hop_samples / sfreq,
                ids,
                data[pos:split],
                data[split:end],
                p.wall_time,
                recording - p.lsl_time,
                p.unencoded_s,
            )
        )


class _BlockCache:
    """Parsed version-3 stream blocks and their validated ids, per raw block bytes."""

    def __init__(self, ids: _IdCache) -> None:
        self._ids = ids
        self._cache: dict[bytes, tuple[V3Block, tuple[str, str, str] | None]] = {}

    def get(self, raw: bytes) -> tuple[V3Block, tuple[str, str, str] | None]:
        """``(block, ids)``; ids ``None`` when invalid. Raises WireFormatError if malformed."""
        hit = self._cache.get(raw)
        if hit is not None:
            return hit
        b = parse_v3_block(raw)
        o, a, d = b.ids_offset, b.n_model, b.n_device
        plain = raw[o + 1 : o + 1 + a] + raw[o + 2 + a : o + 2 + a + d] + raw[o + 3 + a + d :]
        value = (b, self._ids.get(plain, a, d))
        if len(self._cache) >= _IDS_CACHE_LIMIT:
            self._cache.clear()
        self._cache[raw] = value
        return value


def _build_group(
    model_id: str, mver: int, width: int, keep: int, isz: int, vsz: int, items: list
) -> tuple[WindowGroup | None, list[int]]:
    n = len(items)
    idx_raw = b"".join([it[6] for it in items])
    if isz == 8:  # version 3, kept set derived from the seeds
        idx = kept_units_from_seed(np.frombuffer(idx_raw, "<u8"), width, keep).astype(np.int64)
    else:
        idx = np.frombuffer(idx_raw, "<u2" if isz == 2 else "<u4").reshape(n, keep)
        idx = idx.astype(np.int64)
    val_raw = b"".join([it[7] for it in items])
    if vsz == 1:  # version 3, 8-bit: (lo, step) float32 then K bytes per message
        raw = np.frombuffer(val_raw, np.uint8).reshape(n, 8 + keep)
        scale = raw[:, :8].copy().view("<f4")
        val = dequantise_uint8(scale[:, :1], scale[:, 1:], raw[:, 8:])
    else:
        val = np.frombuffer(val_raw, "<f2" if vsz == 2 else "<f4").reshape(n, keep)
    ok = (idx[:, -1] < width) & np.isfinite(val).all(axis=1)
    if keep > 1:
        ok &= (np.diff(idx, axis=1) > 0).all(axis=1)
    rows = np.fromiter((it[0] for it in items), np.int64, n)
    bad = rows[~ok].tolist()
    if not ok.any():
        return None, bad
    keepers = np.flatnonzero(ok)
    sel = [items[i] for i in keepers] if len(bad) else items
    group = WindowGroup(
        rows=rows[keepers],
        model_id=model_id,
        model_version=mver,
        width=width,
        keep=keep,
        device_id=[it[5][1] for it in sel],
        stream_id=[it[5][2] for it in sel],
        sequence=np.fromiter((it[1] for it in sel), np.uint64, len(sel)),
        window_start_lsl=np.fromiter((it[2] for it in sel), np.float64, len(sel)),
        window_end_lsl=np.fromiter((it[3] for it in sel), np.float64, len(sel)),
        wall_time=np.fromiter((it[8] for it in sel), np.float64, len(sel)),
        hop_s=np.fromiter((it[4] for it in sel), np.float64, len(sel)),
        recording_offset=np.fromiter((it[9] for it in sel), np.float64, len(sel)),
        unencoded_s=np.fromiter((it[10] for it in sel), np.float64, len(sel)),
        indices=idx[keepers],
        values=val[keepers].astype(np.float32),
    )
    return group, bad


def _reason(data: object, blocks: StreamBlocks | None = None) -> str:
    """Why the reference decoder rejects ``data`` (the fast path found it invalid)."""
    try:
        decode_activation(data, blocks)  # type: ignore[arg-type]
    except WireFormatError as exc:
        return str(exc)
    # The fast path is stricter than the reference only where it cannot be (defensive).
    return "message rejected by the batch decoder's consistency checks"


def decode_batch(payloads: Sequence[bytes | None]) -> DecodedBatch:
    """Decode ``payloads`` with a fresh :class:`BatchDecoder` (see the module docstring)."""
    return BatchDecoder().decode(payloads)
