"""Allow ``python -m dropstream``."""

from dropstream.cli import main

raise SystemExit(main())
