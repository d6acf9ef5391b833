"""``dropstream audit``: not available yet."""

from __future__ import annotations

import argparse

from dropstream.errors import NotAvailableError

HELP = "audit (not available yet)"


def configure(parser: argparse.ArgumentParser) -> None:
    """Register the arguments of ``dropstream audit``."""


def run(args: argparse.Namespace) -> int:
    """Run ``dropstream audit``."""
    raise NotAvailableError("'dropstream audit' is not available in this version yet")
