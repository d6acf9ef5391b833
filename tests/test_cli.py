"""The console command lists every flow."""

from __future__ import annotations

import subprocess
import sys

from dropstream.cli import COMMANDS, build_parser


def test_help_lists_every_flow() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dropstream", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in (
        "broker",
        "keys",
        "replay",
        "connect",
        "train",
        "serve",
        "alerts",
        "audit",
        "demo",
        "bench",
    ):
        assert name in COMMANDS
        assert f"    {name} " in out


def test_device_side_imports_without_torch() -> None:
    code = (
        "import sys, builtins\n"
        "real = builtins.__import__\n"
        "def guard(name, *a, **k):\n"
        "    if name == 'torch' or name.startswith('torch.'):\n"
        "        raise ImportError('torch is forbidden on the device side')\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = guard\n"
        "import acquisition, local_encoder, broker, dropstream.cli\n"
        "import pkgutil, importlib\n"
        "for pkg in (acquisition, local_encoder, broker):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "dropstream.cli.build_parser()\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_parser_builds() -> None:
    assert build_parser().prog == "dropstream"
