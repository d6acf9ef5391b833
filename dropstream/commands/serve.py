"""``dropstream serve``: score activation windows with a bundle's head and publish alerts."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from dataclasses import fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dropstream.inference.service import InferenceService

HELP = "score activation windows (consumer group, micro-batching, CUDA if present) and alert"


def configure(parser: argparse.ArgumentParser) -> None:
    """Register the arguments of ``dropstream serve``."""
    from dropstream.broker.config import add_client_arguments, add_service_auth_arguments

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
    # Options that set a ServiceSettings field default to SUPPRESS: run() passes on only what
    # was given, so ServiceSettings' defaults (alert timing: dropstream.inference.alerting.
    # AlertTiming) are the command's.
    unset = argparse.SUPPRESS
    g = parser.add_argument_group("batching and device (defaults: ServiceSettings')")
    g.add_argument("--max-batch", type=int, default=unset, help="windows per forward pass")
    g.add_argument(
        "--max-wait-ms", type=float, default=unset, help="latency cap of a batch, milliseconds"
    )
    g.add_argument(
        "--commit-interval-ms",
        type=float,
        default=unset,
        help="wait for alert acknowledgements and commit offsets this often (default 100; "
        "0: every batch)",
    )
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default=unset)
    g.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: leaves the cores to the Kafka client; 0: torch's own)",
    )
    add_alert_arguments(parser)
    r = parser.add_argument_group("hostile input and bounded state (defaults: ServiceSettings')")
    r.add_argument(
        "--freshness-s",
        type=float,
        default=unset,
        help="seconds: an older window is refused (a possible replay) unless it is above its "
        "stream's high-water mark, e.g. spooled through a long outage (default 900)",
    )
    r.add_argument(
        "--device-rate",
        type=float,
        default=unset,
        help="windows per second one device may send on average (the rest: dead letters)",
    )
    r.add_argument(
        "--device-burst", type=float, default=unset, help="windows a device may send at once"
    )
    r.add_argument("--max-streams", type=int, default=unset, help="most streams held in memory")
    r.add_argument(
        "--state-dir",
        default=unset,
        help="save per-stream high-water marks here, so windows replayed after a restart of "
        "serve are refused (default: not saved)",
    )
    r.add_argument(
        "--idle-forget-s",
        type=float,
        default=unset,
        help="forget streams with nothing in progress after this long silent",
    )
    o = parser.add_argument_group("observability")
    o.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    o.add_argument(
        "--metrics-addr",
        default="127.0.0.1",
        help="address the metrics endpoint binds (default 127.0.0.1: this host only; "
        "0.0.0.0 for every interface)",
    )
    o.add_argument("--log-interval-s", type=float, default=unset, help="seconds between log lines")
    o.add_argument("--max-seconds", type=float, help="stop after this long (default: run forever)")
    add_client_arguments(parser)
    add_service_auth_arguments(parser)


def add_alert_arguments(parser: argparse.ArgumentParser) -> None:
    """The alert policy options (threshold levels, event timing, adaptation) of ``serve``, also
    offered by ``evaluate``; each defaults to SUPPRESS so ServiceSettings' defaults apply."""
    unset = argparse.SUPPRESS
    a = parser.add_argument_group("alerts (defaults: ServiceSettings')")
    a.add_argument(
        "--threshold-level",
        type=float,
        default=unset,
        help="calibration quantile of normal scores for the alert threshold (default: bundle's)",
    )
    a.add_argument(
        "--hysteresis-level",
        type=float,
        default=unset,
        help="calibration quantile for the lower threshold an event must stay above",
    )
    a.add_argument("--class-threshold", type=float, default=unset, help="classifier: 1-P(normal)")
    a.add_argument("--min-duration-s", type=float, default=unset, help="shortest reported event")
    a.add_argument("--merge-gap-s", type=float, default=unset, help="quiet time joining 2 bursts")
    a.add_argument("--refractory-s", type=float, default=unset, help="quiet time after an event")
    a.add_argument(
        "--stale-after-s",
        type=float,
        default=unset,
        help="close the open event of a stream silent for this long (wall clock)",
    )
    a.add_argument(
        "--adapt-windows",
        type=int,
        default=unset,
        help="adapt each device's threshold from its first N windows (0: off)",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``dropstream serve`` until Ctrl-C / SIGTERM.

    A stop asked for while torch and the model are still loading ends the process cleanly
    (exit 0): nothing was consumed yet, so nothing is lost.
    """
    try:
        service = _start(args)
    except KeyboardInterrupt:
        print("stopped before serving: nothing was consumed", file=sys.stderr)
        return 0
    signal.signal(signal.SIGTERM, lambda *_: service.stop())
    try:
        service.run(max_seconds=args.max_seconds)
    except KeyboardInterrupt:
        service.stop()
    return 0


def _start(args: argparse.Namespace) -> InferenceService:
    """Import the server side (torch), load the bundle and build the service."""
    from dropstream.broker.auth import AlertSigner, DeviceKeys
    from dropstream.broker.config import ClientConfig
    from dropstream.inference.service import InferenceService, ServiceSettings

    level = min(logging.INFO, logging.getLogger().level or 20)
    logging.getLogger("dropstream.inference").setLevel(level)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO)
    config = ClientConfig.from_args(args)
    given = {f.name: getattr(args, f.name) for f in fields(ServiceSettings) if f.name in args}
    given["torch_threads"] = args.torch_threads or None
    # every window is verified against the device key store before anything reads it, and
    # every alert is signed (docs/security.md); both fail here, before serving, if unusable
    keys = DeviceKeys.load(config.device_keys, bool(config.allow_unauthenticated))
    signer = AlertSigner.load_or_create(config.alert_key)
    service = InferenceService(
        config, args.bundle, ServiceSettings(**given), authenticator=keys, signer=signer
    )
    print(service.model.bundle.privacy_line(), file=sys.stderr, flush=True)
    if args.metrics_port:
        service.metrics.serve_http(args.metrics_port, addr=args.metrics_addr)
    return service
