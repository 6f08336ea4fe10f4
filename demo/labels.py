"""Write the training label files `labels_{fold}/{i}.npy` that `sample_ddp.py` reads, without encoding latents.

`extract_features.py` writes these files next to the SD-VAE latents (SPEC 3.1). A model trained in image space
(`train.py --image_space`) needs no latents, and the VAE cannot be loaded offline, so the demo writes only the label
half of that layout: row i of `train_{fold}.csv` becomes `{features-path}/labels_{fold}/{i}.npy`, a (1, K) int64
array, exactly as extract_features.py would name and shape it.

    python -m demo.labels --data-path demo_out/data/oct_phantom --dataset oct --features-path demo_out/features --fold 0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from data.datasets import fold_csv_path, label_names_for
from data.select import add_dataset_arguments, pick_dataset
from data.validate import validate_fold_csv
from infra.atomic_io import atomic_np_save


def write_label_files(labels: np.ndarray, label_dir: Path) -> int:
    """Replace the contents of `label_dir` by one (1, K) int64 file per row of `labels`, named `{i}.npy`.

    Files of an earlier, larger dataset are removed so that the folder holds exactly these rows.

    Args:
        labels: (N, K) integer label rows in training-split order.
        label_dir: the `labels_{fold}` folder.

    Returns:
        N, the number of files written.
    """
    label_dir.mkdir(parents=True, exist_ok=True)
    for stale in label_dir.glob("*.npy"):
        stale.unlink()
    for i, row in enumerate(np.asarray(labels, dtype=np.int64)):
        atomic_np_save(label_dir / f"{i}.npy", row.reshape(1, -1))
    return len(labels)


def main(args: argparse.Namespace) -> Path:
    """Write the label files of one fold's training split; returns the `labels_{fold}` folder."""
    kind = pick_dataset(args.data_path, args.dataset)
    if kind == "retinamnist":
        raise ValueError("--data-path: RetinaMNIST is not a fold-CSV dataset; use extract_features.py for it")
    names = label_names_for(kind, args.label_columns)
    _, labels = validate_fold_csv(
        fold_csv_path(args.data_path, "train", args.fold), args.data_path, names, image_check="none"
    )
    label_dir = Path(args.features_path) / f"labels_{args.fold}"
    count = write_label_files(labels, label_dir)
    print(f"wrote {count} label files ({len(names)} labels each: {', '.join(names)}) to {label_dir}")
    return label_dir


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-path", type=str, required=True, help="dataset root with train_{fold}.csv")
    add_dataset_arguments(p)
    p.add_argument("--features-path", type=str, default="features", help="folder that receives labels_{fold}/")
    p.add_argument("--fold", type=int, default=0, help="fold: reads train_{fold}.csv, writes labels_{fold}/")
    return p


if __name__ == "__main__":
    main(build_parser().parse_args())
