"""The embedded phantom dataset (docs/DECISIONS.md §C5): procedural OCT B-scans and fundus photographs whose visible
structures depend on their labels, written in the reference's fold-CSV layout (docs/REFERENCE.md §2.1). The images
are drawn by data/phantom_oct.py and data/phantom_fundus.py; this module seeds them, writes the dataset and is its
command line.

A stand-in for plumbing tests and relative comparisons, not a substitute for clinical data.

    python -m data.phantoms --kind oct --out data_local/oct_phantom --num-images 600 --folds 5 --size 64 --seed 0
    python -m data.phantoms --kind fundus --out data_local/retina_phantom --num-images 400 --size 64 --retinamnist-npz

Layout: `{out}/images/{i:06d}.png`, `{out}/master.csv` (all rows) and `{out}/{train,val[,test]}_{k}.csv` with an
index column, `client_id`, `filename`, the label columns (OCT: NOR..RVO; fundus: '0'..'4'), `patient_name`.
Every image is drawn from its own random stream seeded by (seed, index), so any image can be regenerated alone.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from data.datasets import RETINAMNIST_NPZ
from data.labels import OCT_LABELS, RETINAMNIST_LABELS
from data.make_folds import make_folds, split_counts, write_folds
from data.phantom_fundus import GRADE_PROBS, draw_fundus
from data.phantom_oct import draw_oct, sample_oct_labels
from infra.atomic_io import atomic_write, atomic_write_text
from infra.errors import UserError, run_main
from infra.rng import mixed_sequence

PHANTOM_KINDS = ("oct", "fundus")
IMAGES_PER_PATIENT = 2
# Side of the images stored in the RetinaMNIST-shaped npz (MedMNIST+ 224 release).
NPZ_SIZE = 224


# --------------------------------------------------------------------------------------------------------------------
# Dataset writer.


def image_seed(seed: int, index: int) -> np.random.SeedSequence:
    """The seed sequence of image `index` of a phantom set made with `seed`."""
    return mixed_sequence(seed, 0, index)


def patient_labels(kind: str, seed: int, patient: int) -> np.ndarray:
    """The label vector shared by every image of one phantom patient ((11,) multi-hot OCT or (5,) one-hot)."""
    rng = np.random.default_rng(mixed_sequence(seed, 1, patient))
    if kind == "oct":
        return sample_oct_labels(rng)
    onehot = np.zeros(len(RETINAMNIST_LABELS), dtype=np.int64)
    onehot[rng.choice(len(RETINAMNIST_LABELS), p=GRADE_PROBS)] = 1
    return onehot


def draw_phantom(kind: str, labels: np.ndarray, size: int, seed: int, index: int) -> np.ndarray:
    """Image `index` of a phantom set: (S, S, 3) uint8, drawn from its own stream seeded by (seed, index)."""
    if kind == "oct":
        return draw_oct(labels, size, image_seed(seed, index))
    return draw_fundus(int(labels.argmax()), size, image_seed(seed, index))


def make_phantom_images(kind: str, num_images: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw a phantom set in memory (the images make_phantom_dataset writes).

    Args:
        kind: "oct" or "fundus".
        num_images: N.
        size: image side S.
        seed: dataset seed.

    Returns:
        images (N, S, S, 3) uint8 and labels (N, K) int64 (K = 11 or 5); image i belongs to patient
        i // IMAGES_PER_PATIENT.
    """
    labels = phantom_labels(kind, num_images, seed)
    images = np.stack([draw_phantom(kind, labels[i], size, seed, i) for i in range(num_images)])
    return images, labels


