"""Encode the training images of one fold into SD-VAE latents (docs/REFERENCE.md §3.1).

Reference launch (docs/REFERENCE.md §1):
    torchrun --nnodes=1 --nproc_per_node=1 --master_port 29504 extract_features.py \
        --data-path data/oct_multilabel/ --features-path store/oct_features/ --global-batch-size 128 --fold 0
Also runs as a plain process: `python extract_features.py --data-path ... --vae <folder>`.

Writes `{features-path}/features_{fold}/{i}.npy` (float32, (1, 4, S/8, S/8): a posterior sample x the VAE's
`scaling_factor`, 0.18215 for SD-VAE) and `{features-path}/labels_{fold}/{i}.npy` (int64, (1, K)) for every row i
of the training split, plus `{features-path}/manifest_{fold}.csv` (index, source filename, flip). Image i is
flipped (OCT and CSV data, once, as the reference does) and its posterior noise drawn from streams seeded by
(--global-seed, i), so any number of processes gives the same files. Ranks encode disjoint shards (i % world_size);
complete pairs are skipped, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from data.datasets import build_dataset
from data.select import add_dataset_arguments, pick_dataset
from data.transforms import image_transform
from data.vae import encode_latents, load_vae
from infra.atomic_io import atomic_np_save, atomic_write_text
from infra.distributed import all_gather_objects, barrier, cleanup_distributed, setup_distributed
from infra.errors import UserError, run_main
from infra.flags import (
    add_ckpt_every_flag,
    add_epochs_flag,
    add_fold_flag,
    add_global_batch_size_flag,
    add_global_seed_flag,
    add_image_size_flag,
    add_log_every_flag,
    add_model_flag,
    add_num_classes_flag,
    add_num_workers_flag,
    add_results_dir_flag,
    add_tf32_flag,
    add_vae_flag,
    check_flag_values,
)
from infra.logs import create_logger
from infra.precision import set_tf32
from infra.provenance import check_settings, label_item, source_identity, write_settings
from infra.rng import mixed_seed, sample_generators
from infra.seeding import rank_seed, seed_everything
from models import DiT_models

# --num-classes default of the reference; any other value must equal the dataset's label count.
_NUM_CLASSES_DEFAULT = 1000
# Stream tags under one (global seed, image index) pair.
_NOISE_STREAM, _FLIP_STREAM = 0, 1


def sample_seed(global_seed: int, index: int, stream: int = _NOISE_STREAM) -> int:
    """A 63-bit seed for image `index`, independent of world size and batch (SeedSequence mixing)."""
    return mixed_seed(global_seed, index, stream)


def flip_decision(global_seed: int, index: int) -> bool:
    """Whether image `index` is flipped: the reference's RandomHorizontalFlip(p=0.5), drawn once per image."""
    return bool(np.random.default_rng(sample_seed(global_seed, index, _FLIP_STREAM)).random() < 0.5)


def shard_indices(num_items: int, rank: int, world_size: int) -> list[int]:
    """The dataset rows of one rank: i with i % world_size == rank (disjoint, no padding)."""
    return list(range(rank, num_items, world_size))


def output_dirs(features_path: str | Path, fold: int) -> tuple[Path, Path]:
    """`{features_path}/features_{fold}` and `{features_path}/labels_{fold}` (the reference's layout)."""
    root = Path(features_path)
    return root / f"features_{fold}", root / f"labels_{fold}"


class _FlippedRows(Dataset):
    """Rows `indices` of `dataset` as (index, image, label), image flipped along its width where `flips` says so."""

    def __init__(self, dataset: Dataset, indices: list[int], flips: dict[int, bool]) -> None:
        self.dataset, self.indices, self.flips = dataset, indices, flips

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        index = self.indices[j]
        image, label = self.dataset[index]
        if self.flips[index]:
            # After the centre crop, as the reference's transform order has it (docs/REFERENCE.md §2.3).
            image = image.flip(-1)
        return index, image, label


def check_args(args: argparse.Namespace, world_size: int) -> None:
    """Reject bad flag values before any work, naming the flag: each flag's range (checked at parsing, and again
    here for a Namespace built in code), then the batch's split over the processes."""
    check_flag_values(build_parser(), args)
    if args.global_batch_size < world_size or args.global_batch_size % world_size != 0:
        raise UserError(
            f"--global-batch-size {args.global_batch_size} must be a multiple of the world size {world_size}"
        )


def latent_settings(args: argparse.Namespace, kind: str, flip: bool) -> dict:
    """What determines a fold's latents besides each one's image and label: the VAE, the crop size, the flips and
    the seed of the per-image noise."""
    return {
        "dataset": kind,
        "fold": args.fold,
        "vae": source_identity(args.vae),
        "image_size": args.image_size,
        "flip": flip,
        "global_seed": args.global_seed,
    }


