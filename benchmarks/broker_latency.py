"""Benchmark: the broker path alone, producer -> embedded broker -> reader, over time.

One process sends ``--rate`` records/s of ``--size`` bytes (kafka-python producer, keys of 1,000
devices) to a fresh topic of ``--partitions`` partitions on an embedded tansu broker, while a
reader thread (no group, ``--fetch-max-wait-ms``) reads them. Reported per ``--step`` seconds of
the run: p50 and p99 of record timestamp (the producer's ``send()``) -> read, in ms. No service:
this is the floor under ``e2e_latency.py``'s ``fetched`` stage, and shows whether it grows with
the amount the broker holds.

Usage::

    python benchmarks/broker_latency.py --seconds 16
    python benchmarks/broker_latency.py --seconds 16 --linger-ms 5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e_latency import bench_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=4000, help="records per second")
    parser.add_argument("--seconds", type=int, default=16)
    parser.add_argument("--step", type=int, default=2, help="seconds per reported interval")
    parser.add_argument("--size", type=int, default=250, help="bytes per record")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--linger-ms", type=float, default=0.0)
    parser.add_argument("--fetch-max-wait-ms", type=int, default=20)
    args = parser.parse_args()
    from dropstream.broker.clients import make_producer, make_topic_reader
    from dropstream.broker.embedded import EmbeddedBroker
    from dropstream.broker.topics import ensure_topics

    broker = EmbeddedBroker().start()
    try:
        config = bench_config(broker.bootstrap, "brokerlat", args.partitions)
        ensure_topics(config)
        producer = make_producer(config, linger_ms=args.linger_ms)
        reader = make_topic_reader(
            config, config.activations_topic, fetch_max_wait_ms=args.fetch_max_wait_ms
        )
        got: list[tuple[float, float]] = []  # (record timestamp, read - timestamp), s
        stop = threading.Event()

        def follow() -> None:
            while not stop.is_set():
                for recs in reader.poll(timeout_ms=50).values():
                    now = time.time()
                    got.extend((r.timestamp / 1000, now - r.timestamp / 1000) for r in recs)

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        time.sleep(2.0)  # the reader is assigned and polling
        value, start = b"x" * args.size, time.monotonic()
        for j in range(args.rate * args.seconds):
            delay = start + j / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            producer.send(config.activations_topic, key=f"dev-{j % 1000:03d}".encode(), value=value)
        producer.flush()
        time.sleep(1.0)
        stop.set()
        thread.join(5)
        producer.close()
        reader.close()
    finally:
        broker.stop()
    a = np.array(got)
    t = a[:, 0] - a[:, 0].min()
    rows = []
    for k in range(0, args.seconds, args.step):
        x = a[(t >= k) & (t < k + args.step), 1] * 1000
        if x.size:
            rows.append({"from_s": k, "records": int(x.size),
                         "p50_ms": round(float(np.percentile(x, 50)), 1),
                         "p99_ms": round(float(np.percentile(x, 99)), 1)})  # fmt: skip
    result = {"benchmark": "broker_latency", **vars(args), "intervals": rows,
              "load_avg_1min": round(os.getloadavg()[0], 2)}  # fmt: skip
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