def phantom_labels(kind: str, num_images: int, seed: int) -> np.ndarray:
    """(N, K) int64 labels of a phantom set; the images of one patient share their labels."""
    if kind not in PHANTOM_KINDS:
        raise UserError(f"--kind must be one of {PHANTOM_KINDS}, got {kind!r}")
    return np.stack([patient_labels(kind, seed, i // IMAGES_PER_PATIENT) for i in range(num_images)])


def _write_retinamnist_npz(root: Path, labels: np.ndarray, split: dict[str, pd.DataFrame]) -> None:
    """Write `{root}/retinamnist_224.npz` from the phantom PNGs: {train,val,test}_images (N, 224, 224, 3) uint8 and
    *_labels (N, 1) uint8 grades, the layout medmnist 3 reads.

    Its train/val splits are those of fold 0 and its test split is the test split (fold 0's validation rows when
    the phantom set has no test split).
    """
    arrays = {}
    for name in ("train", "val", "test"):
        part = split.get(name, split["val"])
        resized = []
        for filename in part["filename"]:
            with Image.open(root / filename) as img:
                resized.append(np.asarray(img.convert("RGB").resize((NPZ_SIZE, NPZ_SIZE), Image.BICUBIC)))
        arrays[f"{name}_images"] = np.stack(resized).astype(np.uint8)
        arrays[f"{name}_labels"] = labels[part.index.to_numpy()].argmax(axis=1).astype(np.uint8)[:, None]
    atomic_write(root / RETINAMNIST_NPZ, lambda f: np.savez_compressed(f, **arrays))


def make_phantom_dataset(
    out: str | Path,
    kind: str = "oct",
    num_images: int = 600,
    folds: int = 5,
    size: int = 64,
    seed: int = 0,
    test_frac: float = 0.0,
    retinamnist_npz: bool = False,
) -> pd.DataFrame:
    """Write a phantom dataset: PNGs, master.csv and fold CSVs in the reference layout.

    Args:
        out: dataset root to create.
        kind: "oct" (11 multi-hot labels) or "fundus" (5 one-hot grades, columns '0'..'4').
        num_images: number of images N.
        folds: number of folds K (stratified, patients never split; see data/make_folds.py).
        size: image side in pixels.
        seed: dataset seed; the same arguments give byte-identical files.
        test_frac: fraction of patients held out as `test_{k}.csv` (0 for none).
        retinamnist_npz: also write retinamnist_224.npz (fundus only) for the RetinaMNIST code path.

    Returns:
        Per-label counts of every split (data.make_folds.split_counts).
    """
    if retinamnist_npz and kind != "fundus":
        raise UserError("--retinamnist-npz needs --kind fundus")
    if num_images < 2 * folds * IMAGES_PER_PATIENT:
        raise UserError(
            f"--num-images {num_images} is too few for {folds} folds of {IMAGES_PER_PATIENT}-image patients"
        )
    labels = phantom_labels(kind, num_images, seed)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    names = list(OCT_LABELS) if kind == "oct" else list(RETINAMNIST_LABELS)
    filenames = [f"images/{i:06d}.png" for i in range(num_images)]
    for i, name in enumerate(filenames):
        Image.fromarray(draw_phantom(kind, labels[i], size, seed, i)).save(out / name)

    frame = pd.DataFrame({"client_id": [f"phantom_{i}" for i in range(num_images)], "filename": filenames})
    frame = pd.concat([frame, pd.DataFrame(labels, columns=names)], axis=1)
    frame["patient_name"] = [f"patient_{i // IMAGES_PER_PATIENT}" for i in range(num_images)]
    atomic_write_text(out / "master.csv", frame.to_csv())
    splits = make_folds(frame, names, folds, test_frac=test_frac, patient_col="patient_name", seed=seed)
    write_folds(splits, out)
    if retinamnist_npz:
        _write_retinamnist_npz(out, labels, splits[0])
    return split_counts(splits, names)


def main(args: argparse.Namespace) -> None:
    counts = make_phantom_dataset(
        args.out, args.kind, args.num_images, args.folds, args.size, args.seed, args.test_frac, args.retinamnist_npz
    )
    print(f"wrote {args.num_images} {args.kind} phantoms ({args.size} px) and {args.folds} folds to {args.out}")
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(counts.to_string())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Write the embedded phantom dataset (OCT B-scans or fundus images).")
    parser.add_argument("--kind", type=str, choices=PHANTOM_KINDS, default="oct", help="image type")
    parser.add_argument("--out", type=str, required=True, help="dataset root to write")
    parser.add_argument("--num-images", type=int, default=600, help="number of images")
    parser.add_argument("--folds", type=int, default=5, help="number of folds")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed")
    parser.add_argument("--test-frac", type=float, default=0.0, help="fraction of patients held out as test split")
    parser.add_argument(
        "--retinamnist-npz",
        action="store_true",
        help=f"fundus only: also write {RETINAMNIST_NPZ} (images resized to {NPZ_SIZE} px)",
    )
    return parser


if __name__ == "__main__":
    run_main("python -m data.phantoms", lambda: main(build_parser().parse_args()))
