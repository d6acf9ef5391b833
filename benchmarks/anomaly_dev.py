"""How the energy novelty model was chosen without looking at the benchmark's test stretches.

``benchmarks/anomaly_benchmark.py`` tests on the later part of each recording. The choices
behind the default novelty model (first layer, server scorer, smoothing, calibration) were made
on **dev tasks** cut from the benchmark's *training* stretches only: each training stretch split
about 60/40, the same kinds of real artefacts spliced into the later part at other times and
from other offsets of their source files. This script (numpy only, seconds) compares the
candidates on those dev tasks, or, with ``--test``, on the benchmark's tasks (to report, not
to choose). Every candidate sees what the server sees: ``K = 64`` of ``m = 256`` relu units
per window, a fresh keep mask per window.

Candidates (``LAYER,POOL,SCORER,SMOOTH,CALIBRATION``):

* layer: ``rand`` (random projections of the window) or ``white`` (of the whitened window);
* pool: time pooling factor before the layer;
* scorer: ``energy`` (one-sided log-energy of the kept units, each unit scaled by its normal
  power), ``loge2`` (its squared z-score: two-sided; the shipped scorer), ``gauss`` (mean squared
  z-score of the kept units), ``knn`` (mean distance to the 5 nearest normal windows on the kept
  units);
* smooth: causal mean of the last N window scores;
* calibration: ``tail`` (fit on the first 80 %, threshold from the last 20 %) or ``blocks``
  (5 contiguous blocks, each scored by a model fitted on the others; the shipped calibration).

``bundle`` runs the shipped default (``train_novelty`` with its own calibration and located
alerts, the multi-scale energy model) on the dev tasks.

Run::

    nice -n 19 python benchmarks/anomaly_dev.py bundle
    nice -n 19 python benchmarks/anomaly_dev.py white,1,loge2,1,blocks white,1,knn,4,blocks
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import anomaly_benchmark as B  # noqa: E402

M, K, OVERLAP = 256, 64, 3


def dev_tasks() -> list[B.Task]:
    """The benchmark's training stretches only, split ~60/40, other artefact times/offsets."""
    emg = B._load("emg_fatigue.fif", 0, None)
    move1 = B._load("eeg_movement_artefacts_1.fif", 0, None)
    move2 = B._load("eeg_movement_artefacts_2.fif", 0, None)
    motion = B._load("ppg_motion_artefact.fif", 0, None)
    ecg, e1 = B._splice(B._load("ecg_5min.fif", 110, 180), emg, [10], [100], 3.0)
    ecg, e2 = B._splice(ecg, move1, [40], [90], 6.0)
    src = [s + 10 for s in B._largest_p2p(move2, 3)][:2]
    eeg, e3 = B._splice(B._load("eeg_eyes_closed_open.fif", 92, 150), move2, [15, 40], src, 1.0)
    ppg, e4 = B._splice(B._load("ppg_rest.fif", 42, 70), motion, [5, 17], [0.5, 10], 1.0, True)
    return [
        B.Task("ecg", B._load("ecg_5min.fif", 0, 108), ecg, sorted(e1 + e2),
               {"l_freq": 0.5, "h_freq": 150.0, "notch": 50.0}, "dev"),
        B.Task("eeg", B._load("eeg_eyes_closed_open.fif", 0, 90), eeg, e3,
               {"l_freq": 1.0, "h_freq": 40.0, "notch": 50.0}, "dev"),
        B.Task("ppg", B._load("ppg_rest.fif", 0, 40), ppg, e4, {"l_freq": 0.5, "h_freq": 8.0},
               "dev"),
    ]  # fmt: skip


