"""Input checks for fold CSVs: run before any work so a bad dataset fails in seconds with a precise message.

Every error names the file and the first offending rows. Rows are given as CSV line numbers (the header is line 1,
so the first data row is line 2) together with their `filename`, which is what a user needs to fix the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from data.images import image_file_problem
from infra.errors import UserError

# How many offending rows an error message lists.
MAX_REPORTED_ROWS = 5
# Image checks, cheapest first: "none" skips them; "exists" tests that each file is there; "header" also opens each
# file and checks its format, pixel mode and size (reads a few bytes per file); "verify" also runs PIL's integrity
# check over each whole file (PNG chunk checksums: truncated or damaged files), about 0.5 ms for a 512 x 496 PNG;
# "decode" also decodes every pixel (5-8 ms for the same PNG). See data/images.py for the mode rules.
IMAGE_CHECKS = ("none", "exists", "header", "verify", "decode")


def _describe_rows(frame: pd.DataFrame, positions: np.ndarray, details: Sequence[str] | None = None) -> str:
    """'3 row(s), e.g. line 4 (a.png), line 9 (b.png)' for 0-based data-row positions (with per-row details)."""
    shown = []
    for k, p in enumerate(positions[:MAX_REPORTED_ROWS]):
        name = frame["filename"].iloc[p] if "filename" in frame.columns else None
        detail = ": ".join(str(x) for x in (name, details[k] if details is not None else None) if x)
        shown.append(f"line {int(p) + 2}" + (f" ({detail})" if detail else ""))
    more = ", ..." if len(positions) > MAX_REPORTED_ROWS else ""
    return f"{len(positions)} row(s), e.g. " + ", ".join(shown) + more


def read_fold_csv(csv_path: str | Path) -> pd.DataFrame:
    """Read a fold CSV the reference way: the first column is the index (docs/REFERENCE.md §2.1).

    Raises:
        FileNotFoundError: the CSV does not exist.
        ValueError: it cannot be parsed or has no rows.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"fold CSV not found: {csv_path}")
    try:
        frame = pd.read_csv(csv_path, index_col=0)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{csv_path}: cannot be read as CSV ({err})") from err
    if len(frame) == 0:
        raise UserError(f"{csv_path}: has no data rows")
    return frame


def check_columns(frame: pd.DataFrame, label_names: Sequence[str], source: str) -> None:
    """Raise ValueError when `filename` or a label column is missing from `frame`."""
    missing = [c for c in ("filename", *label_names) if c not in frame.columns]
    if not missing:
        return
    hint = ""
    if frame.index.name == "filename":
        hint = " (the first column is read as the index, as in the reference; add an index column before 'filename')"
    raise UserError(f"{source}: missing column(s) {missing}; found {list(frame.columns)}{hint}")


def check_labels(frame: pd.DataFrame, label_names: Sequence[str], source: str) -> np.ndarray:
    """Check that every label entry is 0 or 1 and return the labels.

    Returns:
        (N, K) int64 array, K = len(label_names).

    Raises:
        ValueError: naming the first rows with an entry that is not 0/1 (including empty cells and text).
    """
    values = frame[list(label_names)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isin(values, (0.0, 1.0)).all(axis=1))
    if len(bad):
        cols = [c for c, ok in zip(label_names, np.isin(values[bad], (0.0, 1.0)).all(axis=0)) if not ok]
        raise UserError(f"{source}: label columns {cols} must hold 0 or 1; bad values in {_describe_rows(frame, bad)}")
    return values.astype(np.int64)


def check_duplicates(frame: pd.DataFrame, source: str) -> None:
    """Raise ValueError when a `filename` appears in more than one row."""
    dup = np.flatnonzero(frame["filename"].astype(str).duplicated(keep=False).to_numpy())
    if len(dup):
        raise UserError(f"{source}: duplicate filename in {_describe_rows(frame, dup)}")


def check_images(
    frame: pd.DataFrame, root: str | Path, source: str, mode: str = "verify", min_size: int | None = None
) -> None:
    """Check the image files of every row, relative to `root`, before any work uses them.

    Args:
        frame: rows with a `filename` column.
        root: folder the filenames are relative to.
        source: file name used in messages (the CSV).
        mode: one of IMAGE_CHECKS.
        min_size: smallest allowed shorter image side (the crop size), or None; checked from "header" on.

    Raises:
        FileNotFoundError: some files are missing (the first ones are named).
        ValueError: from "header" on, some files are not usable images: not identifiable, a pixel mode with no
            8-bit RGB conversion, smaller than `min_size`, or (from "verify" on) damaged; each named with its CSV
            line, file and reason.
    """
    if mode not in IMAGE_CHECKS:
        raise UserError(f"image check mode must be one of {IMAGE_CHECKS}, got {mode!r}")
    if mode == "none":
        return
    paths = [os.path.join(root, f) for f in frame["filename"].astype(str)]
    missing = np.flatnonzero([not os.path.isfile(p) for p in paths])
    if len(missing):
        raise FileNotFoundError(
            f"{source}: image file(s) missing under {root}: {_describe_rows(frame, missing)}; "
            "filenames are relative to the dataset root"
        )
    if mode == "exists":
        return
    by_reason: dict[str, list[tuple[int, str]]] = {}
    for i, path in enumerate(paths):
        problem = image_file_problem(path, min_size, mode)
        if problem is not None:
            by_reason.setdefault(problem[0], []).append((i, problem[1]))
    if by_reason:
        groups = [
            f"{reason}: {_describe_rows(frame, np.array([i for i, _ in rows]), [d for _, d in rows])}"
            for reason, rows in by_reason.items()
        ]
        raise UserError(f"{source}: unusable image file(s) under {root}: " + "; ".join(groups))


def validate_frame(frame: pd.DataFrame, label_names: Sequence[str], source: str) -> np.ndarray:
    """Column, label and duplicate checks of a loaded table; returns the (N, K) int64 labels."""
    check_columns(frame, label_names, source)
    labels = check_labels(frame, label_names, source)
    check_duplicates(frame, source)
    return labels


def validate_fold_csv(
    csv_path: str | Path,
    root: str | Path,
    label_names: Sequence[str],
    image_check: str = "verify",
    min_size: int | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Read and check one fold CSV and its image files.

    Args:
        csv_path: `{root}/{mode}_{fold}.csv`.
        root: dataset root the `filename` column is relative to.
        label_names: the K label columns, in order.
        image_check: one of IMAGE_CHECKS.
        min_size: smallest allowed shorter image side (the crop size), or None.

    Returns:
        The table (first column as index) and its (N, K) int64 labels.
    """
    frame = read_fold_csv(csv_path)
    labels = validate_frame(frame, label_names, str(csv_path))
    check_images(frame, root, str(csv_path), image_check, min_size)
    return frame, labels
