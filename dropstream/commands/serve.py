"""``dropstream serve``: not available yet."""

from __future__ import annotations

import argparse

from dropstream.errors import NotAvailableError

HELP = "serve (not available yet)"


def configure(parser: argparse.ArgumentParser) -> None:
    """Register the arguments of ``dropstream serve``."""


def run(args: argparse.Namespace) -> int:
    """Run ``dropstream serve``."""
    raise NotAvailableError("'dropstream serve' is not available in this version yet")
