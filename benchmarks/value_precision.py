"""Benchmark: accuracy of the wire's value encodings (float32, float16, uint8) on a real model.

Trains the default ``dropstream train`` recipe (``TrainConfig`` defaults, m = 256, K/m = 0.25) on
the UEA problem SelfRegulationSCP1 for each seed and classifies the test set from one fresh keep
mask per window, with the kept activations passed through each wire encoding exactly as
:func:`dropstream.broker.wire.encode_activation` / ``decode_activation`` do (the same mask for
all three). Prints a markdown table.

Usage::

    nice -n 19 python benchmarks/value_precision.py --seeds 0 1 --out docs/bench/values.md
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from dropstream.broker.wire import dequantise_uint8, quantise_uint8
from dropstream.inference.datasets import load_uea
from dropstream.inference.model import random_keep_mask
from dropstream.inference.training import TrainConfig, train_classifier


def roundtrip(values: np.ndarray, encoding: str) -> np.ndarray:
    """Kept values ``(K,)`` as the server decodes them after ``encoding``."""
    if encoding == "float32":
        return values.astype(np.float32)
    if encoding == "float16":
        return values.astype(np.float16).astype(np.float32)
    lo, step, q = quantise_uint8(values)
    return dequantise_uint8(lo, step, q)


@torch.no_grad()
def accuracies(model, X: np.ndarray, y: np.ndarray, seed: int) -> dict[str, float]:
    x = torch.as_tensor(model.prepare(X))
    model.first.eval()
    model.head.eval()
    a = model.first(x)
    gen = torch.Generator().manual_seed(1000 + seed)
    mask = random_keep_mask(a.shape[0], a.shape[1], model.keep, gen).bool()
    out = {}
    preds = {}
    for enc in ("float32", "float16", "uint8"):
        aq = a.clone()
        for i in range(a.shape[0]):
            kept = mask[i]
            aq[i, kept] = torch.as_tensor(roundtrip(a[i, kept].numpy(), enc))
        preds[enc] = np.asarray(model.classes)[model.head(aq, mask).argmax(1).numpy()]
        out[enc] = float(np.mean(preds[enc] == y))
    # windows whose predicted class differs from the float32 one (finer than accuracy)
    out["changed16"] = float(np.mean(preds["float16"] != preds["float32"]))
    out["changed8"] = float(np.mean(preds["uint8"] != preds["float32"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uea-dir", type=Path, default=Path("../shared/data/uea"))
    parser.add_argument("--problem", default="SelfRegulationSCP1")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    tr, te = load_uea(args.problem, args.uea_dir)
    rows = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        model = train_classifier(tr.X, tr.y, TrainConfig(seed=seed, progress=False), sfreq=tr.sfreq)
        acc = accuracies(model, te.X, te.y, seed)
        rows.append(acc)
        print(seed, acc, f"{time.perf_counter() - t0:.0f} s", flush=True)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    lines = [
        f"## Wire value encodings: accuracy ({args.problem}, default recipe)",
        "",
        f"Command: `nice -n 19 python benchmarks/value_precision.py --problem {args.problem} "
        f"--seeds {' '.join(map(str, args.seeds))}`; load average {os.getloadavg()[0]:.1f}.",
        "",
        "| seed | float32 | float16 | uint8 (lo + q * step) | predictions changed vs float32: "
        "float16 / uint8 |",
        "|---|---|---|---|---|",
        *[
            f"| {s} | {r['float32']:.3f} | {r['float16']:.3f} | {r['uint8']:.3f} | "
            f"{r['changed16']:.3f} / {r['changed8']:.3f} |"
            for s, r in zip(args.seeds, rows, strict=True)
        ],
        f"| mean | {mean['float32']:.3f} | {mean['float16']:.3f} | {mean['uint8']:.3f} | "
        f"{mean['changed16']:.3f} / {mean['changed8']:.3f} |",
        "",
        f"Same model, same keep mask per window; only the kept values' encoding differs. "
        f"{len(te.y)} test trials per seed.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
