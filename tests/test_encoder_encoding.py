"""The window encoder: first layer, fresh masks, messages, and the privacy guard."""

from __future__ import annotations

import time

import numpy as np
import pytest

from dropstream.broker.auth import DeviceKey, DeviceKeys
from dropstream.broker.config import ClientConfig
from dropstream.broker.wire import decode_activation
from dropstream.local_encoder.agent import EncoderAgent
from dropstream.local_encoder.bundle import load_device_bundle
from dropstream.local_encoder.encoder import WindowEncoder
from dropstream.local_encoder.first_layer import PrivacyGuardError
from dropstream.local_encoder.spool import Spool, SpoolFullError
from dropstream.local_encoder.windowing import Window, WindowBuffer
from tests.encoder_support import load_eeg, make_bundle, save_bundle


@pytest.fixture(scope="module")
def eeg(data_dir):
    data, sfreq, names = load_eeg(data_dir)
    return data[: int(20 * sfreq)], sfreq, names


@pytest.fixture(scope="module")
def windows(eeg):
    data, sfreq, names = eeg
    bundle = make_bundle(data, sfreq, names)
    return bundle, WindowBuffer(bundle, names, sfreq).push(data, np.arange(len(data)) / sfreq)


def test_message_holds_the_kept_activations_of_the_window(windows):
    bundle, ws = windows
    enc = WindowEncoder(bundle, "dev-1", "src-1", seed=1)
    w = ws[4]
    msg = enc.encode(w, sequence=17, wall_time=1.7e9)
    full = bundle.layer.forward(w.data)  # reference: the bundle's own first layer
    assert msg.keep == bundle.keep == 64 and msg.width == 256
    assert np.all(np.diff(msg.indices.astype(int)) > 0)
    np.testing.assert_allclose(msg.values, full[msg.indices], rtol=1e-5, atol=1e-6)
    assert (msg.device_id, msg.stream_id, msg.sequence) == ("dev-1", "src-1", 17)
    assert (msg.model_id, msg.model_version) == (bundle.model_id, bundle.model_version)
    assert msg.lsl_time == w.lsl_time and msg.wall_time == 1.7e9
    raw = enc.to_bytes(msg)
    assert raw[4] == 3 and raw[5] & 0x03 == 2  # wire version 3, 8-bit values
    back = decode_activation(raw)
    np.testing.assert_array_equal(back.indices, msg.indices)
    step = (msg.values.max() - msg.values.min()) / 255
    np.testing.assert_allclose(back.values, msg.values, rtol=0, atol=step / 2 * 1.001 + 1e-6)


def test_every_window_gets_a_fresh_mask_from_os_entropy(windows):
    bundle, ws = windows
    a, b = WindowEncoder(bundle, "d", "s"), WindowEncoder(bundle, "d", "s")
    masks_a = [tuple(a.encode(ws[0], i, 0.0).indices) for i in range(50)]
    masks_b = [tuple(b.encode(ws[0], i, 0.0).indices) for i in range(50)]
    assert len(set(masks_a)) == 50  # a new mask for every window
    assert masks_a != masks_b  # two agents do not share a sequence of masks
    # an explicit seed (tests only) reproduces the masks
    s1, s2 = WindowEncoder(bundle, "d", "s", seed=3), WindowEncoder(bundle, "d", "s", seed=3)
    assert [tuple(s1.encode(w, 0, 0.0).indices) for w in ws[:5]] == [
        tuple(s2.encode(w, 0, 0.0).indices) for w in ws[:5]
    ]


def test_values_too_large_for_float16_are_sent_as_float32(windows):
    bundle, ws = windows
    enc = WindowEncoder(bundle, "d", "s", seed=0, values="float16")
    big = Window(data=ws[0].data * 1e6, lsl_time=0.0, index=0)
    msg = enc.encode(big, 0, 0.0)
    assert np.max(np.abs(msg.values)) > 65504
    back = decode_activation(enc.to_bytes(msg))
    np.testing.assert_allclose(back.values, msg.values, rtol=1e-6)


@pytest.mark.parametrize(
    ("keep", "hop", "match"),
    [(1280, 160, "C\\*T"), (700, 80, "C\\*hop"), (640, 80, "C\\*hop")],
)
def test_privacy_guard_refuses_invertible_bundles(eeg, tmp_path, keep, hop, match):
    data, sfreq, names = eeg
    bundle = make_bundle(data, sfreq, names, hop=hop, width=2048, keep=keep, check=False)
    with pytest.raises(PrivacyGuardError, match=match):
        WindowEncoder(bundle, "d", "s")

    class Inlet:
        info = type(
            "Info", (), {"source_id": "s", "name": "n", "channel_names": names, "sfreq": sfreq}
        )

        def poll(self):
            raise AssertionError("never polled")

    with Spool(tmp_path / "spool") as spool, pytest.raises(PrivacyGuardError, match=match):
        EncoderAgent(bundle, Inlet(), ClientConfig(), spool, DeviceKey.generate("d"))
    # a bundle file with such settings cannot even be written or loaded
    with pytest.raises(PrivacyGuardError):
        save_bundle(tmp_path / "bad.dsb", bundle)


