"""Benchmark: on-device encoder CPU time per window and bytes per window against raw bytes.

For each bundle, on one core (BLAS limited to one thread), on real EEG:

* **encode**: first layer + activation + fresh keep mask + message + serialisation
  (:class:`dropstream.local_encoder.encoder.WindowEncoder`), CPU time per window;
* **device path**: the above plus causal filtering, ring buffer and normalisation
  (:class:`dropstream.local_encoder.windowing.WindowBuffer`) fed in 10 ms chunks, CPU time per
  window;
* **spool put**: durable append to the on-disk spool (SQLite WAL, fsync), wall time per window
  (disk dependent);
* **bytes**: Kafka key + value of one message against the window's raw samples as float32
  (what LSL carries), and against the new samples per hop.

Bundles: the default model shape of ``dropstream train`` on the 64-channel PhysioNet EEG
(160 Hz, 1 s windows, dense first layer m=256, K = 0.25 m = 64; random first-layer weights, which
cost the same as trained ones) and, when present, the shipped ECG demo bundle.

Usage::

    python benchmarks/encoder_speed.py --data ../shared/data --out docs/bench/encoder.md
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from dropstream.local_encoder.bundle import DeviceBundle, load_device_bundle  # noqa: E402
from dropstream.local_encoder.encoder import WindowEncoder  # noqa: E402
from dropstream.local_encoder.first_layer import FirstLayer  # noqa: E402
from dropstream.local_encoder.framing import stream_windows  # noqa: E402
from dropstream.local_encoder.preprocessing import filter_signal, fit_normalisation  # noqa: E402
from dropstream.local_encoder.spool import Spool  # noqa: E402
from dropstream.local_encoder.windowing import WindowBuffer  # noqa: E402

PRE = {"l_freq": 1.0, "h_freq": 40.0, "notch": None, "order": 4, "window_demean": False}
DEMO_BUNDLE = Path(__file__).resolve().parents[1] / "inference" / "demo_data" / "ecg_novelty.dsb"


def eeg_bundle(data: np.ndarray, sfreq: float, names: list[str]) -> DeviceBundle:
    """Default ``dropstream train`` shape: 1 s windows, no overlap, m=256, K=64."""
    c, t, m = data.shape[1], int(sfreq), 256
    filtered = filter_signal(data.T, sfreq, PRE)
    wins = stream_windows(filtered, t, t)
    mean, std = fit_normalisation(wins, PRE)
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((m, c * t)) / np.sqrt(c * t)).astype(np.float32)
    return DeviceBundle(
        model_id="eegmmidb-64ch",
        model_version=1,
        layer=FirstLayer(weight, np.zeros(m, np.float32), "relu"),
        keep=64,
        sfreq=sfreq,
        window_samples=t,
        hop_samples=t,
        channel_names=tuple(names),
        channel_types=("eeg",) * c,
        preprocessing=PRE,
        norm_mean=mean,
        norm_std=std,
    )


def measure(bundle: DeviceBundle, signal: np.ndarray, repeats: int) -> dict[str, float]:
    """Timings (seconds per window) and sizes (bytes) for one bundle on ``signal (n, C)``."""
    names = list(bundle.channel_names)
    sfreq = bundle.sfreq
    stamps = np.arange(signal.shape[0]) / sfreq
    windows = WindowBuffer(bundle, names, sfreq).push(signal, stamps)
    enc = WindowEncoder(bundle, "bench-device-0001", "bench-source-0001")
    # encode only
    for w in windows[:10]:
        enc.to_bytes(enc.encode(w, 0, 0.0))
    sizes = []
    encode_runs = []
    for _ in range(repeats):
        t0 = time.process_time()
        for i, w in enumerate(windows):
            sizes.append(len(enc.to_bytes(enc.encode(w, i, 1.7e9))))
        encode_runs.append((time.process_time() - t0) / len(windows))
    # device path: 10 ms chunks through filter + ring buffer + normalisation + encode
    step = max(1, int(round(sfreq * 0.01)))
    path_runs = []
    for _ in range(repeats):
        t0 = time.process_time()
        n = 0
        buf = WindowBuffer(bundle, names, sfreq)
        for s in range(0, signal.shape[0], step):
            for w in buf.push(signal[s : s + step], stamps[s : s + step]):
                enc.to_bytes(enc.encode(w, n, 1.7e9))
                n += 1
        path_runs.append((time.process_time() - t0) / n)
    # spool put (fsync), wall time
    with tempfile.TemporaryDirectory() as tmp, Spool(tmp) as spool:
        value = enc.to_bytes(enc.encode(windows[0], 0, 0.0))
        k = 200
        t0 = time.perf_counter()
        for i in range(k):
            spool.put(b"bench-device-0001", value, "bench", i + 1)
        spool_s = (time.perf_counter() - t0) / k
    key = len(b"bench-device-0001")
    raw = bundle.n_channels * bundle.window_samples * 4
    raw_hop = bundle.n_channels * bundle.hop_samples * 4
    msg = float(np.mean(sizes)) + key
    return {
        "encode_ms": min(encode_runs) * 1e3,
        "encode_med_ms": float(np.median(encode_runs)) * 1e3,
        "path_ms": min(path_runs) * 1e3,
        "path_med_ms": float(np.median(path_runs)) * 1e3,
        "spool_ms": spool_s * 1e3,
        "msg_bytes": msg,
        "raw_bytes": raw,
        "raw_hop_bytes": raw_hop,
        "ratio": raw / msg,
        "ratio_hop": raw_hop / msg,
        "windows": len(windows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="write a markdown section here")
    args = parser.parse_args()
    import mne

    raw = mne.io.read_raw_edf(args.data / "eeg/eegmmidb_S001R02.edf", preload=True, verbose=False)
    eeg = np.ascontiguousarray(raw.get_data().T * 1e6)
    names = [c.strip(".") for c in raw.ch_names]
    cases = [("64-ch EEG 160 Hz, T=160 (1 s), hop 160", eeg_bundle(eeg, 160.0, names), eeg)]
    if DEMO_BUNDLE.exists():
        demo = load_device_bundle(DEMO_BUNDLE)
        rng = np.random.default_rng(0)
        n = int(60 * demo.sfreq)
        sig = rng.standard_normal((n, demo.n_channels)) * demo.norm_std + demo.norm_mean
        label = (
            f"shipped demo {DEMO_BUNDLE.name}: {demo.n_channels} ch {demo.sfreq:g} Hz, "
            f"T={demo.window_samples}, hop {demo.hop_samples}"
        )
        cases.append((label, demo, sig))
    rows = []
    for label, bundle, sig in cases:
        r = measure(bundle, sig, args.repeats)
        rows.append((label, bundle, r))
        print(label, {k: round(v, 4) for k, v in r.items()})
    lines = [
        "## On-device encoder (issue 5)",
        "",
        "Command: `python benchmarks/encoder_speed.py --data ../shared/data --out "
        "docs/bench/encoder.md`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, Python "
        f"{platform.python_version()}, numpy {np.__version__}; one core (BLAS threads = 1), "
        "CPU time (`time.process_time`) per window, best and median of the repeats (the "
        "machine was shared; the best is the uncontended cost).",
        "",
        "| bundle | m | K | encode ms/window best (median) | device path ms/window best "
        "(median) | spool put ms (fsync) "
        "| message bytes | raw window bytes (float32) | raw / message | new raw per hop / "
        "message |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, b, r in rows:
        lines.append(
            f"| {label} | {b.layer.width} | {b.keep} | {r['encode_ms']:.3f} "
            f"({r['encode_med_ms']:.3f}) | {r['path_ms']:.3f} ({r['path_med_ms']:.3f}) "
            f"| {r['spool_ms']:.2f} | {r['msg_bytes']:.0f} | {r['raw_bytes']} | "
            f"{r['ratio']:.0f}x | {r['ratio_hop']:.0f}x |"
        )
    lines += [
        "",
        "*encode*: first layer + activation + fresh keep mask + message + float16 "
        "serialisation. *device path*: adds causal filtering, ring buffer and normalisation, "
        "fed in 10 ms chunks. *message bytes*: Kafka value (header 61 B + ids + K uint16 "
        "indices + K float16 values) plus the key (device id, 17 B here); Kafka's own record "
        "and batch overhead is not counted. Goal: <= 1 ms per window and <= 1/50 of the raw "
        "bytes.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
