"""Fixtures of the data tests: one small phantom OCT dataset per module (read-only by convention)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.phantom_data import make_phantom_oct


@pytest.fixture(scope="module")
def oct_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 phantom OCT images, 32 px, 2 folds and a test split; tests must not modify it (copy it first)."""
    return make_phantom_oct(tmp_path_factory.mktemp("oct_phantom"), num_images=40, folds=2, size=32, test_frac=0.2)
