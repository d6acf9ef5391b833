"""``dropstream replay``: not available yet."""

from __future__ import annotations

import argparse

from dropstream.errors import NotAvailableError

HELP = "replay (not available yet)"


def configure(parser: argparse.ArgumentParser) -> None:
    """Register the arguments of ``dropstream replay``."""


def run(args: argparse.Namespace) -> int:
    """Run ``dropstream replay``."""
    raise NotAvailableError("'dropstream replay' is not available in this version yet")
