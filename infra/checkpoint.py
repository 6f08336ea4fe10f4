"""Checkpoint I/O: one save function, one load function, and `find_model` for weights (docs/DECISIONS.md §C2.1).

A checkpoint keeps the reference layout, a dict with "model", "ema", "opt" and "args" (an `argparse.Namespace`).
Only finite states are written. Loading never unpickles arbitrary objects: `torch.load(weights_only=True)` with
`argparse.Namespace` as the only extra allowed class, so reference checkpoints load while a tampered file cannot run
code; a file that cannot be read is reported with its path and what the caller expected.
"""

from __future__ import annotations

import argparse
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from infra.atomic_io import atomic_torch_save
from infra.errors import UserError

# Classes, beyond tensors and containers, that a checkpoint may hold: the reference pickles its parsed flags.
SAFE_GLOBALS = [argparse.Namespace]
MODULE_PREFIX = "module."


class UnsafeCheckpointError(pickle.UnpicklingError, ValueError):
    """A checkpoint holds objects the restricted unpickler refuses (anything beyond tensors, containers, Namespace)."""


class NonFiniteCheckpointError(FloatingPointError):
    """A checkpoint to be written holds NaN or infinite values; nothing was written."""


def non_finite_entries(obj: Any, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors inside `obj` (nested dicts, lists, tuples) with a NaN or infinite value.

    Args:
        obj: a checkpoint dict or any part of it.
        prefix: name of `obj` itself, prepended to the reported names.

    Returns:
        Dotted names such as "model.final_layer.linear.weight" or "opt.state.3.exp_avg_sq", in traversal order.
    """
    if isinstance(obj, torch.Tensor):
        return [prefix or "<tensor>"] if obj.is_floating_point() and not bool(torch.isfinite(obj).all()) else []
    if isinstance(obj, Mapping):
        items = obj.items()
    elif isinstance(obj, list | tuple):
        items = enumerate(obj)
    else:
        return []
    found = []
    for key, value in items:
        found += non_finite_entries(value, f"{prefix}.{key}" if prefix else str(key))
    return found


def save_checkpoint(path: str | Path, checkpoint: Mapping[str, Any] | None = None, **entries: Any) -> None:
    """Write a checkpoint atomically (a reader never sees a half-written file), refusing non-finite states.

    A checkpoint whose weights or optimiser moments hold NaN or infinity would only reproduce the failure when
    resumed or sampled, and it would replace the last good file, so it is never written.

    Args:
        path: target file; its folder is created when missing.
        checkpoint: entries to save, e.g. {"model": ..., "ema": ..., "opt": ..., "args": ...}.
        **entries: further entries, merged over `checkpoint` (either form may be used alone).

    Raises:
        NonFiniteCheckpointError: some floating-point tensor is not finite (the first ones are named); the file at
            `path`, if any, is left as it was.
    """
    state = {**(checkpoint or {}), **entries}
    bad = non_finite_entries(state)
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise NonFiniteCheckpointError(
            f"refusing to write {path}: non-finite values in {', '.join(bad[:5])}{more}; the previous file is kept"
        )
    atomic_torch_save(state, path)


def load_checkpoint(path: str | Path, required: Sequence[str] = (), expected: str = "a checkpoint") -> dict[str, Any]:
    """Load a whole checkpoint onto the CPU through the restricted (weights-only) unpickler.

    Every failure names the file and what was expected of it, never only the unpickler's own text.

    Args:
        path: checkpoint file.
        required: keys the loaded dict must have (e.g. those of a resumable training checkpoint).
        expected: what the caller needs, for messages, e.g. "a resumable checkpoints/last.pt of train.py".

    Returns:
        The saved dict (or a bare state dict, when that is what the file holds).

    Raises:
        FileNotFoundError: `path` is not a file.
        UnsafeCheckpointError: (a ValueError) the file holds objects that are never unpickled.
        ValueError: the file is not a readable torch checkpoint (garbage, truncated), does not hold a dict, or lacks
            a `required` key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (expected {expected})")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, KeyError, ... for bad files
        refused = re.search(r"GLOBAL (\S+) was not an allowed global", str(err))
        if refused:
            raise UnsafeCheckpointError(
                f"{path}: refused, it holds an object of class {refused.group(1)}; only tensors, containers and "
                f"argparse.Namespace are ever unpickled (expected {expected})"
            ) from err
        # torch's own text for a garbage file suggests weights_only=False, which this loader never does: not shown.
        detail = "" if isinstance(err, pickle.UnpicklingError) else f": {_first_line(err)}"
        raise UserError(
            f"{path} ({path.stat().st_size:,} bytes) cannot be read as a PyTorch checkpoint: it is damaged, truncated "
            f"or not a torch.save file (expected {expected}; {type(err).__name__}{detail})"
        ) from err
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path} holds a {type(checkpoint).__name__}, not a dict (expected {expected})")
    missing = [k for k in required if k not in checkpoint]
    if missing:
        keys = sorted(map(str, checkpoint))
        shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
        raise UserError(f"{path} lacks the entries {missing} (it has {shown}; expected {expected})")
    return checkpoint


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "(no message)"


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
    return model_weights(load_checkpoint(path, expected="model weights: a checkpoint of train.py or a state dict"))


def model_weights(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The weights `find_model` returns, from an already loaded checkpoint dict (EMA entry, no `module.`)."""
    return strip_module_prefix(checkpoint["ema"] if "ema" in checkpoint else checkpoint)
