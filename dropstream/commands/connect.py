"""``dropstream connect``: not available yet."""

from __future__ import annotations

import argparse

from dropstream.errors import NotAvailableError

HELP = "connect (not available yet)"


def configure(parser: argparse.ArgumentParser) -> None:
    """Register the arguments of ``dropstream connect``."""


def run(args: argparse.Namespace) -> int:
    """Run ``dropstream connect``."""
    raise NotAvailableError("'dropstream connect' is not available in this version yet")
