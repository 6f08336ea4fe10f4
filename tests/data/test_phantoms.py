"""The phantom generator: deterministic, clinically skewed labels, visible label-specific structures, exact layout."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from data.labels import OCT_LABELS
from data.phantoms import (
    draw_fundus,
    draw_oct,
    image_seed,
    make_phantom_dataset,
    make_phantom_images,
    sample_oct_labels,
)


def _only(name: str) -> np.ndarray:
    labels = np.zeros(len(OCT_LABELS), dtype=np.int64)
    labels[OCT_LABELS.index(name)] = 1
    return labels


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = make_phantom_dataset(tmp_path / "a", "oct", num_images=8, folds=2, size=32, seed=3)
    b = make_phantom_dataset(tmp_path / "b", "oct", num_images=8, folds=2, size=32, seed=3)
    make_phantom_dataset(tmp_path / "c", "oct", num_images=8, folds=2, size=32, seed=4)
    pd.testing.assert_frame_equal(a, b)
    for name in ("images/000000.png", "images/000007.png", "train_0.csv", "val_1.csv", "master.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a/images/000000.png").read_bytes() != (tmp_path / "c/images/000000.png").read_bytes()


def test_image_depends_only_on_seed_and_index():
    # Image 5 of a 6-image set equals image 5 of a 9-image set: per-image streams seeded by (seed, index).
    small, _ = make_phantom_images("oct", 6, 32, seed=1)
    large, _ = make_phantom_images("oct", 9, 32, seed=1)
    np.testing.assert_array_equal(small[5], large[5])


def test_label_prevalence_is_clinically_skewed():
    rng = np.random.default_rng(0)
    labels = np.stack([sample_oct_labels(rng) for _ in range(4000)])
    prevalence = dict(zip(OCT_LABELS, labels.mean(axis=0)))
    nor = labels[:, OCT_LABELS.index("NOR")] == 1
    assert labels.sum(axis=1).min() >= 1  # the all-zero vector stays the CFG null label
    assert (labels[nor].sum(axis=1) == 1).all()  # NOR excludes every finding
    assert 0.35 < prevalence["NOR"] < 0.45
    assert prevalence["NOR"] == max(prevalence.values())
    rare = [name for name, p in prevalence.items() if 0.02 <= p <= 0.06]
    assert len(rare) >= 2, prevalence  # e.g. CNV, RVO, CSC
    assert (labels.sum(axis=1) >= 2).mean() > 0.2  # co-occurrence is common among abnormal scans
    fld_given_wamd = labels[labels[:, OCT_LABELS.index("WAMD")] == 1, OCT_LABELS.index("FLD")].mean()
    assert fld_given_wamd > prevalence["FLD"]


@pytest.mark.parametrize("name", [n for n in OCT_LABELS if n != "NOR"])
def test_each_label_adds_its_own_visible_structure(name):
    # Same seed: anatomy and speckle are shared, so the difference is the label's structure alone.
    seed = image_seed(0, 11)
    normal = draw_oct(_only("NOR"), 64, seed).astype(np.float64)
    sick = draw_oct(_only(name), 64, seed).astype(np.float64)
    changed = np.abs(sick - normal)[:, :, 0] > 40
    assert changed.sum() >= 12, f"{name} changes too few pixels"
    # Structures of two different labels are different.
    other = "FLD" if name != "FLD" else "PED"
    assert np.abs(sick - draw_oct(_only(other), 64, seed)).mean() > 1.0


def test_oct_layers_and_background():
    img = draw_oct(_only("NOR"), 64, image_seed(0, 0))
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert (img[..., 0] == img[..., 1]).all()  # grey B-scan
    assert img[:8].mean() < 40 < img[28:40].mean()  # dark vitreous above bright retina


@pytest.mark.parametrize("size", [8, 33, 62])
def test_every_label_draws_at_sizes_that_are_not_multiples_of_four(size):
    # Wet AMD's RPE gaps come in runs of 4 columns; they once came out shorter than the image at such sizes.
    for labels in [*np.eye(len(OCT_LABELS), dtype=np.int64), np.ones(len(OCT_LABELS), dtype=np.int64)]:
        img = draw_oct(labels, size, image_seed(1, 0))
        assert img.shape == (size, size, 3) and img.dtype == np.uint8


def test_oct_bytes_match_the_snapshot_taken_before_draw_oct_was_split():
    # Regression snapshot (issue 14): SHA-256 of these 24 images, recorded with the single-function draw_oct before it
    # was split into its section helpers (numpy 2 / scipy on x86-64). Every label alone plus all labels together, at
    # two sizes, so every branch and both streams are covered; a byte changes -> the hash changes.
    vectors = [*np.eye(len(OCT_LABELS), dtype=np.int64), np.ones(len(OCT_LABELS), dtype=np.int64)]
    digest = hashlib.sha256()
    for size in (16, 48):
        for i, labels in enumerate(vectors):
            digest.update(draw_oct(labels, size, image_seed(5, i)).tobytes())
    assert digest.hexdigest() == "3305b77460939805a8009efaf0b7949dea66f8a678853bb2ce64bf22f698031a"


def test_fundus_lesions_grow_with_grade():
    seed = image_seed(0, 2)
    base = draw_fundus(0, 64, seed).astype(np.float64)
    changed = [(np.abs(draw_fundus(g, 64, seed) - base).max(axis=2) > 30).sum() for g in range(5)]
    assert changed[0] == 0
    assert changed[1] < changed[2] < changed[3] < changed[4]
    assert base[32, 32, 0] > base[32, 32, 2]  # orange-red fundus
    assert base[0, 0].max() < 10  # black outside the field of view


def test_oct_layout(oct_root):
    master = pd.read_csv(oct_root / "master.csv", index_col=0)
    assert list(master.columns) == ["client_id", "filename", *OCT_LABELS, "patient_name"]
    for mode in ("train", "val", "test"):
        frame = pd.read_csv(oct_root / f"{mode}_0.csv", index_col=0)
        assert list(frame.columns) == list(master.columns)
        assert all((oct_root / f).is_file() for f in frame["filename"])
        pd.testing.assert_frame_equal(frame, master.loc[frame.index])  # the index is the master row


def test_fundus_layout_and_retinamnist_npz(tmp_path):
    from data.datasets import RetinaMNISTDataset

    root = tmp_path / "fundus"
    make_phantom_dataset(root, "fundus", num_images=16, folds=2, size=32, test_frac=0.25, retinamnist_npz=True)
    frame = pd.read_csv(root / "train_0.csv", index_col=0)
    assert list(frame.columns) == ["client_id", "filename", "0", "1", "2", "3", "4", "patient_name"]
    assert (frame[["0", "1", "2", "3", "4"]].sum(axis=1) == 1).all()  # one-hot grades
    with np.load(root / "retinamnist_224.npz") as npz:
        assert sorted(npz.files) == sorted(f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels"))
        assert npz["train_images"].shape == (len(frame), 224, 224, 3) and npz["train_images"].dtype == np.uint8
        assert npz["train_labels"].shape == (len(frame), 1)
        np.testing.assert_array_equal(npz["train_labels"][:, 0], frame[["0", "1", "2", "3", "4"]].to_numpy().argmax(1))
    test = RetinaMNISTDataset(root, "test")
    assert len(test) == len(pd.read_csv(root / "test_0.csv")) and test.labels.shape[1] == 5


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="--retinamnist-npz"):
        make_phantom_dataset(tmp_path, "oct", num_images=20, retinamnist_npz=True)
    with pytest.raises(ValueError, match="--kind"):
        make_phantom_images("xray", 2, 16, 0)
    with pytest.raises(ValueError, match="too few"):
        make_phantom_dataset(tmp_path, "oct", num_images=6, folds=5)


def test_cli(tmp_path, capsys):
    from data.phantoms import build_parser, main

    argv = ["--kind", "oct", "--out", str(tmp_path / "p"), "--num-images", "12", "--folds", "2", "--size", "16"]
    main(build_parser().parse_args([*argv, "--seed", "0", "--test-frac", "0.25"]))
    assert "wrote 12 oct phantoms" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "p").glob("*.csv")} == {
        "master.csv",
        *(f"{m}_{k}.csv" for m in ("train", "val", "test") for k in (0, 1)),
    }
