"""Batch decoding: same verdicts as the reference decoder, dense scatter without loops."""

from __future__ import annotations

import contextlib
import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dropstream.broker.wire import (
    TAG_BYTES_V3,
    UNRESOLVED_REF,
    V3_BLOCK_REF,
    ActivationMessage,
    StreamBlocks,
    WireFormatError,
    decode_activation,
    encode_activation,
)
from dropstream.inference.batching import BatchDecoder, decode_batch, scatter_dense
from dropstream.local_encoder.first_layer import draw_kept_units


def message(seq: int = 0, width: int = 64, keep: int = 16, device: str = "dev-1", **kw):
    rng = np.random.default_rng(seq)
    idx = draw_kept_units(rng, width, keep)
    fields = {
        "model_id": "m",
        "model_version": 1,
        "device_id": device,
        "stream_id": "s",
        "sequence": seq,
        "lsl_time": 100.0 + seq,
        "wall_time": 1.7e9,
        "sfreq": 250.0,
        "window_samples": 250,
        "hop_samples": 50,
        "width": width,
        "indices": idx,
        "values": rng.standard_normal(keep).astype(np.float32),
    }
    return ActivationMessage(**(fields | kw))


def test_batch_matches_reference_decoder_and_dense():
    msgs = [message(i, device=f"dev-{i % 3}") for i in range(50)]
    raw = [encode_activation(m, "float32" if i % 2 else "float16") for i, m in enumerate(msgs)]
    out = decode_batch(raw)
    assert not out.rejected
    # float16 and float32 messages are two layouts
    assert sorted(len(g) for g in out.groups) == [25, 25]
    for g in out.groups:
        dense = g.dense()
        for j, row in enumerate(g.rows.tolist()):
            ref = decode_activation(raw[row])
            # NaN at the dropped units (the head's input), the message's values elsewhere
            assert np.isnan(dense[j]).sum() == g.width - g.keep
            np.testing.assert_array_equal(np.nan_to_num(dense[j]), ref.dense())
            assert (g.device_id[j], g.stream_id[j], int(g.sequence[j])) == (
                ref.device_id,
                ref.stream_id,
                ref.sequence,
            )
            assert g.window_end_lsl[j] == ref.window_end_lsl
            assert g.window_start_lsl[j] == ref.lsl_time
            assert g.hop_s[j] == ref.hop_samples / ref.sfreq


def test_rejects_carry_the_reference_reason_and_keep_the_rest():
    good = encode_activation(message(1))
    truncated = good[:-3]
    bad_magic = b"XXXX" + good[4:]
    wrong_version = good[:4] + b"\x09" + good[5:]
    out = decode_batch([good, truncated, None, bad_magic, good, wrong_version])
    assert [row for row, _ in out.rejected] == [1, 2, 3, 5]
    reasons = dict(out.rejected)
    assert "does not match its header" in reasons[1]
    assert "bad magic" in reasons[3]
    assert "schema version 9" in reasons[5]
    assert out.n_windows == 2


def test_non_finite_and_unsorted_arrays_are_rejected_in_batch():
    m = message(2, keep=4, width=8)
    raw = bytearray(encode_activation(m, "float32"))
    end = len(raw) - TAG_BYTES_V3  # the values end before the authentication tag
    nan = bytearray(raw)
    nan[end - 4 : end] = np.float32(np.nan).tobytes()
    unsorted = bytearray(raw)
    k0 = end - 4 * 4 - 4 * 2  # start of the indices
    unsorted[k0 : k0 + 4] = np.array([3, 1], "<u2").tobytes()
    out = decode_batch([bytes(raw), bytes(nan), bytes(unsorted)])
    assert [r for r, _ in out.rejected] == [1, 2]
    assert "finite" in out.rejected[0][1]
    assert "strictly increasing" in out.rejected[1][1]


