"""``dropstream connect``: run the on-device encoder agent next to the sensor.

Reads one LSL stream, cuts it into the model's windows, runs the first layer with a fresh keep
mask per window and sends only the kept activations to Kafka. Raw samples never leave the
device. Windows go through an on-disk spool first, so a broker outage or a restart of this
command loses nothing; a status line (windows sent, spool depth, send latency, lost samples)
is written to stderr. Ctrl-C (or SIGTERM) stops cleanly: every window cut so far is sent or
left in the spool for the next start.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from dropstream.broker.config import add_client_arguments
from dropstream.commands import add_units_argument

HELP = "run the on-device encoder: LSL stream -> first layer + dropping -> Kafka"

DEFAULT_SPOOL_ROOT = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))


def configure(parser: argparse.ArgumentParser) -> None:
    """Register the arguments of ``dropstream connect``."""
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle (.dsb)")
    parser.add_argument(
        "--device-id", required=True, help="this device's id (Kafka key; 1..255 bytes)"
    )
    parser.add_argument(
        "--device-key",
        dest="device_key",
        help="this device's key file from 'dropstream keys provision' (or DROPSTREAM_DEVICE_KEY; "
        "default: $XDG_CONFIG_HOME/dropstream/devices/<device-id>.key)",
    )
    sel = parser.add_argument_group("stream selection (at least one)")
    sel.add_argument("--stream-type", help="LSL stream type, e.g. EEG")
    sel.add_argument("--stream-name", help="LSL stream name")
    sel.add_argument("--source-id", help="LSL source id (unique per device; preferred)")
    sel.add_argument(
        "--resolve-timeout", type=float, default=10.0, help="seconds to wait for the stream"
    )
    add_units_argument(sel, "the stream")
    sp = parser.add_argument_group("spool (windows waiting for the broker)")
    sp.add_argument(
        "--spool-dir",
        type=Path,
        default=None,
        help="spool folder (default: $XDG_STATE_HOME/dropstream/spool/<device-id>)",
    )
    sp.add_argument(
        "--spool-max-mb", type=float, default=256.0, help="spool size limit in MiB (default 256)"
    )
    sp.add_argument(
        "--full-policy",
        choices=("drop-oldest", "drop-newest", "block"),
        default="drop-oldest",
        help="when the spool is full: drop the oldest windows (default), refuse new ones, or "
        "block the stream (each with a warning; dropped windows show as sequence gaps)",
    )
    sp.add_argument(
        "--flush-timeout",
        type=float,
        default=10.0,
        help="seconds to keep sending at shutdown; the rest stays spooled (default 10)",
    )
    parser.add_argument(
        "--status-interval", type=float, default=1.0, help="seconds between status lines"
    )
    add_client_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``dropstream connect`` until Ctrl-C or SIGTERM."""
    import logging

    from dropstream.acquisition import LiveStream
    from dropstream.broker.auth import DeviceKey, default_device_key_path
    from dropstream.broker.config import ClientConfig
    from dropstream.errors import DropstreamError
    from dropstream.local_encoder.agent import AgentError, EncoderAgent
    from dropstream.local_encoder.bundle import load_device_bundle
    from dropstream.local_encoder.spool import Spool

    if not (args.stream_type or args.stream_name or args.source_id):
        raise AgentError("choose the stream with --source-id, --stream-name or --stream-type")
    if args.verbose < 2:  # kafka-python logs every refused connection while the broker is away
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
    config = ClientConfig.from_args(args)
    key = DeviceKey.load(config.device_key or default_device_key_path(args.device_id))
    if key.device_id != args.device_id:
        raise AgentError(
            f"the key file is for device {key.device_id!r}, not {args.device_id!r}; pass "
            "--device-key with this device's key"
        )
    bundle = load_device_bundle(args.bundle)  # refuses invertible settings (privacy guard)
    spool_dir = args.spool_dir or DEFAULT_SPOOL_ROOT / "dropstream" / "spool" / args.device_id
    spool = Spool(spool_dir, int(args.spool_max_mb * 1024 * 1024), args.full_policy)
    tty = sys.stderr.isatty()

    def status(line: str, final: bool = False) -> None:
        if tty:
            sys.stderr.write("\r\033[K" + line + ("\n" if final else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    status(bundle.privacy_line(), True)
    try:
        if spool.depth:
            status(f"{spool.depth} window(s) from an earlier run waiting in {spool_dir}", True)
        inlet = LiveStream.connect(
            name=args.stream_name,
            type=args.stream_type,
            source_id=args.source_id,
            timeout=args.resolve_timeout,
            units=args.units,
        )
        try:
            agent = EncoderAgent(bundle, inlet, config, spool, key)
            status(
                f"connected {inlet.info.describe()} -> {config.bootstrap} topic "
                f"{config.activations_topic}; model {bundle.model_id} v{bundle.model_version}, "
                f"K={bundle.keep} of m={bundle.layer.width}; next sequence "
                f"{agent.stats.next_sequence}",
                True,
            )
            agent.start()
            try:
                while agent.running and agent.error is None:
                    time.sleep(args.status_interval)
                    status(agent.stats.line())
            except KeyboardInterrupt:
                status("stopping: sending what is left (Ctrl-C again to leave it spooled)", True)
            finally:
                stats = agent.stop(args.flush_timeout)
                status(stats.line(), True)
                status(
                    f"stopped: {stats.spool_depth} window(s) left in the spool {spool_dir} for "
                    f"the next start; next sequence {stats.next_sequence}",
                    True,
                )
            if agent.error is not None:
                if isinstance(agent.error, DropstreamError):
                    raise agent.error
                raise AgentError(f"the agent failed: {agent.error!r}") from agent.error
        finally:
            inlet.close()
    finally:
        spool.close()
    return 0
