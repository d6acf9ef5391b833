"""Device authentication (HMAC tags on activation messages) and alert signatures (Ed25519)."""

from __future__ import annotations

import contextlib
import json
import os
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dropstream.broker.auth import (
    AlertSigner,
    AlertVerifier,
    AuthError,
    DeviceKey,
    DeviceKeys,
)
from dropstream.broker.clients import make_producer, make_topic_reader
from dropstream.broker.wire import decode_activation, encode_activation
from tests.test_wire import _example


def _message(device_id: str = "clinic-7/cap-3", sequence: int = 0, **changes) -> bytes:
    """A version-3 activation message (zeroed tag) of the wire tests' example window."""
    return encode_activation(_example(device_id=device_id, sequence=sequence, **changes))


DEV = DeviceKey.generate("clinic-7/cap-3")
KEY = DEV.device_id.encode()
STORE = DeviceKeys({DEV.device_id: DEV.secret})


@pytest.mark.parametrize(("version", "n"), [(2, 32), (3, 16)])
def test_a_signed_message_verifies_and_decodes_unchanged(version: int, n: int) -> None:
    """The tag is HMAC-SHA256 over the domain, the key and every byte before it: all 32 bytes
    in version 2, the first 16 (truncated HMAC, RFC 2104 section 5) in version 3."""
    import hashlib
    import hmac

    raw = encode_activation(_example(), version=version)
    signed = DEV.sign(raw)
    assert len(signed) == len(raw) and signed[:-n] == raw[:-n] and signed[-n:] != raw[-n:]
    mac_input = b"dropstream.activation.v2\x00" + bytes([len(KEY)]) + KEY + raw[:-n]
    assert signed[-n:] == hmac.new(DEV.secret, mac_input, hashlib.sha256).digest()[:n]
    assert STORE.verify(KEY, signed) == DEV.device_id
    assert decode_activation(signed).sequence == decode_activation(raw).sequence
    assert DEV.sign(signed) == signed  # signing is deterministic and idempotent
    cut = signed[:-n] + signed[-n:-1] + bytes([signed[-1] ^ 1])  # one bit of the tag
    with pytest.raises(AuthError, match="does not match"):
        STORE.verify(KEY, cut)


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        (KEY, _message(), "does not match"),  # never signed (zero tag)
        (KEY, DeviceKey.generate(DEV.device_id).sign(_message()), "does not match"),  # other key
        (b"clinic-7/cap-4", DEV.sign(_message()), "is not the device id"),  # key != device id
        (None, DEV.sign(_message()), "no Kafka key"),
        (KEY, encode_activation(decode_activation(_message()), version=1), "version 1 carries"),
        (b"x", DeviceKey.generate("x").sign(_message("x")), "has no key in the store"),
        (KEY, b"garbage", "not a dropstream activation"),
        (KEY, None, "not a dropstream activation"),
        (KEY, DEV.sign(encode_activation(_example(), version=2))[:70], "truncated"),
    ],
)
def test_refusals_name_the_reason(key: bytes | None, value: bytes, reason: str) -> None:
    with pytest.raises(AuthError, match=reason):
        STORE.verify(key, value)


@pytest.mark.parametrize("version", [2, 3])
def test_every_altered_byte_and_the_key_are_covered(version: int) -> None:
    signed = DEV.sign(encode_activation(_example(recording_time=4.5), version=version))
    for pos in range(len(signed)):
        altered = bytearray(signed)
        altered[pos] ^= 0x01
        with pytest.raises(AuthError):
            STORE.verify(KEY, bytes(altered))


def test_unauthenticated_devices_only_when_allowed_and_never_for_a_provisioned_one() -> None:
    lenient = DeviceKeys({DEV.device_id: DEV.secret}, allow_unauthenticated=True)
    old = encode_activation(decode_activation(_message("legacy-1")), version=1)
    assert lenient.verify(b"legacy-1", old) == "legacy-1"
    with pytest.raises(AuthError, match="has no key"):
        STORE.verify(b"legacy-1", old)
    # a provisioned device cannot be impersonated by downgrading to v1 or by a bad tag
    v1 = encode_activation(decode_activation(_message()), version=1)
    with pytest.raises(AuthError, match="version 1"):
        lenient.verify(KEY, v1)
    with pytest.raises(AuthError, match="does not match"):
        lenient.verify(KEY, _message())
    with pytest.raises(AuthError, match="is not the device id"):  # the key check stays
        lenient.verify(b"legacy-2", old)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.one_of(st.none(), st.binary(max_size=40)))
