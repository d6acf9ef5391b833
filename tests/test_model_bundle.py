"""Model bundle: numpy device part equals torch, privacy guard, encoding without torch."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from dropstream.inference.datasets import WindowSet, load_uea
from dropstream.inference.head import ServerModel, load_model
from dropstream.inference.model import ModelConfigError, TorchFirstLayer, validate_keep
from dropstream.inference.training import TrainConfig, TrainedModel, train_classifier
from dropstream.local_encoder.bundle import BundleError, load_device_bundle
from dropstream.local_encoder.first_layer import PrivacyGuardError, draw_kept_units
from dropstream.local_encoder.preprocessing import design_filter, filter_windows, prepare_window

FAST = {"epochs": 3, "progress": False, "hidden": (64, 32), "n_masks": 2}


@pytest.fixture(scope="module")
def fingers(data_dir: Path) -> tuple[WindowSet, WindowSet]:
    return load_uea("FingerMovements", data_dir / "uea")


@pytest.fixture(scope="module", params=["dense", "conv", "pooled"])
def trained(request: pytest.FixtureRequest, fingers: tuple[WindowSet, WindowSet]) -> TrainedModel:
    tr, _ = fingers
    cfg = TrainConfig(
        width=128,
        keep=32,
        first_layer="conv" if request.param == "conv" else "dense",
        pool=4 if request.param == "pooled" else 1,  # T=50: 12 averages, 2 samples ignored
        conv_filters=8,
        conv_kernel=10,
        conv_stride=5,
        preprocessing={"l_freq": 1.0, "h_freq": 40.0},
        **FAST,
    )
    return train_classifier(tr.X[:80], tr.y[:80], cfg, sfreq=tr.sfreq)


def test_numpy_device_part_equals_torch(
    trained: TrainedModel, fingers: tuple[WindowSet, WindowSet], tmp_path: Path
) -> None:
    _, te = fingers
    path = tmp_path / "m.dsb"
    trained.save(path, model_id="fingers")
    dev = load_device_bundle(path)
    assert dev.model_id == "fingers" and dev.model_version == 1 and len(dev.checksum) == 64
    assert dev.keep == trained.keep and dev.layer.width == trained.width
    # the device pipeline: causal filter, normalise, numpy first layer
    x = prepare_window(
        filter_windows(te.X[:20], dev.sfreq, dev.preprocessing),
        dev.preprocessing,
        dev.norm_mean,
        dev.norm_std,
    )
    np.testing.assert_array_equal(x, trained.prepare(te.X[:20]))
    a_np = dev.layer.forward(x)
    with torch.no_grad():
        a_torch = trained.first(torch.as_tensor(x)).numpy()
    assert a_np.shape == (20, trained.width)
    np.testing.assert_allclose(a_np, a_torch, rtol=0, atol=1e-5)
    assert (a_np > 0).any() and (a_np == 0).any()  # relu really active and really cutting
    # the device's single-window runner (preallocated buffers) gives the same activations
    run = dev.layer.runner()
    first = run(x[0])
    for i in range(len(x)):
        out = run(x[i])
        np.testing.assert_allclose(out, a_torch[i], rtol=0, atol=1e-5)
        assert out.dtype == np.float32 and np.shares_memory(out, first)  # no new array
    # a pooled layer stays factored on the device: the small matrix, not C*T columns
    assert dev.layer.pool == trained.first.pool
    assert dev.layer.rank_inputs == dev.n_channels * (dev.window_samples // dev.layer.pool)
    assert dev.layer.n_inputs == dev.n_channels * dev.window_samples
    # the equivalent dense weight (audits use it) is the map torch computes
    flat = x.reshape(len(x), -1).astype(np.float64)
    dense = flat @ dev.layer.dense_weight.T.astype(np.float64) + dev.layer.bias
    with torch.no_grad():
        pre = trained.first.preactivation(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(dense, pre, rtol=0, atol=1e-5)


def test_format_1_bundles_still_load(
    trained: TrainedModel, fingers: tuple[WindowSet, WindowSet], tmp_path: Path
) -> None:
    """A bundle as format 1 wrote it (dense weight; a noisy low-rank layer also stored its
    ``A`` as ``noise_mix``) loads and computes the same activations; format 3 is refused."""
    import hashlib
    import io
    import zipfile

    path, old = tmp_path / "new.dsb", tmp_path / "old.dsb"
    trained.save(path)
    new = load_device_bundle(path)
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    manifest = json.loads(members["manifest.json"])
    assert manifest["format"] == 2 and manifest["first_layer_pool"] == trained.first.pool
    arrays = dict(np.load(io.BytesIO(members["device.npz"])))
    assert ("factor" in arrays) == (trained.first.rank is not None)
    arrays["weight"] = new.layer.dense_weight
    if "factor" in arrays:
        arrays["noise_mix"] = arrays.pop("factor")
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    members["device.npz"] = buf.getvalue()
    manifest["format"] = 1
    del manifest["first_layer_pool"]
    manifest["sha256"] = hashlib.sha256(members["device.npz"] + members["head.pt"]).hexdigest()

    def write() -> None:
        members["manifest.json"] = json.dumps(manifest).encode()
        with zipfile.ZipFile(old, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)

    write()
    b = load_device_bundle(old)
    assert b.layer.pool == 1
    if trained.first.rank is not None:  # read back into its factored form
        assert b.layer.factor.shape == (trained.width, trained.first.rank)
        assert b.layer.weight.shape == (trained.first.rank, new.layer.n_inputs)
    _, te = fingers
    x = trained.prepare(te.X[:10])
    np.testing.assert_allclose(b.layer.forward(x), new.layer.forward(x), rtol=0, atol=1e-5)
    manifest["format"] = 3
    write()
    with pytest.raises(BundleError, match="format 3 is not supported.*upgrade dropstream"):
        load_device_bundle(old)


def test_server_head_from_bundle_matches_trained_head(
    trained: TrainedModel, fingers: tuple[WindowSet, WindowSet], tmp_path: Path
) -> None:
    _, te = fingers
    path = tmp_path / "m.dsb"
    trained.save(path)
    server = ServerModel.load(path)
    dev = server.bundle
    x = trained.prepare(te.X[:10])
    a = dev.layer.forward(x)
    rng = np.random.default_rng(3)
    idx = np.stack([draw_kept_units(rng, dev.layer.width, dev.keep) for _ in range(10)])
    vals = np.take_along_axis(a, idx.astype(np.int64), axis=1)
    proba = server.predict_proba(idx, vals)
    dense = np.full_like(a, np.nan)  # NaN marks the dropped units
    np.put_along_axis(dense, idx.astype(np.int64), vals, axis=1)
    with torch.no_grad():
        expected = torch.softmax(trained.head(torch.as_tensor(dense)), 1).numpy()
    np.testing.assert_allclose(proba, expected, atol=1e-6)
    with pytest.raises(BundleError, match="K="):
        server.predict_proba(idx[:, :-1], vals[:, :-1])


def test_bundle_rejects_other_stream_and_corruption(trained: TrainedModel, tmp_path: Path) -> None:
    path = tmp_path / "m.dsb"
    trained.save(path)
    dev, _ = load_model(path)
    assert dev.check_stream(list(reversed(dev.channel_names)), dev.sfreq)[0] == dev.n_channels - 1
    with pytest.raises(BundleError, match="Hz"):
        dev.check_stream(dev.channel_names, dev.sfreq * 2)
    with pytest.raises(BundleError, match="lacks channels"):
        dev.check_stream(dev.channel_names[1:], dev.sfreq)
    data = bytearray(path.read_bytes())
    bad = tmp_path / "bad.dsb"
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(BundleError):
        load_model(bad)
    # a damaged compressed member fails to inflate before any checksum: still a BundleError
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("device.npz")
    assert info.compress_type == zipfile.ZIP_DEFLATED
    head = info.header_offset  # local header: 30 bytes, then name and extra of stored lengths
    start = head + 30 + int.from_bytes(data[head + 26 : head + 28], "little")
    start += int.from_bytes(data[head + 28 : head + 30], "little")
    data[start : start + 8] = bytes(b ^ 0xFF for b in data[start : start + 8])
    bad.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="corrupt"):
        load_model(bad)


def test_privacy_guard_refuses_invertible_keep(fingers: tuple[WindowSet, WindowSet]) -> None:
    tr, _ = fingers
    small = tr.X[:40, :2, :8]  # C*T = 16 inputs
    cfg = TrainConfig(width=32, keep=16, **FAST)
    with pytest.raises(PrivacyGuardError, match="C\\*T"):
        train_classifier(small, tr.y[:40], cfg, sfreq=tr.sfreq)
    with pytest.raises(PrivacyGuardError, match="C\\*hop"):
        # overlapping windows: each brings only C*hop = 8 new unknowns
        train_classifier(
            small, tr.y[:40], TrainConfig(width=32, keep=8, **FAST), sfreq=tr.sfreq, hop_samples=4
        )
    with pytest.raises(PrivacyGuardError):
        validate_keep(1400, 2048, 28, 50, None)
    validate_keep(1399, 2048, 28, 50, None)
    with pytest.raises(PrivacyGuardError):
        validate_keep(0, 256, 28, 50, None)
    # a conv layer whose derived width reaches the input dimension cannot keep everything
    conv = TrainConfig(
        first_layer="conv", conv_filters=64, conv_kernel=2, conv_stride=1, keep_fraction=1.0, **FAST
    )
    with pytest.raises(PrivacyGuardError):
        train_classifier(small, tr.y[:40], conv, sfreq=tr.sfreq)


def test_guard_also_on_write(trained: TrainedModel, tmp_path: Path) -> None:
    dev = trained.device_bundle()
    object.__setattr__(dev, "keep", dev.n_channels * dev.window_samples)
    with pytest.raises(PrivacyGuardError):
        dev.check_privacy()


def test_conv_export_is_exact() -> None:
    torch.manual_seed(0)
    layer = TorchFirstLayer(3, 40, kind="conv", conv_filters=4, conv_kernel=7, conv_stride=3)
    dense = layer.to_numpy()
    x = torch.randn(5, 3, 40)
    with torch.no_grad():
        np.testing.assert_allclose(dense.forward(x.numpy()), layer(x).numpy(), atol=1e-5)
    assert dense.width == 4 * ((40 - 7) // 3 + 1)


NO_TORCH = r"""
import json, sys