def test_versions_1_2_and_3_decode_alike_in_one_batch():
    m = message(3)
    v1, v2, v3 = (encode_activation(m, version=v) for v in (1, 2, 3))
    bad = bytearray(v2)
    bad[61:69] = np.float64(-1.0).tobytes()  # negative unencoded signal
    out = decode_batch([v1, v2, bytes(bad), v3])
    assert [r for r, _ in out.rejected] == [2] and "unencoded signal" in out.rejected[0][1]
    (group,) = out.groups  # one layout: the version does not split the batch
    assert len(group) == 3
    np.testing.assert_array_equal(group.values[0], group.values[1])
    np.testing.assert_array_equal(group.values[0], group.values[2])
    np.testing.assert_array_equal(group.indices[0], group.indices[2])
    assert group.sequence.tolist() == [m.sequence] * 3


@pytest.mark.parametrize("version", [2, 3])
def test_the_unencoded_signal_travels_with_the_window(version):
    """What the device reports it did not encode reaches the service's window group (v1: 0)."""
    after_a_restart = encode_activation(message(4, unencoded_s=2.75), version=version)
    raw = [encode_activation(message(3), version=1), after_a_restart, encode_activation(message(5))]
    (group,) = decode_batch(raw).groups
    assert group.unencoded_s.tolist() == [0.0, 2.75, 0.0]
    assert group.take(np.array([False, True, True])).unencoded_s.tolist() == [2.75, 0.0]


def test_scatter_dense():
    idx = np.array([[0, 2], [1, 3]])
    val = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    nan = np.nan  # dropped units are NaN: the head tells them from kept zeros
    np.testing.assert_array_equal(scatter_dense(idx, val, 4), [[1, nan, 2, nan], [nan, 3, nan, 4]])
    np.testing.assert_array_equal(
        scatter_dense(idx, val, 4, fill=0.0), [[1, 0, 2, 0], [0, 3, 0, 4]]
    )


GOOD = encode_activation(message(7, width=16, keep=4))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), max_size=4),
    st.integers(0, len(GOOD)),
)
def test_fast_path_agrees_with_reference_on_mutated_bytes(flips, cut):
    data = bytearray(GOOD)
    for pos, byte in flips:
        data[pos] = byte
    data = bytes(data[: max(cut, 1)]) if cut < len(GOOD) else bytes(data)
    try:
        decode_activation(data)
        reference_ok = True
    except WireFormatError:
        reference_ok = False
    out = BatchDecoder().decode([data])
    assert (out.n_windows == 1) == reference_ok
    assert (len(out.rejected) == 1) == (not reference_ok)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash(data):
    out = decode_batch([data, GOOD])
    assert out.n_windows + len(out.rejected) == 2


def test_layouts_of_one_model_merge_in_batch_order():
    from dropstream.inference.batching import WindowGroup

    msgs = [message(i, device=f"dev-{i % 2}") for i in range(9)]
    raw = [encode_activation(m, "float32" if i % 3 == 0 else "float16") for i, m in enumerate(msgs)]
    out = decode_batch(raw)
    assert len(out.groups) == 2
    merged = WindowGroup.concat(out.groups)
    assert merged.rows.tolist() == list(range(9))
    assert merged.sequence.tolist() == list(range(9))
    assert merged.device_id == [m.device_id for m in msgs]
    for j, r in enumerate(raw):
        np.testing.assert_array_equal(
            np.nan_to_num(merged.dense()[j]), decode_activation(r).dense()
        )


@pytest.mark.parametrize("version", [2, 3])
def test_wall_times_and_recording_offsets_match_the_reference_decoder(version: int):
    msgs = [message(i, recording_time=(3.5 + i if i % 2 else None)) for i in range(6)]
    good = encode_activation(message(9, recording_time=1.0), version=version)
    at = good.index(struct.pack("<d", 1.0))  # v2: before the tag; v3: after the times
    bad = good[:at] + struct.pack("<d", math.nan) + good[at + 8 :]
    raw = [encode_activation(m, version=version) for m in msgs] + [bad]
    out = decode_batch(raw)
    assert [row for row, _ in out.rejected] == [6]  # NaN recording time
    (g,) = out.groups
    for j, row in enumerate(g.rows.tolist()):
        ref = decode_activation(raw[row])
        assert g.wall_time[j] == ref.wall_time
        if ref.recording_time is None:
            assert np.isnan(g.recording_offset[j])
        else:
            assert g.window_start_lsl[j] + g.recording_offset[j] == ref.recording_time


