"""The layers import only downwards (docs/architecture.md), checked on the source with ``ast``.

Every ``import`` statement counts, also those inside functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Source folder of each layer (the package ``dropstream.<layer>``).
LAYERS = ("acquisition", "broker", "local_encoder", "inference")

#: What each part may import of dropstream. ``base`` is ``dropstream`` itself and
#: ``dropstream.errors``, which every layer may import; ``cli`` is ``dropstream.cli``,
#: ``dropstream.__main__`` and ``dropstream.commands``: the top, which may import everything.
ALLOWED: dict[str, set[str]] = {
    "base": {"base"},
    "acquisition": {"base", "acquisition"},
    "broker": {"base", "broker"},
    "local_encoder": {"base", "acquisition", "broker", "local_encoder"},
    "inference": {"base", "acquisition", "broker", "local_encoder", "inference"},
    "cli": {"base", "acquisition", "broker", "local_encoder", "inference", "cli"},
}

#: Parts that run on the device: they must never import torch.
DEVICE_SIDE = ("acquisition", "broker", "local_encoder")


def part_of(module: str) -> str | None:
    """The part of a dotted ``dropstream`` module name (``None``: not dropstream)."""
    parts = module.split(".")
    if parts[0] != "dropstream":
        return None
    if len(parts) == 1 or parts[1] == "errors":
        return "base"
    if parts[1] in LAYERS:
        return parts[1]
    if parts[1] in ("cli", "__main__", "commands"):
        return "cli"
    raise AssertionError(f"{module} belongs to no part; add it to ALLOWED and the docs")


def source_modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the installed tree."""
    out = {}
    folders = {"dropstream": ROOT / "dropstream"} | {f"dropstream.{f}": ROOT / f for f in LAYERS}
    for package, folder in folders.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("").parts
            if rel[-1] == "__init__":
                rel = rel[:-1]
            out[".".join((package, *rel))] = path
    return out


def imports_of(module: str, path: Path) -> list[tuple[int, str]]:
    """``(line, imported module)`` of every import statement; relative imports resolved."""
    is_package = path.name == "__init__.py"
    here = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
    return found


def violations(modules: dict[str, Path]) -> list[str]:
    """Every import that goes up (or sideways into a layer not allowed), and torch on the
    device side, as ``file:line: importer -> imported`` lines."""
    bad = []
    for module, path in sorted(modules.items()):
        part = part_of(module)
        for line, target in imports_of(module, path):
            shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            where = f"{shown}:{line}: {module} -> {target}"
            if part in DEVICE_SIDE and target.split(".")[0] == "torch":
                bad.append(f"{where} (the device side never imports torch)")
            target_part = part_of(target)
            if target_part is not None and target_part not in ALLOWED[part]:
                bad.append(f"{where} ({part} may import only {sorted(ALLOWED[part])})")
    return bad


def test_the_tree_has_every_layer():
    modules = source_modules()
    for layer in LAYERS:
        assert f"dropstream.{layer}" in modules
    assert len(modules) > 60 and "dropstream.errors" in modules


def test_no_upward_import():
    bad = violations(source_modules())
    assert not bad, "upward imports (see docs/architecture.md):\n" + "\n".join(bad)


@pytest.mark.parametrize(
    ("module", "code", "why"),
    [
        ("dropstream.local_encoder.x", "import torch\n", "never imports torch"),
        ("dropstream.broker.x", "from dropstream.inference.head import ServerModel\n", "broker"),
        ("dropstream.acquisition.x", "from dropstream.local_encoder import bundle\n", "acqui"),
        ("dropstream.inference.x", "def f():\n    from dropstream.commands import alerts\n", "inf"),
        ("dropstream.errors", "from dropstream.cli import main\n", "base may import only"),
        ("dropstream.local_encoder.x", "from ..inference import model\n", "local_encoder"),
    ],
)
def test_the_check_catches_a_violation(tmp_path, module, code, why):
    """The check itself fails on an upward import (a check that cannot fail proves nothing)."""
    path = tmp_path / "x.py"
    path.write_text(code)
    bad = violations({module: path})
    assert len(bad) == 1 and why in bad[0], bad


def test_allowed_imports_pass(tmp_path):
    path = tmp_path / "x.py"
    path.write_text(
        "import numpy\nfrom dropstream.errors import DropstreamError\n"
        "from dropstream.broker.wire import ActivationMessage\nfrom . import windowing\n"
    )
    assert violations({"dropstream.local_encoder.x": path}) == []
