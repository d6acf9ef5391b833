"""Benchmark: LSL acquisition throughput and latency (replay -> inlet, push -> pull).

Measures, on loopback with the real liblsl:

1. Sustained rate of a 64-channel 1000 Hz stream through ``RecordingReplay`` ->
   ``LiveStream.poll()``: the signal is the real 64-channel EEG ``eegmmidb_S001R02.edf``
   resampled to 1000 Hz (written to a temporary FIF and replayed from there). Run at several
   speed factors; for each: samples/s received, lost samples, and the inlet's CPU time per
   second of data (pull, unit scaling, dejitter, loss accounting; CPU time of the polling
   thread).
2. Push -> pull latency p50/p99: an outlet pushes one 64-channel sample (or a chunk) stamped
   with ``local_clock()``; a polling ``LiveStream`` records ``received_at - timestamp``.

Usage::

    python benchmarks/lsl_throughput.py --data ../shared/data --out docs/bench/acquisition.md
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import pylsl

from dropstream.acquisition import LiveStream
from dropstream.acquisition.info import StreamInfo, to_lsl
from dropstream.acquisition.replay import RecordingReplay


def make_recording(data_dir: Path, out_dir: Path) -> Path:
    """64-ch EEG of eegmmidb_S001R02.edf resampled to 1000 Hz, saved as FIF."""
    import mne

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = mne.io.read_raw(
            data_dir / "eeg" / "eegmmidb_S001R02.edf", preload=True, verbose="error"
        )
        raw.resample(1000.0, verbose="error")
        path = out_dir / "eegmmidb_64ch_1000hz_raw.fif"
        raw.save(path, fmt="double", verbose="error", overwrite=True)
    return path


def sustained(path: Path, speed: float, seconds: float, poll_interval: float) -> dict:
    """Replay ``path`` at ``speed`` for ``seconds`` of wall time; measure the inlet side."""
    sid = f"bench-{uuid.uuid4().hex[:8]}"
    with (
        RecordingReplay(
            [path], source_id=sid, speed=speed, loop=True, wait_for_consumers=20
        ) as replay,
        LiveStream.connect(source_id=sid, timeout=10, max_buffer=30) as inlet,
    ):
        replay.wait_started(20)
        received = 0
        cpu = 0.0
        last_at = 0.0
        t_start = time.perf_counter()
        while time.perf_counter() - t_start < seconds:
            c0 = time.thread_time()
            chunk = inlet.poll()
            cpu += time.thread_time() - c0
            received += chunk.n_samples
            if chunk.n_samples:
                last_at = chunk.received_at
            time.sleep(poll_interval)
        wall = last_at - replay.t0  # from the first published sample to the last poll with data
        lost = inlet.total_lost
        sent = sum(replay.publisher.samples_sent().values())
    return {
        "speed": speed,
        "offered": 1000.0 * speed,
        "received_per_s": received / wall,
        "published_per_s": sent / wall,
        "values_per_s": received * 64 / wall,
        "lost": lost,
        "sent": sent,
        "received": received,
        "inlet_cpu_ms_per_s_data": 1000.0 * cpu / max(received / 1000.0, 1e-9),
    }


def latency(n_pushes: int, chunk: int, poll_sleep: float) -> dict:
    """A 64-channel 1000 Hz outlet pushes ``chunk`` samples every ``chunk`` ms; for the last
    sample of each push, latency = ``received_at`` of the poll that returned it minus the
    ``local_clock()`` just before the push (samples arrive in order, so they are matched by
    their running index)."""
    sid = f"bench-lat-{uuid.uuid4().hex[:8]}"
    info = StreamInfo(
        name="bench-latency",
        type="EEG",
        source_id=sid,
        sfreq=1000.0,
        channel_names=tuple(f"ch{i}" for i in range(64)),
        channel_types=("EEG",) * 64,
        units=("microvolts",) * 64,
        channel_format="double64",
    )
    outlet = pylsl.StreamOutlet(to_lsl(info))
    inlet = LiveStream.connect(source_id=sid, timeout=10)
    block = np.random.default_rng(0).normal(size=(chunk, 64))
    push_times: list[float] = []
    lat: list[float] = []
    received = 0
    t0 = pylsl.local_clock() + 0.05
    deadline = time.perf_counter() + 60
    try:
        while len(lat) < n_pushes and time.perf_counter() < deadline:
            k = len(push_times)
            if k < n_pushes and pylsl.local_clock() >= t0 + (k + 1) * chunk / 1000.0:
                stamps = t0 + (k * chunk + np.arange(chunk)) / 1000.0
                push_times.append(pylsl.local_clock())
                outlet.push_chunk(block, stamps.tolist())
            c = inlet.poll()
            if c.n_samples:
                before = received
                received += c.n_samples
                # pushes whose last sample index (k+1)*chunk-1 lies in [before, received)
                for j in range(before // chunk, received // chunk):
                    if (j + 1) * chunk - 1 >= before:
                        lat.append(c.received_at - push_times[j])
            time.sleep(poll_sleep)
    finally:
        inlet.close()
        del outlet
    arr = np.array(lat) * 1000.0
    return {
        "chunk": chunk,
        "n": arr.size,
        "p50_ms": float(np.percentile(arr, 50)),
        "p99_ms": float(np.percentile(arr, 99)),
        "max_ms": float(arr.max()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data"
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="wall seconds per speed")
    parser.add_argument("--speeds", type=float, nargs="+", default=[1.0, 10.0, 50.0, 100.0])
    parser.add_argument("--poll-interval", type=float, default=0.01, help="seconds between polls")
    parser.add_argument("--pushes", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        path = make_recording(args.data, Path(tmp))
        runs = [sustained(path, s, args.seconds, args.poll_interval) for s in args.speeds]
    lats = [latency(args.pushes, 1, 0.0002), latency(args.pushes, 10, 0.0002)]

    command = "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    lines = [
        "## Acquisition (LSL loopback)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, pylsl "
        f"{pylsl.__version__ if hasattr(pylsl, '__version__') else '?'}, liblsl "
        f"{pylsl.library_version()}; publisher and inlet in one process (two threads).",
        "",
        "### Sustained rate, 64 ch x 1000 Hz (real EEG resampled), replay -> LiveStream.poll()",
        "",
        f"{args.seconds:g} s wall clock per row (file looped), poll every "
        f"{args.poll_interval * 1000:g} ms. 'offered' = 1000 Hz x speed; 'published' = what the "
        "replay thread managed to push (its ceiling shows where it falls behind the schedule).",
        "",
        "| speed | offered samples/s | published samples/s | received samples/s | "
        "channel values/s received | lost | inlet CPU ms per s of data |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r['speed']:g}x | {r['offered']:,.0f} | {r['published_per_s']:,.0f} | "
            f"{r['received_per_s']:,.0f} | "
            f"{r['values_per_s']:,.0f} | {r['lost']} | {r['inlet_cpu_ms_per_s_data']:.2f} |"
        )
    lines += [
        "",
        "### Push -> pull latency (outlet push to LiveStream.poll() return, same host)",
        "",
        "| samples per push | pushes | p50 ms | p99 ms | max ms |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in lats:
        lines.append(
            f"| {r['chunk']} | {r['n']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} "
            f"| {r['max_ms']:.3f} |"
        )
    lines += [
        "",
        "Notes: the inlet costs ~0.2 ms of CPU per `poll()` (pull, scaling, dejitter, loss "
        "accounting), so its CPU per second of data falls as chunks grow; at real time with a "
        "10 ms poll interval it is ~2 % of one core. 'received' trails 'published' at high speed "
        "only by what was still queued (pushed, not yet pulled) when measuring stopped "
        "(lost = 0: no gap, nothing was dropped). "
        "Latency is measured with a 0.2 ms poll sleep; with the usual 10 ms poll interval add up "
        "to 10 ms, and replay adds up to one push chunk (default ~10 ms of samples) of "
        "buffering on the sender side. Numbers are from a shared 2-core VM; the p99/max tails "
        "move between runs.",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
