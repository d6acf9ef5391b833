"""Activation wire format: round trips, and every malformed input raises WireFormatError."""

from __future__ import annotations

import contextlib
import math
import struct
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dropstream.broker.wire import (
    HEADER_BYTES,
    HEADER_BYTES_V2,
    MAX_MESSAGE_BYTES,
    MAX_SPAN_S,
    SCHEMA_VERSION,
    TAG_BYTES,
    ActivationMessage,
    WireFormatError,
    decode_activation,
    device_id_bytes,
    encode_activation,
    kept_units_from_seed,
)

ident = st.text(
    st.characters(codec="utf-8", categories=("L", "N", "P", "S")), min_size=1, max_size=40
)


@st.composite
def messages(draw: st.DrawFn) -> ActivationMessage:
    width = draw(st.integers(1, 70_000))
    keep = draw(st.integers(1, min(width, 300)))
    idx = np.array(
        sorted(draw(st.sets(st.integers(0, width - 1), min_size=keep, max_size=keep))),
        dtype=np.int64,
    )
    values = np.array(
        draw(st.lists(st.floats(-60000, 60000, width=16), min_size=keep, max_size=keep)),
        dtype=np.float32,
    )
    sfreq = draw(st.floats(0.001, 1e6))
    longest = int(MAX_SPAN_S * sfreq)  # samples in the longest window or hop accepted
    return ActivationMessage(
        model_id=draw(ident),
        model_version=draw(st.integers(0, 2**32 - 1)),
        device_id=draw(ident),
        stream_id=draw(ident),
        sequence=draw(st.integers(0, 2**64 - 1)),
        lsl_time=draw(st.floats(-1e9, 1e9)),
        wall_time=draw(st.floats(0, 4e9)),
        sfreq=sfreq,
        window_samples=draw(st.integers(1, min(2**32 - 1, longest + 1))),
        hop_samples=draw(st.integers(1, max(1, min(2**32 - 1, longest)))),
        width=width,
        indices=idx,
        values=values,
        unencoded_s=draw(st.floats(0, 1e9)),
        recording_time=draw(st.none() | st.floats(0, 1e9)),
    )


def _fields(m: ActivationMessage) -> tuple:
    return (
        m.model_id,
        m.model_version,
        m.device_id,
        m.stream_id,
        m.sequence,
        m.lsl_time,
        m.wall_time,
        m.sfreq,
        m.window_samples,
        m.hop_samples,
        m.width,
        m.unencoded_s,
        m.recording_time,
    )


def _example(**changes: object) -> ActivationMessage:
    base = dict(
        model_id="eeg-anomaly",
        model_version=2,
        device_id="clinic-7/cap-3",
        stream_id="EEG-S001",
        sequence=41,
        lsl_time=5123.25,
        wall_time=1.79e9,
        sfreq=160.0,
        window_samples=160,
        hop_samples=80,
        width=256,
        indices=np.arange(0, 256, 4),
        values=np.linspace(-2, 2, 64),
    )
    base.update(changes)
    return ActivationMessage(**base)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(messages(), st.sampled_from(["float16", "float32"]), st.sampled_from([2, 3]))
def test_round_trip(msg: ActivationMessage, dtype: str, version: int) -> None:
    data = encode_activation(msg, value_dtype=dtype, version=version)
    assert data[4] == version
    back = decode_activation(data)
    assert _fields(back) == _fields(msg)
    np.testing.assert_array_equal(back.indices, msg.indices)
    np.testing.assert_array_equal(back.values, msg.values.astype(dtype))
    assert encode_activation(back, value_dtype=dtype, version=version) == data  # canonical


@settings(max_examples=300, deadline=None)
@given(
    messages(),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=3),
    st.integers(1, 500),
)
def test_device_id_bytes_agrees_with_the_decoder(msg, flips, cut) -> None:
    """The authenticator's structure-only device id lookup finds the id the decoder reads in
    every message the decoder accepts (every optional field, long sequence varints), and
    only ever raises WireFormatError on anything else."""
    data = bytearray(encode_activation(msg))
    assert device_id_bytes(bytes(data)) == msg.device_id.encode()
    for pos, byte in flips:
        data[pos % len(data)] = byte
    data = data[:cut]
    try:
        found = device_id_bytes(bytes(data))
    except WireFormatError:
        found = None
    with contextlib.suppress(WireFormatError):
        assert found == decode_activation(bytes(data)).device_id.encode()


def test_version_1_is_still_read() -> None:
    msg = _example()
    old = encode_activation(msg, version=1)
    assert old[4] == 1
    back = decode_activation(old)
    assert _fields(back) == _fields(msg) and back.unencoded_s == 0.0
    with pytest.raises(WireFormatError, match="version 1 cannot carry"):
        encode_activation(_example(unencoded_s=3.0), version=1)


