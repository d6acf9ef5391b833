"""``dropstream broker``: not available yet."""

from __future__ import annotations

import argparse

from dropstream.errors import NotAvailableError

HELP = "broker (not available yet)"


def configure(parser: argparse.ArgumentParser) -> None:
    """Register the arguments of ``dropstream broker``."""


def run(args: argparse.Namespace) -> int:
    """Run ``dropstream broker``."""
    raise NotAvailableError("'dropstream broker' is not available in this version yet")
