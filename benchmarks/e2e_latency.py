"""Benchmark: end-to-end alert latency with 1, 10 and 100 simulated devices in real time.

Each simulated device streams the shipped demo recording (real ECG with two artefacts, looped)
encoded with the demo bundle: one window every hop (0.25 s), devices spread evenly over the hop.
Every window is stamped (LSL and wall clock) with the moment its last sample is due on its
device, encoded as the device does (the stream block in full every 16th window, its reference
in the others) and signed with the device's key (provisioned in a temporary key store that the
service verifies every window against, as in production), all before the run, so that the
sending loop only sends each window at its due time; a window sent late counts its delay in
its latency (``sent_late``). Device-side encoding, ~0.1 ms, is measured in
``docs/bench/encoder.md`` and not included here.
One ``dropstream serve`` process (a separate OS process, like production) scores them; the
alerts it produces carry ``detection_latency_s`` = alert produced - last sample of the deciding
window, on the wall clock of this machine. We also record when the alert reached a consumer here
(``delivered``).

All devices replay the recording in step by default, so the alerts of all devices fall in the same
hop (a burst of ``--devices`` alerts: the worst case); ``--stagger`` starts device ``d`` at
window ``d mod 116`` of the recording instead.

Reported per device count: number of alert updates, p50/p90/p99/max of ``detection_latency_s``
and of delivered - last sample, and where the CPU went while the windows were sent
(``cpu_cores``: CPU seconds per second of the load generator - this process: the sending
thread, the producer's I/O thread and the alert follower -, of the serve process and of the
embedded broker), with the load average, and serve's per-window stage medians every 5 s
(``serve_stage_medians``: window end -> sent, producer timestamp -> fetched by serve, window end
-> scored, window end -> alert produced). ``--profile-serve FILE`` runs serve under cProfile.

Usage::

    python benchmarks/e2e_latency.py --devices 1 10 100 --seconds 30
    python benchmarks/e2e_latency.py --devices 1000 --seconds 20 --profile-serve serve.prof
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pylsl

if TYPE_CHECKING:
    from dropstream.broker.config import ClientConfig


def bench_config(bootstrap: str, prefix: str, partitions: int) -> ClientConfig:
    """Fresh topics and group (``prefix.<tag>.activations`` ...) on ``bootstrap``."""
    from dropstream.broker.config import ClientConfig

    tag = uuid.uuid4().hex[:8]
    return ClientConfig(
        bootstrap=bootstrap,
        activations_topic=f"{prefix}.{tag}.activations",
        alerts_topic=f"{prefix}.{tag}.alerts",
        dead_letter_topic=f"{prefix}.{tag}.dead",
        partitions=partitions,
        group_id=f"{prefix}-{tag}",
        session_timeout_ms=6000,
    )


def _cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` so far (0 when unknown)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stamp_and_sign(
    devices: list[list], keys: list, hop_s: float, window_s: float
) -> tuple[float, list[tuple[float, bytes, bytes]]]:
    """Every window's message, stamped with the time it completes on its device (device ``d``
    of ``n`` at ``start + i * hop + d * hop / n``), encoded and signed before the run so that
    the sending loop only sends. Returns the start (``time.monotonic()``) and, in sending
    order, ``(due, key, value)``. A window the loop sends after its due time counts that delay
    in its latency (``sent_late`` says how much)."""
    from dropstream.broker.wire import encode_activation
    from dropstream.local_encoder.encoder import BLOCK_EVERY

    n_devices, n_windows = len(devices), len(devices[0])
    t0 = time.perf_counter()
    for msgs, key in zip(devices, keys, strict=True):
        key.sign(encode_activation(msgs[0]))
    per_msg = (time.perf_counter() - t0) / n_devices
    start = time.monotonic() + 1.0 + 2.0 * per_msg * n_devices * n_windows  # time to encode
    lsl0 = pylsl.local_clock() - time.monotonic()  # LSL clock minus monotonic
    wall0 = time.time() - time.monotonic()
    frames = []
    for i in range(n_windows):
        for d, (msgs, key) in enumerate(zip(devices, keys, strict=True)):
            due = start + i * hop_s + d * hop_s / n_devices  # the window's last sample
            m = msgs[i]
            m.lsl_time, m.wall_time = lsl0 + due - window_s, wall0 + due - window_s
            # as the device sends: the stream block in full every BLOCK_EVERY windows (and
            # first), its 8-byte reference in the others
            value = encode_activation(m, by_reference=i % BLOCK_EVERY != 0)
            frames.append((due, m.device_id.encode(), key.sign(value)))
    return start, frames


def run_once(
    n_devices: int,
    seconds: float,
    bootstrap: str,
    max_wait_ms: float,
    serve_args: list[str],
    broker_pid: int | None = None,
    profile: str | None = None,
    linger_ms: float = 0.0,
    processes: int = 1,
    partitions: int = 6,
    stagger: bool = False,
) -> dict:
    from dropstream.broker.alert_message import decode_alert
    from dropstream.broker.auth import DeviceKeys
    from dropstream.broker.clients import make_producer, make_topic_reader
    from dropstream.broker.topics import delete_topics, ensure_topics, topic_names
    from dropstream.inference.demo import (
        DEMO_ALERTS,
        DEMO_BUNDLE,
        DEMO_RECORDING,
        read_recording,
    )
    from dropstream.local_encoder.bundle import load_device_bundle
    from dropstream.local_encoder.simulated import encode_recording

    config = bench_config(bootstrap, "lat", partitions)
    ensure_topics(config)
    bundle = load_device_bundle(DEMO_BUNDLE)
    samples, _, _ = read_recording(DEMO_RECORDING)
    hop_s = bundle.hop_samples / bundle.sfreq
    window_s = (bundle.window_samples - 1) / bundle.sfreq
    n_windows = int(seconds / hop_s)
    loops = -(-n_windows // 116)
    samples = np.tile(samples, (1, loops + 1))
    devices = []
    tmp = Path(tempfile.mkdtemp())
    store = tmp / "device-keys.json"
    ids = [f"lat-{d:03d}" for d in range(n_devices)]
    keys = DeviceKeys.provision_many(ids, store)  # one write of the store, not one per device
    for d, dev in enumerate(ids):
        # --stagger: device d starts at window d mod 116 of the recording (its anomalies at
        # other moments than its neighbours'); else all replay it in step, so every device's
        # alert comes in the same hop: a burst of n_devices alerts, the worst case
        off = (d % 116) * bundle.hop_samples if stagger else 0
        msgs = [m for m, _ in encode_recording(bundle, samples[:, off:], dev, seed=d)]
        msgs = msgs[:n_windows]
        devices.append(msgs)

    logs = [tmp / f"serve-{i}.log" for i in range(processes)]
    python = [sys.executable, *(["-m", "cProfile", "-o", profile] if profile else [])]
    cmd = [
        *python, "-m", "dropstream", "serve", "--bundle", str(DEMO_BUNDLE),
        "--device-keys", str(store), "--alert-key", str(tmp / "alert-signing.key"),
        "--bootstrap", bootstrap, "--activations-topic", config.activations_topic,
        "--alerts-topic", config.alerts_topic, "--dead-letter-topic", config.dead_letter_topic,
        "--group-id", config.group_id, "--max-wait-ms", str(max_wait_ms), "--log-interval-s", "5",
        *[f"--{k.replace('_', '-')}={v}" for k, v in DEMO_ALERTS.items()], *serve_args,
    ]  # fmt: skip
    procs = [subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT) for log in logs]
    received: list[tuple[float, float]] = []  # (detection latency, delivered latency), s
    stop = threading.Event()
    consumer = make_topic_reader(config, config.alerts_topic, fetch_max_wait_ms=10)

    def follow() -> None:
        while not stop.is_set():
            for recs in consumer.poll(timeout_ms=50).values():
                now = time.time()
                for rec in recs:
                    a = decode_alert(rec.value)
                    # same machine: produced_at (wall clock) and the LSL clock tick together
                    received.append(
                        (a.detection_latency_s, a.detection_latency_s + now - a.produced_at)
                    )

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    # one producer for every simulated device: a linger of a millisecond or two lets it batch
    # windows of different devices (a real device sends its own at once); counted in latency
    producer = make_producer(config, linger_ms=linger_ms)
    try:
        # wait for every serve process to join: each logs its assignment
        deadline = time.monotonic() + 60 + 10 * processes
        while not all("assigned partitions" in log.read_text() for log in logs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"serve did not start:\n{logs[0].read_text()[-3000:]}")
            time.sleep(0.1)
        time.sleep(1.0 + 2.0 * (processes > 1))  # the group settles
        time.sleep(1.0)
        start, frames = _stamp_and_sign(devices, keys, hop_s, window_s)
        sent_late = np.empty(len(frames))
        serve_cpu = lambda: sum(_cpu_s(p.pid) for p in procs)  # noqa: E731
        cpu0 = (os.times(), time.thread_time(), serve_cpu(), _cpu_s(broker_pid))
        for j, (due, key, value) in enumerate(frames):
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            producer.send(config.activations_topic, key=key, value=value)
            sent_late[j] = time.monotonic() - due
        producer.flush()
        elapsed = time.monotonic() - start
        t1 = os.times()
        cpu = {
            "generator": t1.user + t1.system - cpu0[0].user - cpu0[0].system,
            "generator_send_thread": time.thread_time() - cpu0[1],
            "serve": serve_cpu() - cpu0[2],
            "broker": _cpu_s(broker_pid) - cpu0[3],
        }
        time.sleep(3.0)
    finally:
        stop.set()
        follower.join(5)
        producer.close()
        consumer.close()
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(20)
        delete_topics(config, topic_names(config))
    det = np.array([r[0] for r in received])
    rec = np.array([r[1] for r in received])
    rec = rec[np.isfinite(rec)]

    def pct(x: np.ndarray) -> dict:
        if not x.size:
            return {}
        q = np.percentile(x * 1000, [50, 90, 99])
        return {"p50_ms": round(q[0], 1), "p90_ms": round(q[1], 1), "p99_ms": round(q[2], 1),
                "max_ms": round(float(x.max() * 1000), 1)}  # fmt: skip

    result = {
        "benchmark": "e2e_latency",
        "devices": n_devices,
        "seconds": seconds,
        "windows": n_windows * n_devices,
        "windows_per_s": round(n_devices / hop_s, 1),
        "max_wait_ms": max_wait_ms,
        "generator_linger_ms": linger_ms,
        "serve_args": serve_args,
        "alert_updates": len(received),
        "sent_windows_per_s": round(len(frames) / elapsed, 1),
        "sent_late": pct(np.maximum(sent_late, 0.0)),
        "cpu_cores": {k: round(v / elapsed, 3) for k, v in cpu.items()},
        "detection_latency": pct(det),
        "delivered_to_consumer": pct(rec),
        "serve_processes": processes,
        "partitions": partitions,
        "staggered": stagger,
        "serve_log_tail": logs[0].read_text().strip().splitlines()[-2:],
        # serve's per-window stage medians, every --log-interval-s: sent (window end ->
        # producer timestamp), fetched (producer timestamp -> polled), scored (window end ->
        # scored)
        "serve_stage_medians": [
            line.split("latency medians (ms): ", 1)[1]
            for line in logs[0].read_text().splitlines()
            if "latency medians" in line
        ],
    }
    shutil.rmtree(tmp, ignore_errors=True)  # the log and the throw-away keys
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--bootstrap", help="use this broker instead of an embedded one")
    parser.add_argument("--json", help="append results as JSON lines to this file")
    parser.add_argument(
        "--linger-ms", type=float, default=0.0, help="the load generator's producer linger"
    )
    parser.add_argument("--processes", type=int, default=1, help="serve processes in the group")
    parser.add_argument("--partitions", type=int, default=6, help="of the activations topic")
    parser.add_argument(
        "--stagger",
        action="store_true",
        help="start each device at another window of the recording (anomalies not in step)",
    )
    parser.add_argument("--profile-serve", help="run serve under cProfile, stats to this file")
    parser.add_argument(
        "--serve-args", default="", help="extra 'dropstream serve' flags, e.g. '--device cuda'"
    )
    args = parser.parse_args()
    from dropstream.broker.embedded import EmbeddedBroker

    broker = None if args.bootstrap else EmbeddedBroker().start()
    try:
        for n in args.devices:
            result = run_once(
                n,
                args.seconds,
                args.bootstrap or broker.bootstrap,  # type: ignore[union-attr]
                args.max_wait_ms,
                args.serve_args.split(),
                # getattr: runs against an older tree (before/after comparisons) lack .pid
                broker_pid=getattr(broker, "pid", None),
                profile=args.profile_serve,
                linger_ms=args.linger_ms,
                processes=args.processes,
                partitions=args.partitions,
                stagger=args.stagger,
            )
            result |= {
                "cpus": os.cpu_count(),
                "load_avg_1min": round(os.getloadavg()[0], 2),
                "python": platform.python_version(),
            }
            print(json.dumps(result, indent=1), flush=True)
            if args.json:
                with open(args.json, "a") as fh:
                    fh.write(json.dumps(result) + "\n")
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    main()
