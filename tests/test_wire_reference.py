"""Wire v3 stream blocks by reference: round trips, unknown references, old versions, tags."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dropstream.broker.auth import AuthError, DeviceKey, DeviceKeys
from dropstream.broker.wire import (
    REF_BYTES,
    UNRESOLVED_REF,
    V3_BLOCK_REF,
    StreamBlocks,
    WireFormatError,
    decode_activation,
    device_id_bytes,
    encode_activation,
    kept_units_from_seed,
    parse_v3_prefix,
    stream_ref,
)
from dropstream.inference.batching import BatchDecoder
from tests.test_wire import _example, _fields, messages

SEED = 0x0123_4567_89AB_CDEF


def _seeded(**changes: object):
    msg = _example(**changes)
    return replace(msg, seed=SEED, indices=kept_units_from_seed(SEED, msg.width, msg.keep))


def _pair(msg, dtype: str = "uint8") -> tuple[bytes, bytes]:
    """The message with its stream block in full and by reference."""
    return encode_activation(msg, dtype), encode_activation(msg, dtype, by_reference=True)


def _same(a, b) -> None:
    assert _fields(a) == _fields(b) and a.seed == b.seed
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.values, b.values)


@settings(max_examples=100, deadline=None)
@given(messages(), st.sampled_from(["float16", "float32", "uint8"]))
def test_a_reference_decodes_to_the_same_window_in_both_decoders(msg, dtype: str) -> None:
    full, ref = _pair(msg, dtype)
    p = parse_v3_prefix(full)
    block = full[p.block_start : p.block_end]
    # the varint length and the block give way to the block's 8-byte hash
    assert (
        len(full) - len(ref)
        == p.block_start - parse_v3_prefix(ref).block_start + len(block) - REF_BYTES
    )
    assert ref[5] & V3_BLOCK_REF and not full[5] & V3_BLOCK_REF
    assert ref[parse_v3_prefix(ref).block_start :][:REF_BYTES] == stream_ref(block)
    blocks = StreamBlocks()
    _same(decode_activation(ref, blocks := _seen(full, blocks)), decode_activation(full, blocks))
    decoder = BatchDecoder()
    out = decoder.decode([full, ref])
    assert out.rejected == [] and out.n_windows == 2
    (group,) = out.groups
    np.testing.assert_array_equal(group.values[0], group.values[1])
    np.testing.assert_array_equal(group.indices[0], group.indices[1])
    assert group.stream_id[0] == group.stream_id[1] == msg.stream_id
    assert decoder.decode([ref]).n_windows == 1  # remembered across batches


def _seen(full: bytes, blocks: StreamBlocks) -> StreamBlocks:
    decode_activation(full, blocks)  # a full block is remembered by the reader that decodes it
    return blocks


def test_an_unknown_reference_is_refused_in_one_line_and_nothing_else_is_lost() -> None:
    full, ref = _pair(_seeded())
    with pytest.raises(WireFormatError, match=UNRESOLVED_REF) as exc:
        decode_activation(ref, StreamBlocks())
    assert "\n" not in str(exc.value) and "block_every" in str(exc.value)
    other_full, _ = _pair(_seeded(stream_id="EEG-S002"))
    decoder = BatchDecoder()  # a service that (re)started after the full block went by
    out = decoder.decode([ref, other_full, ref])
    assert [row for row, _ in out.rejected] == [0, 2] and out.n_windows == 1
    assert all(r.startswith(UNRESOLVED_REF) and "\n" not in r for _, r in out.rejected)
    out = decoder.decode([full, ref])  # the device's next full block: served again
    assert out.rejected == [] and out.n_windows == 2
    # the block of a window whose header fails its checks is never remembered
    bad_full = bytearray(full)
    bad_full[22:26] = bytes(4)  # sample rate 0 Hz
    fresh = BatchDecoder()
    assert [row for row, _ in fresh.decode([bytes(bad_full)]).rejected] == [0]
    assert len(fresh.stream_blocks) == 0


def test_the_registry_is_bounded_and_forgets_the_oldest_block() -> None:
    blocks = StreamBlocks(limit=2)
    refs = [blocks.add(bytes([i]) * 10) for i in range(3)]
    assert len(blocks) == 2 and blocks.get(refs[0]) is None and blocks.get(refs[2]) is not None


def test_versions_1_and_2_still_decode_next_to_references() -> None:
    msg = _seeded()
    v1 = encode_activation(replace(msg, seed=None), version=1)
    v2 = encode_activation(replace(msg, seed=None), version=2)
    full, ref = _pair(msg, "float16")
    with pytest.raises(WireFormatError, match="version 3"):
        encode_activation(msg, version=2, by_reference=True)
    out = BatchDecoder().decode([v1, v2, full, ref])
    assert out.rejected == [] and out.n_windows == 4
    blocks = StreamBlocks()
    back = [decode_activation(v, blocks) for v in (v1, v2, full, ref)]
    for b in back[1:]:
        np.testing.assert_array_equal(b.indices, back[0].indices)
        np.testing.assert_array_equal(b.values, back[0].values)


def test_the_tag_covers_the_reference_and_a_borrowed_block_keeps_its_device() -> None:
    dev = DeviceKey.generate("clinic-7/cap-3")
    other = DeviceKey.generate("clinic-7/cap-4")
    store = DeviceKeys({dev.device_id: dev.secret, other.device_id: other.secret})
    full, ref = (dev.sign(v) for v in _pair(_seeded()))
    key = dev.device_id.encode()
    assert device_id_bytes(ref) is None and device_id_bytes(full) == key
    assert store.verify(key, ref) == dev.device_id
    at = parse_v3_prefix(ref).block_start
    for pos in (5, at, at + REF_BYTES - 1, len(ref) - 17):  # flags, reference, a value
        tampered = bytearray(ref)
        tampered[pos] ^= 0x01
        with pytest.raises(AuthError, match="does not match"):
            store.verify(key, bytes(tampered))
    # another device signs a window that names this device's block: its tag verifies (its own
    # key) but the block resolves to this device, which the service refuses as a key mismatch
    borrowed = other.sign(encode_activation(_seeded(sequence=3), "uint8", by_reference=True))
    assert store.verify(other.device_id.encode(), borrowed) == other.device_id
    decoder = BatchDecoder()
    (group,) = decoder.decode([full, borrowed]).groups
    assert group.device_id == [dev.device_id, dev.device_id]  # != the key: "key-mismatch"


def test_the_encoder_sends_the_block_in_full_first_and_every_block_every_windows() -> None:
    from dropstream.local_encoder.encoder import WindowEncoder
    from tests.encoder_support import make_bundle

    rng = np.random.default_rng(0)
    bundle = make_bundle(rng.standard_normal((800, 2)), 160.0, ["C3", "C4"], width=64, keep=8)
    enc = WindowEncoder(bundle, "dev-1", "src-1", seed=3, block_every=4)
    window = _window(bundle)
    out = [enc.to_bytes(enc.encode(window, seq, 1.7e9)) for seq in range(5, 14)]
    by_ref = [bool(v[5] & V3_BLOCK_REF) for v in out]
    assert by_ref == [False, True, True, False, True, True, True, False, True]  # 5, 8, 12 full
    blocks = StreamBlocks()
    assert [decode_activation(v, blocks).sequence for v in out] == list(range(5, 14))
    with pytest.raises(WireFormatError, match="block_every"):
        WindowEncoder(bundle, "dev-1", "src-1", block_every=0)


def _window(bundle):
    from dropstream.local_encoder.windowing import Window

    data = np.zeros((bundle.n_channels, bundle.window_samples), np.float32)
    return Window(data=data, lsl_time=1.0, index=0)


def test_a_restarted_reader_finds_the_block_by_reading_its_partition_back(kafka_config) -> None:
    """What a restarted service meets: windows 5.. of a stream whose full block (window 0) lies
    before where it starts reading. BlockLookback reads the partition back, finds it, and the
    windows decode; a reference no record of the partition has stays refused."""
    from kafka import TopicPartition

    from dropstream.broker.clients import make_producer, make_topic_reader
    from dropstream.inference.lookback import BlockLookback

    values = [
        encode_activation(_seeded(sequence=i), "uint8", by_reference=i % 16 != 0)
        for i in range(12)
    ]
    stranger = encode_activation(_seeded(stream_id="never-sent"), "uint8", by_reference=True)
    topic = kafka_config.activations_topic
    producer = make_producer(kafka_config)
    for v in [values[0], _pair(_seeded(device_id="other"))[0], *values[1:], stranger]:
        producer.send(topic, key=b"k", value=v, partition=0)
    producer.flush()
    producer.close()
    reader = make_topic_reader(kafka_config, topic, from_beginning=False)
    tp = TopicPartition(topic, 0)
    reader.assign([tp])
    reader.seek(tp, 6)  # windows 5..11 and the stranger
    records = []
    while len(records) < 8:
        records += reader.poll(timeout_ms=2000).get(tp, [])
    reader.close()
    decoder = BatchDecoder()
    out = decoder.decode([r.value for r in records])
    assert len(out.rejected) == 8
    lookback = BlockLookback(kafka_config, step=3)  # several steps back
    try:
        assert lookback.learn(decoder.stream_blocks, records) == 1
    finally:
        lookback.close()
    out = decoder.decode([r.value for r in records])
    assert out.n_windows == 7 and [row for row, _ in out.rejected] == [7]
    assert out.rejected[0][1].startswith(UNRESOLVED_REF)
