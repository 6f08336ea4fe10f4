"""Dataset classes, dataset choice by path or flag, label names from the dataset."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from data.datasets import FoldCSVDataset, RetinaMNISTDataset, build_dataset, label_names_for
from data.labels import OCT_LABELS, RETINAMNIST_LABELS, TNBC_LABELS
from data.select import add_dataset_arguments, evaluation_labels, pick_dataset
from data.transforms import image_transform
from tests.helpers.phantom_data import make_phantom_fundus


@pytest.mark.parametrize(
    "path, kind",
    [
        ("data/oct_multilabel/", "oct"),
        ("./store/oct_features/", "oct"),
        ("data/RetinaMNIST/", "retinamnist"),
        ("/data/medMNIST", "retinamnist"),
        ("data/retina", "retinamnist"),
        ("data/TNBC", "tnbc"),
        ("data/retinal_oct/", "oct"),  # the reference's loaders and sample_ddp.py test 'oct' before 'retina'
        ("data/retina_TNBC", "tnbc"),
    ],
)
def test_pick_dataset_from_path_like_the_reference(path, kind):
    assert pick_dataset(path) == kind


def test_pick_dataset_flag_wins_and_errors_name_the_flag():
    assert pick_dataset("data/oct_multilabel", "csv") == "csv"
    assert pick_dataset("anything", "retinamnist") == "retinamnist"
    with pytest.raises(ValueError, match="--dataset"):
        pick_dataset("data/OCT")  # case-sensitive, as the reference
    with pytest.raises(ValueError, match="--dataset must be one of"):
        pick_dataset("data/oct", "imagenet")


def test_dataset_arguments():
    import argparse

    parser = argparse.ArgumentParser()
    add_dataset_arguments(parser)
    args = parser.parse_args(["--dataset", "csv", "--label-columns", "a", "b"])
    assert args.dataset == "csv" and args.label_columns == ["a", "b"]
    assert parser.parse_args([]).dataset is None


def test_label_names_for():
    assert label_names_for("oct") == OCT_LABELS
    assert label_names_for("retinamnist") == RETINAMNIST_LABELS
    assert label_names_for("tnbc") == TNBC_LABELS
    assert label_names_for("csv", ["x", "y"]) == ("x", "y")
    with pytest.raises(ValueError, match="--label-columns is required"):
        label_names_for("csv")
    with pytest.raises(ValueError, match="--label-columns applies"):
        label_names_for("oct", ["x"])
    with pytest.raises(ValueError, match="repeated"):
        label_names_for("csv", ["x", "x"])


def test_oct_item_matches_reference_contract(oct_root):
    ds = build_dataset("oct", oct_root, "train", 1, transform=image_transform(32))
    frame = pd.read_csv(oct_root / "train_1.csv", index_col=0)
    assert len(ds) == len(frame) and ds.label_names == OCT_LABELS
    image, label = ds[3]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert -1.0 <= image.min() and image.max() <= 1.0
    assert label.shape == (11,) and label.dtype == torch.int64
    np.testing.assert_array_equal(label.numpy(), frame[list(OCT_LABELS)].iloc[3].to_numpy())
    assert ds.source_name(3) == frame["filename"].iloc[3]
    raw, _ = FoldCSVDataset(oct_root, "test", 0)[0]
    assert raw.mode == "RGB" and raw.size == (32, 32)


def test_csv_kind_reads_chosen_columns(oct_root):
    ds = build_dataset("csv", oct_root, "val", 0, label_columns=["FLD", "NOR"])
    frame = pd.read_csv(oct_root / "val_0.csv", index_col=0)
    np.testing.assert_array_equal(ds.labels, frame[["FLD", "NOR"]].to_numpy())


def test_evaluation_labels_are_val_rows_in_file_order(oct_root):
    frame = pd.read_csv(oct_root / "val_1.csv", index_col=0)
    np.testing.assert_array_equal(evaluation_labels("oct", str(oct_root), 1), frame[list(OCT_LABELS)].to_numpy())


def test_retinamnist_through_medmnist(tmp_path):
    root = make_phantom_fundus(tmp_path / "retina", num_images=16, size=32)
    ds = build_dataset("retinamnist", root, "val", transform=image_transform(64))
    image, label = ds[0]
    assert image.shape == (3, 64, 64)
    assert label.dtype == torch.int64 and label.shape == (5,) and label.sum() == 1  # one-hot grade
    raw, _ = RetinaMNISTDataset(root, "train")[0]
    assert raw.size == (224, 224) and raw.mode == "RGB"
    assert evaluation_labels("retinamnist", str(root), 0).shape == (len(RetinaMNISTDataset(root, "test")), 5)
    with pytest.raises(ValueError, match="split"):
        RetinaMNISTDataset(root, "holdout")


def test_retinamnist_missing_file_says_where(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"retinamnist_224\.npz.*--data-path.*not downloaded"):
        build_dataset("retinamnist", tmp_path, "train")
