"""``dropstream bench``: not available yet."""

from __future__ import annotations

import argparse

from dropstream.errors import NotAvailableError

HELP = "bench (not available yet)"


def configure(parser: argparse.ArgumentParser) -> None:
    """Register the arguments of ``dropstream bench``."""


def run(args: argparse.Namespace) -> int:
    """Run ``dropstream bench``."""
    raise NotAvailableError("'dropstream bench' is not available in this version yet")
