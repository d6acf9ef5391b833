"""``dropstream train``: not available yet."""

from __future__ import annotations

import argparse

from dropstream.errors import NotAvailableError

HELP = "train (not available yet)"


def configure(parser: argparse.ArgumentParser) -> None:
    """Register the arguments of ``dropstream train``."""


def run(args: argparse.Namespace) -> int:
    """Run ``dropstream train``."""
    raise NotAvailableError("'dropstream train' is not available in this version yet")
