"""The ``dropstream`` console command.

Every flow is a subcommand whose module lives in :mod:`dropstream.commands`. A command module
exposes ``HELP`` (one line), ``configure(parser)`` and ``run(args) -> int``; heavy imports happen
inside ``run`` so that ``dropstream --help`` stays fast and the device-side commands never import
torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
from collections.abc import Sequence

from dropstream import __version__
from dropstream.errors import DropstreamError

#: Subcommand name -> module in :mod:`dropstream.commands`, in the order ``--help`` lists them.
COMMANDS: dict[str, str] = {
    "broker": "broker",
    "keys": "keys",
    "replay": "replay",
    "connect": "connect",
    "train": "train",
    "serve": "serve",
    "alerts": "alerts",
    "evaluate": "evaluate",
    "audit": "audit",
    "demo": "demo",
    "bench": "bench",
}


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="dropstream",
        description=(
            "Real-time anomaly detection on EEG and body-sensor streams without the server "
            "seeing the raw signal: the first layer runs on the device and drops a random "
            "subset of its activations before anything is sent."
        ),
    )
    parser.add_argument("--version", action="version", version=f"dropstream {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"dropstream.commands.{module_name}")
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.configure(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def _terminate(signum: int, frame: object) -> None:
    """Turn SIGTERM into KeyboardInterrupt so every command shuts down cleanly."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dropstream`` command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _terminate)
    # A shell starts background jobs with SIGINT ignored; restore Ctrl-C / kill -INT anyway.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except DropstreamError as exc:
        print(f"dropstream {args.command}: error: {exc}", file=sys.stderr)
        return 1
