"""Every ``dropstream ...`` command line shown in README.md and docs/*.md parses with the real
argument parser (parse only, nothing runs), and the README's install commands are ones
``scripts/install.py`` accepts."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from dropstream.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"```[a-z]*\n(.*?)```", re.S)


def documented_commands(prefix: str) -> list[tuple[str, str]]:
    """``(file name, command line)`` of every line in a fenced block that starts with
    ``prefix`` (continuations joined, comments and a trailing ``&`` removed). Usage synopses
    (``[--flag X]``), program output (``dropstream replay: error: ...``) and diagram lines
    naming modules (a word in parentheses, ``dropstream alerts (commands/alerts.py)``) are left
    out."""
    found = []
    for path in DOCS:
        for block in _FENCE.findall(path.read_text()):
            text = re.sub(r"\\\n\s*", " ", block)
            for line in text.splitlines():
                line = line.strip().removeprefix("$ ")
                if not line.startswith(prefix) or line.split()[1].endswith(":"):
                    continue  # not a command, or program output (may hold a lone quote)
                words = shlex.split(line, comments=True)
                if words and words[-1] == "&":
                    words = words[:-1]
                if any(w.startswith(("[", "(")) for w in words) or words[1].endswith(":"):
                    continue
                found.append((path.name, shlex.join(words)))
    return found


COMMANDS = documented_commands("dropstream ")


def test_the_docs_show_commands() -> None:
    names = {shlex.split(c)[1] for _, c in COMMANDS}
    assert {"broker", "train", "serve", "replay", "connect", "alerts", "demo"} <= names
    assert any(doc == "README.md" for doc, _ in COMMANDS)


@pytest.mark.parametrize(("doc", "command"), COMMANDS, ids=[f"{d}:{c[:60]}" for d, c in COMMANDS])
def test_documented_command_parses(doc: str, command: str) -> None:
    parser = build_parser()
    try:
        args = parser.parse_args(shlex.split(command)[1:])
    except SystemExit as exc:
        pytest.fail(f"{doc}: {command!r} does not parse (exit {exc.code})")
    assert args.command == shlex.split(command)[1]


def test_readme_install_commands_are_accepted() -> None:
    spec = importlib.util.spec_from_file_location("install", ROOT / "scripts" / "install.py")
    assert spec is not None and spec.loader is not None
    install = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(install)
    readme = ROOT / "README.md"
    lines = [
        c
        for block in _FENCE.findall(readme.read_text())
        for c in block.splitlines()
        if c.startswith("python3 scripts/install.py")
    ]
    assert len(lines) == 2
    runs = []
    for line in lines:
        words = shlex.split(line, comments=True)
        test, show, run = install.parse(words[2:])
        assert not show
        runs.append((test, run))
    assert (False, ["dropstream", "demo"]) in runs
    assert (True, ["pytest", "-q"]) in runs  # what .ci/run runs after installing
    with pytest.raises(install.InstallError, match="unknown argument"):
        install.parse(["--baseline"])
