"""Benchmark: resident memory of the embedded broker (tansu, memory storage) as messages arrive.

Produces ``--messages`` random values of ``--size`` bytes (lz4 batches, as the clients send
them) to a topic created with ``retention.ms=--retention-ms``; prints the broker's RSS before,
after, and ``--wait`` seconds later (does retention free anything?), and RSS per message.

Usage::

    nice -n 19 python benchmarks/embedded_broker_memory.py --messages 200000 --size 400
"""

from __future__ import annotations

import argparse
import os
import time

from kafka.admin import NewTopic

from dropstream.broker.clients import make_producer
from dropstream.broker.config import ClientConfig
from dropstream.broker.embedded import EmbeddedBroker
from dropstream.broker.topics import admin_client


def main() -> None:
    """Run the measurement and print one line per stage."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=400, help="value bytes")
    ap.add_argument("--retention-ms", type=int, default=10_000)
    ap.add_argument("--wait", type=float, default=20.0, help="seconds to wait after producing")
    args = ap.parse_args()
    with EmbeddedBroker() as broker:
        config = ClientConfig(bootstrap=broker.bootstrap)
        admin = admin_client(config)
        topic = "bench.memory"
        admin.create_topics(
            [NewTopic(topic, 1, 1, topic_configs={"retention.ms": str(args.retention_ms)})]
        )
        admin.close()
        time.sleep(1.0)
        before = broker.rss_mb()
        producer = make_producer(config)
        pool = os.urandom(args.size * args.messages)  # no two values alike: nothing compresses
        t0 = time.monotonic()
        for i in range(args.messages):
            value = pool[i * args.size : (i + 1) * args.size]
            producer.send(topic, key=b"k%d" % (i % 100), value=value)
        producer.flush(120)
        producer.close()
        took = time.monotonic() - t0
        after = broker.rss_mb()
        time.sleep(args.wait)
        later = broker.rss_mb()
        assert before is not None and after is not None and later is not None
        per_msg = (after - before) * 1024 * 1024 / args.messages
        print(
            f"{args.messages} messages x {args.size} B in {took:.1f} s, "
            f"retention.ms={args.retention_ms}"
        )
        print(
            f"RSS before {before:.0f} MiB, after {after:.0f} MiB, "
            f"{args.wait:g} s later {later:.0f} MiB"
        )
        print(
            f"growth {after - before:.0f} MiB = {per_msg:.0f} B per message; "
            f"a 1024 MiB limit holds ~{(1024 - before) * 1024 * 1024 / per_msg:,.0f} such "
            f"messages"
        )


if __name__ == "__main__":
    main()
