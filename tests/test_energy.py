"""The multi-scale energy novelty head on real ECG: per-group z-scores calibrated for any kept
set, and where in the window an artefact lies (what alert onsets and offsets use)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dropstream.inference.datasets import windows_from_recordings
from dropstream.inference.energy import EnergyScorer
from dropstream.inference.model import random_keep_mask
from dropstream.inference.training import TrainConfig, train_novelty
from dropstream.inference.training.novelty import ENERGY_PARTS


@pytest.fixture(scope="module")
def ecg(data_dir: Path):
    pre = {"l_freq": 0.5, "h_freq": 40.0}
    ws = windows_from_recordings([data_dir / "body" / "ecg_5min.fif"], 1.0, 0.25, pre)
    model = train_novelty(
        ws.X[:480], TrainConfig(seed=0, progress=False), sfreq=ws.sfreq,
        hop_samples=ws.hop_samples, prefiltered=True,
    )  # fmt: skip
    emg = windows_from_recordings([data_dir / "body" / "emg_fatigue.fif"], 1.0, 1.0, pre)
    return ws, model, emg


def test_each_groups_z_score_is_standard_for_fresh_keep_masks(ecg) -> None:
    ws, model, _ = ecg
    head = model.head
    assert isinstance(head, EnergyScorer) and head.groups == 1 + ENERGY_PARTS
    assert model.head_config["energy_groups"] == head.groups
    x = torch.as_tensor(model.prepare(ws.X[:480], prefiltered=True))  # the fitted windows
    with torch.no_grad():
        gen = torch.Generator().manual_seed(3)  # other masks than the fit's
        acts = model.first(x, gen, repeats=4)
        assert (acts > 0).float().mean() > 0.99  # the offset: the relu hardly ever clips
        mask = random_keep_mask(acts.shape[0], acts.shape[1], model.keep, gen, x.device).bool()
        e, count = head.log_energy(acts, mask)
        z2 = head.z2(e, count)
    # a quarter keeps ~8 of its 32 units, the whole window ~32 of 128: each group's z-score,
    # its centre and variance fitted in 1/count, is standard on fresh masks
    assert count[:, 0].mean() > 3 * count[:, 1:].mean()
    np.testing.assert_allclose(z2.mean(0).numpy(), 1.0, atol=0.25)
    assert (z2.mean(0) * 0.25 > z2.var(0) ** 0.5 / len(z2) ** 0.5).all()  # not by chance


def test_the_head_locates_an_artefact_in_the_quarter_it_fills(ecg) -> None:
    ws, model, emg = ecg
    thr = model.head_config["calibration"]["threshold"]
    normal = ws.X[500:620].copy()
    loud = np.argsort(emg.X.std(axis=(1, 2)))[-10:]  # contractions, not the rests between
    burst = 3 * emg.X[loud, :, :250]  # 0.5 s of EMG (x3, as the benchmark adds it)
    late, early = normal[:10].copy(), normal[10:20].copy()
    late[:, :, 750:] += burst[:, :, :250]
    early[:, :, :250] += burst[:, :, :250]
    s_late, where_late = model.score_located(late, prefiltered=True, seed=1)
    s_early, where_early = model.score_located(early, prefiltered=True, seed=1)
    s_norm, where_norm = model.score_located(normal, prefiltered=True, seed=1)
    assert (s_late > thr).mean() >= 0.8 and (s_early > thr).mean() >= 0.8
    assert np.mean(s_norm > thr) < 0.05
    hit_late, hit_early = where_late[s_late > thr], where_early[s_early > thr]
    assert np.median(hit_late[:, 0]) >= 0.5 and np.median(hit_early[:, 1]) <= 0.5
    assert where_norm.shape == (120, 2) and (where_norm[:, 0] < where_norm[:, 1]).all()


@pytest.mark.parametrize("defence", [{"rank": 4}, {"noise": 0.5}])
def test_a_low_rank_or_noisy_energy_layer_is_one_bias_free_group(ecg, defence) -> None:
    """The offset would vanish in a low-rank or noisy layer's standardisation: such layers keep
    one group of bias-free relu units, and still flag EMG on an ECG."""
    ws, _, emg = ecg
    cfg = TrainConfig(seed=0, progress=False, **defence)
    model = train_novelty(ws.X[:480], cfg, sfreq=ws.sfreq, hop_samples=ws.hop_samples,
                          prefiltered=True)  # fmt: skip
    head = model.head
    assert head.groups == 1 and not head.offset.any() and not head.unit_group.any()
    assert model.first.to_numpy().bias is None or not np.any(model.first.to_numpy().bias)
    thr = model.head_config["calibration"]["threshold"]
    normal = model.score(ws.X[500:], prefiltered=True, seed=1)
    loud = np.argsort(emg.X.std(axis=(1, 2)))[-20:]
    noisy = model.score(ws.X[500:520] + 3 * emg.X[loud], prefiltered=True, seed=1)
    assert np.mean(normal > thr) < 0.1 and np.mean(noisy > thr) > 0.5
    assert model.score_located(ws.X[500:510], prefiltered=True)[1] is None


def test_a_single_group_energy_bundle_made_before_loads_and_scores_as_it_did(
    ecg, tmp_path: Path
) -> None:
    """Bundles from before the multi-scale head (no ``energy_groups``, scalar centre and scale,
    no offset) keep their formula: ``((log mean_kept(a^2 / p) - center) / scale)^2``."""
    import dataclasses
    import io

    from dropstream.inference.head import ServerModel
    from dropstream.local_encoder.bundle import write_bundle
    from dropstream.local_encoder.first_layer import draw_kept_units

    _, model, _ = ecg
    dev = model.device_bundle()
    old_config = {k: v for k, v in dev.head_config.items() if k != "energy_groups"}
    old = EnergyScorer(dev.layer.width, dev.keep)
    rng = np.random.default_rng(0)
    power = rng.uniform(0.5, 2.0, dev.layer.width)
    old.unit_power.copy_(torch.as_tensor(power))
    old.center.fill_(0.3)
    old.scale.fill_(1.7)
    buf = io.BytesIO()
    torch.save(old.state_dict(), buf)
    path = tmp_path / "old.dsb"
    write_bundle(path, dataclasses.replace(dev, head_config=old_config), buf.getvalue())
    server = ServerModel.load(path)
    assert isinstance(server.head, EnergyScorer) and server.head.groups is None
    idx = np.stack([draw_kept_units(rng, dev.layer.width, dev.keep) for _ in range(5)])
    vals = rng.random(idx.shape).astype(np.float32)
    e = np.log(np.mean(vals.astype(np.float64) ** 2 / power[idx.astype(np.int64)], axis=1))
    np.testing.assert_allclose(server.score(idx, vals), ((e - 0.3) / 1.7) ** 2, rtol=1e-4)
    dense = np.full((5, dev.layer.width), np.nan, dtype=np.float32)
    np.put_along_axis(dense, idx.astype(np.int64), vals, axis=1)
    with torch.no_grad():
        assert server.forward_located(dense)[1] is None  # no time parts: whole windows