def test_random_records_only_raise_auth_error(value: bytes, key: bytes | None) -> None:
    for candidate in (value, b"DSAM\x02" + value, DEV.sign(_message())[: len(value)]):
        with contextlib.suppress(AuthError):
            STORE.verify(key, candidate)


def test_check_batch_reports_rows_with_the_dead_letter_reason() -> None:
    good = [DEV.sign(_message(sequence=i)) for i in range(3)]
    forged = _message(sequence=3)
    out = STORE.check_batch([KEY] * 4 + [b"other"], [*good, forged, good[0]])
    assert [row for row, _ in out] == [3, 4]
    assert all(reason.startswith("unauthenticated: ") for _, reason in out)


def test_key_store_provision_list_revoke_and_file_modes(tmp_path) -> None:
    store = tmp_path / "keys" / "device-keys.json"
    a = DeviceKeys.provision("dev-a", store)
    b = DeviceKeys.provision("dev-b", store)
    assert (store.stat().st_mode & 0o777) == 0o600
    a_path = a.save(tmp_path / "dev-a.key")
    assert (a_path.stat().st_mode & 0o777) == 0o600
    assert DeviceKey.load(a_path) == a
    keys = DeviceKeys.load(store)
    assert len(keys) == 2 and "dev-a" in keys
    assert keys.verify(b"dev-b", b.sign(_message("dev-b"))) == "dev-b"
    assert [(d, kid) for d, _, kid in DeviceKeys.listing(store)] == [
        ("dev-a", a.key_id),
        ("dev-b", b.key_id),
    ]
    with pytest.raises(AuthError, match="already has a key"):
        DeviceKeys.provision("dev-a", store)
    a2 = DeviceKeys.provision("dev-a", store, replace=True)  # rotation, 7 days' grace
    old_window = a.sign(_message("dev-a"))  # e.g. still in the device's spool
    assert DeviceKeys.load(store).verify(b"dev-a", old_window) == "dev-a"
    assert DeviceKeys.load(store).verify(b"dev-a", a2.sign(_message("dev-a"))) == "dev-a"
    a3 = DeviceKeys.provision("dev-a", store, replace=True, grace_s=0)  # no grace
    for old in (old_window, a2.sign(_message("dev-a"))):
        with pytest.raises(AuthError, match="does not match"):
            DeviceKeys.load(store).verify(b"dev-a", old)
    assert DeviceKeys.load(store).verify(b"dev-a", a3.sign(_message("dev-a"))) == "dev-a"
    expired = DeviceKeys({"dev-a": a3.secret}, previous={"dev-a": (a2.secret, time.time() - 1)})
    with pytest.raises(AuthError, match="does not match"):
        expired.verify(b"dev-a", a2.sign(_message("dev-a")))
    DeviceKeys.revoke("dev-b", store)
    with pytest.raises(AuthError, match="has no key"):
        DeviceKeys.load(store).verify(b"dev-b", b.sign(_message("dev-b")))
    with pytest.raises(AuthError, match="has no key in"):
        DeviceKeys.revoke("dev-b", store)
    # secrets are never shown
    assert a.secret.hex() not in repr(a) and a.secret.hex() not in repr(DeviceKeys.load(store))
    assert a.secret.hex() not in str(DeviceKeys.listing(store))


def test_key_files_that_others_can_read_or_that_are_not_keys_are_refused(tmp_path) -> None:
    path = DeviceKey.generate("d").save(tmp_path / "d.key")
    os.chmod(path, 0o644)
    with pytest.raises(AuthError, match="chmod 600"):
        DeviceKey.load(path)
    bad = tmp_path / "bad.key"
    bad.write_text(json.dumps({"format": "other"}))
    os.chmod(bad, 0o600)
    with pytest.raises(AuthError, match="not a dropstream device key"):
        DeviceKey.load(bad)
    with pytest.raises(AuthError, match="no device key store"):
        DeviceKeys.load(tmp_path / "missing.json")
    assert len(DeviceKeys.load(tmp_path / "missing.json", allow_unauthenticated=True)) == 0