def test_default_message_size_and_dense() -> None:
    msg = _example()
    data = encode_activation(msg, version=2)
    # 64 kept of 256: 64 uint16 indices + 64 float16 values = 256 bytes of payload, then the tag
    ids = len("eeg-anomaly") + len("clinic-7/cap-3") + 8
    assert len(data) == HEADER_BYTES_V2 + ids + 256 + TAG_BYTES
    assert len(encode_activation(msg, version=1)) == HEADER_BYTES + ids + 256
    dense = decode_activation(data).dense()
    assert dense.shape == (256,)
    assert np.count_nonzero(dense[1::4]) == 0
    np.testing.assert_allclose(dense[::4], msg.values, atol=1e-3)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_only_raise_wire_format_error(data: bytes) -> None:
    with contextlib.suppress(WireFormatError):
        decode_activation(data)


@settings(max_examples=500, deadline=None)
@given(messages(), st.data())
def test_mutated_bytes_only_raise_wire_format_error(
    msg: ActivationMessage, data: st.DataObject
) -> None:
    seeded = data.draw(st.booleans()) and msg.width <= 4096
    if seeded:
        seed = data.draw(st.integers(0, 2**64 - 1))
        msg = replace(msg, seed=seed, indices=kept_units_from_seed(seed, msg.width, msg.keep))
    version = 3 if seeded else data.draw(st.sampled_from([1, 2, 3]))
    if version == 1:
        msg = replace(msg, unencoded_s=0.0)
    dtype = data.draw(st.sampled_from(["float16", "uint8"] if version == 3 else ["float16"]))
    raw = bytearray(encode_activation(msg, dtype, version=version))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    for candidate in (bytes(raw), bytes(raw[:cut]), bytes(raw) + b"\x00"):
        try:
            decoded = decode_activation(candidate)
        except WireFormatError:
            continue
        # whatever decodes must be internally consistent
        assert np.all(np.diff(decoded.indices.astype(np.int64)) > 0)
        assert np.all(np.isfinite(decoded.values))


def _patch(data: bytes, offset: int, fmt: str, value: object) -> bytes:
    raw = bytearray(data)
    struct.pack_into(fmt, raw, offset, value)
    return bytes(raw)


GOOD = encode_activation(_example(), version=2)  # the fixed-offset v2 layout, still decoded


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b"", "truncated"),
        (GOOD[: HEADER_BYTES - 1], "truncated"),
        (GOOD[:-1], "does not match"),
        (GOOD + b"\x00", "does not match"),
        (b"XXXX" + GOOD[4:], "bad magic"),
        (_patch(GOOD, 4, "<B", 4), "version 4 is not supported"),
        (_patch(GOOD, 4, "<B", 1), "does not match"),
        (_patch(GOOD, 61, "<d", -1.0), "unencoded signal"),
        (_patch(GOOD, 61, "<d", float("nan")), "unencoded signal"),
        (_patch(GOOD, 5, "<B", 0x80), "unknown flags"),
        (_patch(GOOD, 34, "<d", float("nan")), "sample rate"),
        (_patch(GOOD, 34, "<d", -160.0), "sample rate"),
        (_patch(GOOD, 18, "<d", float("inf")), "finite"),
        (_patch(GOOD, 42, "<I", 0), "window"),
        (_patch(GOOD, 50, "<I", 0), "width"),
        (_patch(GOOD, 50, "<I", 100), "strictly increasing and < width"),
        (_patch(GOOD, 54, "<I", 0), "kept units"),
        (_patch(GOOD, 54, "<I", 65), "does not match"),
        (_patch(GOOD, 58, "<B", 0), "non-empty"),
        (_patch(GOOD, HEADER_BYTES_V2, "<B", 0xFF), "UTF-8"),
        (_patch(GOOD, HEADER_BYTES_V2, "<B", 0x07), "control characters"),
        (_patch(GOOD, len(GOOD) - TAG_BYTES - 256 + 2, "<H", 0), "strictly increasing"),
        (_patch(GOOD, len(GOOD) - TAG_BYTES - 2, "<H", 0x7C00), "finite"),  # float16 +inf
        (b"\x00" * (MAX_MESSAGE_BYTES + 1), "exceeds"),
    ],
)
def test_malformed_inputs_name_the_problem(bad: bytes, reason: str) -> None:
    with pytest.raises(WireFormatError, match=reason):
        decode_activation(bad)


