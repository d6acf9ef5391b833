"""``dropstream bench``: run one of the benchmarks in ``benchmarks/`` (from a source checkout)."""

from __future__ import annotations

import argparse

HELP = (
    "run a benchmark from benchmarks/ (serve, latency, scale-out, encoder, lsl, accuracy, audit, "
    "auth, broker-memory, gpu)"
)

#: Benchmark name -> script in ``benchmarks/`` (what it measures is in each script's docstring).
BENCHMARKS: dict[str, str] = {
    "serve": "serve_throughput.py",
    "latency": "e2e_latency.py",
    "scale-out": "scale_out.py",
    "encoder": "encoder_speed.py",
    "lsl": "lsl_throughput.py",
    "accuracy": "accuracy_vs_dropping.py",
    "audit": "privacy_audit.py",
    "auth": "auth_speed.py",
    "broker-memory": "embedded_broker_memory.py",
    "gpu": "gpu_oneshot.sh",
}


def configure(parser: argparse.ArgumentParser) -> None:
    """Register the arguments of ``dropstream bench``."""
    parser.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark")
    parser.add_argument(
        "args",
        nargs=argparse.REMAINDER,
        help="arguments passed to the benchmark script (see its --help)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the chosen benchmark script as a subprocess; returns its exit code."""
    import subprocess
    import sys
    from pathlib import Path

    from dropstream.errors import DropstreamError

    root = Path(__file__).resolve().parents[2]
    script = root / "benchmarks" / BENCHMARKS[args.name]
    if not script.exists():
        raise DropstreamError(
            f"benchmark script {script} not found: benchmarks ship with the source checkout, "
            "not the installed package; run dropstream bench from a git clone"
        )
    runner = ["bash"] if script.suffix == ".sh" else [sys.executable]
    return subprocess.call([*runner, str(script), *args.args], cwd=root)
