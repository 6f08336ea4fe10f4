"""Fold loading of the study: synthetic training CSVs, the validation copies GAN-test reads, what each run trains on."""

from __future__ import annotations

import pandas as pd
import pytest

from data.labels import OCT_LABELS
from downstream.conditions import parse_conditions
from downstream.splits import load_fold


def test_validation_copy_is_read_as_sample_ddp_val_writes_it(phantom_root, sample_folder, tmp_path):
    data = phantom_root
    folder = sample_folder(tmp_path / "S", fold=0, val_copy=True)
    conditions = parse_conditions(["geometric", f"synthetic:S={folder}", f"synthetic-only:S={folder}"])
    fold = load_fold(data, 0, OCT_LABELS, conditions)
    copy = fold.synthetic_val["S"]
    expected = pd.read_csv(folder / "val_syn_0.csv", index_col=0)
    assert copy.filenames == [f"gen_samples_val/{i:06d}.png" for i in range(3)] == expected["filename"].tolist()
    assert (copy.labels == expected[list(OCT_LABELS)].to_numpy()).all()
    assert copy.root == folder and fold.synthetic_val_missing == {}

    # What each condition trains on: real, real + synthetic, synthetic only.
    by_name = {c.name: c for c in conditions}
    assert fold.train_sets(by_name["geometric"]) == [fold.train]
    assert fold.train_sets(by_name["S"]) == [fold.train, fold.synthetic["S"]]
    (only,) = fold.train_sets(by_name["S (synthetic only)"])
    assert only.csv_path == folder / "train_syn_0.csv" and len(only) == 4
    assert fold.fingerprint(by_name["S"]) != fold.fingerprint(by_name["S (synthetic only)"])


def test_missing_copy_is_a_reason_not_an_error(phantom_root, sample_folder, tmp_path):
    data = phantom_root
    folder = sample_folder(tmp_path / "S", fold=1, val_copy=False)
    fold = load_fold(data, 1, OCT_LABELS, parse_conditions([f"synthetic:S={folder}"]))
    assert fold.synthetic_val == {}
    assert "val_syn_1.csv" in fold.synthetic_val_missing["S"] and "sample_ddp_val.py" in fold.synthetic_val_missing["S"]
    # Not asked for: neither read nor reported.
    skipped = load_fold(data, 1, OCT_LABELS, parse_conditions([f"synthetic:S={folder}"]), synthetic_val=False)
    assert skipped.synthetic_val == {} and skipped.synthetic_val_missing == {}


def test_broken_copy_is_an_error(phantom_root, sample_folder, tmp_path):
    data = phantom_root
    folder = sample_folder(tmp_path / "S", fold=0, val_copy=True)
    frame = pd.read_csv(folder / "val_syn_0.csv", index_col=0).rename(columns={"NOR": "NORMAL"})
    frame.to_csv(folder / "val_syn_0.csv")
    with pytest.raises(ValueError, match=r"val_syn_0.csv.*missing \['NOR'\], extra \['NORMAL'\]"):
        load_fold(data, 0, OCT_LABELS, parse_conditions([f"synthetic:S={folder}"]))
