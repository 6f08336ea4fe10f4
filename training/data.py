"""train.py's data: the training set (latents or pixels), its per-epoch order, and the fixed validation batch.

Every input is checked here, before the model is built: image files on opening (integrity, mode, size), latent
folders for pairing and shape, label counts against `--num-classes`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset

from data.latents import LatentDataset
from data.transforms import image_transform
from infra.errors import UserError
from infra.rng import keyed_seed


def build_image_dataset(args: argparse.Namespace, split: str, transform: Callable) -> tuple[Dataset, list[str]]:
    """The raw image dataset of `--data-path` for a split, and its label names (from the dataset, not the path)."""
    from data.select import build_dataset, label_names_for, pick_dataset

    kind = pick_dataset(args.data_path, args.dataset)
    ds = build_dataset(
        kind,
        args.data_path,
        split=split,
        fold=args.fold,
        transform=transform,
        label_columns=args.label_columns,
        min_size=args.image_size,  # every image file is checked (and must not be smaller than the crop) up front
    )
    return ds, list(label_names_for(kind, args.label_columns))


def load_training_set(args: argparse.Namespace) -> tuple[Dataset, int]:
    """The checked training set of fold `--fold` and the network's input side.

    Pixels (`--image_space`): the fold's training images, input side `--image-size`. Latents: the
    `features_{fold}/labels_{fold}` pairs of `--feature-path`, whose shape must be (in_channels, size / 8, size / 8),
    input side `--image-size / 8`.

    Returns:
        The dataset (items (x, y)) and the input side.

    Raises:
        ValueError: labels that do not match `--num-classes`, latents of the wrong shape, or fewer items than
            `--global-batch-size` (batches drop the remainder).
    """
    if args.image_space:
        input_size = args.image_size
        train_set, names = build_image_dataset(args, "train", image_transform(args.image_size))
        if len(names) != args.num_classes:
            raise UserError(
                f"--data-path {args.data_path} has {len(names)} labels, --num-classes is {args.num_classes}"
            )
    else:
        input_size = args.image_size // 8
        train_set = LatentDataset(args.feature_path, args.fold, cache=args.cache)
        train_set.check_shapes((args.in_channels, input_size, input_size), args.num_classes)
    if len(train_set) < args.global_batch_size:
        raise UserError(
            f"fold {args.fold} has {len(train_set)} training items, fewer than --global-batch-size "
            f"{args.global_batch_size} (batches drop the remainder)"
        )
    return train_set, input_size


def load_validation_batch(args: argparse.Namespace, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed real validation batch: `--val_samples` images ([-1, 1]) and their labels, drawn once by a seed.

    Returns:
        (N, 3, H, W) images and (N, K) float labels.
    """
    ds, names = build_image_dataset(args, "val", image_transform(args.image_size))
    if len(names) != args.num_classes:
        raise UserError(
            f"--data-path {args.data_path} has {len(names)} labels, but --num-classes is {args.num_classes}"
        )
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds), generator=g)[: args.val_samples].tolist()
    xs, ys = zip(*(ds[i] for i in idx))
    return torch.stack(xs), torch.stack([torch.as_tensor(y).reshape(-1) for y in ys]).float()


def epoch_batches(
    num_items: int, per_rank_batch: int, world_size: int, rank: int, seed: int, epoch: int
) -> list[list[int]]:
    """This rank's index batches for one epoch: a permutation seeded by (seed, epoch), sharded, drop_last.

    Deterministic from its arguments, so a resumed run sees exactly the order an uninterrupted run would.
    """
    g = torch.Generator().manual_seed(keyed_seed(seed, epoch))
    perm = torch.randperm(num_items, generator=g).tolist()
    global_batch = per_rank_batch * world_size
    start = rank * per_rank_batch
    return [
        perm[b * global_batch + start : b * global_batch + start + per_rank_batch]
        for b in range(num_items // global_batch)
    ]


def epoch_loader(
    train_set: Dataset, batches: list[list[int]], args: argparse.Namespace, epoch: int, pin_memory: bool
) -> DataLoader:
    """A loader over `batches` (this rank's remaining batches of `epoch`).

    The loader gets its own generator, seeded by (seed, epoch): drawing its base seed from the global stream would
    make a resumed run's random numbers differ from an uninterrupted one.
    """
    return DataLoader(
        train_set,
        batch_sampler=batches,
        num_workers=args.num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(keyed_seed(args.global_seed, epoch)),
    )
