"""Build the demo's shipped recording and train its pre-trained bundle (offline, reproducible).

Reads real recordings from ``../shared/data/body`` (biosignalsplux, MIT licence) and writes:

``inference/demo_data/ecg_artefacts.fif``
    30 s of real resting ECG (``ecg_5min.fif``, seconds 200-230, a part never used for training)
    resampled to 500 Hz, with two real artefacts added at known times, in the manner of the MIT-BIH
    Noise Stress Test (real noise recorded on its own, added to a clean ECG at a chosen gain):
    a real EMG burst (``emg_fatigue.fif``) and a real movement artefact
    (``eeg_movement_artefacts_1.fif``). Their spans are stored as ``anomaly`` annotations.
``inference/demo_data/ecg_novelty.dsb``
    A novelty bundle (the default ``energy`` novelty model: whitened random projections on the
    device, the kept activations' log-energy on the server) trained on clean ECG only
    (``ecg_5min.fif`` seconds 0-180), in microvolts, exactly as the device's inlet delivers them,
    with its privacy label (quick audit: earlier half of the training windows as the attacker's
    data, the later half attacked).

Run from the repository root::

    python scripts/make_demo_assets.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

SFREQ = 500.0
WINDOW_S = 1.0
HOP_S = 0.25
#: (file, start s in the source, onset s in the demo, duration s, gain) of each added artefact.
ARTEFACTS = (
    ("emg_fatigue.fif", 40.0, 9.0, 3.0, 3.0),
    ("eeg_movement_artefacts_1.fif", 48.0, 19.0, 3.0, 6.0),
)
BASELINE = ("ecg_5min.fif", 200.0, 30.0)  # file, start s, seconds
TRAIN_SPAN = (0.0, 180.0)
PREPROCESSING = {"l_freq": 0.5, "h_freq": 150.0, "notch": 50.0, "order": 2}


def _load(path: Path, start: float, seconds: float) -> np.ndarray:
    """One channel of ``path`` from ``start`` for ``seconds``, resampled to SFREQ, microvolts."""
    import mne

    raw = mne.io.read_raw_fif(path, preload=True, verbose="error")
    raw.crop(start, start + seconds, include_tmax=False)
    raw.resample(SFREQ, verbose="error")
    return raw.get_data()[0] * 1e6


def build_recording(data: Path, out: Path) -> list[tuple[float, float]]:
    """Write the demo recording; returns the anomaly spans (onset s, offset s)."""
    import mne

    name, start, seconds = BASELINE
    ecg = _load(data / "body" / name, start, seconds)
    spans = []
    for fname, src_start, onset, dur, gain in ARTEFACTS:
        noise = _load(data / "body" / fname, src_start, dur)
        noise = noise - noise.mean()
        i0 = int(round(onset * SFREQ))
        ecg[i0 : i0 + noise.size] += gain * noise
        spans.append((onset, onset + dur))
    info = mne.create_info(["ECG1"], SFREQ, ["ecg"])
    raw = mne.io.RawArray(ecg[None] * 1e-6, info, verbose="error")
    raw.set_annotations(
        mne.Annotations([s for s, _ in spans], [e - s for s, e in spans], ["anomaly"] * len(spans))
    )
    raw.save(out, overwrite=True, fmt="single", verbose="error")
    return spans


def train_bundle(data: Path, out: Path, overrides: dict | None = None, label: bool = False) -> Any:
    """Train the novelty bundle on clean ECG and write it; returns the trained model.

    ``overrides`` replaces settings of the recipe's :class:`TrainConfig` (e.g. the privacy
    defences, for ``benchmarks/privacy_frontier.py``); ``label`` measures and stores the privacy
    label (as ``dropstream train`` does; ~30 s).
    """
    from dropstream.inference.training import TrainConfig, train_novelty
    from dropstream.local_encoder.framing import stream_windows
    from dropstream.local_encoder.preprocessing import filter_signal

    x = _load(data / "body" / BASELINE[0], TRAIN_SPAN[0], TRAIN_SPAN[1] - TRAIN_SPAN[0])
    xf = filter_signal(x[None], SFREQ, PREPROCESSING)
    win, hop = int(WINDOW_S * SFREQ), int(HOP_S * SFREQ)
    windows = stream_windows(xf, win, hop).astype(np.float32)
    config = TrainConfig(
        width=128,
        keep=32,
        pool=1,  # no time pooling (as when the shipped bundle was made)
        hidden=(128, 64),
        embedding=16,
        epochs=80,
        batch_size=64,
        n_masks=8,
        patience=20,
        preprocessing=PREPROCESSING,
        progress=False,
        device="cpu",
    )
    config = replace(config, **(overrides or {}))
    model = train_novelty(
        windows,
        config,
        sfreq=SFREQ,
        channel_names=["ECG1"],
        channel_types=["ecg"],
        hop_samples=hop,
        prefiltered=True,
    )
    if label:
        from dropstream.inference.audit.label import privacy_label, windows_recording

        x = model.prepare(windows, prefiltered=True)
        half = len(x) // 2
        model.privacy_label = privacy_label(
            model.device_bundle(),
            [windows_recording("later", x[half:], None, hop)],
            [windows_recording("earlier", x[:half], None, hop)],
            attacker_note="earlier half of the training windows; the later half attacked; "
            "decoder 20 s",
            seed=config.seed,
        )
    model.save(out, model_id="demo-ecg-novelty", model_version=1)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = Path(__file__).resolve().parents[1]
    parser.add_argument("--data", default=str(root.parent / "shared/data"))
    parser.add_argument("--out", default=str(root / "inference/demo_data"))
    args = parser.parse_args()
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spans = build_recording(data, out / "ecg_artefacts.fif")
    model = train_bundle(data, out / "ecg_novelty.dsb", label=True)
    cal = model.head_config["calibration"]
    print(
        json.dumps(
            {"anomalies_s": spans, "calibration": cal, "privacy_label": model.privacy_label},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
