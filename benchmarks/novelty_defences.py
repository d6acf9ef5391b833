"""Privacy defences of the default novelty model: detection against leak, in one run.

For each setting of the first layer's defences (full rank, low rank, device noise) this trains
the default (``energy``) novelty model and measures

* detection: window AUC, events detected and normal time under alert on the three tasks of
  ``benchmarks/anomaly_benchmark.py`` (m = 256, K = 64);
* leak: the strongest reconstruction attack of ``benchmarks/privacy_frontier.py`` (label, prior,
  kernel, learned decoder and joint attacks; Pearson r of the reconstructed against the true
  held-out window) on the demo recipe (``scripts/make_demo_assets.py``: ECG, m = 128, K = 32,
  attacker: first half of ``ecg_5min.fif``, second half attacked), with the demo's AUC.

Run (writes ``docs/novelty_defences.json``; the table is in ``docs/anomalies.md``)::

    nice -n 19 python benchmarks/novelty_defences.py --out docs
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "scripts"))

SETTINGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("full rank (default)", {}),
    ("noise 0.5", {"noise": 0.5}),
    ("rank 8", {"rank": 8}),
    ("rank 4", {"rank": 4}),
    ("rank 4 + noise 0.5", {"rank": 4, "noise": 0.5}),
    ("rank 2", {"rank": 2}),
)


def detection(overrides: dict[str, Any], seed: int) -> dict[str, dict[str, Any]]:
    """Metrics of the anomaly benchmark's dropstream row under ``overrides``."""
    import anomaly_benchmark as bench

    from dropstream.inference.evaluation import event_metrics
    from dropstream.inference.training import TrainConfig, train_novelty

    out = {}
    for task in bench.tasks():
        Xtr, _ = bench._windows(task.train, task.preprocessing)
        Xte, starts = bench._windows(task.test, task.preprocessing)
        cfg = TrainConfig(progress=False, preprocessing=task.preprocessing, seed=seed, **overrides)
        hop = int(bench.HOP_S * bench.SFREQ)
        model = train_novelty(Xtr, cfg, sfreq=bench.SFREQ, hop_samples=hop, prefiltered=True)
        scores, located = model.score_located(Xte, prefiltered=True, seed=seed + 2)
        alerts = bench._alerts(scores, starts, model.head_config["calibration"], located)
        duration = len(task.test) / bench.SFREQ
        out[task.name] = event_metrics(
            starts, bench.WINDOW_S, scores, alerts, task.events, duration
        )
    return out


def leak(overrides: dict[str, Any]) -> dict[str, Any]:
    """Demo AUC and the strongest attack's r on the demo recipe under ``overrides``."""
    import privacy_frontier as frontier

    r = frontier.run_ecg(("", overrides, 150, 20.0))
    return {"demo_auc": r["auc"], "strongest_attack": r["strongest_attack"],
            "strongest_r": r["strongest_r"], "floor_r": r["floor_r"]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows = []
    print("| setting | AUC ecg / eeg / ppg | events | normal time under alert | demo AUC "
          "| strongest attack r (floor) |")  # fmt: skip
    print("| --- | --- | --- | --- | ---: | ---: |")
    for name, overrides in SETTINGS:
        det = detection(overrides, args.seed)
        lk = leak(overrides)
        rows.append({"setting": name, "overrides": overrides, "detection": det, "leak": lk})

        def col(key: str, fmt: str, det: dict = det) -> str:
            return " / ".join(fmt.format(det[t][key]) for t in det)

        print(f"| {name} | {col('window_auc', '{:.3f}')} | {col('event_sensitivity', '{:.2f}')} "
              f"| {col('normal_time_under_alert', '{:.3f}')} | {lk['demo_auc']:.3f} "
              f"| {lk['strongest_r']:.2f} ({lk['floor_r']:.2f}, {lk['strongest_attack']}) |",
              flush=True)  # fmt: skip
    if args.out is not None:
        meta = {"seconds": round(time.perf_counter() - t0), "seed": args.seed}
        text = json.dumps({"meta": meta, "rows": rows}, indent=1, default=float)
        (args.out / "novelty_defences.json").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
