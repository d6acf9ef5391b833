"""Scoring in the service: novelty scores, classifier scores and labels, device choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dropstream.inference.demo import DEMO_BUNDLE
from dropstream.inference.head import ServerModel
from dropstream.inference.service import (
    Scorer,
    ServiceError,
    ServiceSettings,
    policy_for,
    torch_device,
)


def test_novelty_scores_match_the_bundle_head():
    model = ServerModel.load(DEMO_BUNDLE)
    rng = np.random.default_rng(0)
    idx = np.sort(rng.random((5, 128)).argsort(axis=1)[:, :32], axis=1)
    val = rng.random((5, 32)).astype(np.float32)
    dense = np.full((5, 128), np.nan, np.float32)  # NaN at dropped units, as scatter_dense
    np.put_along_axis(dense, idx, val, axis=1)
    scores, classes, _ = Scorer(model, torch.device("cpu"))(dense)
    assert classes is None
    np.testing.assert_allclose(scores, model.score(idx, val), rtol=1e-5)
    policy = policy_for(model, ServiceSettings(threshold_level=0.995, hysteresis_level=0.9))
    cal = model.bundle.head_config["calibration"]
    assert policy.high == pytest.approx(np.interp(0.995, cal["levels"], cal["quantiles"]))
    assert policy.low == pytest.approx(np.interp(0.9, cal["levels"], cal["quantiles"]))


def test_classifier_score_is_one_minus_p_normal_with_the_top_other_class(tmp_path):
    from dropstream.inference.training import TrainConfig, train_classifier

    rng = np.random.default_rng(1)
    X = rng.standard_normal((60, 2, 32)).astype(np.float32)
    y = np.array(["normal", "seizure", "artefact"])[np.arange(60) % 3]
    X[y == "seizure"] += 2.0
    config = TrainConfig(width=16, keep=4, pool=1, hidden=(8,), epochs=3, progress=False,
                         device="cpu")  # fmt: skip
    trained = train_classifier(X, y, config, sfreq=32.0)
    trained.save(tmp_path / "cls.dsb", model_id="cls")
    model = ServerModel.load(tmp_path / "cls.dsb")
    dense = rng.random((7, 16)).astype(np.float32)
    scores, classes, _ = Scorer(model, torch.device("cpu"))(dense)
    with torch.no_grad():
        proba = torch.softmax(model.head(torch.from_numpy(dense)), dim=1).numpy()
    normal = list(model.bundle.classes).index("normal")
    np.testing.assert_allclose(scores, 1 - proba[:, normal], rtol=1e-5)
    proba[:, normal] = -1
    np.testing.assert_array_equal(classes, proba.argmax(axis=1))
    policy = policy_for(model, ServiceSettings(class_threshold=0.7))
    assert (policy.kind, policy.high, policy.low) == ("class", 0.7, 0.7)


def test_device_choice():
    assert torch_device("cpu").type == "cpu"
    assert torch_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ServiceError, match="no CUDA device"):
            torch_device("cuda")
    with pytest.raises(ServiceError):
        ServiceSettings(device="tpu")
