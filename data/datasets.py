"""Dataset classes: the CSV fold layout of the OCT data (docs/REFERENCE.md §2.1) and RetinaMNIST through medmnist
(docs/REFERENCE.md §2.2).

Both return `(image, label)` where `label` is a (K,) int64 multi-hot (OCT, CSV) or one-hot (RetinaMNIST) tensor,
and both expose `labels` ((N, K) int64 array) and `source_name(i)`, so label-only consumers need not read images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from data.images import open_rgb
from data.labels import OCT_LABELS, RETINAMNIST_LABELS, TNBC_LABELS
from data.validate import validate_fold_csv
from infra.errors import UserError

# The MedMNIST+ 224-px release file medmnist 3.x reads from its root (`{flag}_{size}.npz`).
RETINAMNIST_NPZ = "retinamnist_224.npz"
RETINAMNIST_SPLITS = ("train", "val", "test")


def fold_csv_path(root: str | Path, mode: str, fold: int) -> Path:
    """`{root}/{mode}_{fold}.csv`, the reference's split file (docs/REFERENCE.md §2.1)."""
    return Path(root) / f"{mode}_{fold}.csv"


class FoldCSVDataset(Dataset):
    """Multi-label images listed in `{root}/{mode}_{fold}.csv` (the reference's `TNBCDataset`, docs/REFERENCE.md §2.1).

    The CSV's first column is the index, `filename` is relative to `root`, and each label column holds 0/1.
    The file and its images are checked on construction (data/validate.py), so a bad file fails before any model is
    built, naming the CSV line; images are read as 8-bit RGB by data/images.py (16-bit greyscale scaled, not clipped).

    Args:
        root: dataset root.
        mode: split name: "train", "val" or "test".
        fold: fold number.
        label_names: the K label columns, in order (OCT's 11 by default).
        transform: applied to the RGB PIL image; None returns the PIL image.
        image_check: one of data.validate.IMAGE_CHECKS; "verify" (default) opens and integrity-checks every file.
        min_size: smallest allowed shorter image side (the crop size the transform takes), or None.
    """

    def __init__(
        self,
        root: str | Path,
        mode: str = "train",
        fold: int = 0,
        label_names: Sequence[str] = OCT_LABELS,
        transform: Callable | None = None,
        image_check: str = "verify",
        min_size: int | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset root is not a folder: {self.root}")
        self.csv_path = fold_csv_path(root, mode, fold)
        frame, self.labels = validate_fold_csv(self.csv_path, self.root, label_names, image_check, min_size)
        self.filenames: list[str] = frame["filename"].astype(str).tolist()
        self.label_names = tuple(label_names)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.filenames)

    def __getitem__(self, index: int) -> tuple[object, torch.Tensor]:
        try:
            image = open_rgb(self.root / self.filenames[index])
        except Exception as err:  # a file changed or damaged after the up-front check: say which row it is
            raise UserError(
                f"{self.csv_path}: line {index + 2} ({self.filenames[index]}) cannot be read as an image: "
                f"{type(err).__name__}: {err}"
            ) from err
        if self.transform is not None:
            image = self.transform(image)
        return image, torch.from_numpy(self.labels[index].copy())

    def source_name(self, index: int) -> str:
        """The row's `filename` (relative to the root)."""
        return self.filenames[index]


