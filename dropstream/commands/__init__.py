"""One module per ``dropstream`` subcommand (see :mod:`dropstream.cli`), and argument helpers
shared by several of them."""

from __future__ import annotations

import argparse


def add_units_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """``--units``: the unit the voltage channels of ``what`` are really in (replay, connect,
    train; see :mod:`dropstream.acquisition.units`)."""
    parser.add_argument(
        "--units",
        default=None,
        metavar="UNIT",
        help=f"unit the voltage channels of {what} are really in (V, mV, uV, nV, or an mne-lsl "
        "power-of-ten code such as -6), when the declared one is missing or wrong; default: "
        "the declared unit, refused if unknown or if the amplitude does not fit the channel type",
    )