def _v3_variants() -> list[bytes]:
    """Version-3 windows with every optional field and encoding the wire has."""
    from dropstream.broker.wire import kept_units_from_seed

    seeded = message(11, width=64, keep=16)
    seeded.seed = 0xDEADBEEF12345678
    seeded.indices = kept_units_from_seed(seeded.seed, 64, 16)
    wide = message(12, width=70_000, keep=3)
    wide.indices = np.array([5, 65_537, 69_999])
    return [
        encode_activation(message(1)),
        encode_activation(message(2), "float32"),
        encode_activation(message(3), "uint8"),
        encode_activation(seeded),
        encode_activation(seeded, "uint8"),
        encode_activation(message(4, recording_time=12.5, unencoded_s=0.75)),
        encode_activation(message(5, sfreq=250.1, sequence=2**40 + 3, device="dev-2")),
        encode_activation(message(6, sequence=2**64 - 1, window_samples=1, hop_samples=1)),
        encode_activation(wide, "float32"),
        encode_activation(message(7), by_reference=True),  # the block of message(1)'s stream
        encode_activation(seeded, "uint8", by_reference=True),
        encode_activation(message(8, device="dev-9"), by_reference=True),  # never in full
    ]


V3_VARIANTS = _v3_variants()


def _assert_same_windows(out, raw: list[bytes]) -> None:
    """Every row is either refused by both decoders or decoded by both to the same window."""
    blocks = StreamBlocks()  # a reference resolves from the full blocks anywhere in the batch
    for data in raw:
        if len(data) > 5 and not data[5] & V3_BLOCK_REF:
            with contextlib.suppress(WireFormatError):
                decode_activation(data, blocks)
    refs = {}
    for row, data in enumerate(raw):
        with contextlib.suppress(WireFormatError):
            refs[row] = decode_activation(data, blocks)
    assert sorted(r for r, _ in out.rejected) == sorted(set(range(len(raw))) - set(refs))
    assert out.n_windows == len(refs)
    for g in out.groups:
        for j, row in enumerate(g.rows.tolist()):
            ref = refs[row]
            assert (g.model_id, g.model_version, g.width, g.keep) == (
                ref.model_id, ref.model_version, ref.width, ref.keep,
            )  # fmt: skip
            assert (g.device_id[j], g.stream_id[j], int(g.sequence[j])) == (
                ref.device_id, ref.stream_id, ref.sequence,
            )  # fmt: skip
            assert g.window_start_lsl[j] == ref.lsl_time
            assert g.window_end_lsl[j] == ref.window_end_lsl
            assert g.hop_s[j] == ref.hop_samples / ref.sfreq
            assert g.wall_time[j] == ref.wall_time
            assert g.unencoded_s[j] == ref.unencoded_s
            offset = g.recording_offset[j]  # recording time minus LSL time, NaN for live streams
            if ref.recording_time is None:
                assert math.isnan(offset)
            else:
                assert offset == ref.recording_time - ref.lsl_time
            np.testing.assert_array_equal(g.indices[j], ref.indices)
            np.testing.assert_array_equal(g.values[j], np.asarray(ref.values, np.float32))


