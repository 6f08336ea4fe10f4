"""Build the reference's fold CSVs (`train_{k}.csv`, `val_{k}.csv`, optional `test_{k}.csv`) from one master CSV.

Multi-label rows are split by iterative stratification (Sechidis, Tsoumakas and Vlahavas, "On the stratification of
multi-label data", ECML PKDD 2011), applied to patient groups when a patient column exists, so that no patient is in
two splits of a fold. Filenames are copied unchanged, so they stay relative to the same dataset root: write the
folds into that root (`--out` is usually the folder the master CSV's filenames are relative to).

    python -m data.make_folds --csv data/oct/master.csv --out data/oct --folds 5 --test-frac 0.2 --seed 0
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from data.labels import OCT_LABELS
from data.validate import validate_frame
from infra.atomic_io import atomic_write_text
from infra.errors import UserError, run_main

# Used as the patient column when the master CSV has it and --patient-col is not given.
DEFAULT_PATIENT_COLUMN = "patient_name"
# Float slack when comparing the remaining demands of two subsets.
_TIE_TOLERANCE = 1e-9


def _argmax_ties(values: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """The members of `candidates` whose value is (within tolerance) the largest."""
    vals = values[candidates]
    return candidates[vals >= vals.max() - _TIE_TOLERANCE]


def iterative_stratification(
    label_counts: np.ndarray, sizes: np.ndarray, proportions: Sequence[float], rng: np.random.Generator
) -> np.ndarray:
    """Assign items (rows or patient groups) to subsets so each label is spread in the given proportions.

    Sechidis et al. 2011, Algorithm 1, generalised to items that carry several rows: each subset j starts with a
    demand of r_j * (rows) in total and r_j * (count of label l) per label. Repeatedly take the label with the fewest
    remaining positives; hand each unassigned item carrying it (in random order) to the subset that most wants that
    label, breaking ties by the larger total demand, then at random; subtract the item's counts from that subset's
    demands. Items without any label go to the subset with the largest remaining total demand.

    Args:
        label_counts: (G, K) non-negative counts of each label per item.
        sizes: (G,) number of rows per item.
        proportions: S subset proportions (normalised here).
        rng: random generator driving all tie-breaks and orders.

    Returns:
        (G,) int64 subset index of each item.
    """
    counts = np.asarray(label_counts, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.float64)
    props = np.asarray(proportions, dtype=np.float64)
    props = props / props.sum()
    n_items, _ = counts.shape
    all_subsets = np.arange(len(props))
    need_rows = props * sizes.sum()  # (S,)
    need_labels = props[:, None] * counts.sum(axis=0)[None, :]  # (S, K)
    left = counts.sum(axis=0)  # (K,) positives not yet assigned
    assign = np.full(n_items, -1, dtype=np.int64)
    unassigned = np.ones(n_items, dtype=bool)

    while True:
        active = np.flatnonzero(left > _TIE_TOLERANCE)
        if len(active) == 0:
            break
        label = rng.choice(_argmax_ties(-left, active))
        items = np.flatnonzero(unassigned & (counts[:, label] > 0))
        for item in rng.permutation(items):
            best = _argmax_ties(need_labels[:, label], all_subsets)
            best = _argmax_ties(need_rows, best)
            subset = rng.choice(best)
            assign[item] = subset
            unassigned[item] = False
            need_labels[subset] -= counts[item]
            need_rows[subset] -= sizes[item]
            left -= counts[item]
    for item in rng.permutation(np.flatnonzero(unassigned)):
        subset = rng.choice(_argmax_ties(need_rows, all_subsets))
        assign[item] = subset
        need_rows[subset] -= sizes[item]
    return assign


def make_folds(
    frame: pd.DataFrame,
    label_cols: Sequence[str],
    folds: int,
    test_frac: float = 0.0,
    val_frac: float | None = None,
    patient_col: str | None = None,
    seed: int = 0,
) -> list[dict[str, pd.DataFrame]]:
    """Split a master table into folds.

    By default the non-test rows are cut into `folds` stratified parts and fold k validates on part k (every row is
    in exactly one validation split). With `val_frac`, each fold is instead an independent stratified split with
    that validation fraction. The test split (when `test_frac` > 0) is set aside first and is the same for every fold.

    Args:
        frame: master table with the label columns (and `patient_col` when given).
        label_cols: the K label columns.
        folds: number of folds.
        test_frac: fraction of rows held out as the test split (0 for none).
        val_frac: validation fraction of independent splits, or None for K-fold.
        patient_col: column grouping rows by patient, or None for one group per row.
        seed: seed of all random choices.

    Returns:
        One dict per fold mapping "train", "val" (and "test") to row subsets of `frame`, in the master's row order.
    """
    if folds < 1 or (val_frac is None and folds < 2):
        raise UserError(f"--folds must be at least 2 for K-fold splits (at least 1 with --val-frac), got {folds}")
    if not 0.0 <= test_frac < 1.0:
        raise UserError(f"--test-frac must be in [0, 1), got {test_frac}")
    if val_frac is not None and not 0.0 < val_frac < 1.0:
        raise UserError(f"--val-frac must be in (0, 1), got {val_frac}")
    rng = np.random.default_rng(seed)
    labels = frame[list(label_cols)].to_numpy(dtype=np.int64)
    keys = frame[patient_col].astype(str).to_numpy() if patient_col else np.arange(len(frame)).astype(str)
    group_keys, group_of_row = np.unique(keys, return_inverse=True)
    n_groups = len(group_keys)
    counts = np.zeros((n_groups, labels.shape[1]), dtype=np.int64)
    np.add.at(counts, group_of_row, labels)
    sizes = np.bincount(group_of_row, minlength=n_groups)

    pool = np.arange(n_groups)
    test_groups = np.array([], dtype=np.int64)
    if test_frac > 0:
        part = iterative_stratification(counts, sizes, [test_frac, 1.0 - test_frac], rng)
        test_groups, pool = pool[part == 0], pool[part == 1]

    if val_frac is None:
        part = iterative_stratification(counts[pool], sizes[pool], [1.0 / folds] * folds, rng)
        val_groups = [pool[part == k] for k in range(folds)]
    else:
        val_groups = []
        for _ in range(folds):
            part = iterative_stratification(counts[pool], sizes[pool], [val_frac, 1.0 - val_frac], rng)
            val_groups.append(pool[part == 0])

    def rows(groups: np.ndarray) -> pd.DataFrame:
        return frame[np.isin(group_of_row, groups)]

    out = []
    for val in val_groups:
        split = {"train": rows(np.setdiff1d(pool, val)), "val": rows(val)}
        if test_frac > 0:
            split["test"] = rows(test_groups)
        out.append(split)
    return out


def split_counts(splits: list[dict[str, pd.DataFrame]], label_cols: Sequence[str]) -> pd.DataFrame:
    """Per-label positive counts of every split: one row per (fold, split), columns `rows` and the labels."""
    records = []
    for k, split in enumerate(splits):
        for name, part in split.items():
            record = {"fold": k, "split": name, "rows": len(part)}
            record.update({c: int(part[c].sum()) for c in label_cols})
            records.append(record)
    return pd.DataFrame.from_records(records).set_index(["fold", "split"])


def write_folds(splits: list[dict[str, pd.DataFrame]], out: str | Path) -> list[Path]:
    """Write `{out}/{split}_{k}.csv` (first column the master row index, as the reference reads it)."""
    out = Path(out)
    written = []
    for k, split in enumerate(splits):
        for name, part in split.items():
            path = out / f"{name}_{k}.csv"
            atomic_write_text(path, part.to_csv())
            written.append(path)
    return written


def read_master(csv: str | Path) -> pd.DataFrame:
    """Read the master CSV; a leading unnamed column (a pandas index) becomes the index."""
    path = Path(csv)
    if not path.is_file():
        raise FileNotFoundError(f"--csv file not found: {path}")
    frame = pd.read_csv(path)
    if len(frame.columns) and str(frame.columns[0]).startswith("Unnamed: 0"):
        frame = frame.set_index(frame.columns[0])
        frame.index.name = None
    return frame


def resolve_patient_column(frame: pd.DataFrame, patient_col: str | None) -> str | None:
    """`patient_col` if given ('' means none), else DEFAULT_PATIENT_COLUMN when the table has it."""
    if patient_col is None:
        return DEFAULT_PATIENT_COLUMN if DEFAULT_PATIENT_COLUMN in frame.columns else None
    if patient_col == "":
        return None
    if patient_col not in frame.columns:
        raise UserError(f"--patient-col {patient_col!r} is not a column of the master CSV: {list(frame.columns)}")
    return patient_col


def main(args: argparse.Namespace) -> None:
    # Read and check the master table.
    frame = read_master(args.csv)
    label_cols = list(args.label_cols) if args.label_cols else list(OCT_LABELS)
    if not args.label_cols and not set(OCT_LABELS) <= set(frame.columns):
        raise UserError(f"{args.csv} lacks the OCT label columns; name its label columns with --label-cols")
    validate_frame(frame, label_cols, str(args.csv))
    patient_col = resolve_patient_column(frame, args.patient_col)

    # Split, write, report.
    splits = make_folds(frame, label_cols, args.folds, args.test_frac, args.val_frac, patient_col, args.seed)
    written = write_folds(splits, args.out)
    missing = sum(not (Path(args.out) / f).is_file() for f in frame["filename"].astype(str))
    print(f"patient column: {patient_col or 'none (one group per row)'}; wrote {len(written)} CSVs to {args.out}")
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(split_counts(splits, label_cols).to_string())
    if missing:
        print(
            f"note: {missing} of {len(frame)} filenames do not exist relative to {args.out}; fold CSVs must sit in "
            "the folder their filenames are relative to"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Stratified (and patient-grouped) fold CSVs from a master CSV.")
    parser.add_argument("--csv", type=str, required=True, help="master CSV with `filename` and 0/1 label columns")
    parser.add_argument("--out", type=str, required=True, help="output folder, usually the dataset root")
    parser.add_argument("--folds", type=int, default=5, help="number of folds")
    parser.add_argument(
        "--test-frac", type=float, default=0.0, help="fraction held out as a test split shared by all folds"
    )
    parser.add_argument(
        "--val-frac",
        type=float,
        default=None,
        help="if set, each fold is an independent split with this validation fraction instead of K-fold",
    )
    parser.add_argument(
        "--patient-col",
        type=str,
        default=None,
        help=f"column grouping rows by patient (default: {DEFAULT_PATIENT_COLUMN} when present; '' for none)",
    )
    parser.add_argument(
        "--label-cols", type=str, nargs="+", default=None, help="label columns (default: the 11 OCT labels)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random tie-breaks and orders")
    return parser


if __name__ == "__main__":
    run_main("python -m data.make_folds", lambda: main(build_parser().parse_args()))
