"""Fixtures shared by all tests (helpers live in tests/support.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def lake_dir(tmp_path: Path) -> Path:
    """An empty local lake directory."""
    path = tmp_path / "lake"
    path.mkdir()
    return path
