"""``dropstream broker``: run an embedded Kafka-protocol broker in the foreground."""

from __future__ import annotations

import argparse
import time

HELP = "run an embedded Kafka-protocol broker (tansu, in memory) and print its address"


def configure(parser: argparse.ArgumentParser) -> None:
    """Register the arguments of ``dropstream broker``."""
    parser.add_argument("--port", type=int, default=None, help="TCP port (default: a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--partitions",
        type=int,
        default=6,
        help="partitions of the dropstream topics created at start",
    )
    parser.add_argument(
        "--no-topics", action="store_true", help="do not create the dropstream topics at start"
    )
    parser.add_argument("--log", help="write the broker log here (default: a temporary file)")


def run(args: argparse.Namespace) -> int:
    """Start the broker, create the topics, print the bootstrap address, wait for Ctrl-C."""
    from dropstream.broker.config import ClientConfig
    from dropstream.broker.embedded import EmbeddedBroker
    from dropstream.broker.topics import ensure_topics

    with EmbeddedBroker(port=args.port, host=args.host, log_path=args.log) as broker:
        if not args.no_topics:
            ensure_topics(ClientConfig(bootstrap=broker.bootstrap, partitions=args.partitions))
        print(broker.bootstrap, flush=True)
        print(
            f"broker ready (tansu, memory storage; log: {broker.log_path}); Ctrl-C stops it",
            flush=True,
        )
        try:
            while broker.running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        if not broker.running:
            print(f"broker exited unexpectedly; see {broker.log_path}", flush=True)
            return 1
    return 0
