"""Input validation: every bad input fails before any work, naming the file and the first offending rows."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from data.datasets import FoldCSVDataset
from data.labels import OCT_LABELS
from data.validate import validate_fold_csv


@pytest.fixture
def root(oct_root: Path, tmp_path: Path) -> Path:
    """A private copy of the phantom dataset that a test may break."""
    return Path(shutil.copytree(oct_root, tmp_path / "oct"))


def _edit(root: Path, edit) -> Path:
    csv = root / "train_0.csv"
    frame = pd.read_csv(csv, index_col=0)
    edit(frame).to_csv(csv)
    return csv


def test_valid_fold_passes(root):
    frame, labels = validate_fold_csv(root / "train_0.csv", root, OCT_LABELS, image_check="verify")
    assert labels.shape == (len(frame), 11) and labels.dtype.name == "int64"


def test_missing_csv(root):
    with pytest.raises(FileNotFoundError, match=r"train_7\.csv"):
        FoldCSVDataset(root, "train", 7)


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        FoldCSVDataset(tmp_path / "absent", "train", 0)


def test_missing_filename_column(root):
    _edit(root, lambda f: f.drop(columns="filename"))
    with pytest.raises(ValueError, match=r"train_0\.csv: missing column\(s\) \['filename'\]"):
        FoldCSVDataset(root, "train", 0)


def test_missing_label_column(root):
    _edit(root, lambda f: f.drop(columns=["CNV", "RVO"]))
    with pytest.raises(ValueError, match=r"train_0\.csv: missing column\(s\) \['CNV', 'RVO'\]"):
        FoldCSVDataset(root, "train", 0)


def test_csv_without_index_column_gets_a_hint(root):
    csv = root / "train_0.csv"
    pd.read_csv(csv, index_col=0).to_csv(csv, index=False)
    frame = pd.read_csv(csv, index_col=0)
    assert frame.index.name == "client_id"
    pd.read_csv(csv).drop(columns="client_id").to_csv(csv, index=False)
    with pytest.raises(ValueError, match="first column is read as the index"):
        FoldCSVDataset(root, "train", 0)


def test_labels_not_binary(root):
    def edit(frame):
        frame = frame.astype({"AMD": object, "DR": object})
        frame.iloc[2, frame.columns.get_loc("AMD")] = 2
        frame.iloc[5, frame.columns.get_loc("DR")] = "yes"
        return frame

    _edit(root, edit)
    # Data row 2 is CSV line 4 (header is line 1).
    with pytest.raises(ValueError, match=r"train_0\.csv: label columns \['AMD', 'DR'\].*2 row\(s\), e\.g\. line 4 "):
        FoldCSVDataset(root, "train", 0)


def test_empty_label_cell(root):
    _edit(root, lambda f: f.astype({"NOR": float}).assign(NOR=lambda d: d["NOR"].where(d.index != d.index[0])))
    with pytest.raises(ValueError, match=r"\['NOR'\].*line 2 "):
        FoldCSVDataset(root, "train", 0)


def test_duplicate_rows(root):
    _edit(root, lambda f: pd.concat([f, f.iloc[[1, 3]]]))
    with pytest.raises(ValueError, match=r"train_0\.csv: duplicate filename in 4 row\(s\), e\.g\. line 3 \(images/"):
        FoldCSVDataset(root, "train", 0)


def test_missing_image_files(root):
    frame = pd.read_csv(root / "train_0.csv", index_col=0)
    for name in frame["filename"].iloc[[0, 4]]:
        (root / name).unlink()
    first = frame["filename"].iloc[0]
    with pytest.raises(
        FileNotFoundError, match=rf"train_0\.csv: image file\(s\) missing .*2 row\(s\), e\.g\. line 2 \({first}\)"
    ):
        FoldCSVDataset(root, "train", 0)
    FoldCSVDataset(root, "train", 0, image_check="none")  # the check can be switched off


def test_unreadable_image_only_with_verify(root):
    frame = pd.read_csv(root / "train_0.csv", index_col=0)
    bad = frame["filename"].iloc[3]
    (root / bad).write_bytes(b"not a png")
    FoldCSVDataset(root, "train", 0)  # existence only: fast default
    with pytest.raises(ValueError, match=rf"unreadable image file\(s\): 1 row\(s\), e\.g\. line 5 \({bad}\)"):
        FoldCSVDataset(root, "train", 0, image_check="verify")


def test_message_lists_at_most_five_rows(root):
    _edit(root, lambda f: f.assign(MEM=7))
    with pytest.raises(ValueError) as err:
        FoldCSVDataset(root, "train", 0)
    assert str(err.value).count("line ") == 5 and str(err.value).endswith(", ...")


def test_unknown_image_check(root):
    with pytest.raises(ValueError, match="image check mode"):
        FoldCSVDataset(root, "train", 0, image_check="deep")
