"""Checkpoint I/O: one save function, one load function, and `find_model` for weights (SPEC C2.1, STYLE 8).

A checkpoint keeps the reference layout, a dict with "model", "ema", "opt" and "args" (an `argparse.Namespace`).
Loading never unpickles arbitrary objects: `torch.load(weights_only=True)` with `argparse.Namespace` as the only extra
allowed class, so reference checkpoints load while a tampered file cannot run code.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from infra.atomic_io import atomic_torch_save

# Classes, beyond tensors and containers, that a checkpoint may hold: the reference pickles its parsed flags.
SAFE_GLOBALS = [argparse.Namespace]
MODULE_PREFIX = "module."


def save_checkpoint(path: str | Path, checkpoint: Mapping[str, Any] | None = None, **entries: Any) -> None:
    """Write a checkpoint atomically (a reader never sees a half-written file).

    Args:
        path: target file; its folder is created when missing.
        checkpoint: entries to save, e.g. {"model": ..., "ema": ..., "opt": ..., "args": ...}.
        **entries: further entries, merged over `checkpoint` (either form may be used alone).
    """
    atomic_torch_save({**(checkpoint or {}), **entries}, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a whole checkpoint onto the CPU through the restricted (weights-only) unpickler.

    Args:
        path: checkpoint file.

    Returns:
        The saved dict (or a bare state dict, when that is what the file holds).

    Raises:
        FileNotFoundError: when `path` is not a file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        return torch.load(path, map_location="cpu", weights_only=True)


def strip_module_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Remove the `module.` prefix that DDP/accelerate wrappers add to parameter names."""
    return {(k[len(MODULE_PREFIX) :] if k.startswith(MODULE_PREFIX) else k): v for k, v in state_dict.items()}


def find_model(path: str | Path) -> dict[str, Any]:
    """Model weights from a checkpoint: its "ema" entry when present, else the file's dict as a state dict.

    Args:
        path: a full checkpoint (reference layout) or a bare state dict.

    Returns:
        State dict with any `module.` prefix removed, on the CPU.

    Raises:
        FileNotFoundError: when `path` is not a file.
    """
    return model_weights(load_checkpoint(path))


def model_weights(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The weights `find_model` returns, from an already loaded checkpoint dict (EMA entry, no `module.`)."""
    return strip_module_prefix(checkpoint["ema"] if "ema" in checkpoint else checkpoint)
