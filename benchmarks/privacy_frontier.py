"""The privacy-utility frontier: accuracy against the strongest adaptive attack, per defence.

For SelfRegulationSCP1 and Blink (official splits) every setting of :data:`SETTINGS` is trained
with :func:`dropstream.inference.training.train_classifier` (the same recipe, seed 0), its test
accuracy measured on all TEST trials (mean of 3 mask-and-noise seeds), and its dropped, noisy
activations attacked at the trained ``K`` on up to ``--windows`` TEST trials by every adaptive
attack of the audit (the attacker knows the layer, its rank and noise, and learns on the TRAIN
trials): ``prior`` (Gaussian MAP with the noise covariance), ``kernel`` (posterior mean under the
attacker's windows), ``decoder`` (MLP trained through the dropping and noise), beside the
``label`` floor (class-mean window). The shipped ECG novelty bundle
(``inference/demo_data/ecg_novelty.dsb``) is audited on ``ecg_5min.fif`` (attacker: first half
in time; the second half attacked, overlapping windows so the joint attack runs too), and the
same novelty model retrained at the new default.

Writes ``docs/bench/privacy_frontier.{md,json}`` and ``docs/privacy_frontier.png``. Run from the
repository root (about 15 min with ``--jobs 2`` on 2 CPU cores; ``--quick`` for a smoke run)::

    python benchmarks/privacy_frontier.py --out docs --jobs 2
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
log = logging.getLogger("privacy_frontier")

#: (name, TrainConfig overrides). ``undropped`` is the accuracy reference of the goal.
SETTINGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("undropped", {"keep": 256, "rank": None}),
    ("dropping only (old default)", {"rank": None}),
    ("noise 1.0", {"rank": None, "noise": 1.0}),
    ("nopeek 1", {"rank": None, "nopeek": 1.0}),
    ("adversary 1", {"rank": None, "adversary": 1.0}),
    ("rank 8", {"rank": 8}),
    ("rank 4", {"rank": 4}),
    ("rank 2, no penalty (previous default)", {"rank": 2, "adversary": 0.0, "projection_lr": 0.1}),
    ("new default (rank auto = 2, adversary auto = 0.5)", {}),
    ("rank 2 + adversary 1", {"rank": 2, "adversary": 1.0}),
    ("rank 1", {"rank": 1}),
    ("rank 2 + noise 0.5", {"rank": 2, "noise": 0.5}),
)
#: The ECG novelty recipe: the shipped bundle (None), and retrained with these overrides (a
#: novelty model's default is full rank: see TrainConfig.rank).
ECG_SETTINGS: tuple[tuple[str, dict[str, Any] | None], ...] = (
    ("shipped (no defence)", None),
    ("rank 16", {"rank": 16}),
    ("rank 4", {"rank": 4}),
)
#: The problems: (name, sample rate in Hz; Blink's must be passed for now).
PROBLEMS = (("SelfRegulationSCP1", None), ("Blink", 255.0))
ATTACKS = ("label", "prior", "kernel", "subspace", "decoder")


def attack(
    bundle: Any,
    held: Any,
    attackers: list,
    attacks: tuple[str, ...],
    windows: int,
    decoder_s: float,
) -> dict[str, Any]:
    """Every attack at the bundle's K, the attacker learning on the ``attackers`` recordings:
    each attack's r and seconds, the summary (floor, strongest, excess) and the audit's wall
    time."""
    from dropstream.inference.audit.report import run_audit

    t0 = time.perf_counter()
    res = run_audit(
        bundle,
        [held],
        attackers,
        [bundle.keep],
        attacks,
        decoder_seconds=decoder_s,
        max_windows=windows,
    )
    return {
        "audit_s": time.perf_counter() - t0,
        **{f"r_{r['attack']}": float(r["r_mean"]) for r in res.rows},
        **{f"s_{r['attack']}": round(float(r["seconds"]), 1) for r in res.rows},
        **res.summary()[0],
    }


def run_setting(job: tuple[str, float | None, str, dict[str, Any], int, float, int]) -> list:
    """Train one setting on one problem, measure its accuracy and attack it.

    The same ``windows`` TEST trials (a seeded pick) are attacked in every setting. The new
    default is attacked twice: with the TRAIN trials as the attacker's data, and with MORE data
    from the same population (TRAIN plus every TEST trial not attacked), a second row that
    shares the trained model.
    """
    problem, sfreq, name, overrides, windows, decoder_s, epochs = job
    import torch

    torch.set_num_threads(1)
    from dropstream.inference.audit.label import windows_recording
    from dropstream.inference.datasets import load_uea
    from dropstream.inference.training import TrainConfig, train_classifier

    tr, te = load_uea(problem, DATA / "uea", sfreq=sfreq)
    cfg = TrainConfig(progress=False, device="cpu", **overrides)
    if epochs:
        cfg.epochs = epochs
    t0 = time.perf_counter()
    model = train_classifier(tr.X, tr.y, cfg, sfreq=tr.sfreq, channel_names=tr.channel_names)
    train_s = time.perf_counter() - t0
    acc = [float(np.mean(model.predict(te.X, seed=s) == te.y)) for s in range(3)]
    bundle = model.device_bundle(problem)
    hop = bundle.hop_samples
    xte, yte = model.prepare(te.X), np.asarray(te.y)
    pick = np.zeros(len(yte), bool)
    pick[np.random.default_rng(0).choice(len(yte), min(windows, len(yte)), replace=False)] = True
    held = windows_recording("TEST", xte[pick], yte[pick], hop)
    att = windows_recording("TRAIN", model.prepare(tr.X), tr.y, hop)
    out = {
        "problem": problem,
        "setting": name,
        "overrides": overrides,
        "attacker": "TRAIN trials",
        "width": bundle.layer.width,
        "keep": bundle.keep,
        "accuracy": float(np.mean(acc)),
        "accuracy_seeds": acc,
        "n_test": len(te.y),
        "train_s": train_s,
        **attack(bundle, held, [att], ATTACKS, windows, decoder_s),
    }
    log.info("%s / %s: acc %.3f, r %.3f", problem, name, out["accuracy"], out["strongest_r"])
    rows = [out]
    if not overrides:  # the default: also against an attacker with more data
        more = windows_recording("TRAIN+TEST", xte[~pick], yte[~pick], hop)
        t0 = time.perf_counter()
        row = {**out, "setting": f"{name}, attacker + other TEST trials", "train_s": 0.0}
        row["attacker"] = f"TRAIN + {int((~pick).sum())} TEST trials not attacked"
        row.update(attack(bundle, held, [att, more], ATTACKS, windows, decoder_s))
        log.info("%s / %s: r %.3f", problem, row["setting"], row["strongest_r"])
        rows.append(row)
    return rows


def novelty_auc(path: Path) -> float:
    """Detection AUC of a novelty bundle on the demo recording's windows (anomaly = overlaps an
    annotated artefact), scored as in serving: numpy device part with its noise and a fresh mask
    per window, then the server head."""
    from dropstream.inference.datasets import windows_from_recordings
    from dropstream.inference.head import ServerModel
    from dropstream.local_encoder.first_layer import draw_kept_units
    from dropstream.local_encoder.preprocessing import prepare_window

    server = ServerModel.load(path)
    dev = server.bundle
    ws = windows_from_recordings(
        [ROOT / "inference" / "demo_data" / "ecg_artefacts.fif"],
        window_s=dev.window_samples / dev.sfreq,
        hop_s=dev.hop_samples / dev.sfreq,
        preprocessing=dev.preprocessing,
        default_label="normal",
    )
    x = prepare_window(ws.X, dev.preprocessing, dev.norm_mean, dev.norm_std)
    rng = np.random.default_rng(0)
    act = dev.layer.forward(x, rng)
    idx = np.stack([draw_kept_units(rng, dev.layer.width, dev.keep) for _ in range(len(x))])
    idx = idx.astype(np.int64)
    scores = server.score(idx, np.take_along_axis(act, idx, axis=1))
    pos = scores[ws.y != "normal"]
    neg = scores[ws.y == "normal"]
    # Mann-Whitney: probability that an anomalous window outscores a normal one
    return float(np.mean(pos[:, None] > neg[None, :]) + 0.5 * np.mean(pos[:, None] == neg[None, :]))


def run_ecg(job: tuple[str, dict[str, Any] | None, int, float]) -> dict:
    """Audit the shipped ECG novelty bundle (``overrides`` None) or retrain its recipe with
    ``overrides`` (``scripts/make_demo_assets.py``) and audit that."""
    import tempfile

    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT / "scripts"))
    import make_demo_assets as demo

    from dropstream.inference.audit.report import load_recording
    from dropstream.local_encoder.bundle import load_device_bundle

    name, overrides, windows, decoder_s = job
    with tempfile.TemporaryDirectory() as tmp:
        path = ROOT / "inference" / "demo_data" / "ecg_novelty.dsb"
        if overrides is not None:
            path = Path(tmp) / "ecg.dsb"
            demo.train_bundle(DATA, path, overrides)
        bundle = load_device_bundle(path)
        auc = novelty_auc(path)
    att, held = load_recording(DATA / "body" / "ecg_5min.fif", bundle).split()
    out = {
        "problem": "ECG novelty (demo)",
        "setting": name,
        "overrides": overrides or {},
        "width": bundle.layer.width,
        "keep": bundle.keep,
        "auc": auc,
        **attack(bundle, held, [att], (*ATTACKS, "joint"), windows, decoder_s),
    }
    log.info("ECG / %s: auc %.3f, r %.3f", name, auc, out["strongest_r"])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (1 torch thread each)")
    ap.add_argument("--windows", type=int, default=100, help="TEST windows attacked per setting")
    ap.add_argument("--decoder-seconds", type=float, default=10.0)
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 settings, tiny budgets")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("dropstream.inference.audit.decoder").setLevel(logging.WARNING)
    settings = [s for s in SETTINGS if s[0] == "undropped" or not s[1]] if args.quick else SETTINGS
    windows, dec_s = (20, 2.0) if args.quick else (args.windows, args.decoder_seconds)
    epochs = 5 if args.quick else 0
    jobs = [(p, sf, n, o, windows, dec_s, epochs) for p, sf in PROBLEMS for n, o in settings]
    ecg_jobs = [
        (n, o, windows, dec_s) for n, o in (ECG_SETTINGS[:1] if args.quick else ECG_SETTINGS)
    ]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        ecg_futures = [pool.submit(run_ecg, j) for j in ecg_jobs]
        rows = [row for rows in pool.map(run_setting, jobs) for row in rows]
        ecg = [f.result() for f in ecg_futures]
    res = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": platform.platform(),
        "jobs": args.jobs,
        "windows": windows,
        "decoder_seconds": dec_s,
        "new_default": "TrainConfig() defaults: rank auto (2 for these binary problems), no noise, "
        "adversary auto (0.5 for a low-rank classifier), projection_lr 0.3",
        "rows": rows,
        "ecg": ecg,
        "seconds": time.perf_counter() - t0,
    }
    (args.out / "bench").mkdir(parents=True, exist_ok=True)
    (args.out / "bench" / "privacy_frontier.json").write_text(json.dumps(res, indent=1))
    write_markdown(args.out / "bench" / "privacy_frontier.md", res)
    plot(args.out / "privacy_frontier.png", res)
    log.info("done in %.0f s", res["seconds"])
    return 0


def goal_r(floor: float) -> float:
    """The issue's goal for the strongest attack: ``max(0.30, floor + 0.05)``."""
    return max(0.30, floor + 0.05)