def _pool(X: np.ndarray, p: int) -> np.ndarray:
    n, c, t = X.shape
    return X[:, :, : t // p * p].reshape(n, c, t // p, p).mean(-1).reshape(n, -1)


def _layer(kind: str, P: np.ndarray) -> np.ndarray:
    d = P.shape[1]
    G = np.random.default_rng(1).standard_normal((M, d)) / np.sqrt(d)
    if kind == "rand":
        return G
    ev, V = np.linalg.eigh(np.cov(P.T).reshape(d, d))
    ev = np.maximum(ev, 0)
    return G @ (V / np.sqrt(ev + 1e-3 * ev.max())) @ V.T


def _masks(n: int, seed: int) -> np.ndarray:
    r = np.random.default_rng(seed)
    return np.sort(np.argsort(r.random((n, M)), axis=1)[:, :K], axis=1)


def _score(kind: str, A: np.ndarray, idx: np.ndarray, V: np.ndarray) -> np.ndarray:
    power = (A**2).mean(0) + 1e-12
    if kind in ("energy", "loge2"):
        e = np.log(np.mean(V**2 / power[idx], 1) + 1e-12)
        if kind == "energy":
            return e
        mf = _masks(len(A), 99)
        ef = np.log(np.mean(np.take_along_axis(A, mf, 1) ** 2 / power[mf], 1) + 1e-12)
        return ((e - ef.mean()) / ef.std()) ** 2
    sd = A.std(0) + 1e-9
    if kind == "gauss":
        return np.mean(((V - A.mean(0)[idx]) / sd[idx]) ** 2, 1)
    if kind == "knn":
        F = A / sd
        pairs = zip(idx, V, strict=True)
        return np.array(
            [np.sort(((F[:, i] - v / sd[i]) ** 2).mean(1))[:5].mean() for i, v in pairs]
        )
    raise ValueError(f"unknown scorer {kind!r}")


def _smooth(s: np.ndarray, w: int) -> np.ndarray:
    c = np.cumsum(np.r_[0.0, s])
    lo = np.maximum(0, np.arange(len(s)) - w + 1)
    return (c[1:] - c[lo]) / (np.arange(len(s)) + 1 - lo)


def _fit_score(layer: str, scorer: str, P_fit: np.ndarray, P: np.ndarray, seed: int):
    W = _layer(layer, P_fit)
    A, At = np.maximum(P_fit @ W.T, 0), np.maximum(P @ W.T, 0)
    idx = _masks(len(At), seed)
    return _score(scorer, A, idx, np.take_along_axis(At, idx, 1))


def run(task: B.Task, layer: str, pool: int, scorer: str, smooth: int, cal: str) -> dict:
    from dropstream.inference.evaluation import event_metrics
    from dropstream.inference.training.novelty import tail_split

    Xtr, _ = B._windows(task.train, task.preprocessing)
    Xte, starts = B._windows(task.test, task.preprocessing)
    Ptr, Pte = _pool(Xtr, pool), _pool(Xte, pool)
    n = len(Ptr)
    if cal == "tail":
        fit_idx, val_idx = tail_split(n, 0.2, OVERLAP)
        val = _smooth(_fit_score(layer, scorer, Ptr[fit_idx], Ptr[val_idx], 1), smooth)
        P_final = Ptr[fit_idx]
    else:
        edges = np.linspace(0, n, 6).astype(int)
        val = np.concatenate([
            _smooth(_fit_score(layer, scorer, Ptr[np.r_[0 : max(0, lo - OVERLAP),
                                                        min(n, hi + OVERLAP) : n]],
                               Ptr[lo:hi], 10 + b), smooth)
            for b, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True))
        ])  # fmt: skip
        P_final = Ptr
    test = _smooth(_fit_score(layer, scorer, P_final, Pte, 2), smooth)
    alerts = B._alerts(test, starts, B._calibration(val))
    return event_metrics(starts, B.WINDOW_S, test, alerts, task.events, len(task.test) / B.SFREQ)


def run_bundle(task: B.Task, seed: int = 0) -> dict:
    """The shipped default novelty model (``train_novelty``, its own calibration, the
    benchmark's detector): what ``bundle`` on the command line runs."""
    from dropstream.inference.evaluation import event_metrics
    from dropstream.inference.training import TrainConfig, train_novelty

    Xtr, _ = B._windows(task.train, task.preprocessing)
    Xte, starts = B._windows(task.test, task.preprocessing)
    cfg = TrainConfig(
        seed=seed, progress=False, preprocessing=task.preprocessing, min_calibration_windows=20
    )  # the dev PPG baseline is 40 s
    model = train_novelty(Xtr, cfg, sfreq=B.SFREQ, hop_samples=int(B.HOP_S * B.SFREQ),
                          prefiltered=True)  # fmt: skip
    test, located = model.score_located(Xte, prefiltered=True, seed=seed + 2)
    alerts = B._alerts(test, starts, model.head_config["calibration"], located)
    return event_metrics(starts, B.WINDOW_S, test, alerts, task.events, len(task.test) / B.SFREQ)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "candidates", nargs="+", help="LAYER,POOL,SCORER,SMOOTH,CALIBRATION, or 'bundle'"
    )
    parser.add_argument("--test", action="store_true", help="the benchmark's tasks instead")
    args = parser.parse_args(argv)
    tasks = B.tasks() if args.test else dev_tasks()
    for cand in args.candidates:
        for t in tasks:
            if cand == "bundle":
                m = run_bundle(t)
            else:
                layer, pool, scorer, smooth, cal = cand.split(",")
                m = run(t, layer, int(pool), scorer, int(smooth), cal)
            delay = m["detection_delay_s_max"]
            print(f"{t.name} {cand}: AUC {m['window_auc']:.3f}, events "
                  f"{m['event_sensitivity']:.2f}, max delay "
                  f"{'-' if delay is None else f'{delay:.2f}'} s, false alerts "
                  f"{m['false_alerts']}, normal time under alert "
                  f"{m['normal_time_under_alert']:.3f}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
