"""Batch decoding: same verdicts as the reference decoder, dense scatter without loops."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dropstream.broker.wire import (
    TAG_BYTES_V3,
    ActivationMessage,
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
