"""Benchmark: one, two and four ``dropstream serve`` processes in one consumer group.

Scale-out is by partitions: each serve process of a group owns some partitions of the
activations topic (``--partitions``, default 12: enough for four processes). Per process count
``P`` this measures, on the embedded broker:

1. **backlog throughput**: ``--windows`` signed windows from ``--devices`` devices published
   first, then ``P`` serve processes (separate OS processes, key store as in production)
   started together; windows/s from the first window scored to the last (summed over the
   processes' ``dropstream_serve_windows_total`` metrics), and the serve processes' CPU
   seconds per window;
2. **live latency**: ``benchmarks/e2e_latency.py``'s run with ``--latency-devices`` devices in
   real time (4 windows/s each) and ``P`` processes: p50/p99 of the alert latency.

On a machine with fewer cores than processes the total cannot grow: the numbers show the cost
of the split (group coordination, more fetches per window) and come with the load average.
A paper estimate for ``N`` machines follows from the measured CPU per window (``estimate``).

Usage::

    python benchmarks/scale_out.py --processes 1 2 4 --windows 40000 --latency-devices 500
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from e2e_latency import _cpu_s, bench_config, run_once
from serve_throughput import _messages

WINDOWS_PER_DEVICE_S = 4.0  # one window per 0.25 s hop (the demo bundle)


def _scored(ports: list[int]) -> int:
    """Windows scored so far by the serve processes behind these metrics ports."""
    total = 0
    for port in ports:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
        except OSError:
            continue
        m = re.search(rb"^dropstream_serve_windows_total ([0-9.e+]+)$", text, re.M)
        total += int(float(m.group(1))) if m else 0
    return total


def backlog(args: argparse.Namespace, bootstrap: str, processes: int) -> dict:
    """Backlog throughput of ``processes`` serve processes (see the module docstring)."""
    from dropstream.broker.auth import DeviceKeys
    from dropstream.broker.clients import make_producer
    from dropstream.broker.embedded import free_port
    from dropstream.broker.topics import delete_topics, ensure_topics, topic_names
    from dropstream.inference.demo import DEMO_ALERTS, DEMO_BUNDLE

    config = bench_config(bootstrap, "scale", args.partitions)
    tmp = Path(tempfile.mkdtemp())
    store = tmp / "device-keys.json"
    msgs = _messages(argparse.Namespace(windows=args.windows, devices=args.devices, width=None),
                     DEMO_BUNDLE)  # fmt: skip
    keys = {k: DeviceKeys.provision(k.decode(), store) for k in dict(msgs)}
    ensure_topics(config)
    producer = make_producer(config, linger_ms=20)
    for key, value in msgs:
        producer.send(config.activations_topic, key=key, value=keys[key].sign(value))
    producer.flush()
    producer.close()
    ports = [free_port() for _ in range(processes)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "dropstream", "serve", "--bundle", str(DEMO_BUNDLE),
             "--device-keys", str(store), "--alert-key", str(tmp / "alert.key"),
             "--bootstrap", bootstrap, "--activations-topic", config.activations_topic,
             "--alerts-topic", config.alerts_topic,
             "--dead-letter-topic", config.dead_letter_topic, "--group-id", config.group_id,
             "--metrics-port", str(port), "--log-interval-s", "5",
             *[f"--{k.replace('_', '-')}={v}" for k, v in DEMO_ALERTS.items()]],
            stdout=(tmp / f"serve-{i}.log").open("w"), stderr=subprocess.STDOUT,
        )
        for i, port in enumerate(ports)
    ]  # fmt: skip
    n = len(msgs)
    try:
        deadline = time.monotonic() + 120 + n / 1000
        while (first := _scored(ports)) == 0:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"serve did not start: {(tmp / 'serve-0.log').read_text()}")
            time.sleep(0.02)
        t0, cpu0 = time.monotonic(), sum(_cpu_s(p.pid) for p in procs)
        while (done := _scored(ports)) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {done} of {n} windows scored")
            time.sleep(0.05)
        dt = time.monotonic() - t0
        cpu = sum(_cpu_s(p.pid) for p in procs) - cpu0
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(20)
        delete_topics(config, topic_names(config))
    return {
        "windows": n,
        "windows_per_s": round((n - first) / dt),
        "serve_cpu_us_per_window": round(1e6 * cpu / max(n - first, 1), 1),
        "serve_cpu_cores": round(cpu / dt, 2),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }


def estimate(cpu_us_per_window: float, cores: int = 16, utilisation: float = 0.6) -> dict:
    """Paper estimate: devices one machine of ``cores`` serves at ``utilisation`` of its CPU,
    from the measured serve CPU per window (the broker and the network are not included)."""
    per_core = 1e6 / cpu_us_per_window * utilisation
    return {
        "cpu_us_per_window": cpu_us_per_window,
        "windows_per_s_per_core": round(per_core),
        "devices_per_machine": round(per_core * cores / WINDOWS_PER_DEVICE_S),
        "machine_cores": cores,
        "utilisation": utilisation,
        "note": "N machines: N x devices_per_machine while partitions >= N x processes "
        "(one serve process per core); the Kafka cluster scales separately",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--windows", type=int, default=40_000)
    parser.add_argument("--devices", type=int, default=100, help="of the backlog")
    parser.add_argument("--latency-devices", type=int, default=500, help="0: skip the live run")
    parser.add_argument("--seconds", type=float, default=20.0, help="of the live run")
    parser.add_argument("--json", help="append results as JSON lines to this file")
    args = parser.parse_args()
    from dropstream.broker.embedded import EmbeddedBroker

    broker = EmbeddedBroker().start()
    results = []
    try:
        for p in args.processes:
            result: dict = {"benchmark": "scale_out", "processes": p, "partitions": args.partitions}
            result["backlog"] = backlog(args, broker.bootstrap, p)
            if args.latency_devices:
                live = run_once(args.latency_devices, args.seconds, broker.bootstrap, 5.0, [],
                                broker_pid=broker.pid, processes=p,
                                partitions=args.partitions)  # fmt: skip
                result["live"] = {
                    k: live[k]
                    for k in ("devices", "windows_per_s", "sent_windows_per_s", "alert_updates",
                              "detection_latency", "sent_late", "cpu_cores")
                } | {"load_avg_1min": round(os.getloadavg()[0], 2)}  # fmt: skip
            result |= {"cpus": os.cpu_count(), "python": platform.python_version()}
            results.append(result)
            print(json.dumps(result, indent=1), flush=True)
            if args.json:
                with open(args.json, "a") as fh:
                    fh.write(json.dumps(result) + "\n")
        one = next((r for r in results if r["processes"] == 1), results[0])
        paper = {"benchmark": "scale_out_estimate"} | estimate(
            one["backlog"]["serve_cpu_us_per_window"]
        )
        print(json.dumps(paper, indent=1))
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(json.dumps(paper) + "\n")
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