def main(args: argparse.Namespace) -> None:
    dist = setup_distributed()
    try:
        check_args(args, dist.world_size)
        set_tf32(args.tf32)
        seed_everything(rank_seed(args.global_seed, dist.world_size, dist.rank))
        logger = create_logger("extract_features", rank=dist.rank)

        # The training split, checked (columns, labels, duplicates, image files) before anything is written.
        kind = pick_dataset(args.data_path, args.dataset)
        dataset = build_dataset(
            kind,
            args.data_path,
            "train",
            args.fold,
            image_transform(args.image_size),
            args.label_columns,
            min_size=args.image_size,
        )
        num_labels = len(dataset.label_names)
        if args.num_classes not in (_NUM_CLASSES_DEFAULT, num_labels):
            raise UserError(f"--num-classes {args.num_classes} does not match the {num_labels} labels of {kind} data")
        flip = kind != "retinamnist" and not args.no_flip  # the reference flips OCT/TNBC images, not RetinaMNIST

        # Output folders. Pairs of an earlier run are continued only when it had this run's settings.
        feature_dir, label_dir = output_dirs(args.features_path, args.fold)
        record = Path(args.features_path) / f"settings_{args.fold}.json"
        settings = latent_settings(args, kind, flip)
        items = [f"{dataset.source_name(i)} {label_item(y)}" for i, y in enumerate(dataset.labels)]
        existing = {int(p.stem) for d in (feature_dir, label_dir) for p in d.glob("*.npy") if p.stem.isdigit()}
        where = f"latent/label pairs in {feature_dir} and {label_dir}"
        check_settings(record, settings, items, existing, where, "--features-path")
        if dist.is_main:
            write_settings(record, settings, items)
            feature_dir.mkdir(parents=True, exist_ok=True)
            label_dir.mkdir(parents=True, exist_ok=True)
        barrier()

        # This rank's shard; pairs already on disk (written atomically, so complete) are skipped.
        mine = shard_indices(len(dataset), dist.rank, dist.world_size)
        flips = {i: flip and flip_decision(args.global_seed, i) for i in mine}
        todo = [i for i in mine if not ((feature_dir / f"{i}.npy").is_file() and (label_dir / f"{i}.npy").is_file())]
        logger.info(
            f"{kind} data, {len(dataset)} images of fold {args.fold}, {num_labels} labels, flip={flip}; "
            f"{dist.world_size} process(es) on {dist.device}; rank 0 encodes {len(todo)} of {len(mine)}"
        )

        # Encode: per-image noise streams make each latent independent of batch and world size.
        if todo:
            vae = load_vae(args.vae, dist.device)
            loader = DataLoader(
                _FlippedRows(dataset, todo, flips),
                batch_size=args.global_batch_size // dist.world_size,
                shuffle=False,
                num_workers=args.num_workers,
                drop_last=False,
            )
            for index, x, y in tqdm(loader, disable=not dist.is_main, desc="encoding", unit="batch"):
                index = index.tolist()
                generators = sample_generators([sample_seed(args.global_seed, i) for i in index])
                z = encode_latents(vae, x.to(dist.device), generators).float().cpu().numpy()  # (B, 4, S/8, S/8)
                labels = y.numpy().astype(np.int64)  # (B, K)
                for k, i in enumerate(index):
                    atomic_np_save(feature_dir / f"{i}.npy", z[k : k + 1])
                    atomic_np_save(label_dir / f"{i}.npy", labels[k : k + 1])

        # Manifest of every index (encoded now or before), gathered from all ranks.
        records = [(i, dataset.source_name(i), int(flips[i])) for i in mine]
        gathered = [r for part in all_gather_objects(records) for r in part]
        if dist.is_main:
            manifest = pd.DataFrame(sorted(gathered), columns=["index", "filename", "flip"])
            atomic_write_text(Path(args.features_path) / f"manifest_{args.fold}.csv", manifest.to_csv(index=False))
            logger.info(f"Done: {len(manifest)} latent/label pairs in {feature_dir} and {label_dir}")
        barrier()
    finally:
        cleanup_distributed()


def build_parser() -> argparse.ArgumentParser:
    """The reference's flags (several accepted without effect, so its command lines run unchanged) and --no-flip."""
    parser = argparse.ArgumentParser(description="Encode a fold's training images into SD-VAE latents.")
    parser.add_argument("--data-path", type=str, required=True, help="dataset root (fold CSVs, or retinamnist_224.npz)")
    parser.add_argument("--features-path", type=str, default="features", help="output folder of the latents")
    add_results_dir_flag(parser, ignored=True)
    add_model_flag(parser, DiT_models, ignored=True)
    add_image_size_flag(parser)
    add_num_classes_flag(parser, default=_NUM_CLASSES_DEFAULT)
    add_epochs_flag(parser, default=1400, ignored=True)
    add_global_batch_size_flag(parser)
    add_global_seed_flag(parser)
    add_vae_flag(parser)
    add_num_workers_flag(parser)
    add_log_every_flag(parser, default=100, ignored=True)
    add_ckpt_every_flag(parser, default=50_000, ignored=True)
    add_fold_flag(parser)
    add_dataset_arguments(parser)
    parser.add_argument(
        "--no-flip",
        action="store_true",
        help="do not flip OCT/CSV images (the reference flips each with probability 0.5, once)",
    )
    add_tf32_flag(parser)
    return parser


if __name__ == "__main__":
    run_main("extract_features.py", lambda: main(build_parser().parse_args()))