class NoTorch:
    # meta path hook: any 'import torch' fails as if torch were not installed

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)")
        return None


sys.meta_path.insert(0, NoTorch())
import numpy as np
from dropstream.local_encoder.bundle import load_device_bundle
from dropstream.local_encoder.first_layer import draw_kept_units
from dropstream.local_encoder.preprocessing import CausalFilter, prepare_window
dev = load_device_bundle(sys.argv[1])
window = np.load(sys.argv[2])
f = CausalFilter(dev.sfreq, dev.n_channels, dev.preprocessing, sos=dev.filter_sos)
x = prepare_window(f.process(window), dev.preprocessing, dev.norm_mean, dev.norm_std)
a = dev.layer.forward(x)
idx = draw_kept_units(np.random.default_rng(0), dev.layer.width, dev.keep)
print(json.dumps({"torch_loaded": "torch" in sys.modules,
                  "scipy_signal_loaded": "scipy.signal" in sys.modules,
                  "indices": idx.tolist(), "values": a[idx.astype(int)].tolist(),
                  "activations": a.tolist()}))
"""


def test_bundle_encodes_without_torch(
    trained: TrainedModel, fingers: tuple[WindowSet, WindowSet], tmp_path: Path
) -> None:
    _, te = fingers
    path = tmp_path / "m.dsb"
    trained.save(path)
    np.save(tmp_path / "w.npy", te.X[5])
    out = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(path), str(tmp_path / "w.npy")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    res = json.loads(out.stdout)
    assert res["torch_loaded"] is False
    # the bundle carries its designed filter: the device never imports scipy.signal (~75 MiB)
    assert res["scipy_signal_loaded"] is False
    stored = load_device_bundle(path).filter_sos
    np.testing.assert_array_equal(stored, design_filter(trained.sfreq, trained.preprocessing))
    assert len(res["indices"]) == trained.keep == len(set(res["indices"]))
    with torch.no_grad():
        expected = trained.first(torch.as_tensor(trained.prepare(te.X[5:6])))[0].numpy()
    np.testing.assert_allclose(res["activations"], expected, atol=1e-5)
    np.testing.assert_allclose(res["values"], expected[res["indices"]], atol=1e-5)


def test_level_shape_layer_exports_one_dense_weight() -> None:
    # the default classifier layer: pooled, trained in level/shape coordinates
    torch.manual_seed(0)
    layer = TorchFirstLayer(3, 70, width=16, pool=7, level_gain=1.0)
    x = torch.randn(50, 3, 70) + 5 * torch.randn(50, 3, 1)  # large trial-to-trial offsets
    before = layer.to_numpy().weight
    layer.fit_input_scale(x)
    dense = layer.to_numpy()
    assert not np.allclose(before, dense.weight)  # the fitted scales change the weight
    with torch.no_grad():
        np.testing.assert_allclose(dense.forward(x.numpy()), layer(x).numpy(), atol=1e-5)


def test_bundles_from_before_head_format_2_load_and_newer_ones_fail_clearly(
    trained: TrainedModel, tmp_path: Path
) -> None:
    import dataclasses
    import io

    from dropstream.inference.model import HEAD_FORMAT, Head
    from dropstream.local_encoder.bundle import write_bundle

    dev = trained.device_bundle()
    rng = np.random.default_rng(0)
    idx = np.stack([draw_kept_units(rng, dev.layer.width, dev.keep) for _ in range(6)])
    vals = rng.random(idx.shape).astype(np.float32)
    zeros = np.zeros((6, dev.layer.width), np.float32)
    np.put_along_axis(zeros, idx.astype(np.int64), vals, axis=1)
    # a format-1 bundle as written before: no "format" / "fill", zero-filled rescaled head
    old_config = {k: v for k, v in dev.head_config.items() if k not in ("format", "fill")}
    torch.manual_seed(0)
    old_head = Head(dev.layer.width, dev.keep, hidden=(64, 32), n_outputs=2).eval()
    buf = io.BytesIO()
    torch.save(old_head.state_dict(), buf)
    path = tmp_path / "old.dsb"
    write_bundle(path, dataclasses.replace(dev, head_config=old_config), buf.getvalue())
    server = ServerModel.load(path)
    with torch.no_grad():  # zeros at dropped units, times m/K: exactly the old head
        scaled = torch.from_numpy(zeros) * (dev.layer.width / dev.keep)
        expected = torch.softmax(old_head.mlp(scaled), 1).numpy()
    np.testing.assert_allclose(server.predict_proba(idx, vals), expected, atol=1e-6)
    # a format-1 Deep SVDD novelty bundle (as the demo shipped before) still loads and scores
    from dropstream.inference.model import NoveltyScorer

    nov_config = dict(old_config, type="novelty", hidden=[64, 32], n_outputs=4, bias=False)
    nov_head = NoveltyScorer(
        Head(dev.layer.width, dev.keep, hidden=(64, 32), n_outputs=4, bias=False),
        torch.full((4,), 0.1),
    ).eval()
    buf = io.BytesIO()
    torch.save(nov_head.state_dict(), buf)
    write_bundle(
        tmp_path / "nov.dsb", dataclasses.replace(dev, head_config=nov_config), buf.getvalue()
    )
    with torch.no_grad():
        expected = ((nov_head.head.mlp(scaled) - 0.1) ** 2).sum(1).numpy()
    np.testing.assert_allclose(
        ServerModel.load(tmp_path / "nov.dsb").score(idx, vals), expected, rtol=1e-5
    )
    demo = ServerModel.load(Path(__file__).parents[1] / "inference/demo_data/ecg_novelty.dsb")
    assert demo.kind == "novelty" and demo.bundle.head_config["scorer"] == "energy"
    # a format-2 head (learned fill, before the decoding head) loads as it was written
    if dev.head_config["fill"] == "learned":
        v2 = dict(dev.head_config, format=2)
        path2 = tmp_path / "v2.dsb"
        write_bundle(path2, dataclasses.replace(dev, head_config=v2), trained.head_state_bytes())
        dense = torch.from_numpy(np.where(zeros != 0, zeros, np.nan))
        with torch.no_grad():
            expected = torch.softmax(trained.head.eval()(dense), 1).numpy()
        np.testing.assert_allclose(ServerModel.load(path2).predict_proba(idx, vals), expected,
                                   atol=1e-6)  # fmt: skip
    newer = dict(dev.head_config, format=HEAD_FORMAT + 1)
    write_bundle(tmp_path / "new.dsb", dataclasses.replace(dev, head_config=newer), b"")
    with pytest.raises(BundleError, match=f"head formats 1 to {HEAD_FORMAT}.*upgrade"):
        ServerModel.load(tmp_path / "new.dsb")


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "tanh"])
def test_decoding_head_reads_the_projections_back_from_any_kept_units(activation: str) -> None:
    from dropstream.inference.model import Head

    torch.manual_seed(0)
    layer = TorchFirstLayer(3, 64, width=48, pool=4, rank=2, activation=activation).eval()
    head = Head(48, 12, hidden=(8,), fill="decode", rank=2, activation=activation).eval()
    head.set_units(layer.linear.weight, layer.linear.bias)
    x = torch.randn(40, 3, 64)
    dev = layer.to_numpy()  # what the device sends: the numpy layer's activations
    acts = torch.from_numpy(dev.forward(x.numpy()))
    rng = np.random.default_rng(1)
    with torch.no_grad():
        u = layer.noise_space(x)
        outs = []
        for _ in range(3):  # three different kept sets per window: the same projections
            kept = torch.from_numpy(
                np.stack([np.isin(np.arange(48), draw_kept_units(rng, 48, 12)) for _ in x])
            )
            np.testing.assert_allclose(head.decode(acts, kept), u, atol=1e-3)
            outs.append(head(torch.where(kept, acts, torch.tensor(float("nan")))))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-4, rtol=0)
    with pytest.raises(ModelConfigError, match="rank"):
        Head(48, 12, fill="decode")
