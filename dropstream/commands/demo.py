"""``dropstream demo``: not available yet."""

from __future__ import annotations

import argparse

from dropstream.errors import NotAvailableError

HELP = "demo (not available yet)"


def configure(parser: argparse.ArgumentParser) -> None:
    """Register the arguments of ``dropstream demo``."""


def run(args: argparse.Namespace) -> int:
    """Run ``dropstream demo``."""
    raise NotAvailableError("'dropstream demo' is not available in this version yet")
