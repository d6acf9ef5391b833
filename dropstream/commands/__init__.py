"""One module per ``dropstream`` subcommand (see :mod:`dropstream.cli`)."""
