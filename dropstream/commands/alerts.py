"""``dropstream alerts``: follow the alert topic as a readable table or JSON lines.

Every alert's signature is checked against the service's public key (``--alert-public-key``, or
``$XDG_CONFIG_HOME/dropstream/alert-signing.pub``): the table's last column says ``verified`` or
``UNVERIFIED`` (forged, altered, or signed by another key), ``--json`` adds ``"verified"``, and
``--verified-only`` leaves unverified alerts out (counting them on stderr).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dropstream.broker.alert_message import AlertMessage
    from dropstream.broker.auth import AlertVerifier

HELP = "follow the alert topic (a table, or --json lines; --device filters)"

_COLUMNS = "{:<19} {:<6} {:<24} {:<12} {:<12} {:>17} {:>9} {:>9} {:>8}  {:<40} {:<10}"


def table_header() -> str:
    """Column titles of :func:`format_alert` (times in UTC)."""
    return _COLUMNS.format(
        "produced (UTC)",
        "status",
        "alert id",
        "onset (UTC)",
        "offset (UTC)",
        "in recording (s)",
        "score",
        "threshold",
        "lat. ms",
        "device / stream",
        "signature",
    )


def _clock(unix: float | None, lsl: float | None) -> str:
    """``HH:MM:SS.mmm`` UTC, or the LSL time for alerts from producers without wall times."""
    if unix is None:
        return "" if lsl is None else f"LSL {lsl:.2f}"
    return _dt.datetime.fromtimestamp(unix, _dt.UTC).strftime("%H:%M:%S.%f")[:-3]


def format_alert(msg: AlertMessage, verified: bool | None = None) -> str:
    """One table row for an alert update: UTC times, the span in the recording when the stream
    is a replay, the full device and stream ids (never cut; the column widens) and, last, the
    signature check (``verified``; ``None``: not checked)."""
    produced = _dt.datetime.fromtimestamp(msg.produced_at, _dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    span = ""
    if msg.recording_onset is not None:
        end = "" if msg.recording_offset is None else f"{msg.recording_offset:.2f}"
        span = f"{msg.recording_onset:.2f}-{end}"
    return _COLUMNS.format(
        produced,
        msg.status,
        msg.alert_id,
        _clock(msg.onset_utc, msg.onset_time),
        _clock(msg.offset_utc, msg.offset_time),
        span,
        f"{msg.score:.4g}",
        f"{msg.threshold:.4g}",
        f"{1000 * msg.detection_latency_s:.0f}",
        f"{msg.device_id} / {msg.stream_id}",
        "-" if verified is None else "verified" if verified else "UNVERIFIED",
    )


def configure(parser: argparse.ArgumentParser) -> None:
    """Register the arguments of ``dropstream alerts``."""
    from dropstream.broker.config import add_client_arguments

    parser.add_argument("--json", action="store_true", help="print one JSON object per line")
    parser.add_argument("--device", action="append", help="only this device (repeatable)")
    parser.add_argument(
        "--from-beginning", action="store_true", help="print past alerts too (default: new only)"
    )
    parser.add_argument(
        "--max-seconds", type=float, help="stop after this long (default: follow until Ctrl-C)"
    )
    parser.add_argument(
        "--alert-public-key",
        dest="alert_public_key",
        help="the service's alert public key(s), comma-separated PEM files (or "
        "DROPSTREAM_ALERT_PUBLIC_KEY; default $XDG_CONFIG_HOME/dropstream/alert-signing.pub)",
    )
    parser.add_argument(
        "--verified-only",
        action="store_true",
        help="leave out alerts whose signature does not verify (counted on stderr)",
    )
    parser.add_argument(
        "--all-updates",
        action="store_true",
        help="also print repeated updates (same alert id and status, e.g. after a service crash)",
    )
    add_client_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Follow the alert topic until Ctrl-C (or ``--max-seconds``)."""
    import time

    from dropstream.broker.alert_message import decode_alert
    from dropstream.broker.clients import make_topic_reader
    from dropstream.broker.config import ClientConfig
    from dropstream.broker.wire import WireFormatError

    config = ClientConfig.from_args(args)
    verifier = _verifier(config.alert_public_key)
    consumer = make_topic_reader(config, config.alerts_topic, args.from_beginning)
    devices = set(args.device or [])
    seen: set[tuple[str, str]] = set()
    if not args.json:
        print(table_header(), flush=True)
    deadline = None if args.max_seconds is None else time.monotonic() + args.max_seconds
    try:
        while deadline is None or time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                for rec in records:
                    try:
                        msg = decode_alert(rec.value)
                    except WireFormatError as exc:
                        print(
                            f"skipping a malformed alert at offset {rec.offset}: {exc}",
                            file=sys.stderr,
                        )
                        continue
                    if devices and msg.device_id not in devices:
                        continue
                    verified = verifier is not None and verifier.verify(
                        rec.key, rec.value, rec.headers
                    )
                    if args.verified_only and not verified:
                        print(
                            f"UNVERIFIED alert {msg.alert_id} ({msg.status}, device "
                            f"{msg.device_id}) at offset {rec.offset} left out",
                            file=sys.stderr,
                        )
                        continue
                    if not args.all_updates:
                        if (msg.alert_id, msg.status) in seen:
                            continue
                        seen.add((msg.alert_id, msg.status))
                    if args.json:
                        body = json.loads(msg.to_json()) | {"verified": verified}
                        print(json.dumps(body), flush=True)
                    else:
                        print(format_alert(msg, verified), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0


def _verifier(paths: str | None) -> AlertVerifier | None:
    """The verifier of the configured public key(s); ``None`` (with a warning) if none."""
    from dropstream.broker.auth import AlertVerifier, default_alert_key_path

    if paths:
        return AlertVerifier.load(p.strip() for p in paths.split(",") if p.strip())
    default = default_alert_key_path().with_suffix(".pub")
    if default.exists():
        return AlertVerifier.load([default])
    print(
        f"no alert public key ({default} missing; pass --alert-public-key): every alert "
        "shows as UNVERIFIED",
        file=sys.stderr,
    )
    return None
