"""Privacy audit benchmark: how much of the signal leaks from dropped activations, and what the
encryption alternative costs. Regenerates ``docs/bench/privacy.md``, ``docs/bench/privacy.json``
and ``docs/privacy.png``.

Run from the repository root (about 20 min on 2 CPU cores)::

    python benchmarks/privacy_audit.py --out docs

Parts:

1. **Undefended model** (SelfRegulationSCP1, 6 ch x 896 samples at 256 Hz = 5376 inputs; the
   training API's config before the privacy defences: dense m=256, K=64, ReLU, no filter, full
   rank, no noise; the defended default is benchmarks/privacy_frontier.py's), trained here with
   :func:`dropstream.inference.training.train_classifier` on the official TRAIN split. Every attack
   at K in {256, 128, 64, 32, 16}; the attacker's prior and decoder learn from the TRAIN trials,
   the TEST trials are attacked. Test accuracy of the same model when the device keeps K units.
2. **Filtered variant**: the same with a causal 1-40 Hz band-pass on the device.
3. **Leak sweep** (random Gaussian layers) on real 64-ch EEG (eegmmidb, 8 channels x 32
   samples = 256 inputs, 1-40 Hz): width m against C*T and K, to show the leak where the layer
   is invertible.
4. **Joint attack** across overlapping windows on the same EEG: hop against K.
5. **CKKS** (TenSEAL) against the local layer, per window, at the real size 5376 x 256.
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dropstream.inference.audit.attacks import (  # noqa: E402
    GaussianPrior,
    WindowAttack,
    joint_attack,
    observe,
)
from dropstream.inference.audit.encryption import measure_encrypted, measure_local  # noqa: E402
from dropstream.inference.audit.metrics import pearson_r  # noqa: E402
from dropstream.inference.audit.plots import COLOURS, plot_privacy_utility  # noqa: E402
from dropstream.inference.audit.report import (  # noqa: E402
    AuditResult,
    format_table,
    load_recording,
    run_audit,
)
from dropstream.local_encoder.bundle import DeviceBundle, load_device_bundle  # noqa: E402
from dropstream.local_encoder.first_layer import FirstLayer  # noqa: E402
from dropstream.local_encoder.framing import stream_windows  # noqa: E402
from dropstream.local_encoder.preprocessing import filter_signal, normalise  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
log = logging.getLogger("privacy_audit")


def train_scp1(preprocessing: dict[str, Any], epochs: int | None) -> Any:
    """Train the SCP1 classifier with the training API's defaults (plus ``preprocessing``)."""
    from dropstream.inference.datasets import load_uea
    from dropstream.inference.training import TrainConfig, train_classifier

    tr, te = load_uea("SelfRegulationSCP1", DATA / "uea")
    # the undefended layer (full rank, no noise): what dropping alone gives
    cfg = TrainConfig(preprocessing=preprocessing, progress=False, device="cpu", rank=None)
    if epochs is not None:
        cfg = replace(cfg, epochs=epochs)
    t0 = time.perf_counter()
    model = train_classifier(tr.X, tr.y, cfg, sfreq=tr.sfreq, channel_names=tr.channel_names)
    log.info("trained SCP1 %s in %.0f s", preprocessing, time.perf_counter() - t0)
    return model, tr, te


def accuracy_at(model: Any, te: Any, keep: int, seeds: int = 5) -> float:
    """Test accuracy when the device keeps ``keep`` units (mean over mask seeds).

    The head's inverted-dropout rescaling ``m/K`` follows the served ``K`` (the server knows K
    from each message), so the head sees inputs of the scale it was trained on.
    """
    saved = model.keep, model.head.keep
    model.keep = model.head.keep = keep
    try:
        return float(np.mean([(model.predict(te.X, seed=s) == te.y).mean() for s in range(seeds)]))
    finally:
        model.keep, model.head.keep = saved


