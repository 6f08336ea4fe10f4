"""The latent dataset written by extract_features.py: `features_{fold}/{i}.npy` and `labels_{fold}/{i}.npy` pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from infra.errors import UserError


def latent_pair_files(features_path: str | Path, fold: int) -> tuple[list[Path], list[Path]]:
    """The feature and label files of a fold, paired by name, in the reference's lexicographic order.

    Raises:
        FileNotFoundError: a folder is missing.
        ValueError: the fold is empty, or the two folders do not hold the same file names.
    """
    feat_dir = Path(features_path) / f"features_{fold}"
    label_dir = Path(features_path) / f"labels_{fold}"
    for d in (feat_dir, label_dir):
        if not d.is_dir():
            raise FileNotFoundError(
                f"{d} does not exist: run extract_features.py with --fold {fold} first "
                f"(--feature-path/--features-path {features_path})"
            )
    feats = sorted(p.name for p in feat_dir.glob("*.npy"))
    labels = sorted(p.name for p in label_dir.glob("*.npy"))
    if not feats:
        raise UserError(f"{feat_dir} holds no .npy latents (empty fold {fold})")
    if len(feats) != len(labels) or feats != labels:
        missing = sorted(set(feats) ^ set(labels))[:5]
        raise UserError(
            f"{feat_dir} has {len(feats)} latents but {label_dir} has {len(labels)} labels; "
            f"unpaired files include {missing}"
        )
    return [feat_dir / n for n in feats], [label_dir / n for n in labels]


class LatentDataset(Dataset):
    """Pairs of (latent (1, C, h, w) float32, label (1, K) int64) as the reference's CustomDataset returns them.

    Args:
        features_path: folder holding `features_{fold}/` and `labels_{fold}/`.
        fold: fold number.
        cache: keep every array in memory after the first read (`--cache`).
    """

    def __init__(self, features_path: str | Path, fold: int, cache: bool = False):
        self.feature_files, self.label_files = latent_pair_files(features_path, fold)
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.feature_files)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cache is not None and idx in self._cache:
            return self._cache[idx]
        item = (torch.from_numpy(np.load(self.feature_files[idx])), torch.from_numpy(np.load(self.label_files[idx])))
        if self._cache is not None:
            self._cache[idx] = item
        return item

    def check_shapes(self, latent_shape: tuple[int, int, int], num_classes: int) -> None:
        """Fail early when the first pair does not match the model (`--image-size`, `--num-classes`)."""
        x, y = self[0]
        if tuple(x.shape[-3:]) != tuple(latent_shape):
            raise UserError(
                f"{self.feature_files[0]} has latent shape {tuple(x.shape)}, but --image-size and "
                f"--in_channels give {tuple(latent_shape)}"
            )
        if y.shape[-1] != num_classes:
            raise UserError(f"{self.label_files[0]} has {y.shape[-1]} labels, but --num-classes is {num_classes}")
