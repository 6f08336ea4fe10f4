"""The one place that decides which dataset a data path holds (docs/DECISIONS.md §C1, docs/REFERENCE.md §10.28).

Scripts call `pick_dataset` for the kind, then `build_dataset` / `label_names_for` (re-exported from data.datasets)
so label names and the number of classes come from the dataset, never from the path.
"""

from __future__ import annotations

import argparse

import numpy as np

from data.datasets import RetinaMNISTDataset, build_dataset, fold_csv_path, label_names_for
from data.validate import validate_fold_csv
from infra.errors import UserError

__all__ = [
    "DATASET_KINDS",
    "add_dataset_arguments",
    "build_dataset",
    "evaluation_labels",
    "label_names_for",
    "pick_dataset",
]

DATASET_KINDS = ("oct", "retinamnist", "csv", "tnbc")

# Case-sensitive path substrings the reference scripts test, in the order they test them (docs/REFERENCE.md §10.24,
# §10.28): its data loaders take 'RetinaMNIST' (train.py's transform: 'MNIST') before the fold-CSV dataset's 'oct' and
# 'TNBC'; only sample_ddp.py looks for lower-case 'retina', after 'oct' and 'TNBC' (so data/retinal_oct is OCT).
_PATH_RULES = (
    ("RetinaMNIST", "retinamnist"),
    ("MNIST", "retinamnist"),
    ("oct", "oct"),
    ("TNBC", "tnbc"),
    ("retina", "retinamnist"),
)


def pick_dataset(data_path: str, dataset: str | None = None) -> str:
    """The dataset kind of `data_path`: `dataset` when given, else guessed from the path like the reference.

    Args:
        data_path: the --data-path value.
        dataset: the --dataset value, or None.

    Returns:
        One of DATASET_KINDS.

    Raises:
        ValueError: an unknown `dataset`, or a path that matches none of the reference's substrings.
    """
    if dataset is not None:
        if dataset not in DATASET_KINDS:
            raise UserError(f"--dataset must be one of {DATASET_KINDS}, got {dataset!r}")
        return dataset
    for needle, kind in _PATH_RULES:
        if needle in data_path:
            return kind
    raise UserError(
        f"cannot tell the dataset from --data-path {data_path!r} (the reference looks for 'RetinaMNIST', 'MNIST', "
        f"'oct', 'TNBC' or 'retina' in it); pass --dataset {{{','.join(DATASET_KINDS)}}}"
    )


def add_dataset_arguments(parser: argparse.ArgumentParser, label_columns: bool = True) -> None:
    """Add --dataset and (unless `label_columns` is False) --label-columns, the flags every script uses to override
    the path rule (the flag builders of `infra.flags` hold the other shared flags)."""
    parser.add_argument(
        "--dataset",
        type=str,
        choices=DATASET_KINDS,
        default=None,
        help="dataset kind; by default guessed from the data path as the reference does",
    )
    if label_columns:
        parser.add_argument(
            "--label-columns",
            type=str,
            nargs="+",
            default=None,
            help="label columns of a --dataset csv fold CSV (0/1 each), in order",
        )


def evaluation_labels(kind: str, data_path: str, fold: int, label_columns: list[str] | None = None) -> np.ndarray:
    """The label rows a synthetic validation copy reproduces, in file order (docs/REFERENCE.md §3.4,
    docs/DECISIONS.md §C2.7).

    CSV kinds: the rows of `val_{fold}.csv` (image files are not needed); RetinaMNIST: its test split.

    Returns:
        (N, K) int64 labels.
    """
    names = label_names_for(kind, label_columns)
    if kind == "retinamnist":
        return RetinaMNISTDataset(data_path, "test").labels
    _, labels = validate_fold_csv(fold_csv_path(data_path, "val", fold), data_path, names, image_check="none")
    return labels
