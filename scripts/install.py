"""Install dropstream (with a CPU build of torch unless a torch is already there), then optionally
run something with the interpreter it was installed into.

Usage::

    python3 scripts/install.py                           # dropstream + server side
    python3 scripts/install.py --run dropstream demo     # ... then python -m dropstream demo
    python3 scripts/install.py --test --run pytest -q    # ... plus the test tools, then the tests
    python3 scripts/install.py --python                  # print the interpreter it installs into

Where it installs:

* inside a virtual environment (``sys.prefix != sys.base_prefix``): into it;
* otherwise, into ``.venv`` in the repository when that exists or when ``python3`` is
  "externally managed" (PEP 668: stock Debian/Ubuntu, where ``pip install`` is refused); the
  venv is created with ``python3 -m venv`` and this script re-runs itself in it;
* otherwise into the ``python3`` that runs it.

``--run MODULE ARGS...`` runs ``python -m MODULE ARGS...`` with that interpreter, so the two
README commands work the same everywhere. An unpinned ``pip install torch`` on Linux pulls a
multi-gigabyte CUDA build: when no torch is importable this script first installs
``torch==2.13.0`` (``DROPSTREAM_TORCH`` overrides the requirement, ``DROPSTREAM_TORCH_INDEX`` adds
a package index, e.g. PyTorch's CPU wheel index). A torch already installed is kept.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TORCH = "torch==2.13.0"
VENV = ROOT / ".venv"


class InstallError(Exception):
    """A step failed; the message says what to do."""


def in_virtualenv() -> bool:
    """True when this interpreter runs inside a virtual environment."""
    return sys.prefix != sys.base_prefix


def externally_managed() -> bool:
    """True when pip refuses to install into this interpreter (PEP 668 marker file)."""
    return (Path(sysconfig.get_path("stdlib")) / "EXTERNALLY-MANAGED").exists()


def venv_python(venv: Path) -> Path:
    """The interpreter of a virtual environment."""
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def target_python() -> Path:
    """The interpreter to install into, creating ``.venv`` when needed (see module docstring)."""
    if in_virtualenv():
        return Path(sys.executable)
    if not venv_python(VENV).exists():
        if not externally_managed():
            return Path(sys.executable)
        print(
            f"{sys.executable} is externally managed (PEP 668): creating a virtual environment "
            f"in {VENV}",
            flush=True,
        )
        result = subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=False)
        if result.returncode != 0 or not venv_python(VENV).exists():
            raise InstallError(
                f"could not create {VENV} with '{sys.executable} -m venv' (exit "
                f"{result.returncode}); on Debian/Ubuntu install the venv module "
                "('sudo apt install python3-venv'), delete the half-made .venv and run this "
                "again, or activate a virtual environment of your own first"
            )
    return venv_python(VENV)


def pip(*args: str) -> None:
    """Run ``python -m pip install`` with ``args``."""
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *args]
    print("+", " ".join(cmd), flush=True)
    result = subprocess.run(cmd, check=False)
    if result.returncode != 0:
        raise InstallError(
            f"'pip install {' '.join(args)}' failed (exit {result.returncode}); pip says why "
            "above (no network? a package index behind a proxy: set PIP_INDEX_URL)"
        )


def parse(argv: list[str]) -> tuple[bool, bool, list[str]]:
    """``(test extras, print the interpreter only, command to run)`` from the arguments."""
    run: list[str] = []
    if "--run" in argv:
        i = argv.index("--run")
        argv, run = argv[:i], argv[i + 1 :]
        if not run:
            raise InstallError("--run needs a module to run, e.g. --run dropstream demo")
    unknown = [a for a in argv if a not in ("--test", "--python")]
    if unknown:
        raise InstallError(f"unknown argument(s) {unknown}; see the top of scripts/install.py")
    return "--test" in argv, "--python" in argv, run


def main(argv: list[str]) -> int:
    """Pick the interpreter, install torch if missing and dropstream (editable), then run."""
    test, show, run = parse(argv)
    python = target_python()
    if show:
        print(python)
        return 0
    if python.absolute() != Path(sys.executable).absolute():
        os.execv(str(python), [str(python), str(Path(__file__).resolve()), *argv])
    if importlib.util.find_spec("torch") is None:
        index = os.environ.get("DROPSTREAM_TORCH_INDEX")
        pip(
            os.environ.get("DROPSTREAM_TORCH", DEFAULT_TORCH),
            *(["--extra-index-url", index] if index else []),
        )
    else:
        print("torch is already installed: keeping it", flush=True)
    pip("-e", f"{ROOT}[{'test' if test else 'server'}]")
    print(f"dropstream is installed in {sys.prefix} (python: {sys.executable})", flush=True)
    if run:
        print("+", sys.executable, "-m", " ".join(run), flush=True)
        os.chdir(ROOT)
        os.execv(sys.executable, [sys.executable, "-m", *run])
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main(sys.argv[1:]))
    except InstallError as exc:
        print(f"install.py: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
