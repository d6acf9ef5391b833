"""Benchmark: on-device encoder CPU time per window and bytes per window against raw bytes.

For each bundle, on one core (BLAS limited to one thread), on real EEG:

* **encode**: first layer + activation + fresh keep mask + message + serialisation
  (:class:`dropstream.local_encoder.encoder.WindowEncoder`), CPU time per window;
* **device path**: the above plus causal filtering, ring buffer, normalisation
  (:class:`dropstream.local_encoder.windowing.WindowBuffer`) and the HMAC tag, CPU time per
  window, fed in 10 ms chunks (one per poll of an agent polling every 10 ms, as agents did before
  they polled when the next window is due) and in the chunks the agent polls now
  (``EncoderAgent``: it waits ``seconds_to_next_window()``, between 10 and 250 ms);
* **spool put**: durable append to the on-disk spool (SQLite WAL, fsync), wall time per window
  (disk dependent);
* **bytes**: Kafka key + value of one message against the window's raw samples as float32
  (what LSL carries), and against the new samples per hop.

Bundles: the default model shape of ``dropstream train`` on the 64-channel PhysioNet EEG
(160 Hz, 1 s windows, dense first layer m=256 over time-pooled inputs with the default pool
``T // 64`` = 2, the default rank 2 of a classifier, K = 0.25 m = 64; random first-layer
weights, which cost the same as trained ones) as the device computes it (pooling, ``B`` 2 x
5120, ``A`` 256 x 2), the same layer pre-multiplied (pooling, then ``A B`` 256 x 5120), the same
layer in the dense form bundles had before (256 x C*T; the "before" of the same run), and, when
present, the shipped ECG demo bundle.

With ``--connect-seconds S`` it also runs ``dropstream connect`` for S seconds on the 64-ch EEG
replayed over LSL into an embedded broker, and reports the agent's peak resident memory
(``VmHWM``) and its CPU time per window sent over the second half of the run (steady state:
LSL polls, windowing, encoding, spool, Kafka producer; start-up excluded).

Usage::

    python benchmarks/encoder_speed.py --data ../shared/data --connect-seconds 30 \
        --out docs/bench/encoder.md
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import signal as signals  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from dropstream.broker.auth import DeviceKey  # noqa: E402
from dropstream.inference.training import default_pool  # noqa: E402
from dropstream.local_encoder.bundle import (  # noqa: E402
    DeviceBundle,
    load_device_bundle,
    write_bundle,
)
from dropstream.local_encoder.encoder import WindowEncoder  # noqa: E402
from dropstream.local_encoder.first_layer import FirstLayer  # noqa: E402
from dropstream.local_encoder.framing import stream_windows  # noqa: E402
from dropstream.local_encoder.preprocessing import filter_signal, fit_normalisation  # noqa: E402
from dropstream.local_encoder.spool import Spool  # noqa: E402
from dropstream.local_encoder.windowing import WindowBuffer  # noqa: E402

PRE = {"l_freq": 1.0, "h_freq": 40.0, "notch": None, "order": 4, "window_demean": False}
DEMO_BUNDLE = Path(__file__).resolve().parents[1] / "inference" / "demo_data" / "ecg_novelty.dsb"


def eeg_bundle(data: np.ndarray, sfreq: float, names: list[str]) -> DeviceBundle:
    """Default ``dropstream train`` shape: 1 s windows, no overlap, pool T//64, m=256, rank 2,
    K=64."""
    c, t, m, r = data.shape[1], int(sfreq), 256, 2
    pool = default_pool(t)
    filtered = filter_signal(data.T, sfreq, PRE)
    wins = stream_windows(filtered, t, t)
    mean, std = fit_normalisation(wins, PRE)
    rng = np.random.default_rng(0)
    n = c * (t // pool)
    weight = (rng.standard_normal((r, n)) / np.sqrt(n)).astype(np.float32)
    factor = rng.standard_normal((m, r)).astype(np.float32)
    layer = FirstLayer(weight, np.zeros(m, np.float32), "relu", pool=pool, n_samples=t,
                       factor=factor)  # fmt: skip
    return DeviceBundle(
        model_id="eegmmidb-64ch",
        model_version=1,
        layer=layer,
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
    # device path: chunks through filter + ring buffer + normalisation + encode + tag
    key = DeviceKey.generate("bench-device-0001")
    step = max(1, int(round(sfreq * 0.01)))
    polled = hasattr(WindowBuffer, "seconds_to_next_window")  # an agent that polls when due
    path_runs: dict[str, list[float]] = {"10 ms": [], "agent": []}
    for _ in range(repeats):
        for cadence in ("10 ms", "agent") if polled else ("10 ms",):
            t0 = time.process_time()
            n = s = 0
            buf = WindowBuffer(bundle, names, sfreq)
            while s < signal.shape[0]:
                if cadence == "10 ms":
                    k = step
                else:  # what arrives while the agent waits (10 ms .. 250 ms)
                    k = max(step, int(round(min(buf.seconds_to_next_window(), 0.25) * sfreq)))
                for w in buf.push(signal[s : s + k], stamps[s : s + k]):
                    key.sign(enc.to_bytes(enc.encode(w, n, 1.7e9)))
                    n += 1
                s += k
            path_runs[cadence].append((time.process_time() - t0) / n)
    # spool put (fsync), wall time
    with tempfile.TemporaryDirectory() as tmp, Spool(tmp) as spool:
        value = enc.to_bytes(enc.encode(windows[0], 0, 0.0))
        k = 200
        t0 = time.perf_counter()
        for i in range(k):
            spool.put(b"bench-device-0001", value, "bench", i + 1)
        spool_s = (time.perf_counter() - t0) / k
    key_bytes = len(b"bench-device-0001")
    raw = bundle.n_channels * bundle.window_samples * 4
    raw_hop = bundle.n_channels * bundle.hop_samples * 4
    msg = float(np.mean(sizes)) + key_bytes
    agent = path_runs["agent"] or [float("nan")]
    return {
        "encode_ms": min(encode_runs) * 1e3,
        "encode_med_ms": float(np.median(encode_runs)) * 1e3,
        "path_ms": min(path_runs["10 ms"]) * 1e3,
        "path_med_ms": float(np.median(path_runs["10 ms"])) * 1e3,
        "agent_ms": min(agent) * 1e3,
        "agent_med_ms": float(np.median(agent)) * 1e3,
        "spool_ms": spool_s * 1e3,
        "msg_bytes": msg,
        "msg_min": min(sizes) + key_bytes,
        "msg_max": max(sizes) + key_bytes,
        "raw_bytes": raw,
        "raw_hop_bytes": raw_hop,
        "ratio": raw / msg,
        "ratio_hop": raw_hop / msg,
        "windows": len(windows),
    }


def dense_form(bundle: DeviceBundle) -> DeviceBundle:
    """The same layer as a dense ``C*T`` matrix: how pooled and low-rank layers were exported
    before."""
    layer = bundle.layer
    dense = FirstLayer(layer.dense_weight.copy(), layer.bias, layer.activation)
    return replace(bundle, layer=dense)


def premultiplied(bundle: DeviceBundle) -> DeviceBundle:
    """The same layer with pooling kept but the low-rank factors multiplied out (``A B``)."""
    layer = bundle.layer
    w = (layer.factor @ layer.weight).astype(np.float32)
    return replace(bundle, layer=replace(layer, weight=w, factor=None))


def connect_run(
    bundle: DeviceBundle, edf: Path, names: list[str], seconds: float
) -> dict[str, float]:
    """Run ``dropstream connect`` on the EDF replayed over LSL; its peak RSS and CPU per window.

    ``names`` are the channel names as the replayed stream spells them.
    """
    bundle = replace(bundle, channel_names=tuple(names))
    exe = [sys.executable, "-m", "dropstream"]
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "eeg64.dsb"
        write_bundle(path, bundle, b"")  # the device never reads the head
        key = DeviceKey.generate("bench-rss").save(Path(tmp) / "bench-rss.key")
        try:
            broker = subprocess.Popen(exe + ["broker"], stdout=subprocess.PIPE, text=True)
            procs.append(broker)
            bootstrap = broker.stdout.readline().strip()
            sid = f"bench-rss-{int(time.time())}"
            procs.append(
                subprocess.Popen(
                    exe + ["replay", str(edf), "--loop", "--source-id", sid, "--name", sid],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            agent = subprocess.Popen(
                exe
                + [
                    "connect",
                    "--bundle",
                    str(path),
                    "--device-id",
                    "bench-rss",
                    "--source-id",
                    sid,
                    "--bootstrap",
                    bootstrap,
                    "--spool-dir",
                    str(Path(tmp) / "spool"),
                    "--device-key",
                    str(key),
                    "--status-interval",
                    "1",
                ],
                stderr=subprocess.PIPE,
                text=True,
            )
            procs.append(agent)
            lines: list[str] = []
            reader = threading.Thread(target=lambda: lines.extend(agent.stderr), daemon=True)
            reader.start()

            def sample() -> tuple[float, int]:  # CPU seconds so far, windows made so far
                fields = Path(f"/proc/{agent.pid}/stat").read_text().rsplit(")", 1)[1].split()
                made = [ln.split()[4] for ln in list(lines) if ln.startswith("windows sent")]
                cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
                return cpu, int(made[-1]) if made else 0

            time.sleep(seconds / 2)
            cpu_mid, made_mid = sample()
            time.sleep(seconds / 2)
            if agent.poll() is not None:
                raise RuntimeError(f"dropstream connect exited: {''.join(lines)}")
            status = Path(f"/proc/{agent.pid}/status").read_text()
            hwm_kib = int(next(x for x in status.splitlines() if x.startswith("VmHWM")).split()[1])
            cpu_s, made_end = sample()
            agent.send_signal(signals.SIGINT)
            agent.wait(timeout=30)
            reader.join(5)
            err = "".join(lines)
        finally:
            for p in procs[::-1]:
                if p.poll() is None:
                    p.send_signal(signals.SIGINT)
                    try:
                        p.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        p.kill()
    sent = [ln for ln in err.splitlines() if ln.startswith("windows sent")]
    n = int(sent[-1].split()[2]) if sent else 0
    steady = (cpu_s - cpu_mid) / max(made_end - made_mid, 1) * 1e3
    return {
        "peak_rss_mib": hwm_kib / 1024,
        "cpu_s": cpu_s,
        "windows": n,
        "steady_ms": steady,
        "steady_windows": made_end - made_mid,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="write a markdown section here")
    parser.add_argument(
        "--connect-seconds",
        type=float,
        default=0.0,
        help="also run `dropstream connect` this long on the 64-ch EEG (peak RSS, CPU)",
    )
    args = parser.parse_args()
    import mne

    raw = mne.io.read_raw_edf(args.data / "eeg/eegmmidb_S001R02.edf", preload=True, verbose=False)
    eeg = np.ascontiguousarray(raw.get_data().T * 1e6)
    names = [c.strip(".") for c in raw.ch_names]
    eeg64 = eeg_bundle(eeg, 160.0, names)
    cases = [
        (
            "64-ch EEG 160 Hz, T=160 (1 s), hop 160, pool 2, rank 2: pooling + 2 x 5120 + 256 x 2",
            eeg64,
            eeg,
        ),
        ("same layer pre-multiplied: pooling + 256 x 5120", premultiplied(eeg64), eeg),
        ("same layer, dense form (before): 256 x 10240", dense_form(eeg64), eeg),
    ]
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
    load0 = os.getloadavg()[0]
    rows = []
    for label, bundle, sig in cases:
        r = measure(bundle, sig, args.repeats)
        rows.append((label, bundle, r))
        print(label, {k: round(v, 4) for k, v in r.items()})
    connect = None
    if args.connect_seconds > 0:
        edf = args.data / "eeg/eegmmidb_S001R02.edf"
        connect = connect_run(eeg64, edf, list(raw.ch_names), args.connect_seconds)
        print("connect", connect)
    lines = [
        "## On-device encoder (issues 5, 14)",
        "",
        "Command: `python benchmarks/encoder_speed.py --data ../shared/data "
        f"--repeats {args.repeats} --connect-seconds {args.connect_seconds:g} "
        "--out docs/bench/encoder.md`; 1-minute load "
        f"average at the start {load0:.1f}, at the end {os.getloadavg()[0]:.1f} (2 cores).",
        "",
        f"Machine: {platform.processor() or platform.machine()}, Python "
        f"{platform.python_version()}, numpy {np.__version__}; one core (BLAS threads = 1), "
        "CPU time (`time.process_time`) per window, best and median of the repeats (the "
        "machine was shared; the best is the uncontended cost).",
        "",
        "| bundle | m | K | encode ms/window best (median) | device path, 10 ms chunks, "
        "ms/window best (median) | device path, agent's polls | spool put ms (fsync) "
        "| message bytes mean (min-max) | raw window bytes (float32) | raw / message | new raw "
        "per hop / message |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, b, r in rows:
        lines.append(
            f"| {label} | {b.layer.width} | {b.keep} | {r['encode_ms']:.3f} "
            f"({r['encode_med_ms']:.3f}) | {r['path_ms']:.3f} ({r['path_med_ms']:.3f}) "
            f"| {r['agent_ms']:.3f} ({r['agent_med_ms']:.3f}) "
            f"| {r['spool_ms']:.2f} | {r['msg_bytes']:.1f} ({r['msg_min']}-{r['msg_max']}) "
            f"| {r['raw_bytes']} | "
            f"{r['ratio']:.0f}x | {r['ratio_hop']:.2f}x |"
        )
    lines += [
        "",
        "*encode*: first layer + activation + fresh keep mask (a seed from the OS CSPRNG) + "
        "message + wire-v3 serialisation with 8-bit values. *device path*: adds causal "
        "filtering, ring buffer, normalisation and the HMAC tag, fed in 10 ms chunks (an agent "
        "polling every 10 ms) and in the chunks the agent polls now (when the next window is "
        "due, 10-250 ms). *message bytes*: Kafka value plus the key (device id, 17 B here), "
        "the mean over the run: the stream block travels in full every 16th window (the max), "
        "by reference in the others (the min); Kafka's own record and batch "
        "overhead is not counted. The dense-form row is "
        "the same layer exported as before (C*T columns), measured in the same run: the ratio "
        "of the rows is the gain of computing pooling, then B, then A. Goals: 64-ch "
        "device path <= 0.3 ms per window (issue 14), <= 1/50 of the raw bytes.",
        "",
    ]
    if connect:
        lines += [
            f"`dropstream connect` with the factored 64-ch bundle, {args.connect_seconds:g} s on "
            "the EDF replayed over LSL (`dropstream replay --loop`) into an embedded broker: "
            f"peak RSS (VmHWM) **{connect['peak_rss_mib']:.0f} MiB**, {connect['windows']} "
            f"windows sent, {connect['cpu_s']:.2f} s CPU in all (mostly start-up: imports, "
            "stream resolution, Kafka bootstrap); over the second half of the run "
            f"**{connect['steady_ms']:.2f} ms CPU per window** ({connect['steady_windows']} "
            "windows: LSL polls, windowing, encoding, spool with fsync, Kafka producer; both "
            "threads).",
            "",
        ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