def test_v3_batch_decodes_every_variant_like_the_reference():
    raw = V3_VARIANTS[::-1] * 3  # references before their full blocks too
    out = decode_batch(raw)
    assert [row for row, _ in out.rejected] == [0, len(V3_VARIANTS), 2 * len(V3_VARIANTS)]
    assert all(why.startswith(UNRESOLVED_REF) for _, why in out.rejected)  # "dev-9"
    _assert_same_windows(out, raw)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, len(V3_VARIANTS) - 1),
            st.lists(st.tuples(st.integers(0, 700), st.integers(0, 255)), max_size=3),
            st.integers(1, 1000),
        ),
        min_size=1,
        max_size=10,
    )
)
def test_v3_batch_agrees_with_the_reference_on_mutated_batches(specs):
    """Mutated and cut windows in one batch with intact ones: each is refused by the batch
    decoder exactly when the per-message reference decoder refuses it, and the others decode to
    the same fields (a truncated message next to others must not read its neighbours' bytes)."""
    raw = []
    for i, flips, cut in specs:
        data = bytearray(V3_VARIANTS[i])
        for pos, byte in flips:
            data[pos % len(data)] = byte
        raw.append(bytes(data[:cut]))
    _assert_same_windows(decode_batch(raw), raw)


def test_real_encoded_windows_decode_like_the_reference():
    """Windows the shipped demo device encodes (kept sets as seeds, the device's value
    precision) from several devices and streams, shuffled as partitions interleave them."""
    from dropstream.inference.demo import DEMO_BUNDLE
    from dropstream.local_encoder.bundle import load_device_bundle
    from dropstream.local_encoder.simulated import encode_recording

    bundle = load_device_bundle(DEMO_BUNDLE)
    samples = np.random.default_rng(0).standard_normal((len(bundle.channel_names), 2000))
    raw = [
        data
        for d in range(3)
        for _, data in encode_recording(bundle, samples, f"dev-{d}", f"s{d % 2}", seed=d)
    ]
    np.random.default_rng(1).shuffle(raw)
    out = decode_batch(raw)
    assert not out.rejected and out.n_windows == len(raw) > 30
    _assert_same_windows(out, raw)


def _v3_parts(**change: bytes) -> bytes:
    """A version-3 window rebuilt from its parts (``head``: magic to sample rate; ``optional``;
    ``seq`` and ``block_len`` varints; ``block``; ``rest``: kept set, values and tag), some of
    them changed: consistent lengths, so that only the field's own check can refuse it."""
    from dropstream.broker.wire import _varint, parse_v3_prefix

    base = encode_activation(message(1))
    p = parse_v3_prefix(base)
    parts = {
        "head": base[:26],
        "optional": b"",
        "seq": base[26 : p.block_start - 1],
        "block_len": base[p.block_start - 1 : p.block_start],
        "block": base[p.block_start : p.block_end],
        "rest": base[p.block_end :],
    }
    if "block" in change and "block_len" not in change:
        change["block_len"] = _varint(len(change["block"]))
    parts |= change
    return b"".join(parts.values())


def _block(model_version=1, window=250, hop=50, width=64, keep=16, ids=(b"m", b"dev-1", b"s")):
    from dropstream.broker.wire import _varint

    fields = b"".join(_varint(v) for v in (model_version, window, hop, width, keep))
    return fields + b"".join(bytes([len(t)]) + t for t in ids)


def _head(flags=0, lsl=100.0, wall=1.7e9, sfreq=250.0, sfreq64=False):
    rate = struct.pack("<d" if sfreq64 else "<f", sfreq)
    flags |= 0x08 if sfreq64 else 0
    return b"DSAM\x03" + bytes([flags]) + struct.pack("<dd", lsl, wall) + rate