def test_alert_signatures(tmp_path) -> None:
    signer = AlertSigner.create(tmp_path / "alert.key")
    assert (tmp_path / "alert.key").stat().st_mode & 0o777 == 0o600
    verifier = AlertVerifier.load([tmp_path / "alert.pub"])
    value = b'{"schema":"dropstream.alert","status":"open"}'
    headers = signer.headers(b"dev", value)
    assert verifier.verify(b"dev", value, headers)
    assert not verifier.verify(b"dev", value.replace(b"open", b"shut"), headers)
    assert not verifier.verify(b"other", value, headers)  # the key is covered too
    assert not verifier.verify(b"dev", value, None)  # no signature
    forger = AlertSigner(AlertSigner.create(tmp_path / "forger.key")._key)
    assert not verifier.verify(b"dev", value, forger.headers(b"dev", value))
    # the forger claiming the real signer id does not help
    forged = [
        (n, v if n != "dropstream.signer" else signer.signer_id.encode())
        for n, v in forger.headers(b"dev", value)
    ]
    assert not verifier.verify(b"dev", value, forged)
    assert AlertSigner.load(tmp_path / "alert.key").signer_id == signer.signer_id
    with pytest.raises(AuthError, match="exists"):
        AlertSigner.create(tmp_path / "alert.key")


def test_forged_windows_through_the_real_broker_are_told_apart(kafka_config) -> None:
    """Genuine, forged (other key, altered byte, unsigned, wrong Kafka key) windows for a real
    device id travel through the broker; the service's check refuses exactly the forged ones."""
    genuine = [DEV.sign(_message(sequence=i)) for i in range(6)]
    altered = bytearray(genuine[2])
    altered[30] ^= 0x40  # the wall-clock start of window 2
    forged = [
        (KEY, DeviceKey.generate(DEV.device_id).sign(_message(sequence=9))),
        (KEY, bytes(altered)),
        (KEY, _message(sequence=4000)),  # the far-ahead sequence, unsigned
        (b"clinic-7/cap-9", genuine[3]),  # a genuine value replayed under another key
    ]
    records = [(KEY, v) for v in genuine[:3]] + forged + [(KEY, v) for v in genuine[3:]]
    producer = make_producer(kafka_config)
    for key, value in records:
        producer.send(kafka_config.activations_topic, key=key, value=value, partition=0)
    producer.flush(10)
    producer.close()
    reader = make_topic_reader(kafka_config, kafka_config.activations_topic)
    got: list = []
    deadline = time.monotonic() + 15
    while len(got) < len(records) and time.monotonic() < deadline:
        for recs in reader.poll(timeout_ms=200).values():
            got.extend(recs)
    reader.close()
    got.sort(key=lambda r: r.offset)
    assert [(r.key, r.value) for r in got] == records
    refused = STORE.check_batch([r.key for r in got], [r.value for r in got])
    assert [row for row, _ in refused] == [3, 4, 5, 6]
    accepted = [
        decode_activation(r.value).sequence for i, r in enumerate(got) if i not in {3, 4, 5, 6}
    ]
    assert accepted == list(range(6))


def test_keys_command_provisions_lists_and_revokes(tmp_path, monkeypatch, capsys) -> None:
    from dropstream.cli import main

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("DROPSTREAM_DEVICE_KEYS", raising=False)
    assert main(["keys", "provision", "--device-id", "clinic-7/cap-3"]) == 0
    key = DeviceKey.load(tmp_path / "dropstream" / "devices" / "clinic-7_cap-3.key")
    store = DeviceKeys.load(tmp_path / "dropstream" / "device-keys.json")
    assert store.verify(KEY, key.sign(_message())) == "clinic-7/cap-3"
    assert main(["keys", "provision", "--device-id", "clinic-7/cap-3"]) == 1  # no silent rotate
    assert "--replace" in capsys.readouterr().err
    assert main(["keys", "list"]) == 0
    out = capsys.readouterr().out
    assert key.key_id in out and key.secret.hex() not in out
    assert main(["keys", "revoke", "--device-id", "clinic-7/cap-3"]) == 0
    assert len(DeviceKeys.load(tmp_path / "dropstream" / "device-keys.json")) == 0
    assert main(["keys", "alert-key", "--out", str(tmp_path / "a.key")]) == 0
    assert len(AlertVerifier.load([tmp_path / "a.pub"])) == 1


