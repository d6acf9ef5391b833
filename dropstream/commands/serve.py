"""``dropstream serve``: score activation windows with a bundle's head and publish alerts."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

HELP = "score activation windows (consumer group, micro-batching, CUDA if present) and alert"


def configure(parser: argparse.ArgumentParser) -> None:
    """Register the arguments of ``dropstream serve``."""
    from dropstream.broker.config import add_client_arguments

    parser.add_argument("--bundle", required=True, help="model bundle (.dsb) whose head scores")
    parser.add_argument(
        "--group-id", dest="group_id", help="consumer group (default: dropstream-inference)"
    )
    parser.add_argument(
        "--session-timeout-ms",
        dest="session_timeout_ms",
        type=int,
        help="group session timeout; a dead member's partitions move after about this long",
    )
    g = parser.add_argument_group("batching and device")
    g.add_argument("--max-batch", type=int, default=1024, help="windows per forward pass")
    g.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="latency cap of a batch, milliseconds"
    )
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    g.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: leaves the cores to the Kafka client; 0: torch's own)",
    )
    a = parser.add_argument_group("alerts")
    a.add_argument(
        "--threshold-level",
        type=float,
        help="calibration quantile of normal scores for the alert threshold (default: bundle's)",
    )
    a.add_argument(
        "--hysteresis-level",
        type=float,
        default=0.95,
        help="calibration quantile for the lower threshold an event must stay above",
    )
    a.add_argument("--class-threshold", type=float, default=0.5, help="classifier: 1-P(normal)")
    a.add_argument("--min-duration-s", type=float, default=0.5, help="shortest reported event")
    a.add_argument("--merge-gap-s", type=float, default=1.0, help="quiet time joining 2 bursts")
    a.add_argument("--refractory-s", type=float, default=2.0, help="quiet time after an event")
    a.add_argument(
        "--stale-after-s",
        type=float,
        default=30.0,
        help="close the open event of a stream silent for this long (wall clock)",
    )
    a.add_argument(
        "--adapt-windows",
        type=int,
        default=0,
        help="adapt each device's threshold from its first N windows (0: off)",
    )
    o = parser.add_argument_group("observability")
    o.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    o.add_argument("--log-interval-s", type=float, default=10.0, help="seconds between log lines")
    o.add_argument("--max-seconds", type=float, help="stop after this long (default: run forever)")
    add_client_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``dropstream serve`` until Ctrl-C / SIGTERM."""
    from dropstream.broker.config import ClientConfig
    from dropstream.inference.service import InferenceService, ServiceSettings

    level = min(logging.INFO, logging.getLogger().level or 20)
    logging.getLogger("dropstream.inference").setLevel(level)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO)
    config = ClientConfig.from_args(args)
    settings = ServiceSettings(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        device=args.device,
        threshold_level=args.threshold_level,
        hysteresis_level=args.hysteresis_level,
        class_threshold=args.class_threshold,
        min_duration_s=args.min_duration_s,
        merge_gap_s=args.merge_gap_s,
        refractory_s=args.refractory_s,
        adapt_windows=args.adapt_windows,
        stale_after_s=args.stale_after_s,
        log_interval_s=args.log_interval_s,
        torch_threads=args.torch_threads or None,
    )
    service = InferenceService(config, args.bundle, settings)
    print(service.model.device.privacy_line(), file=sys.stderr, flush=True)
    if args.metrics_port:
        service.metrics.serve_http(args.metrics_port)
    signal.signal(signal.SIGTERM, lambda *_: service.stop())
    try:
        service.run(max_seconds=args.max_seconds)
    except KeyboardInterrupt:
        service.stop()
    return 0