def test_just_below_the_bound_is_accepted(eeg, tmp_path):
    data, sfreq, names = eeg
    bundle = make_bundle(data, sfreq, names, hop=80, width=1024, keep=639)
    loaded = load_device_bundle(save_bundle(tmp_path / "ok.dsb", bundle))
    WindowEncoder(loaded, "d", "s")


class _FeedInlet:
    """A fake inlet handing out prepared chunks of the real recording, one per poll."""

    def __init__(self, names: list[str], sfreq: float, chunks: list[tuple[np.ndarray, float]]):
        self.info = type(
            "Info", (), {"source_id": "s", "name": "n", "channel_names": names, "sfreq": sfreq}
        )
        self._sfreq = sfreq
        self._chunks = list(chunks)

    def poll(self):
        data, t0 = self._chunks.pop(0)
        ts = t0 + np.arange(len(data)) / self._sfreq
        return type("Chunk", (), {"data": data, "timestamps": ts, "gaps": ()})()


def test_a_window_the_spool_refuses_spends_no_sequence_number(eeg, tmp_path):
    """SpoolFullError on the 3rd window: numbers 0, 1 used, 2 not; the next window gets 2 and
    reports the refused windows' signal as unencoded."""
    data, sfreq, names = eeg
    bundle = make_bundle(data, sfreq, names)  # window 160, hop 80 samples at 160 Hz
    key = DeviceKey.generate("d")
    inlet = _FeedInlet(names, sfreq, [(data[:400], 0.0), (data[400:800], 400 / sfreq)])
    with Spool(tmp_path / "spool", 400, "block", block_timeout=0.05) as spool:
        agent = EncoderAgent(bundle, inlet, ClientConfig(), spool, key, clock=lambda: 0.0)
        with pytest.raises(SpoolFullError):
            agent.poll_once()  # 4 windows cut; 2 fit (~170 B each in wire version 3)
        assert agent.stats.next_sequence == 2 and agent.stats.windows_made == 2
        assert spool.next_sequence(agent._stream_key) == 2
        spool.remove([it.id for it in spool.peek(10)])  # the sender caught up
        spool.max_bytes = 1 << 20
        assert agent.poll_once() == 5
        msgs = [decode_activation(it.value) for it in spool.peek(10)]
    assert [m.sequence for m in msgs] == [2, 3, 4, 5, 6]  # no number skipped
    assert msgs[0].lsl_time == 320 / sfreq  # windows at 160 and 240 samples were refused...
    assert msgs[0].unencoded_s == pytest.approx(160 / sfreq)  # ...and are reported
    assert [m.unencoded_s for m in msgs[1:]] == [0.0] * 4


def test_the_first_window_after_a_restart_reports_the_downtime(eeg, tmp_path):
    data, sfreq, names = eeg
    bundle = make_bundle(data, sfreq, names)
    key = DeviceKey.generate("d")
    with Spool(tmp_path / "spool") as spool:
        inlet = _FeedInlet(names, sfreq, [(data[:400], 0.0)])
        EncoderAgent(bundle, inlet, ClientConfig(), spool, key, clock=lambda: 0.0).poll_once()
    # last window starts at 240 samples = 1.5 s, so the next one was due at 2.0 s; the agent
    # comes back 10 s into the signal (wall clock = time.time() + LSL time here)
    t_stop = time.time()
    with Spool(tmp_path / "spool") as spool:
        inlet = _FeedInlet(names, sfreq, [(data[:400], 10.0)])
        agent = EncoderAgent(bundle, inlet, ClientConfig(), spool, key, clock=lambda: 0.0)
        assert agent.poll_once() == 4
        values = [it.value for it in spool.peek(10)]
    msgs = [decode_activation(v) for v in values]
    assert [m.sequence for m in msgs] == list(range(8))
    assert [m.unencoded_s for m in msgs[:4]] == [0.0] * 4
    assert 8.0 <= msgs[4].unencoded_s <= 8.0 + (time.time() - t_stop) + 0.1
    assert [m.unencoded_s for m in msgs[5:]] == [0.0] * 3
    keys = DeviceKeys({"d": key.secret})
    assert keys.check_batch([b"d"] * 8, values) == []  # signed, across the restart