def test_connect_refuses_to_start_without_its_key(tmp_path, monkeypatch, capsys) -> None:
    from dropstream.cli import main

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    args = [
        "connect",
        "--bundle",
        str(tmp_path / "x.dsb"),
        "--device-id",
        "dev-a",
        "--source-id",
        "s",
    ]
    assert main(args) == 1
    assert "devices/dev-a.key does not exist" in capsys.readouterr().err
    other = DeviceKey.generate("dev-b").save(tmp_path / "b.key")
    assert main([*args, "--device-key", str(other)]) == 1
    assert "is for device 'dev-b', not 'dev-a'" in capsys.readouterr().err


def test_the_simulated_device_signs_when_given_a_key() -> None:
    from dropstream.inference.demo import DEMO_BUNDLE
    from dropstream.local_encoder.bundle import load_device_bundle
    from dropstream.local_encoder.simulated import encode_recording

    bundle = load_device_bundle(DEMO_BUNDLE)
    samples = np.random.default_rng(0).standard_normal((len(bundle.channel_names), 3000))
    key = DeviceKey.generate("sim-1")
    signed = [raw for _, raw in encode_recording(bundle, samples, "sim-1", key=key)]
    unsigned = [raw for _, raw in encode_recording(bundle, samples, "sim-1")]
    store = DeviceKeys({"sim-1": key.secret})
    assert signed and store.check_batch([b"sim-1"] * len(signed), signed) == []
    assert len(store.check_batch([b"sim-1"] * len(unsigned), unsigned)) == len(unsigned)


def test_tampered_real_windows_are_refused_row_by_row() -> None:
    """Signed windows of the shipped device from two devices: a flipped tag bit, a flipped
    value bit, a window replayed under the other device's key and one signed with another
    key are refused; every other row verifies."""
    from dropstream.inference.demo import DEMO_BUNDLE
    from dropstream.local_encoder.bundle import load_device_bundle
    from dropstream.local_encoder.simulated import encode_recording

    bundle = load_device_bundle(DEMO_BUNDLE)
    samples = np.random.default_rng(2).standard_normal((len(bundle.channel_names), 2000))
    keys = {d: DeviceKey.generate(d) for d in ("dev-a", "dev-b")}
    store = DeviceKeys({d: k.secret for d, k in keys.items()})
    records = [
        (d.encode(), raw)
        for d, key in keys.items()
        for _, raw in encode_recording(bundle, samples, d, key=key)
    ]
    keys_col, values = [k for k, _ in records], [v for _, v in records]
    assert store.check_batch(keys_col, values) == []
    tag = bytearray(values[3])
    tag[-1] ^= 0x01
    body = bytearray(values[5])
    body[-20] ^= 0x01  # the last value byte before the 16-byte tag
    values[3], values[5] = bytes(tag), bytes(body)
    keys_col[0] = b"dev-b"  # its first window carries its stream block (and device id) in full
    keys_col[7] = b"dev-b"  # a window by reference: its tag does not match dev-b's key
    values[9] = DeviceKey.generate("dev-a").sign(values[9])
    out = store.check_batch(keys_col, values)
    assert [row for row, _ in out] == [0, 3, 5, 7, 9]
    assert "is not the device id" in out[0][1]
    assert all("does not match" in why for _, why in out[1:])


def test_provision_many_writes_the_store_once_and_is_all_or_nothing(tmp_path) -> None:
    store = tmp_path / "device-keys.json"
    DeviceKeys.provision("dev-0", store)
    before = store.read_bytes()
    with pytest.raises(AuthError, match="already has a key"):
        DeviceKeys.provision_many(["dev-1", "dev-0"], store)
    with pytest.raises(AuthError, match="repeated"):
        DeviceKeys.provision_many(["dev-1", "dev-1"], store)
    assert store.read_bytes() == before  # nothing half-written
    ids = [f"dev-{i}" for i in range(1, 6)]
    keys = DeviceKeys.provision_many(ids, store)
    assert [k.device_id for k in keys] == ids
    loaded = DeviceKeys.load(store)
    assert len(loaded) == 6
    for k in keys:
        assert loaded.verify(k.device_id.encode(), k.sign(_message(k.device_id))) == k.device_id
