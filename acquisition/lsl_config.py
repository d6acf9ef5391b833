"""liblsl configuration: keep liblsl's INFO log lines off the console unless asked for.

liblsl prints lines such as ``api_config.cpp:126 INFO| Loaded default config`` on first use.
When the user has no liblsl configuration of their own (no ``LSLAPICFG`` and no
``lsl_api.cfg`` where liblsl looks for one), dropstream sets the log level to errors only.
A user's configuration, if any, is left exactly as it is.
"""

from __future__ import annotations

import os
from pathlib import Path

import pylsl

#: Files liblsl reads when ``LSLAPICFG`` is unset (see liblsl's api_config.cpp).
CONFIG_LOCATIONS = (
    Path("lsl_api.cfg"),
    Path.home() / "lsl_api" / "lsl_api.cfg",
    Path("/etc/lsl_api/lsl_api.cfg"),
)
#: liblsl (loguru) verbosity: -2 = errors only, 0 = info.
QUIET_LOG_LEVEL = -2


def quiet_liblsl_log() -> bool:
    """Lower liblsl's log level if the user did not configure liblsl; returns whether it did."""
    if os.environ.get("LSLAPICFG") or any(p.is_file() for p in CONFIG_LOCATIONS):
        return False
    pylsl.set_config_content(f"[log]\nlevel = {QUIET_LOG_LEVEL}\n")
    return True
