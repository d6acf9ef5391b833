"""``dropstream evaluate``: a recording through the device path and the server head, offline.

No broker and no LSL: the recording is windowed, encoded (with dropping) and scored exactly as a
live replay would be, and the alerts, the window scores and the metrics against the recording's
annotations go to an HTML report (signal, score, threshold, alert spans, annotations) and to
stdout as JSON. Tune the threshold level and event timing here before you deploy.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

from dropstream.commands import add_units_argument
from dropstream.commands.serve import add_alert_arguments

HELP = "run recordings through the device path and the server head offline; report alerts+metrics"


def configure(parser: argparse.ArgumentParser) -> None:
    """Register the arguments of ``dropstream evaluate``."""
    parser.add_argument("bundle", type=Path, help="model bundle (.dsb)")
    parser.add_argument("recordings", nargs="+", type=Path, metavar="RECORDING")
    parser.add_argument(
        "-o", "--output", type=Path, default=Path("evaluate.html"), help="HTML report path"
    )
    parser.add_argument(
        "--event-label",
        action="append",
        default=None,
        metavar="LABEL",
        help="annotation description that marks an anomaly event (repeatable; default: all)",
    )
    parser.add_argument("--device-id", default="evaluate", help="device id the alert ids use")
    parser.add_argument(
        "--stream-id",
        default=None,
        help="stream id the alert ids use (default: the replay's, dropstream-replay-<stem>)",
    )
    parser.add_argument("--seed", type=int, default=None, help="keep-mask seed (default: random)")
    parser.add_argument(
        "--start",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="where the device's first window starts in the recording (to match a live run)",
    )
    add_units_argument(parser, "the recordings (as read; MNE reads volts)")
    add_alert_arguments(parser)  # the same alert policy options as serve


def run(args: argparse.Namespace) -> int:
    """Run ``dropstream evaluate``."""
    from dropstream.inference.evaluation import evaluate_recording, write_report
    from dropstream.inference.settings import ServiceSettings

    given = {f.name: getattr(args, f.name) for f in fields(ServiceSettings) if f.name in args}
    settings = ServiceSettings(**given)
    results = [
        evaluate_recording(
            args.bundle,
            path,
            device_id=args.device_id,
            stream_id=args.stream_id if len(args.recordings) == 1 else None,
            units=args.units,
            settings=settings,
            event_labels=args.event_label,
            seed=args.seed,
            start=args.start,
        )
        for path in args.recordings
    ]
    report = write_report(results, args.output)
    for ev in results:
        line = {
            "recording": ev.recording,
            "threshold": ev.threshold,
            **ev.metrics,
            "alerts": [
                {
                    "alert_id": m.alert_id,
                    "kind": m.kind,
                    "label": m.label,
                    "recording_onset": m.recording_onset,
                    "recording_offset": m.recording_offset,
                    "score": m.score,
                }
                for m in ev.alerts
            ],
        }
        print(json.dumps(line), flush=True)
    print(f"report: {report}", flush=True)
    return 0
