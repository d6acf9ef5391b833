"""The window encoder: first layer, fresh masks, messages, and the privacy guard."""

from __future__ import annotations

import numpy as np
import pytest

from dropstream.broker.config import ClientConfig
from dropstream.broker.wire import decode_activation
from dropstream.local_encoder.agent import EncoderAgent
from dropstream.local_encoder.bundle import load_device_bundle
from dropstream.local_encoder.encoder import WindowEncoder
from dropstream.local_encoder.first_layer import PrivacyGuardError
from dropstream.local_encoder.spool import Spool
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
    back = decode_activation(enc.to_bytes(msg))
    np.testing.assert_array_equal(back.indices, msg.indices)
    np.testing.assert_allclose(back.values, msg.values, rtol=1e-3, atol=1e-3)  # float16


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
    enc = WindowEncoder(bundle, "d", "s", seed=0)
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
        EncoderAgent(bundle, Inlet(), ClientConfig(), spool, "d")
    # a bundle file with such settings cannot even be written or loaded
    with pytest.raises(PrivacyGuardError):
        save_bundle(tmp_path / "bad.dsb", bundle)


def test_just_below_the_bound_is_accepted(eeg, tmp_path):
    data, sfreq, names = eeg
    bundle = make_bundle(data, sfreq, names, hop=80, width=1024, keep=639)
    loaded = load_device_bundle(save_bundle(tmp_path / "ok.dsb", bundle))
    WindowEncoder(loaded, "d", "s")
