"""Install dropstream with a CPU build of torch unless a torch is already installed.

Usage::

    python3 scripts/install.py            # dropstream + server side (demo, serve, train)
    python3 scripts/install.py --test     # ... plus the test tools

An unpinned ``pip install torch`` on Linux pulls a multi-gigabyte CUDA build. When no torch is
importable this script first installs ``torch==2.13.0`` (``DROPSTREAM_TORCH`` overrides the
requirement, ``DROPSTREAM_TORCH_INDEX`` adds a package index, e.g. PyTorch's CPU wheel index). A
torch that is already installed, a GPU build for instance, is kept as it is.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TORCH = "torch==2.13.0"


def pip(*args: str) -> None:
    """Run ``python -m pip install`` with ``args``; exit on failure."""
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main(argv: list[str]) -> int:
    """Install torch if missing, then dropstream (editable) with the wanted extras."""
    extras = "test" if "--test" in argv else "server"
    if importlib.util.find_spec("torch") is None:
        index = os.environ.get("DROPSTREAM_TORCH_INDEX")
        pip(os.environ.get("DROPSTREAM_TORCH", DEFAULT_TORCH),
            *(["--extra-index-url", index] if index else []))
    else:
        print("torch is already installed: keeping it", flush=True)
    pip("-e", f"{ROOT}[{extras}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
