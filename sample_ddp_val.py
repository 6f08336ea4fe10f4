"""Generate a synthetic copy of the validation split: one image per validation label vector (docs/REFERENCE.md §3.4).

Reference launch (docs/REFERENCE.md §1):
    torchrun --nnodes=1 --nproc_per_node=1 --master_port 29506 sample_ddp_val.py --expand_ratio 1 --model GeCA-S \
        --data-path data/oct_multilabel/ --fold 0 --num-sampling-steps 250 \
        --ckpt ./results_oct_GeCA/000-GeCA-S-0/checkpoints/best_ckpt.pt --sample-dir ./synthetic_oct/
Writes `{sample-dir}/{model}-GS-fold-...-seed-{seed}/gen_samples_val/{index:06d}.png` and `val_syn_{fold}.csv`.
RetinaMNIST uses its test split (docs/DECISIONS.md §C2.7).
"""

from __future__ import annotations

import argparse

import numpy as np

from infra.errors import UserError, run_main
from infra.flags import add_in_channels_flag
from synthesis.cli import add_sampling_args, parse_sampling_args, repeat_labels
from synthesis.script import run_sampling_script


def validation_labels(args: argparse.Namespace) -> np.ndarray:
    """The label rows of `val_{fold}.csv` in file order (RetinaMNIST: the test split), as (N, K) integers."""
    from data.select import evaluation_labels, pick_dataset

    kind = pick_dataset(args.data_path, args.dataset)
    return evaluation_labels(kind, args.data_path, args.fold, args.label_columns)


def main(args: argparse.Namespace) -> dict:
    """Sample the validation copy of one fold; returns the run summary."""

    def labels() -> list[np.ndarray]:
        rows = validation_labels(args)
        if rows.shape[1] != args.num_classes:
            raise UserError(f"{args.data_path}: {rows.shape[1]} label columns, --num-classes is {args.num_classes}")
        return repeat_labels(list(rows), args.expand_ratio, shuffle_seed=None)

    return run_sampling_script(args, "sample_ddp_val", labels, "gen_samples_val", f"val_syn_{args.fold}.csv")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_sampling_args(p)
    p.add_argument("--data-path", type=str, required=True, help="raw dataset root with val_{fold}.csv")
    add_in_channels_flag(p)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The checked flags; model-shape flags left out come from the checkpoint (`parse_sampling_args`)."""
    return parse_sampling_args(build_parser(), argv)


if __name__ == "__main__":
    run_main("sample_ddp_val.py", lambda: main(parse_args()))