def _verdict(ok_r: bool, ok_acc: bool) -> str:
    if ok_r and ok_acc:
        return "yes"
    if ok_acc:
        return "r"
    return "acc" if ok_r else "no"


def _r(row: dict[str, Any], attack: str) -> str:
    """An attack's r in a table cell ('-' where it did not run)."""
    v = row.get(f"r_{attack}")
    return "-" if v is None else f"{v:.3f}"


def write_markdown(path: Path, res: dict[str, Any]) -> None:
    lines = [
        "# Privacy-utility frontier (generated)",
        "",
        f"Generated by `python benchmarks/privacy_frontier.py --out docs --jobs {res['jobs']}` "
        f"on {res['started']} ({res['machine']}, CPU only) in {res['seconds'] / 60:.1f} min. "
        f"Interpretation: [../privacy.md](../privacy.md). New default: {res['new_default']}.",
        "",
        f"Per setting: one training (seed 0); accuracy on all TEST trials (mean of 3 mask and "
        f"noise seeds); attacks at the trained K on the same {res['windows']} TEST trials, "
        "attacker data = TRAIN trials (the default's second row: TRAIN plus every TEST trial not "
        f"attacked; its floor uses that data too), decoder {res['decoder_seconds']:g} s; "
        "subspace runs on layers of rank <= 16. r = mean per-window, per-channel Pearson r. "
        "Goal: strongest r <= max(0.30, floor + 0.05) and accuracy within 2 points of "
        "`undropped`.",
        "",
        "| problem | setting | K/m | accuracy | floor r (label) | prior r | kernel r | "
        "subspace r | decoder r | strongest | excess | goal met |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ref = {r["problem"]: r["accuracy"] for r in res["rows"] if r["setting"] == "undropped"}
    for r in res["rows"]:
        ok_r = r["strongest_r"] <= goal_r(r["floor_r"])
        ok_acc = r["accuracy"] >= ref.get(r["problem"], 0.0) - 0.02
        lines.append(
            f"| {r['problem']} | {r['setting']} | {r['keep']}/{r['width']} | "
            f"{r['accuracy']:.3f} | {r['floor_r']:.3f} | {_r(r, 'prior')} | "
            f"{_r(r, 'kernel')} | {_r(r, 'subspace')} | {_r(r, 'decoder')} | "
            f"{r['strongest_attack']} {r['strongest_r']:.3f} | {r['excess_r']:+.3f} | "
            f"{_verdict(ok_r, ok_acc)} |"
        )
    lines += [
        "",
        "goal met: `yes`, or which part fails (`r`: the leak, `acc`: the accuracy, `no`: both).",
        "",
        "## ECG novelty model (demo recipe), audited on ecg_5min.fif (first half = attacker)",
        "",
        "| setting | K/m | detection AUC (demo recording) | floor r (mean normal window) | "
        "prior r | kernel r | subspace r | decoder r | joint r | strongest | excess |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["ecg"]:
        lines.append(
            f"| {r['setting']} | {r['keep']}/{r['width']} | {r['auc']:.3f} | {r['floor_r']:.3f} | "
            f"{_r(r, 'prior')} | {_r(r, 'kernel')} | {_r(r, 'subspace')} | {_r(r, 'decoder')} | "
            f"{_r(r, 'joint')} | "
            f"{r['strongest_attack']} {r['strongest_r']:.3f} | {r['excess_r']:+.3f} |"
        )
    path.write_text("\n".join(lines) + "\n")


def plot(path: Path, res: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = [p for p, _ in PROBLEMS]
    fig, axes = plt.subplots(1, len(problems) + 1, figsize=(6 * len(problems) + 6, 5))
    for ax, prob in zip(axes, problems, strict=False):
        rows = [r for r in res["rows"] if r["problem"] == prob]
        if not rows:
            continue
        floor = float(rows[0]["floor_r"])
        ax.axvspan(-0.05, floor, color="tab:olive", alpha=0.15, label=f"below floor r={floor:.2f}")
        ax.axvline(goal_r(floor), color="black", ls=":", lw=1, label="goal r")
        ref = next((r["accuracy"] for r in rows if r["setting"] == "undropped"), None)
        if ref is not None:
            ax.axhline(ref - 0.02, color="tab:gray", ls="--", lw=1, label="undropped acc - 2 pt")
        for r in rows:
            more = "attacker +" in r["setting"]
            mark = "*" if r["overrides"] == {} and not more else "^" if more else "o"
            ax.plot(r["strongest_r"], r["accuracy"], mark, ms=14 if mark == "*" else 7)
            label = "attacker with more data" if more else r["setting"]
            ax.annotate(
                label,
                (r["strongest_r"], r["accuracy"]),
                fontsize=7,
                xytext=(4, -9 if more else 3),
                textcoords="offset points",
            )
        ax.set_xlabel("strongest adaptive attack: mean Pearson r (held-out TEST trials)")
        ax.set_ylabel("test accuracy")
        ax.set_xlim(-0.05, 1.0)
        ax.set_title(f"{prob}: privacy-utility frontier (star: new default)", fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
    ax = axes[-1]
    for r in res.get("ecg", []):
        ax.plot(r["strongest_r"], r["auc"], "o", ms=7)
        ax.annotate(r["setting"], (r["strongest_r"], r["auc"]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")  # fmt: skip
    ax.set_xlim(-0.05, 1.05)
    ax.set_xlabel("strongest adaptive attack: mean Pearson r (later half of ecg_5min)")
    ax.set_ylabel("artefact detection AUC (demo recording)")
    ax.set_title("ECG novelty model (demo recipe); floor r ~ 0", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
