"""Benchmark: end-to-end alert latency with 1, 10 and 100 simulated devices in real time.

Each simulated device streams the shipped demo recording (real ECG with two artefacts, looped)
encoded with the demo bundle: one window every hop (0.25 s), devices spread evenly over the hop.
A window is sent the moment it is complete: its ``lsl_time`` is set so that its last sample is
``pylsl.local_clock()`` at the send (device-side encoding, ~0.1 ms, is measured in
``docs/bench/encoder.md`` and not included here). One ``dropstream serve`` process (a separate
OS process, like production) scores them; the alerts it produces carry
``detection_latency_s`` = alert produced - last sample of the deciding window, on the LSL clock
of this machine. We also record when the alert reached a consumer here (``delivered``).

Reported per device count: number of alert updates, p50/p90/p99/max of ``detection_latency_s``
and of delivered - last sample.

Usage::

    python benchmarks/e2e_latency.py --devices 1 10 100 --seconds 30
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np


def run_once(
    n_devices: int, seconds: float, bootstrap: str, max_wait_ms: float, serve_args: list[str]
) -> dict:
    import pylsl

    from dropstream.broker.alert_message import decode_alert
    from dropstream.broker.clients import make_producer, make_topic_reader
    from dropstream.broker.config import ClientConfig
    from dropstream.broker.topics import delete_topics, ensure_topics, topic_names
    from dropstream.broker.wire import encode_activation
    from dropstream.inference.demo import (
        DEMO_ALERTS,
        DEMO_BUNDLE,
        DEMO_RECORDING,
        read_recording,
    )
    from dropstream.local_encoder.bundle import load_device_bundle
    from dropstream.local_encoder.simulated import encode_recording

    tag = uuid.uuid4().hex[:8]
    config = ClientConfig(
        bootstrap=bootstrap,
        activations_topic=f"lat.{tag}.activations",
        alerts_topic=f"lat.{tag}.alerts",
        dead_letter_topic=f"lat.{tag}.dead",
        partitions=6,
        group_id=f"lat-{tag}",
        session_timeout_ms=6000,
    )
    ensure_topics(config)
    bundle = load_device_bundle(DEMO_BUNDLE)
    samples, _, _ = read_recording(DEMO_RECORDING)
    hop_s = bundle.hop_samples / bundle.sfreq
    window_s = (bundle.window_samples - 1) / bundle.sfreq
    n_windows = int(seconds / hop_s)
    loops = -(-n_windows // 116)
    samples = np.tile(samples, (1, loops + 1))
    devices = []
    for d in range(n_devices):
        dev = f"lat-{d:03d}"
        msgs = [m for m, _ in encode_recording(bundle, samples, dev, seed=d)][:n_windows]
        devices.append(msgs)

    log = Path(tempfile.mkstemp(suffix=".log")[1])
    cmd = [
        sys.executable, "-m", "dropstream", "serve", "--bundle", str(DEMO_BUNDLE),
        "--bootstrap", bootstrap, "--activations-topic", config.activations_topic,
        "--alerts-topic", config.alerts_topic, "--dead-letter-topic", config.dead_letter_topic,
        "--group-id", config.group_id, "--max-wait-ms", str(max_wait_ms), "--log-interval-s", "5",
        *[f"--{k.replace('_', '-')}={v}" for k, v in DEMO_ALERTS.items()], *serve_args,
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    received: list[tuple[float, float]] = []  # (detection latency, delivered latency), s
    stop = threading.Event()
    consumer = make_topic_reader(config, config.alerts_topic, fetch_max_wait_ms=5)

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
    producer = make_producer(config, linger_ms=0)
    try:
        # wait for the service to join: it logs its assignment
        deadline = time.monotonic() + 60
        while "assigned partitions" not in log.read_text():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"serve did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        time.sleep(1.0)
        start = time.monotonic() + 0.2
        for i in range(n_windows):
            for d, msgs in enumerate(devices):
                due = start + i * hop_s + d * hop_s / n_devices
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                m = msgs[i]
                now = pylsl.local_clock()
                m.lsl_time = now - window_s
                producer.send(config.activations_topic, key=m.device_id.encode(),
                              value=encode_activation(m))  # fmt: skip
        producer.flush()
        time.sleep(3.0)
    finally:
        stop.set()
        follower.join(5)
        producer.close()
        consumer.close()
        proc.terminate()
        proc.wait(20)
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

    return {
        "benchmark": "e2e_latency",
        "devices": n_devices,
        "seconds": seconds,
        "windows": n_windows * n_devices,
        "windows_per_s": round(n_devices / hop_s, 1),
        "max_wait_ms": max_wait_ms,
        "serve_args": serve_args,
        "alert_updates": len(received),
        "detection_latency": pct(det),
        "delivered_to_consumer": pct(rec),
        "serve_log_tail": log.read_text().strip().splitlines()[-2:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--bootstrap", help="use this broker instead of an embedded one")
    parser.add_argument("--json", help="append results as JSON lines to this file")
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
