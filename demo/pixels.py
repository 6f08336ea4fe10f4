"""Pixel statistics of image sets: the demo's objective check that samples stay in the data's range."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data.images import open_rgb


def pixel_stats(images: np.ndarray) -> dict[str, float]:
    """Mean, standard deviation and saturated fraction of uint8 images.

    A sampling trajectory that diverges ends in values clipped at 0 or 255 when quantised (docs/DECISIONS.md §C7),
    so the fraction of such values, compared with the real images', tells a diverged set from a settled one.

    Args:
        images: uint8 array of any layout, e.g. (N, H, W, 3).

    Returns:
        "mean" and "std" of all values (0-255), and "saturated": the fraction of values equal to 0 or 255.
    """
    x = np.asarray(images)
    return {"mean": float(x.mean()), "std": float(x.std()), "saturated": float(np.isin(x, (0, 255)).mean())}


def load_images(paths: Sequence[Path]) -> np.ndarray:
    """(N, H, W, 3) uint8 array of the RGB images at `paths` (all of one size)."""
    return np.stack([np.asarray(open_rgb(path)) for path in paths])
