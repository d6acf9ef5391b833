"""``dropstream audit``: attack a model's dropped activations and measure what leaks.

Examples::

    # trial data: the decoder trains on the TRAIN trials and attacks the TEST trials
    dropstream audit --model scp1.dsb \\
        --data ../shared/data/uea/SelfRegulationSCP1_TEST.ts \\
        --attacker-data ../shared/data/uea/SelfRegulationSCP1_TRAIN.ts --out audit/

    # one continuous recording: the attacker learns on its first half, attacks the second
    dropstream audit --model eeg.dsb --data rec.edf --keep 256 64 16

The attacker knows the first layer (weights, bias, activation), K and every message (kept
indices and float16 values) and the model's defences (noise scale, rank), but not the signal.
Attacks: label (the task floor: class-mean window), naive (dropped read as zeros), ridge
(mask-aware least squares, ReLU zeros as inequalities), prior (Gaussian MAP with a prior fitted on
the attacker's data and the device noise), kernel (posterior mean under the attacker's windows),
subspace (a low-rank layer's revealed projections recovered exactly, then E[window | projections]
by local-linear regression on the attacker's data), joint (all overlapping windows of a stream
at once), decoder (a torch MLP trained through the device's dropping and noise on the attacker's
data). Metrics: Pearson r per window and channel,
SNR in dB, relative band-power errors (delta..gamma); the excess leak is the strongest attack's r
minus the floor's. The result is compared with the bundle's privacy label.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "privacy audit: reconstruct the signal from the activations the server receives"


def configure(parser: argparse.ArgumentParser) -> None:
    """Register the arguments of ``dropstream audit``."""
    parser.add_argument("--model", required=True, type=Path, help="model bundle (.dsb)")
    parser.add_argument(
        "--data",
        required=True,
        nargs="+",
        type=Path,
        metavar="RECORDING",
        help="recordings to attack (.fif, .edf, ... readable by mne, or UEA .ts trial files)",
    )
    parser.add_argument(
        "--attacker-data",
        nargs="+",
        type=Path,
        default=None,
        metavar="RECORDING",
        help="the attacker's own recordings (decoder training, prior); default: the first half "
        "of each --data file (trials or time), whose second half is then attacked",
    )
    parser.add_argument(
        "--keep",
        nargs="+",
        type=int,
        default=None,
        help="K values to audit (default: m (no dropping), the model's K and K/4)",
    )
    parser.add_argument(
        "--attacks",
        nargs="+",
        default=None,
        help="subset of: label naive ridge prior kernel subspace joint decoder (default: all)",
    )
    parser.add_argument(
        "--value-dtype", choices=("float16", "float32"), default="float16", help="wire dtype"
    )
    parser.add_argument(
        "--decoder-seconds", type=float, default=60.0, help="training budget per decoder, s"
    )
    parser.add_argument("--max-windows", type=int, default=300, help="held-out windows attacked")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for audit.md, audit.json and audit.png"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``dropstream audit``."""
    from dropstream.inference.audit.label import compare
    from dropstream.inference.audit.report import (
        ALL_ATTACKS,
        AuditError,
        format_table,
        load_recording,
        run_audit,
    )
    from dropstream.local_encoder.bundle import load_device_bundle

    bundle = load_device_bundle(args.model)
    m = bundle.layer.width
    keeps = args.keep or sorted({m, bundle.keep, max(1, bundle.keep // 4)}, reverse=True)
    attacks = tuple(args.attacks) if args.attacks else ALL_ATTACKS
    held = [load_recording(p, bundle) for p in args.data]
    if args.attacker_data:
        attacker = [load_recording(p, bundle) for p in args.attacker_data]
        held_names = {r.name for r in held}
        clash = held_names & {r.name for r in attacker}
        if clash:
            raise AuditError(
                f"{sorted(clash)} given both as --data and --attacker-data; the attacker must "
                "not train on what it attacks"
            )
        how = "attacker trained on other recordings: " + ", ".join(r.name for r in attacker)
    else:
        pairs = [r.split() for r in held]
        attacker = [p[0] for p in pairs]
        held = [p[1] for p in pairs]
        how = (
            "attacker trained on the first half (trials or time) of each file; "
            "the second half attacked"
        )
    result = run_audit(
        bundle,
        held,
        attacker,
        keeps,
        attacks,
        value_dtype=args.value_dtype,
        decoder_seconds=args.decoder_seconds,
        max_windows=args.max_windows,
        seed=args.seed,
    )
    result.notes.append(how)
    table = format_table(result)
    print(f"privacy audit of model {bundle.model_id} (K={bundle.keep} of m={m})")
    for note in result.notes:
        print(f"  {note}")
    print(table)
    for s in result.summary():
        print(
            f"K={s['keep']}: strongest attack {s['strongest_attack']} reaches "
            f"r={s['strongest_r']:.3f}; task floor (label) r={s['floor_r']:.3f}; "
            f"excess leak {s['excess_r']:+.3f}"
        )
    comparison = compare(bundle.privacy.get("label"), result, bundle.keep)
    print("privacy label of the bundle:")
    for line in comparison:
        print(f"  {line}")
    if args.out is not None:
        from dropstream.inference.audit.plots import plot_traces

        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "audit.md").write_text(
            "\n".join(f"- {n}" for n in result.notes) + "\n\n" + table + "\n"
        )
        (args.out / "audit.json").write_text(
            json.dumps(
                {
                    "notes": result.notes,
                    "rows": result.rows,
                    "summary": result.summary(),
                    "label": bundle.privacy.get("label") or None,
                    "label_comparison": comparison,
                },
                indent=2,
            )
        )
        plot_traces(result, bundle.sfreq, args.out / "audit.png")
        print(f"wrote {args.out}/audit.md, audit.json, audit.png")
    return 0
