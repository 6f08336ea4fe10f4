"""Seeding of Python, NumPy and torch for a rank of a job."""

from __future__ import annotations

import random

import numpy as np
import torch


def rank_seed(global_seed: int, world_size: int, rank: int) -> int:
    """The seed of one rank: `global_seed * world_size + rank` (the DiT convention, STYLE 7)."""
    return global_seed * world_size + rank


def seed_everything(seed: int) -> None:
    """Seed Python's `random`, NumPy's legacy global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