CRAFTED = {
    "intact": _v3_parts(),
    "sequence varint not minimal": _v3_parts(seq=b"\x81\x00"),
    "sequence varint of 11 bytes": _v3_parts(seq=b"\x80" * 10 + b"\x01"),
    "sequence >= 2**64": _v3_parts(seq=b"\xff" * 9 + b"\x02"),
    "sequence 2**64 - 1": _v3_parts(seq=b"\xff" * 9 + b"\x01"),
    "block length not minimal": _v3_parts(block_len=bytes([0x80 | len(_block()), 0])),
    "unencoded present but 0": _v3_parts(head=_head(0x10), optional=bytes(8)),
    "unencoded -0.0": _v3_parts(head=_head(0x10), optional=struct.pack("<d", -0.0)),
    "unencoded NaN": _v3_parts(head=_head(0x10), optional=struct.pack("<d", math.nan)),
    "unencoded 1e9": _v3_parts(head=_head(0x10), optional=struct.pack("<d", 1e9)),
    "unencoded over 1e9": _v3_parts(head=_head(0x10), optional=struct.pack("<d", 1.0000001e9)),
    "recording -0.0": _v3_parts(head=_head(0x20), optional=struct.pack("<d", -0.0)),
    "recording negative": _v3_parts(head=_head(0x20), optional=struct.pack("<d", -1e-300)),
    "recording inf": _v3_parts(head=_head(0x20), optional=struct.pack("<d", math.inf)),
    "both optional fields": _v3_parts(head=_head(0x30), optional=struct.pack("<dd", 2.0, 3.0)),
    "sfreq64": _v3_parts(head=_head(sfreq=250.1, sfreq64=True)),
    "sfreq64 NaN": _v3_parts(head=_head(sfreq=math.nan, sfreq64=True)),
    "sfreq too low": _v3_parts(head=_head(sfreq=1e-4)),
    "sfreq too high": _v3_parts(head=_head(sfreq=2e6)),
    "lsl NaN": _v3_parts(head=_head(lsl=math.nan)),
    "lsl -1e10": _v3_parts(head=_head(lsl=-1e10)),
    "lsl below -1e10": _v3_parts(head=_head(lsl=-1.0000001e10)),
    "wall -0.0": _v3_parts(head=_head(wall=-0.0)),
    "wall negative": _v3_parts(head=_head(wall=-1.0)),
    "wall inf": _v3_parts(head=_head(wall=math.inf)),
    "unknown flag": _v3_parts(head=_head(0x80)),
    "value code 3": _v3_parts(head=_head(0x03)),
    "window 0": _v3_parts(block=_block(window=0)),
    "hop 0": _v3_parts(block=_block(hop=0)),
    "window of a day": _v3_parts(block=_block(window=86_400 * 250 + 1)),
    "window over a day": _v3_parts(block=_block(window=86_400 * 250 + 2)),
    "hop over a day": _v3_parts(block=_block(hop=86_400 * 250 + 1)),
    "window 2**64 - 1": _v3_parts(block=_block(window=2**64 - 1)),
    "keep over width": _v3_parts(block=_block(width=15, keep=16)),
    "model version 2**32": _v3_parts(block=_block(model_version=2**32)),
    "model version 2**32 - 1": _v3_parts(block=_block(model_version=2**32 - 1)),
    "empty device id": _v3_parts(block=_block(ids=(b"m", b"", b"s"))),
    "control character in id": _v3_parts(block=_block(ids=(b"m", b"dev\x01", b"s"))),
    "invalid UTF-8 id": _v3_parts(block=_block(ids=(b"m", b"\xff", b"s"))),
    "block with a trailing byte": _v3_parts(block=_block() + b"x"),
    "block length beyond the end": _v3_parts(block_len=b"\x7f"),
    "one byte short": _v3_parts()[:-1],
    "one byte long": _v3_parts() + b"\x00",
}


def test_crafted_v3_windows_are_refused_or_decoded_like_the_reference():
    """Each field's own check, on windows whose lengths are otherwise consistent: the batch
    decoder refuses exactly those the reference refuses (alone and next to intact windows)."""
    raw = list(CRAFTED.values())
    for data in raw:
        _assert_same_windows(decode_batch([data]), [data])
    _assert_same_windows(decode_batch(raw), raw)
    refused = {name for (name, _), ok in zip(CRAFTED.items(), _decodes(raw), strict=True) if not ok}
    assert "intact" not in refused and "sequence varint not minimal" in refused
    assert len(refused) > 30


def _decodes(raw: list[bytes]) -> list[bool]:
    out = []
    for data in raw:
        try:
            decode_activation(data)
            out.append(True)
        except WireFormatError:
            out.append(False)
    return out
