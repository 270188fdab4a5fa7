"""Shared fixtures: the one place that finds ../shared/assets (or skips, saying why)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_shitu.assets import assets_dir


def require_asset(*parts: str) -> Path:
    """Return an asset path, or skip the test with the reason it is missing."""
    p = assets_dir().joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared asset {'/'.join(parts)} not found under {assets_dir()} "
                    "(set EDGE_SHITU_ASSETS to the shared/assets folder)")
    return p


@pytest.fixture(scope="session")
def assets() -> Path:
    root = assets_dir()
    if not root.exists():
        pytest.skip(f"shared assets not found at {root} (set EDGE_SHITU_ASSETS)")
    return root
