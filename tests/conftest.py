"""Shared pytest fixtures: the real recordings in ``../shared/data`` and (later) the broker."""

from __future__ import annotations

from pathlib import Path

import pytest

#: Real recordings shipped beside the checkout (read-only); see ``MANIFEST.json`` there.
DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Path of ``../shared/data``; skips the test when the recordings are not there."""
    if not (DATA_DIR / "MANIFEST.json").exists():
        pytest.skip(f"real recordings not found at {DATA_DIR}")
    return DATA_DIR
