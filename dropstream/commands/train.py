"""``dropstream train``: train a split model with dropping and write its bundle.

Examples::

    # supervised, UEA problem with its official TRAIN split (TEST is only reported)
    dropstream train --uea SelfRegulationSCP1 -o scp1.dsb
    dropstream train --uea Blink -o blink.dsb          # rate (255 Hz) read from the .ts header

    # supervised, continuous recordings whose annotations label the windows
    dropstream train --recording a.fif --recording b.fif --window 1.0 --hop 1.0 -o m.dsb

    # a 500 Hz model from 1000 Hz recordings (decimated exactly as the device does it)
    dropstream train --recording ecg.fif --sfreq 500 --window 2.0 -o ecg500.dsb

    # unsupervised novelty model from baseline recordings (no labels needed)
    dropstream train --novelty --recording baseline.fif --window 1.0 --l-freq 1 --h-freq 40 \\
        -o normal.dsb
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

from dropstream.commands import add_units_argument
from dropstream.errors import DropstreamError

if TYPE_CHECKING:
    import numpy as np

HELP = "train a split model with activation dropping and write its bundle (.dsb)"

DEFAULT_UEA_DIR = Path("../shared/data/uea")


def configure(parser: argparse.ArgumentParser) -> None:
    """Register the arguments of ``dropstream train``."""
    src = parser.add_argument_group("data")
    src.add_argument("--uea", metavar="PROBLEM", help="UEA problem name, e.g. SelfRegulationSCP1")
    src.add_argument(
        "--uea-dir", type=Path, default=DEFAULT_UEA_DIR, help="folder of the .ts files"
    )
    src.add_argument(
        "--recording",
        action="append",
        default=[],
        metavar="PATH",
        help="continuous recording (.fif, .edf, ...); repeat for several",
    )
    src.add_argument(
        "--sfreq",
        type=float,
        default=None,
        metavar="HZ",
        help="recordings: model sample rate (default: theirs); recordings at an integer "
        "multiple are decimated to it, and the device decimates such streams the same way. "
        "UEA: the problem's sample rate (default: what its .ts files state, else the known "
        "rate)",
    )
    src.add_argument("--window", type=float, default=1.0, help="window length in s (recordings)")
    src.add_argument("--hop", type=float, default=None, help="hop in s (default: the window)")
    src.add_argument(
        "--default-label",
        default="normal",
        help="label of windows outside every annotation ('' skips them)",
    )
    src.add_argument(
        "--label-map",
        action="append",
        default=[],
        metavar="DESC=LABEL",
        help="map an annotation description to a label ('DESC=' ignores it)",
    )
    src.add_argument("--channels", nargs="+", default=None, help="channels to use, in order")
    add_units_argument(src, "the recordings (as read; MNE reads volts)")
    src.add_argument(
        "--novelty",
        action="store_true",
        help="unsupervised: learn normal from baseline windows (those labelled --normal-label, "
        "by default the windows outside every annotation) and score novelty",
    )
    src.add_argument(
        "--normal-label",
        action="append",
        default=None,
        metavar="LABEL",
        help="with --novelty: a label whose windows are normal (repeatable; default: "
        "--default-label, i.e. the windows outside every annotation)",
    )
    src.add_argument(
        "--all-normal",
        action="store_true",
        help="with --novelty: every window of the recordings is normal, whatever its annotation "
        "(a baseline recording whose annotations mark events, beats or stages)",
    )

    # Options that set a TrainConfig field default to SUPPRESS: run() passes on only what was
    # given, so TrainConfig's defaults (dropstream.inference.training.config) are the command's.
    mdl = parser.add_argument_group("model (defaults: TrainConfig's)")
    unset = argparse.SUPPRESS
    mdl.add_argument("--width", type=int, default=unset, help="first-layer units m")
    mdl.add_argument("--keep", type=int, default=unset, help="units kept per window K")
    mdl.add_argument(
        "--keep-fraction", type=float, default=unset, help="K/m when --keep is not given"
    )
    mdl.add_argument("--first-layer", choices=("dense", "conv"), default=unset)
    mdl.add_argument(
        "--pool",
        type=int,
        default=unset,
        help="average-pool factor in time before the dense first layer (default: T // 64)",
    )
    mdl.add_argument(
        "--activation", choices=("relu", "leaky_relu", "tanh", "sigmoid"), default=unset
    )
    mdl.add_argument("--l-freq", type=float, default=None, help="causal high-pass edge, Hz")
    mdl.add_argument("--h-freq", type=float, default=None, help="causal low-pass edge, Hz")
    mdl.add_argument("--notch", type=float, default=None, help="mains notch, Hz")
    mdl.add_argument("--demean", action="store_true", help="subtract each window's mean")
    mdl.add_argument("--epochs", type=int, default=unset, help="training epochs")
    mdl.add_argument("--lr", type=float, default=unset, help="AdamW learning rate")
    mdl.add_argument("--weight-decay", type=float, default=unset, help="AdamW weight decay")
    mdl.add_argument("--n-masks", type=int, default=unset, help="keep masks per window per step")
    mdl.add_argument("--seed", type=int, default=unset)
    mdl.add_argument("--device", default=unset, help="auto (CUDA when present), cpu or cuda")
    mdl.add_argument("--threads", type=int, default=unset, help="torch CPU threads while training")
    mdl.add_argument(
        "--novelty-model",
        choices=("energy", "svdd"),
        default=unset,
        help="novelty: 'energy' (default: whitened random projections, log-energy score, no "
        "gradient training) or 'svdd' (a trained Deep SVDD); docs/anomalies.md compares them",
    )
    mdl.add_argument(
        "--min-calibration-windows",
        type=int,
        default=unset,
        help="novelty: held-out normal windows the threshold needs at least (default 50)",
    )

    prv = parser.add_argument_group("privacy defences (docs/privacy.md; defaults: TrainConfig's)")
    prv.add_argument(
        "--rank",
        type=int,
        default=unset,
        help="low-rank first layer W = A B with this inner rank (0: full rank; default auto: "
        "max(2, classes - 1) for a dense classifier, full rank for novelty or conv)",
    )
    prv.add_argument(
        "--noise",
        type=float,
        default=unset,
        help="device noise on the standardised projections, relative to their std",
    )
    prv.add_argument(
        "--nopeek",
        type=float,
        default=unset,
        help="weight of the NoPeek distance-correlation penalty",
    )
    prv.add_argument(
        "--adversary",
        type=float,
        default=unset,
        help="weight of the Gaussian-MAP reconstruction-adversary penalty (default auto: "
        "0.5 for a low-rank classifier, else 0)",
    )
    prv.add_argument(
        "--excess",
        type=float,
        default=unset,
        help="weight of the same adversary knowing the class: penalises only the leak "
        "beyond the task floor (classifiers)",
    )
    prv.add_argument(
        "--label-seconds",
        type=float,
        default=20.0,
        help="decoder budget of the privacy label's quick audit, s (0: no decoder)",
    )
    prv.add_argument(
        "--no-privacy-label", action="store_true", help="skip the quick audit (label left empty)"
    )

    out = parser.add_argument_group("output")
    out.add_argument("-o", "--output", type=Path, required=True, help="bundle path (.dsb)")
    out.add_argument("--model-id", default=None, help="model id (default: output file stem)")
    out.add_argument("--model-version", type=int, default=1)
    out.add_argument("--quiet", action="store_true", help="no progress bar")


def _label_map(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        desc, sep, label = item.partition("=")
        if not sep:
            raise DropstreamError(f"--label-map {item!r} must look like DESC=LABEL")
        out[desc] = label
    return out


def _normal_windows(y: np.ndarray, args: argparse.Namespace) -> np.ndarray:
    """Boolean mask of the windows ``--novelty`` learns from (see ``--normal-label``)."""
    import numpy as np

    if args.all_normal:
        return np.ones(len(y), dtype=bool)
    wanted = args.normal_label or [args.default_label or "normal"]
    normal = np.isin(y, wanted)
    if normal.sum() < 10:
        labels, counts = np.unique(y, return_counts=True)
        found = ", ".join(f"{str(lab)!r}: {n}" for lab, n in zip(labels, counts, strict=True))
        raise DropstreamError(
            f"{int(normal.sum())} windows labelled {wanted} to learn normal from; windows per "
            f"label: {found}. Name the normal ones with --normal-label (repeatable), or pass "
            "--all-normal when every window of the baseline is normal"
        )
    return normal


def run(args: argparse.Namespace) -> int:
    """Run ``dropstream train``."""
    import numpy as np

    from dropstream.inference.datasets import load_uea, windows_from_recordings
    from dropstream.inference.training import TrainConfig, train_classifier, train_novelty

    if bool(args.uea) == bool(args.recording):
        raise DropstreamError("give either --uea PROBLEM or one or more --recording PATH")
    preprocessing = {
        "l_freq": args.l_freq,
        "h_freq": args.h_freq,
        "notch": args.notch,
        "window_demean": bool(args.demean),
    }
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.name in args}
    if given.get("rank") == 0:
        given["rank"] = None  # --rank 0: a full-rank first layer
    config = TrainConfig(**given, preprocessing=preprocessing, progress=not args.quiet)
    test = None
    if args.uea:
        train, test = load_uea(args.uea, args.uea_dir, sfreq=args.sfreq)
    else:
        hop = args.hop if args.hop is not None else args.window
        train = windows_from_recordings(
            args.recording,
            window_s=args.window,
            hop_s=hop,
            preprocessing=preprocessing,
            default_label=args.default_label or None,
            label_map=_label_map(args.label_map),
            channels=args.channels,
            sfreq=args.sfreq,
            units=args.units,
        )
    common = {
        "sfreq": train.sfreq,
        "channel_names": train.channel_names,
        "channel_types": train.channel_types,
        "hop_samples": train.hop_samples,
        "prefiltered": train.filtered,
    }
    report: dict[str, object] = {"windows": int(train.X.shape[0]), "sfreq": train.sfreq}
    if args.novelty:
        normal = _normal_windows(train.y, args)
        model = train_novelty(train.X[normal], config, **common)
        report["normal_windows"] = int(normal.sum())
        calibration = model.head_config["calibration"]
        report["calibration"] = calibration
        lo, hi = calibration["threshold_ci95"]
        report["threshold"] = (
            f"{calibration['threshold']:.4g} (95% CI {lo:.4g}-{hi:.4g}, from "
            f"{calibration['n_windows']} held-out normal windows)"
        )
        if (~normal).any():
            scores = model.score(train.X[~normal], prefiltered=train.filtered)
            over = scores > calibration["threshold"]
            report["other_windows_over_threshold"] = float(np.mean(over))
            labels = train.y[~normal]
            report["over_threshold_by_label"] = {
                str(lab): round(float(np.mean(over[labels == lab])), 4) for lab in np.unique(labels)
            }
    else:
        model = train_classifier(train.X, train.y, config, **common)
        report["classes"] = list(model.classes)
        if test is not None:
            acc = float(np.mean(model.predict(test.X) == test.y))
            report["test_accuracy"] = round(acc, 4)
    if not args.no_privacy_label:
        model.privacy_label = _privacy_label(model, train, test, args)
        report["privacy_label"] = model.privacy_label
    model_id = args.model_id or args.output.stem
    checksum = model.save(args.output, model_id=model_id, model_version=args.model_version)
    report.update(
        {
            "bundle": str(args.output),
            "model_id": model_id,
            "model_version": args.model_version,
            "width": model.width,
            "keep": model.keep,
            "sha256": checksum,
        }
    )
    print(json.dumps(report, indent=2))
    return 0


def _privacy_label(model: object, train: object, test: object, args: argparse.Namespace) -> dict:
    """Quick audit of the trained model on held-out windows (see
    :mod:`dropstream.inference.audit.label`): a UEA problem's TEST trials, attacked with the TRAIN
    trials as the attacker's data; recordings: the later half of the windows, attacker the
    earlier half."""
    from dropstream.inference.audit.label import privacy_label, windows_recording

    x = model.prepare(train.X, prefiltered=train.filtered)
    y = None if args.novelty else train.y
    hop = model.hop_samples
    if test is not None:
        held = windows_recording("test", model.prepare(test.X), test.y, hop)
        attacker = windows_recording("train", x, y, hop)
        note = "TRAIN windows; TEST windows attacked"
    else:
        half = len(x) // 2
        held = windows_recording("later", x[half:], None if y is None else y[half:], hop)
        attacker = windows_recording("earlier", x[:half], None if y is None else y[:half], hop)
        note = "earlier half of the windows; the later half attacked"
    budget = float(args.label_seconds)
    attacks_note = f"{note}; decoder {budget:g} s"
    return privacy_label(
        model.device_bundle(),
        [held],
        [attacker],
        attacker_note=attacks_note,
        decoder_seconds=budget,
        seed=model.config.seed,
    )
