"""Generate the augmentation set: every training label vector `--expand_ratio` times (docs/REFERENCE.md §3.3).

Reference launch (docs/REFERENCE.md §1):
    torchrun --nnodes=1 --nproc_per_node=1 --master_port 29506 sample_ddp.py --per-proc-batch-size 64 \
        --expand_ratio 5 --model GeCA-S --data-path ./store/oct_features/ --fold 0 --num-sampling-steps 250 \
        --ckpt ./results_oct_GeCA/000-GeCA-S-0/checkpoints/best_ckpt.pt --sample-dir ./synthetic_oct/
Writes `{sample-dir}/{model}-GS-fold-...-seed-{seed}/gen_samples/{index:06d}.png` and `train_syn_{fold}.csv`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from infra.errors import UserError, run_main
from synthesis.cli import add_sampling_args, parse_sampling_args, repeat_labels
from synthesis.script import run_sampling_script


def training_labels(features_path: str, fold: int, num_classes: int) -> list[np.ndarray]:
    """Every saved training label vector `labels_{fold}/{i}.npy` (each (1, K)), as (K,) integer arrays."""
    label_dir = Path(features_path) / f"labels_{fold}"
    files = sorted(label_dir.glob("*.npy"))
    if not files:
        raise FileNotFoundError(
            f"no label files in {label_dir}: --data-path must be the features folder written by "
            f"extract_features.py for --fold {fold}"
        )
    labels = []
    for f in files:
        y = np.load(f).reshape(-1)
        if y.shape[0] != num_classes:
            raise UserError(f"{f} has {y.shape[0]} labels, but --num-classes is {num_classes}")
        labels.append(y.astype(np.int64))
    return labels


def main(args: argparse.Namespace) -> dict:
    """Sample the augmentation set of one fold; returns the run summary."""

    def labels() -> list[np.ndarray]:
        base = training_labels(args.data_path, args.fold, args.num_classes)
        return repeat_labels(base, args.expand_ratio, shuffle_seed=args.global_seed)

    return run_sampling_script(args, "sample_ddp", labels, "gen_samples", f"train_syn_{args.fold}.csv")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_sampling_args(p)
    p.add_argument("--data-path", type=str, required=True, help="features folder holding labels_{fold}/")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The checked flags; model-shape flags left out come from the checkpoint (`parse_sampling_args`)."""
    return parse_sampling_args(build_parser(), argv)


if __name__ == "__main__":
    run_main("sample_ddp.py", lambda: main(parse_args()))
