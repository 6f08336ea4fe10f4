"""Fold data of the study: the real splits, the synthetic CSVs, their up-front validation, and per-run transforms.

Real data follow the reference layout (docs/REFERENCE.md §2.1): `{root}/{train,val,test}_{fold}.csv`, read and checked
by data/datasets.py. Synthetic data follow the sampling script's layout (docs/REFERENCE.md §3.3):
`{sample_dir}/train_syn_{fold}.csv` with `client_id, filename, <labels>, patient_name, multi_class_label` and filenames
`gen_samples/{index:06d}.png` relative to the sample folder; its label columns must be exactly the real data's. The
validation copy that sample_ddp_val.py writes into the same folder (`val_syn_{fold}.csv`, images
`gen_samples_val/{index:06d}.png`, docs/REFERENCE.md §3.4) has the same columns; it is what the GAN-test score reads.
Every problem (missing fold file, label-column mismatch, missing image, non-0/1 label) is raised by `load_fold`, i.e.
before any training; only a missing `val_syn_{fold}.csv` is not an error (its GAN-test score is then n/a, with the
reason).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from data.datasets import FoldCSVDataset, fold_csv_path
from data.validate import read_fold_csv
from downstream.conditions import Condition, fold_folder, synthetic_sets
from infra.errors import UserError

# Columns of `train_syn_{fold}.csv` that are not labels (docs/REFERENCE.md §3.3).
SYNTHETIC_META_COLUMNS: tuple[str, ...] = ("client_id", "filename", "patient_name", "multi_class_label")
SYNTHETIC_MODE = "train_syn"
SYNTHETIC_VAL_MODE = "val_syn"
EVAL_SPLITS: tuple[str, ...] = ("auto", "test", "val")


def check_synthetic_columns(csv: Path, label_names: tuple[str, ...]) -> None:
    """Raise ValueError, naming the CSV and the differing columns, when a synthetic CSV's labels are not the real ones.

    Its label columns are every column but the index and SYNTHETIC_META_COLUMNS.
    """
    columns = list(read_fold_csv(csv).columns)
    missing = [n for n in label_names if n not in columns]
    extra = [c for c in columns if c not in label_names and c not in SYNTHETIC_META_COLUMNS]
    if missing or extra:
        raise UserError(
            f"{csv}: label columns differ from the real data's {list(label_names)}: missing {missing}, extra {extra}"
        )


@dataclass(frozen=True)
class FoldData:
    """Everything one fold of the study trains and evaluates on (datasets return PIL images, no transform).

    Attributes:
        fold: fold number.
        train: real training images.
        val: validation images (model selection).
        evaluation: the images the reported metrics are computed on (test split, or `val` itself when there is none).
        eval_split: "test" or "val".
        synthetic: synthetic training images per synthetic condition name (both synthetic kinds).
        synthetic_val: the validation copy (`val_syn_{fold}.csv`) per synthetic set NAME, where present.
        synthetic_val_missing: why there is none, per synthetic set NAME without one.
    """

    fold: int
    train: FoldCSVDataset
    val: FoldCSVDataset
    evaluation: FoldCSVDataset
    eval_split: str
    synthetic: dict[str, FoldCSVDataset]
    synthetic_val: dict[str, FoldCSVDataset] = field(default_factory=dict)
    synthetic_val_missing: dict[str, str] = field(default_factory=dict)

    def train_sets(self, condition: Condition) -> list[FoldCSVDataset]:
        """What `condition` trains on: the real training split and/or its synthetic images (real first)."""
        real = [self.train] if condition.uses_real else []
        extra = [self.synthetic[condition.name]] if condition.uses_synthetic else []
        return [*real, *extra]

    def fingerprint(self, condition: Condition) -> str:
        """SHA-256 of every CSV a run of `condition` reads and of its images' sizes and modification times.

        A run is redone when its data change, including images regenerated under the same names (a re-sampled
        synthetic set keeps its CSV byte for byte).
        """
        return datasets_fingerprint([self.val, self.evaluation, *self.train_sets(condition)])


def datasets_fingerprint(datasets: list[FoldCSVDataset]) -> str:
    """SHA-256 of the datasets' CSV bytes and of their images' names, sizes and modification times, in order."""
    digest = hashlib.sha256()
    for ds in datasets:
        digest.update(ds.csv_path.read_bytes())
        for name in ds.filenames:
            stat = (ds.root / name).stat()
            digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def load_synthetic_val(
    folder: Path, fold: int, label_names: tuple[str, ...]
) -> tuple[FoldCSVDataset | None, str | None]:
    """The validation copy `{folder}/val_syn_{fold}.csv` of a synthetic set, checked like the training CSVs.

    Args:
        folder: the sample folder of this fold.
        fold: fold number.
        label_names: the K label columns.

    Returns:
        (dataset, None), or (None, the reason) when the CSV does not exist.

    Raises:
        FileNotFoundError, ValueError: the CSV exists but lists a missing image or has wrong columns or labels.
    """
    csv = fold_csv_path(folder, SYNTHETIC_VAL_MODE, fold)
    if not csv.is_file():
        return None, f"no {csv} (write it with sample_ddp_val.py --fold {fold})"
    check_synthetic_columns(csv, label_names)
    return FoldCSVDataset(folder, SYNTHETIC_VAL_MODE, fold, label_names), None


def load_fold(
    data_path: Path,
    fold: int,
    label_names: tuple[str, ...],
    conditions: list[Condition],
    eval_split: str = "auto",
    synthetic_val: bool = True,
) -> FoldData:
    """Read and validate the real splits of one fold and the synthetic CSVs of every synthetic condition.

    Args:
        data_path: real dataset root holding `{train,val,test}_{fold}.csv`.
        fold: fold number.
        label_names: the K label columns.
        conditions: the study's conditions.
        eval_split: "auto" (test when `test_{fold}.csv` exists, else val), "test" (required) or "val".
        synthetic_val: also read each synthetic set's validation copy `val_syn_{fold}.csv` (for GAN-test).

    Returns:
        The fold's data.

    Raises:
        FileNotFoundError: a fold CSV or an image is missing (named).
        ValueError: a CSV's columns or labels are wrong (named).
    """
    if eval_split not in EVAL_SPLITS:
        raise UserError(f"--eval-split {eval_split!r}: choose from {EVAL_SPLITS}")
    train = FoldCSVDataset(data_path, "train", fold, label_names)
    val = FoldCSVDataset(data_path, "val", fold, label_names)
    if eval_split == "test" or (eval_split == "auto" and fold_csv_path(data_path, "test", fold).is_file()):
        evaluation, split = FoldCSVDataset(data_path, "test", fold, label_names), "test"
    else:
        evaluation, split = val, "val"
    synthetic = {}
    for c in conditions:
        if c.uses_synthetic:
            check_synthetic_columns(fold_csv_path(c.folder(fold), SYNTHETIC_MODE, fold), label_names)
            synthetic[c.name] = FoldCSVDataset(c.folder(fold), SYNTHETIC_MODE, fold, label_names)
    val_copies, missing = {}, {}
    if synthetic_val:
        for name, sample_dir in synthetic_sets(conditions).items():
            copy, reason = load_synthetic_val(fold_folder(sample_dir, fold), fold, label_names)
            if copy is None:
                missing[name] = reason
            else:
                val_copies[name] = copy
    return FoldData(fold, train, val, evaluation, split, synthetic, val_copies, missing)


class TransformedDataset(Dataset):
    """A (PIL image, label) dataset seen through an image transform; the label becomes float32 for the BCE loss."""

    def __init__(self, base: Dataset, transform: Callable) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the (3, S, S) transformed image and its (K,) float32 multi-hot label."""
        image, label = self.base[index]
        return self.transform(image), label.float()