def test_decoder_rejects_non_bytes() -> None:
    with pytest.raises(WireFormatError, match="expected bytes"):
        decode_activation("not bytes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"values": np.full(64, 1e6)}, "overflows float16"),
        ({"values": np.full(64, np.nan)}, "finite"),
        ({"indices": np.arange(64)[::-1].copy()}, "strictly increasing"),
        ({"indices": np.arange(200, 264)}, "< width"),
        ({"indices": np.arange(-1, 63)}, "non-negative"),
        ({"device_id": ""}, "device id"),
        ({"model_id": "x" * 256}, "model id"),
        ({"sfreq": 0.0}, "sample rate"),
        ({"unencoded_s": -0.5}, "unencoded signal"),
        ({"values": np.zeros(3)}, "same length"),
    ],
)
def test_encoder_refuses_inconsistent_messages(changes: dict, reason: str) -> None:
    with pytest.raises(WireFormatError, match=reason):
        encode_activation(_example(**changes))


def test_one_header_definition_names_every_struct_field():
    """WireHeader and HEADER are the one definition both decoders use: one name per code."""
    from dropstream.broker.wire import HEADER, WireHeader, unpack_header

    codes = struct.Struct(HEADER.format)
    assert len(codes.unpack(bytes(codes.size))) == len(WireHeader._fields)
    h = unpack_header(GOOD)
    assert (h.magic, h.width, h.n_device) == (b"DSAM", 256, len("clinic-7/cap-3"))
    assert decode_activation(GOOD).sequence == h.sequence


def test_recording_time_travels_only_when_set_and_old_readers_see_an_unknown_flag() -> None:
    replayed = encode_activation(_example(recording_time=9.25), version=2)  # time, then the tag
    assert decode_activation(replayed).recording_time == 9.25
    assert decode_activation(encode_activation(_example(), version=2)).recording_time is None
    live = encode_activation(_example(), version=1)  # v1: nothing after the values
    replayed = encode_activation(_example(recording_time=9.25), version=1)
    assert decode_activation(live).recording_time is None
    assert len(replayed) == len(live) + 8
    assert decode_activation(replayed).recording_time == 9.25
    assert replayed[5] & 0x02 and not live[5] & 0x02
    with pytest.raises(WireFormatError, match="length"):
        decode_activation(replayed[:-8])  # flag set, time missing
    with pytest.raises(WireFormatError, match="length"):
        decode_activation(live + b"\0" * 8)  # time without the flag
    with pytest.raises(WireFormatError, match="recording time"):
        encode_activation(_example(recording_time=float("nan")))
    bad = replayed[:-8] + struct.pack("<d", -1.0)
    with pytest.raises(WireFormatError, match="recording time"):
        decode_activation(bad)


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "reason"),
    [
        (34, "<d", 5e-324, "sample rate"),  # made the window end overflow (issue 15)
        (34, "<d", 2e6, "sample rate"),
        (42, "<I", 2**32 - 1, "last over"),  # 199 days at 250 Hz
        (46, "<I", 2**32 - 1, "last over"),
        (18, "<d", 1e300, "out of range"),
        (26, "<d", -1.0, "out of range"),
        (26, "<d", float("nan"), "out of range"),
    ],
)
def test_both_decoders_refuse_fields_out_of_range(offset, fmt, value, reason) -> None:
    from dropstream.inference.batching import decode_batch

    bad = _patch(GOOD, offset, fmt, value)
    with pytest.raises(WireFormatError, match=reason):
        decode_activation(bad)
    batch = decode_batch([GOOD, bad])
    assert batch.n_windows == 1 and [r for r, _ in batch.rejected] == [1]
    assert reason in batch.rejected[0][1]


# --- version 3: varint header, seed-derived kept units, 8-bit values ---------------------------


def test_kept_units_from_seed_known_answer() -> None:
    """The derivation is pinned (SplitMix64 keys, K smallest): any numpy version, any language
    must give these sets, or devices and servers would disagree on the kept units."""
    np.testing.assert_array_equal(kept_units_from_seed(1, 16, 4), [8, 10, 14, 15])
    np.testing.assert_array_equal(kept_units_from_seed(2, 16, 4), [4, 8, 10, 15])
    got = kept_units_from_seed(np.array([1, 2, 2**64 - 1], np.uint64), 16, 4)
    assert got.shape == (3, 4) and got[0].tolist() == [8, 10, 14, 15]
    # the first SplitMix64 output for seed 0 is the published test value 0xE220A8397B1DCDAF
    first = kept_units_from_seed(0, 1, 1)
    assert first.tolist() == [0]
    z = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    assert int(z) == 0xE220A8397B1DCDAF


