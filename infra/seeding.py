"""Seeding of Python, NumPy and torch for a rank of a job, and saving, restoring and isolating those global streams."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch


def rank_seed(global_seed: int, world_size: int, rank: int) -> int:
    """The seed of one rank: `global_seed * world_size + rank` (the DiT convention)."""
    return global_seed * world_size + rank


def seed_everything(seed: int) -> None:
    """Seed Python's `random`, NumPy's legacy global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def global_rng_state() -> dict[str, Any]:
    """This process's Python, NumPy, torch CPU and (when present) CUDA random states.

    The form holds only tensors, numbers and lists, so a checkpoint that stores it still loads with
    `torch.load(weights_only=True)`.

    Returns:
        {"python": [version, state list, gauss], "numpy": {...}, "torch": ByteTensor[, "cuda": [ByteTensor, ...]]}.
    """
    py_version, py_internal, py_gauss = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: dict[str, Any]) -> None:
    """Restore what `global_rng_state` returned (the CUDA entry only when CUDA is present)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def isolated_global_rng() -> Iterator[None]:
    """Run a block without consuming or perturbing the global random streams of the caller.

    Whatever the block draws from Python's `random`, NumPy's global generator or torch's default generators (for
    example a network initialised randomly before its weights are loaded), the streams continue afterwards exactly
    where they were. Training uses this around validation, so an interrupted and resumed run draws the same numbers
    as an uninterrupted one whether or not, and wherever, validation ran.
    """
    saved = global_rng_state()
    try:
        yield
    finally:
        set_global_rng_state(saved)
