"""Downstream tests (one torch thread each: tests/conftest.py, ONE_THREAD_DIRS): a small phantom dataset with
synthetic sample folders in the sampling scripts' layout."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.labels import OCT_LABELS
from synthesis.annotations import write_annotations
from tests.helpers.phantom_data import make_phantom_oct


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 OCT phantoms at 16 px in 2 folds (shared: never modify it)."""
    root = tmp_path_factory.mktemp("phantoms")
    make_phantom_oct(root, num_images=16, folds=2, size=16, seed=0)
    return root


@pytest.fixture
def sample_folder(phantom_root: Path) -> Callable[[Path, int, bool], Path]:
    """A function writing a sample folder for one fold, as the sampling scripts do: `train_syn_{fold}.csv` with 4
    images and, when asked, the validation copy `val_syn_{fold}.csv` with 3 images (copies of a real training image,
    random labels seeded by the fold)."""

    def make(out: Path, fold: int, val_copy: bool) -> Path:
        rng = np.random.default_rng(fold)
        source = phantom_root / pd.read_csv(phantom_root / f"train_{fold}.csv", index_col=0)["filename"].iloc[0]
        parts = [("gen_samples", f"train_syn_{fold}.csv", 4)]
        if val_copy:
            parts.append(("gen_samples_val", f"val_syn_{fold}.csv", 3))
        for subdir, csv, count in parts:
            (out / subdir).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                shutil.copy(source, out / subdir / f"{i:06d}.png")
            labels = rng.integers(0, 2, size=(count, len(OCT_LABELS)))
            write_annotations(out, csv, subdir, range(count), labels, OCT_LABELS)
        return out

    return make
