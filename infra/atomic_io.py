"""Atomic file writes: a temporary file in the target folder, then a rename, so readers never see half a file."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Call `write(fileobj)` on a temporary file beside `path`, fsync it and rename it onto `path`.

    A crash at any point leaves either the previous file or the new one, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600 files; give the result the permissions a plain open() would (0666 minus umask).
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: object, path: str | Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_np_save(path: str | Path, array: np.ndarray) -> None:
    """Write `array` in .npy format to exactly `path` (no suffix is appended, unlike `np.save` on a name)."""
    atomic_write(path, lambda f: np.save(f, array))


def atomic_save_png(path: str | Path, image: np.ndarray | Image.Image) -> None:
    """Write an HxWx3 uint8 array (or a PIL image) as PNG."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    atomic_write(path, lambda f: img.save(f, format="PNG"))


def atomic_save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8) -> None:
    """Write (N, 3, H, W) uint8 images as one PNG grid (`nrow` images per row, 2-pixel padding)."""
    from torchvision.utils import make_grid

    grid = make_grid(images.cpu(), nrow=nrow, padding=2)  # (3, H', W')
    atomic_save_png(path, grid.permute(1, 2, 0).numpy())
