"""Fold building: iterative stratification, patient grouping, the reference's CSV layout."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data.labels import OCT_LABELS
from data.make_folds import build_parser, iterative_stratification, main, make_folds, read_master
from data.phantoms import phantom_labels


def _master(num_images: int = 400, seed: int = 0) -> pd.DataFrame:
    """A master table with the phantom generator's skewed multi-hot labels, 2 rows per patient."""
    labels = phantom_labels("oct", num_images, seed)
    frame = pd.DataFrame(labels, columns=list(OCT_LABELS))
    frame.insert(0, "filename", [f"images/{i:06d}.png" for i in range(num_images)])
    frame["patient_name"] = [f"p{i // 2}" for i in range(num_images)]
    return frame


def test_iterative_stratification_matches_proportions():
    rng = np.random.default_rng(0)
    counts = (rng.random((300, 6)) < [0.5, 0.2, 0.1, 0.05, 0.3, 0.02]).astype(np.int64)
    sizes = np.ones(300, dtype=np.int64)
    part = iterative_stratification(counts, sizes, [0.2, 0.3, 0.5], np.random.default_rng(1))
    assert set(part) == {0, 1, 2}
    np.testing.assert_allclose(np.bincount(part) / 300, [0.2, 0.3, 0.5], atol=0.01)
    for k in range(6):
        got = np.array([counts[part == s, k].sum() for s in range(3)])
        # Sechidis' rule keeps each label within about one example of its target share.
        np.testing.assert_allclose(got, counts[:, k].sum() * np.array([0.2, 0.3, 0.5]), atol=1.5)


def test_iterative_stratification_is_seeded():
    counts = (np.random.default_rng(0).random((50, 3)) < 0.3).astype(np.int64)
    a = iterative_stratification(counts, np.ones(50), [0.5, 0.5], np.random.default_rng(7))
    b = iterative_stratification(counts, np.ones(50), [0.5, 0.5], np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)


def test_kfold_every_row_once_stratified_and_patients_grouped():
    frame = _master()
    splits = make_folds(frame, OCT_LABELS, folds=5, patient_col="patient_name", seed=0)
    val_rows = np.concatenate([s["val"].index.to_numpy() for s in splits])
    assert sorted(val_rows) == list(frame.index)  # each row in exactly one validation split
    overall = frame[list(OCT_LABELS)].mean()
    for split in splits:
        assert len(split["train"]) + len(split["val"]) == len(frame)
        assert not set(split["train"].index) & set(split["val"].index)
        assert not set(split["train"]["patient_name"]) & set(split["val"]["patient_name"])
        share = split["val"][list(OCT_LABELS)].sum() / frame[list(OCT_LABELS)].sum()
        # Each label's positives split 1/5 per fold, within two patients (4 rows) of the label's total.
        tolerance = 4 / frame[list(OCT_LABELS)].sum()
        assert (np.abs(share - 0.2) <= tolerance + 1e-9).all(), share
        assert np.abs(split["val"][list(OCT_LABELS)].mean() - overall).max() < 0.05


def test_test_split_is_shared_and_disjoint_and_val_frac_mode():
    frame = _master(200)
    splits = make_folds(frame, OCT_LABELS, folds=3, test_frac=0.2, val_frac=0.25, patient_col="patient_name", seed=1)
    test = splits[0]["test"]
    assert abs(len(test) / len(frame) - 0.2) < 0.03
    for split in splits:
        pd.testing.assert_frame_equal(split["test"], test)
        others = set(split["train"]["patient_name"]) | set(split["val"]["patient_name"])
        assert not set(test["patient_name"]) & others
        assert len(split["train"]) + len(split["val"]) + len(test) == len(frame)
        assert abs(len(split["val"]) / (len(frame) - len(test)) - 0.25) < 0.03
    assert not splits[0]["val"].index.equals(splits[1]["val"].index)  # independent splits


def test_rows_without_labels_are_assigned():
    frame = _master(40)
    frame.loc[:9, list(OCT_LABELS)] = 0
    splits = make_folds(frame, OCT_LABELS, folds=2, seed=0)
    assert sorted(np.concatenate([s["val"].index for s in splits])) == list(frame.index)


def test_cli_writes_reference_layout(tmp_path, capsys):
    frame = _master(60)
    frame.to_csv(tmp_path / "master.csv")  # with a pandas index column, read back as the index
    out = tmp_path / "folds"
    main(
        build_parser().parse_args(
            [
                "--csv",
                str(tmp_path / "master.csv"),
                "--out",
                str(out),
                "--folds",
                "3",
                "--test-frac",
                "0.2",
                "--seed",
                "0",
            ]
        )
    )
    printed = capsys.readouterr().out
    assert "patient column: patient_name" in printed and "NOR" in printed and "test" in printed
    for k in range(3):
        for mode in ("train", "val", "test"):
            fold = pd.read_csv(out / f"{mode}_{k}.csv", index_col=0)  # the reference's read
            assert list(fold.columns) == list(frame.columns)
            pd.testing.assert_frame_equal(fold, frame.loc[fold.index])
    assert read_master(tmp_path / "master.csv").index.equals(frame.index)


def test_cli_errors(tmp_path):
    frame = _master(20)
    frame.to_csv(tmp_path / "m.csv", index=False)
    parse = build_parser().parse_args
    with pytest.raises(ValueError, match="--patient-col"):
        main(parse(["--csv", str(tmp_path / "m.csv"), "--out", str(tmp_path), "--patient-col", "subject"]))
    with pytest.raises(ValueError, match="missing column"):
        main(parse(["--csv", str(tmp_path / "m.csv"), "--out", str(tmp_path), "--label-cols", "NOR", "XYZ"]))
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        main(parse(["--csv", str(tmp_path / "nope.csv"), "--out", str(tmp_path)]))
    with pytest.raises(ValueError, match="--folds"):
        make_folds(frame, OCT_LABELS, folds=1)
