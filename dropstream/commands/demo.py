"""``dropstream demo``: the whole pipeline offline on this machine, on a shipped recording."""

from __future__ import annotations

import argparse

HELP = "run everything offline (broker, LSL replay, device encoder, service, alerts) and summarise"


def configure(parser: argparse.ArgumentParser) -> None:
    """Register the arguments of ``dropstream demo``."""
    parser.add_argument(
        "--speed", type=float, default=1.0, help="replay speed (1 = real time, 30 s of ECG)"
    )


def run(args: argparse.Namespace) -> int:
    """Run the demo; exit code 0 when every known anomaly was alerted and nothing else."""
    from dropstream.commands.alerts import format_alert, table_header
    from dropstream.inference.demo import run_demo

    summary = run_demo(
        speed=args.speed,
        emit=lambda line: print(line, flush=True),
        alert_row=format_alert,
        alert_header=table_header(),
    )
    return 0 if summary.ok else 1
