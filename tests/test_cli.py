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


def test_train_and_serve_defaults_are_the_dataclasses() -> None:
    """``train`` and ``serve`` pass on only the options given, so their defaults are those of
    TrainConfig and ServiceSettings; the served alert timing has one source."""
    from dataclasses import asdict, fields

    from dropstream.inference.alerting import AlertTiming
    from dropstream.inference.service import ServiceSettings
    from dropstream.inference.training import TrainConfig

    parser = build_parser()
    train = parser.parse_args(["train", "--uea", "X", "-o", "m.dsb"])
    assert [f.name for f in fields(TrainConfig) if f.name in train] == []
    assert parser.parse_args(["train", "--uea", "X", "-o", "m.dsb", "--epochs", "3"]).epochs == 3
    serve = parser.parse_args(["serve", "--bundle", "m.dsb"])
    assert [f.name for f in fields(ServiceSettings) if f.name in serve] == ["torch_threads"]
    settings = ServiceSettings()
    assert {k: getattr(settings, k) for k in asdict(AlertTiming())} == asdict(AlertTiming())