def audit_scp1(
    bundle: DeviceBundle, keeps: list[int], attacks: tuple[str, ...], decoder_s: float
) -> AuditResult:
    uea = DATA / "uea"
    held = [load_recording(uea / "SelfRegulationSCP1_TEST.ts", bundle)]
    attacker = [load_recording(uea / "SelfRegulationSCP1_TRAIN.ts", bundle)]
    return run_audit(
        bundle, held, attacker, keeps, attacks, decoder_seconds=decoder_s, max_windows=293
    )


def effective_dimension(windows: np.ndarray) -> dict[str, list[int]]:
    """Principal components (separable covariance estimate) for 50/90/99 % of the variance.

    ``raw``: the windows as the layer sees them; ``demeaned``: after removing each window's
    per-channel mean (what Pearson r measures).
    """
    out = {}
    for name, x in (("raw", windows), ("demeaned", windows - windows.mean(-1, keepdims=True))):
        p = GaussianPrior.fit(x)
        ev = np.outer(np.linalg.eigvalsh(p.spatial), np.linalg.eigvalsh(p.temporal)).ravel()
        ev = np.sort(np.clip(ev, 0.0, None))[::-1]
        cum = np.cumsum(ev) / ev.sum()
        out[name] = [int(np.searchsorted(cum, q)) + 1 for q in (0.5, 0.9, 0.99)]
    return out


def eeg_stream(channels: int = 8) -> tuple[np.ndarray, float]:
    """eegmmidb: first ``channels`` channels, 1-40 Hz causal filter, normalised (C, L)."""
    import mne

    raw = mne.io.read_raw(DATA / "eeg" / "eegmmidb_S001R02.edf", preload=True, verbose="error")
    sfreq = float(raw.info["sfreq"])
    x = filter_signal(raw.get_data()[:channels], sfreq, {"l_freq": 1.0, "h_freq": 40.0})
    half = x.shape[1] // 2
    mean, std = x[:, :half].mean(axis=1), x[:, :half].std(axis=1)
    return normalise(x, mean, std), sfreq


def random_layer(rng: np.random.Generator, width: int, n: int, activation: str) -> FirstLayer:
    w = (rng.standard_normal((width, n)) / np.sqrt(n)).astype(np.float32)
    b = (0.1 * rng.standard_normal(width)).astype(np.float32)
    return FirstLayer(w, b, activation)


