"""Atomic file writes: a temporary file in the target folder, then a rename, so readers never see half a file."""

from __future__ import annotations

import io
import os
import re
import tempfile
from collections.abc import Callable, Collection
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# `atomic_write` names its temporary file `.{target name}.{8 random characters}.tmp` (tempfile.mkstemp's alphabet).
_TEMP_PREFIX, _TEMP_SUFFIX = ".", ".tmp"
_TEMP_NAME = re.compile(r"^\.(.+)\.[a-z0-9_]{8}\.tmp$")


def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Call `write(fileobj)` on a temporary file beside `path`, fsync it and rename it onto `path`.

    A crash at any point leaves either the previous file or the new one, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{_TEMP_PREFIX}{path.name}.", suffix=_TEMP_SUFFIX, dir=path.parent)
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


def temp_file_target(path: str | Path) -> str | None:
    """The name of the file an `atomic_write` temporary file (`.NAME.XXXXXXXX.tmp`) was to become, or None."""
    match = _TEMP_NAME.match(Path(path).name)
    return match.group(1) if match else None


def remove_stale_temps(
    folder: str | Path, recursive: bool = True, targets: Collection[str] | None = None
) -> list[Path]:
    """Delete the temporary files that writes killed mid-way (kill -9, power loss) left in `folder`.

    `atomic_write` removes its temporary file when it fails with an exception, but a killed process cannot, and the
    file (as large as a checkpoint) would stay forever. A script calls this at start for its output folders, on one
    rank and before any write of its own: a temporary file of a write that is still running must not be removed.

    Args:
        folder: the output folder; a missing folder holds nothing to remove.
        recursive: also clean every sub-folder.
        targets: only remove temporary files of these target names (for a folder other writers share).

    Returns:
        The removed files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    walk = os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]
    for parent, _, names in walk:
        for name in names:
            target = temp_file_target(name)
            path = Path(parent) / name
            if target is not None and (targets is None or target in targets) and path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


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
