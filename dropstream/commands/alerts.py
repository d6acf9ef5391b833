"""``dropstream alerts``: not available yet."""

from __future__ import annotations

import argparse

from dropstream.errors import NotAvailableError

HELP = "alerts (not available yet)"


def configure(parser: argparse.ArgumentParser) -> None:
    """Register the arguments of ``dropstream alerts``."""


def run(args: argparse.Namespace) -> int:
    """Run ``dropstream alerts``."""
    raise NotAvailableError("'dropstream alerts' is not available in this version yet")