def leak_sweep(
    stream: np.ndarray, t: int, widths: tuple[int, ...] = (256, 512), n_test: int = 80
) -> list[dict[str, Any]]:
    """Per-window ridge / prior attack against width m and K (random layers)."""
    c = stream.shape[0]
    n = c * t
    half = stream.shape[1] // 2
    train = stream_windows(stream[:, :half], t, t)
    test = stream_windows(stream[:, half:], t, t)[:n_test]
    prior = GaussianPrior.fit(train)
    rng = np.random.default_rng(1)
    rows = []
    for act in ("leaky_relu", "relu"):
        for m in widths:
            layer = random_layer(rng, m, n, act)
            attacks = {
                "ridge": WindowAttack(layer, GaussianPrior.identity(c, t)),
                "prior": WindowAttack(layer, prior),
            }
            for k in sorted({m, m // 2, m // 4, 64, 16}, reverse=True):
                msgs = observe(layer, test, k, rng)
                for name, att in attacks.items():
                    r = float(pearson_r(test, att.reconstruct(msgs, c)).mean())
                    rows.append(
                        {"activation": act, "m": m, "n": n, "keep": k, "attack": name, "r": r}
                    )
                log.info("leak sweep %s m=%d K=%d done", act, m, k)
    return rows


def joint_sweep(stream: np.ndarray, t: int) -> list[dict[str, Any]]:
    """Joint (stream) attack against the per-window ridge attack as the hop shrinks."""
    c = stream.shape[0]
    n = c * t
    seg = stream[:, stream.shape[1] // 2 :][:, : 20 * t]
    rng = np.random.default_rng(2)
    rows = []
    for act in ("leaky_relu", "relu"):
        layer = random_layer(rng, 256, n, act)
        white = WindowAttack(layer, GaussianPrior.identity(c, t))
        for hop in (t, t // 2, t // 4, t // 8):
            for k in (64, 16):
                wins = stream_windows(seg, t, hop)
                msgs = observe(layer, wins, k, rng)
                t0 = time.perf_counter()
                rec = joint_attack(layer, msgs, c, seg.shape[1], hop)
                secs = time.perf_counter() - t0
                r_joint = float(pearson_r(wins, stream_windows(rec, t, hop)).mean())
                r_win = float(pearson_r(wins, white.reconstruct(msgs, c)).mean())
                rows.append(
                    {
                        "activation": act,
                        "m": 256,
                        "n": n,
                        "hop": hop,
                        "new_unknowns": c * hop,
                        "keep": k,
                        "r_joint": r_joint,
                        "r_window": r_win,
                        "seconds": secs,
                    }
                )
                log.info("joint %s hop=%d K=%d: %.3f vs %.3f", act, hop, k, r_joint, r_win)
    return rows


def figure(
    path: Path,
    default: AuditResult,
    filtered: AuditResult | None,
    accuracy: dict[float, float],
    leak: list[dict[str, Any]],
    joint: list[dict[str, Any]],
    sfreq: float,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(13, 10))
    gs = fig.add_gridspec(3, 2, height_ratios=[1.1, 1, 1])
    ax = fig.add_subplot(gs[0, 0])
    plot_privacy_utility(ax, default.rows, accuracy)
    if filtered is not None:
        for row in filtered.rows:
            ax.plot(
                row["keep_fraction"], row["r_mean"], "x", ms=9, color=COLOURS.get(row["attack"])
            )
    ax.set_title(
        "A. SCP1 default model: held-out r vs keep fraction (x: 1-40 Hz variant)", fontsize=9
    )
    ax = fig.add_subplot(gs[0, 1])
    for act, style in (("leaky_relu", "-"), ("relu", "--")):
        widths = sorted({r["m"] for r in leak})
        for m, col in zip(widths, ("tab:blue", "tab:green", "tab:red"), strict=False):
            pts = sorted(
                (r["keep"], r["r"])
                for r in leak
                if r["activation"] == act and r["m"] == m and r["attack"] == "ridge"
            )
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, "o" + style, color=col, label=f"{act} m={m}")
    ax.axvline(leak[0]["n"], color="black", ls=":", lw=1, label="K = C*T")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("kept units K")
    ax.set_ylabel("r (ridge, held-out)")
    ax.set_title("C. Leak where the layer is invertible (EEG 8ch x 32, C*T=256)", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    shown = sorted(default.examples, reverse=True)
    if len(shown) > 3:  # no dropping, the default K and the smallest K
        shown = [shown[0], 64 if 64 in shown else shown[len(shown) // 2], shown[-1]]
    for i, k in enumerate(shown):
        ax = fig.add_subplot(gs[1 + i // 2, i % 2]) if i < 2 else fig.add_subplot(gs[2, 0])
        ex = default.examples[k]
        orig = ex["original"][0]
        tt = np.arange(orig.size) / sfreq
        ax.plot(tt, orig, color="black", lw=1.5, label="original", zorder=5)
        for name, rec in ex.items():
            if name in ("original", "naive"):
                continue
            rs = [r["r_mean"] for r in default.rows if (r["keep"], r["attack"]) == (k, name)]
            ax.plot(
                tt,
                rec[0],
                color=COLOURS.get(name),
                lw=0.8,
                alpha=0.8,
                label=f"{name} (mean r {rs[0]:.2f})",
            )
        ax.set_title(f"B. SCP1 held-out trial, channel 0, K={k} (normalised units)", fontsize=9)
        ax.set_xlabel("s")
        ax.legend(fontsize=6, ncol=2)
    ax = fig.add_subplot(gs[2, 1])
    for act, style in (("leaky_relu", "-"), ("relu", "--")):
        for k, col in ((64, "tab:purple"), (16, "tab:gray")):
            pts = sorted(
                (r["new_unknowns"], r["r_joint"], r["r_window"])
                for r in joint
                if r["activation"] == act and r["keep"] == k
            )
            xs, yj, yw = zip(*pts, strict=True)
            ax.plot(xs, yj, "o" + style, color=col, label=f"joint {act} K={k}")
            ax.plot(xs, yw, "." + style, color=col, alpha=0.4, label=f"per window {act} K={k}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("new unknowns per window C*hop")
    ax.set_ylabel("r")
    ax.set_title("D. Joint attack over overlapping windows (m=256, C*T=256)", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    ap.add_argument(
        "--epochs", type=int, default=None, help="SCP1 training epochs (default: TrainConfig's)"
    )
    ap.add_argument("--decoder-seconds", type=float, default=60.0)
    ap.add_argument("--skip-he", action="store_true", help="skip the 2-min CKKS measurement")
    ap.add_argument("--skip-filtered", action="store_true")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny budgets, wrong numbers")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    t_start = time.perf_counter()
    results: dict[str, Any] = {"started": started, "machine": platform.platform()}

    model, _, te = train_scp1({}, args.epochs)
    bundle = model.device_bundle("scp1")
    keeps = [64, 16] if args.quick else [256, 128, 64, 32, 16]
    attacks = ("naive", "ridge", "prior", "decoder")
    default = audit_scp1(bundle, keeps, attacks, args.decoder_seconds)
    accuracy = {k / bundle.layer.width: accuracy_at(model, te, k) for k in keeps}
    train_windows = load_recording(DATA / "uea" / "SelfRegulationSCP1_TRAIN.ts", bundle).windows()
    results["effective_dimension"] = {"default": effective_dimension(train_windows)}
    results["default"] = {
        "notes": default.notes,
        "rows": default.rows,
        "accuracy_by_keep_fraction": accuracy,
        "trained_keep": bundle.keep,
    }
    log.info("default audit done")

    filtered = None
    if not args.skip_filtered:
        pre = {"l_freq": 1.0, "h_freq": 40.0, "order": 4}
        fmodel, _, fte = train_scp1(pre, args.epochs)
        fbundle = fmodel.device_bundle("scp1-bp")
        filtered = audit_scp1(fbundle, [64], ("ridge", "prior", "decoder"), args.decoder_seconds)
        results["effective_dimension"]["filtered"] = effective_dimension(
            load_recording(DATA / "uea" / "SelfRegulationSCP1_TRAIN.ts", fbundle).windows()
        )
        results["filtered"] = {
            "notes": filtered.notes,
            "rows": filtered.rows,
            "accuracy_K64": accuracy_at(fmodel, fte, 64),
            "preprocessing": pre,
        }

    stream, sfreq_eeg = eeg_stream(8)
    results["leak_sweep"] = leak_sweep(stream, 32, (256,) if args.quick else (256, 512))
    results["joint_sweep"] = joint_sweep(stream, 32)

    window = load_recording(DATA / "uea" / "SelfRegulationSCP1_TEST.ts", bundle).windows()[0]
    with tempfile.TemporaryDirectory() as tmp:
        model.save(Path(tmp) / "scp1.dsb", model_id="scp1")
        device = load_device_bundle(Path(tmp) / "scp1.dsb")  # as the device loads it
    local = measure_local(device.layer, window, device.keep)
    results["cost"] = [local.as_dict()]
    if not args.skip_he:
        he = measure_encrypted(bundle.layer, window)
        results["cost"].append(he.as_dict())
    results["seconds"] = time.perf_counter() - t_start

    out = args.out
    with open(Path(tempfile.gettempdir()) / "privacy_audit_state.pkl", "wb") as fh:
        pickle.dump((results, default, filtered), fh)  # to re-render without rerunning
    (out / "bench").mkdir(parents=True, exist_ok=True)
    (out / "bench" / "privacy.json").write_text(json.dumps(results, indent=1, default=float))
    figure(
        out / "privacy.png",
        default,
        filtered,
        accuracy,
        results["leak_sweep"],
        results["joint_sweep"],
        bundle.sfreq,
    )
    write_markdown(out / "bench" / "privacy.md", results, default, filtered)
    log.info("done in %.0f s", results["seconds"])
    return 0


def write_markdown(
    path: Path, res: dict[str, Any], default: AuditResult, filtered: AuditResult | None
) -> None:
    lines = [
        "# Privacy audit benchmark (generated)",
        "",
        f"Generated by `python benchmarks/privacy_audit.py --out docs` on {res['started']} "
        f"({res['machine']}, CPU only) in {res['seconds'] / 60:.1f} min. Interpretation: "
        "[../privacy.md](../privacy.md).",
        "",
        "## 1. Default model: SelfRegulationSCP1, m=256, trained K=64, ReLU, no filter",
        "",
        *[f"- {n}" for n in default.notes],
        "",
        format_table(default),
        "",
        "Principal components of the TRAIN windows (separable channel x time covariance) "
        "needed for 50 / 90 / 99 % of the variance, of 5376: "
        + "; ".join(f"{k} {v}" for k, v in res["effective_dimension"].items()),
        "",
        "Test accuracy of the same model when the device keeps K units (5 mask seeds):",
        "",
        "| K/m | accuracy |",
        "|---|---|",
        *[
            f"| {f:.3f} | {a:.3f} |"
            for f, a in sorted(res["default"]["accuracy_by_keep_fraction"].items())
        ],
        "",
    ]
    if filtered is not None:
        lines += [
            "## 2. Variant: causal 1-40 Hz band-pass on the device (otherwise the same)",
            "",
            *[f"- {n}" for n in filtered.notes],
            "",
            format_table(filtered),
            "",
            f"Test accuracy at K=64: {res['filtered']['accuracy_K64']:.3f}",
            "",
        ]
    lines += [
        "## 3. Leak sweep: random layers on real EEG (eegmmidb, 8 ch x 32 samples, 1-40 Hz)",
        "",
        "Prior fitted on the first half of the recording, 80 windows of the second half "
        "attacked. Mean Pearson r.",
        "",
        "| activation | m | C*T | K | ridge r | prior r |",
        "|---|---|---|---|---|---|",
    ]
    leak = res["leak_sweep"]
    for r in leak:
        if r["attack"] != "ridge":
            continue
        p = next(
            q["r"]
            for q in leak
            if q["attack"] == "prior"
            and (q["activation"], q["m"], q["keep"]) == (r["activation"], r["m"], r["keep"])
        )
        lines.append(
            f"| {r['activation']} | {r['m']} | {r['n']} | {r['keep']} | {r['r']:.3f} | {p:.3f} |"
        )
    lines += [
        "",
        "## 4. Joint attack over overlapping windows (same EEG, m=256, C*T=256)",
        "",
        "| activation | hop | C*hop | K | joint r | per-window ridge r | joint s |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {r['activation']} | {r['hop']} | {r['new_unknowns']} | {r['keep']} | "
            f"{r['r_joint']:.3f} | {r['r_window']:.3f} | {r['seconds']:.1f} |"
            for r in res["joint_sweep"]
        ],
        "",
        "## 5. Cost per window: local layer with dropping vs the layer under CKKS",
        "",
        "| method | inputs | units | client s | bytes up | server s | bytes down | "
        "one-off setup bytes | max abs error | detail |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *[
            f"| {c['method']} | {c['n_inputs']} | {c['width']} | {c['client_s']:.4g} | "
            f"{c['bytes_up']} | {c['server_s']:.4g} | {c['bytes_down']} | {c['setup_bytes']} | "
            f"{c['max_abs_error']:.2g} | {c['detail']} |"
            for c in res["cost"]
        ],
        "",
    ]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