class RetinaMNISTDataset(Dataset):
    """RetinaMNIST 224 px through medmnist, with one-hot labels (docs/REFERENCE.md §2.2).

    Reads `{root}/retinamnist_224.npz` and never downloads: without network access a download cannot succeed, so a
    missing file is an error saying where to put it. Any number of images per split is accepted (the phantom npz is
    smaller than the real one; medmnist's own `__len__` would insist on the real counts).

    Args:
        root: folder holding retinamnist_224.npz.
        split: "train", "val" or "test".
        transform: applied to the 224x224 RGB PIL image; None returns the PIL image.
    """

    def __init__(self, root: str | Path, split: str = "train", transform: Callable | None = None) -> None:
        if split not in RETINAMNIST_SPLITS:
            raise UserError(f"RetinaMNIST split must be one of {RETINAMNIST_SPLITS}, got {split!r}")
        npz = Path(root) / RETINAMNIST_NPZ
        if not npz.is_file():
            raise FileNotFoundError(
                f"RetinaMNIST file not found: {npz}. Put the MedMNIST+ file {RETINAMNIST_NPZ} (Zenodo record 10519652) "
                f"in the folder given by --data-path; it is not downloaded. "
                "`python -m data.phantoms --kind fundus --retinamnist-npz` writes an offline stand-in."
            )
        # medmnist creates ~/.medmnist when imported, so it is imported only when RetinaMNIST is actually used.
        from medmnist import RetinaMNIST

        self._base = RetinaMNIST(split=split, root=str(root), size=224, as_rgb=True, download=False)
        grades = np.asarray(self._base.labels).reshape(-1).astype(np.int64)
        if grades.min() < 0 or grades.max() >= len(RETINAMNIST_LABELS):
            raise UserError(f"{npz}: {split}_labels must be grades 0..{len(RETINAMNIST_LABELS) - 1}")
        self.labels = np.eye(len(RETINAMNIST_LABELS), dtype=np.int64)[grades]  # (N, 5) one-hot
        self.label_names = RETINAMNIST_LABELS
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[object, torch.Tensor]:
        image, _ = self._base[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, torch.from_numpy(self.labels[index].copy())

    def source_name(self, index: int) -> str:
        """`retinamnist_224.npz:{split}[{index}]`."""
        return f"{RETINAMNIST_NPZ}:{self.split}[{index}]"


def label_names_for(kind: str, label_columns: Sequence[str] | None = None) -> tuple[str, ...]:
    """The label names of a dataset kind (their count is the number of classes K).

    Args:
        kind: "oct", "retinamnist", "tnbc" or "csv" (see data/select.py).
        label_columns: the label columns of a "csv" dataset (flag --label-columns); must be None otherwise.
    """
    fixed = {"oct": OCT_LABELS, "retinamnist": RETINAMNIST_LABELS, "tnbc": TNBC_LABELS}
    if kind == "csv":
        if not label_columns:
            raise UserError("--label-columns is required with --dataset csv (the names of the 0/1 label columns)")
        if len(set(label_columns)) != len(label_columns):
            raise UserError(f"--label-columns has repeated names: {list(label_columns)}")
        return tuple(label_columns)
    if kind not in fixed:
        raise UserError(f"unknown dataset kind {kind!r}; expected one of oct, retinamnist, csv, tnbc")
    if label_columns:
        raise UserError(f"--label-columns applies to --dataset csv only, not {kind!r}")
    return fixed[kind]


def build_dataset(
    kind: str,
    root: str | Path,
    split: str,
    fold: int = 0,
    transform: Callable | None = None,
    label_columns: Sequence[str] | None = None,
    image_check: str = "verify",
    min_size: int | None = None,
) -> FoldCSVDataset | RetinaMNISTDataset:
    """The dataset of one split, for a kind chosen by data.select.pick_dataset.

    Args:
        kind: "oct", "retinamnist", "tnbc" or "csv".
        root: the data path.
        split: "train", "val" or "test" (a fold CSV mode, or a RetinaMNIST split).
        fold: fold number (CSV kinds only; RetinaMNIST has fixed splits).
        transform: applied to each RGB PIL image.
        label_columns: label columns of a "csv" dataset.
        image_check: image-file check of CSV kinds (data.validate.IMAGE_CHECKS).
        min_size: smallest allowed shorter image side of CSV kinds (the crop size), or None.
    """
    names = label_names_for(kind, label_columns)
    if kind == "retinamnist":
        return RetinaMNISTDataset(root, split, transform)
    return FoldCSVDataset(root, split, fold, names, transform, image_check, min_size)
