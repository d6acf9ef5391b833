"""``dropstream broker``: run an embedded Kafka-protocol broker in the foreground.

For trying dropstream on one machine, not for production: tansu's memory storage keeps every
message in RAM (retention is ignored) and loses everything when it stops. The broker is stopped
when its memory passes ``--max-memory-mb`` (a warning comes at 80 %); run a Kafka cluster and
point ``--bootstrap`` at it for anything that must run for long or survive a restart.
"""

from __future__ import annotations

import argparse
import sys
import time

HELP = "run an embedded Kafka-protocol broker (tansu, in memory; for trials, not production)"

#: Exit code when the broker was stopped at its memory limit.
EXIT_MEMORY_LIMIT = 3


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
    parser.add_argument(
        "--max-memory-mb",
        type=float,
        default=1024.0,
        help="stop the broker when it holds more than this (MiB, default 1024; memory storage "
        "never frees messages: ~0.4 KiB per 400-byte message)",
    )


def run(args: argparse.Namespace) -> int:
    """Start the broker, create the topics, print the bootstrap address, wait for Ctrl-C."""
    from dropstream.broker.config import ClientConfig
    from dropstream.broker.embedded import EmbeddedBroker
    from dropstream.broker.topics import ensure_topics

    limit = args.max_memory_mb
    with EmbeddedBroker(
        port=args.port, host=args.host, log_path=args.log, max_memory_mb=limit
    ) as broker:
        if not args.no_topics:
            ensure_topics(ClientConfig(bootstrap=broker.bootstrap, partitions=args.partitions))
        print(broker.bootstrap, flush=True)
        print(
            f"broker ready (tansu, memory storage; log: {broker.log_path}); Ctrl-C stops it.\n"
            f"For trials only: every message stays in memory (retention is ignored), nothing "
            f"survives a stop, and it stops itself above {limit:g} MiB. For production run a "
            "Kafka cluster and pass --bootstrap to connect/serve/alerts.",
            flush=True,
        )
        warned = False
        try:
            while broker.running:
                time.sleep(0.5)
                rss = broker.rss_mb()
                if rss is not None and not warned and rss > 0.8 * limit:
                    warned = True
                    print(
                        f"warning: the embedded broker holds {rss:.0f} MiB of its {limit:g} MiB "
                        "limit and never frees messages; it will stop at the limit",
                        file=sys.stderr,
                        flush=True,
                    )
                if broker.memory_exceeded():
                    print(
                        f"dropstream broker: stopping: the embedded broker holds {rss:.0f} MiB, "
                        f"over --max-memory-mb {limit:g} (tansu's memory storage keeps every "
                        "message). Use a Kafka cluster for long runs (--bootstrap).",
                        file=sys.stderr,
                        flush=True,
                    )
                    return EXIT_MEMORY_LIMIT
        except KeyboardInterrupt:
            pass
        if not broker.running:
            print(f"broker exited unexpectedly; see {broker.log_path}", flush=True)
            return 1
    return 0