def test_seed_derived_sets_are_uniform() -> None:
    """Each unit is kept with probability K/m (chi-square over 4,000 seeds)."""
    seeds = np.arange(4000, dtype=np.uint64) * np.uint64(0x5851F42D4C957F2D)
    sets = kept_units_from_seed(seeds, 64, 16)
    assert all(len(set(row)) == 16 for row in sets.tolist())
    counts = np.bincount(sets.ravel(), minlength=64)
    expected = 4000 * 16 / 64
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 110  # 63 degrees of freedom: p < 1e-4 above ~110


def test_version_3_is_the_default_and_smaller() -> None:
    assert SCHEMA_VERSION == 3
    seed = 0x1234_5678_9ABC_DEF0
    msg = _example(seed=seed, indices=kept_units_from_seed(seed, 256, 64))
    v3 = encode_activation(msg)
    v2 = encode_activation(replace(msg, seed=None), version=2)
    assert v3[4] == 3
    # the 64 uint16 indices (128 B) become an 8-byte seed; header 69 B -> 6 + 16 + 4 + varints
    assert len(v2) - len(v3) >= 128 - 8 + 30
    back = decode_activation(v3)
    assert back.seed == seed
    np.testing.assert_array_equal(back.indices, msg.indices)
    with pytest.raises(WireFormatError, match="seed derives"):
        encode_activation(replace(msg, indices=np.arange(0, 256, 4)))
    with pytest.raises(WireFormatError, match="needs schema version 3"):
        encode_activation(msg, version=2)


@settings(max_examples=200, deadline=None)
@given(messages(), st.integers(0, 2**64 - 1))
def test_uint8_values_round_to_within_half_a_step(msg: ActivationMessage, seed: int) -> None:
    back = decode_activation(encode_activation(msg, "uint8"))
    v = msg.values.astype(np.float32)
    step = (float(v.max()) - float(v.min())) / 255
    np.testing.assert_allclose(back.values, v, rtol=0, atol=step / 2 * 1.01 + 1e-6 * abs(v).max())
    np.testing.assert_array_equal(back.indices, msg.indices)


@settings(max_examples=150, deadline=None)
@given(messages(), st.sampled_from(["float16", "float32", "uint8"]), st.booleans())
def test_batch_decoder_equals_reference_on_version_3(
    msg: ActivationMessage, dtype: str, seeded: bool
) -> None:
    from dropstream.inference.batching import decode_batch

    if seeded and msg.width <= 4096:
        msg = replace(msg, seed=7, indices=kept_units_from_seed(7, msg.width, msg.keep))
    data = encode_activation(msg, dtype)
    ref = decode_activation(data)
    batch = decode_batch([data, data[:-1]])
    assert [r for r, _ in batch.rejected] == [1]
    (group,) = batch.groups
    np.testing.assert_array_equal(group.indices[0], ref.indices)
    np.testing.assert_array_equal(group.values[0], ref.values.astype(np.float32))
    assert group.sequence[0] == ref.sequence and group.stream_id[0] == ref.stream_id
    rec = math.nan if ref.recording_time is None else ref.recording_time - ref.lsl_time
    np.testing.assert_array_equal(group.recording_offset[0], rec)


V3 = encode_activation(_example())


def test_version_3_carries_the_recording_time_under_the_tag() -> None:
    """Flag 0x20: the float64 recording time follows the per-window fields (the tag covers
    it, like every byte); absent for a live stream, refused when not finite and >= 0."""
    live = encode_activation(_example())
    replayed = encode_activation(_example(recording_time=9.25))
    assert replayed[5] & 0x20 and not live[5] & 0x20 and len(replayed) == len(live) + 8
    assert decode_activation(replayed).recording_time == 9.25
    assert decode_activation(live).recording_time is None
    at = replayed.index(struct.pack("<d", 9.25))
    assert at == 26  # magic, version, flags, LSL and wall time, float32 rate; then the time
    for value, reason in ((-1.0, "recording time"), (math.inf, "recording time")):
        with pytest.raises(WireFormatError, match=reason):
            decode_activation(_patch(replayed, at, "<d", value))
    with pytest.raises(WireFormatError, match="recording time"):
        encode_activation(_example(recording_time=math.nan))


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (V3[:-1], "does not match"),
        (V3 + b"\x00", "does not match"),
        (_patch(V3, 5, "<B", 0x80), "unknown flags"),
        (_patch(V3, 5, "<B", 0x03), "unknown flags"),
        (V3[:30], "truncated|varint|ids"),
        (V3[:26] + b"\xff" * 12, "varint"),
    ],
)
def test_malformed_version_3_names_the_problem(bad: bytes, reason: str) -> None:
    with pytest.raises(WireFormatError, match=reason):
        decode_activation(bad)
