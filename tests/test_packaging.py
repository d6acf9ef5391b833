"""Packaging: everything installs under the one ``dropstream`` namespace, nothing generic."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("acquisition", "local_encoder", "broker", "inference")


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_installed_under_dropstream() -> None:
    """The explicit package list must name every folder with an ``__init__.py`` (a forgotten
    subpackage would be missing from a non-editable install)."""
    config = _setuptools()
    mapping = {"dropstream": "dropstream", **config["package-dir"]}
    on_disk = set()
    for package, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            on_disk.add(".".join((package, *rel)))
    assert set(config["packages"]) == on_disk
    assert all(name == "dropstream" or name.startswith("dropstream.") for name in on_disk)


def test_layer_folders_map_into_the_namespace() -> None:
    assert _setuptools()["package-dir"] == {f"dropstream.{layer}": layer for layer in LAYERS}


def test_layers_import_under_the_namespace_only(tmp_path: Path) -> None:
    """Installed (outside the source tree) only ``dropstream.<layer>`` imports, not ``<layer>``."""
    probe = (
        "import importlib.util as u\n"
        f"for layer in {LAYERS!r}:\n"
        "    assert u.find_spec('dropstream.' + layer) is not None, layer\n"
        "    assert u.find_spec(layer) is None, 'top-level ' + layer\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", probe], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_two_checkouts_are_never_mixed(tmp_path: Path) -> None:
    """The flake "unexpected keyword argument 'signer'": ``python -m dropstream serve`` (or
    pytest) run in one checkout with another checkout's editable install took ``dropstream``
    (the CLI) from the current folder and ``dropstream.inference`` from the install, so a new
    CLI called an old service. Importing such a mix now fails at once, saying what to do."""
    import shutil

    shutil.copytree(ROOT / "dropstream", tmp_path / "dropstream")  # another checkout's CLI
    mixed = subprocess.run(
        [sys.executable, "-c", "import dropstream.inference"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert mixed.returncode != 0
    last = mixed.stderr.strip().splitlines()[-1]
    assert "would mix two checkouts" in last and str(tmp_path) in last and "pip install -e" in last
    alone = subprocess.run(  # from elsewhere, the install alone: one checkout
        [sys.executable, "-c", "import dropstream.inference, dropstream.commands.serve"],
        cwd=tmp_path / "dropstream",
        capture_output=True,
        text=True,
    )
    assert alone.returncode == 0, alone.stderr
