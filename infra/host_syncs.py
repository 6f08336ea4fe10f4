"""Counting device-to-host synchronisations: the tensor methods that copy a value to Python.

A sampling or training loop that calls one of them per step stalls a CUDA device once per step; `count_host_syncs`
makes that visible on any device, CPU included, so tests can pin a loop at zero.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

# Tensor methods that copy a value to the host (and on CUDA wait for the device).
HOST_SYNC_METHODS = ("item", "tolist", "numpy", "cpu", "nonzero", "__bool__", "__int__", "__float__", "__index__")


@contextlib.contextmanager
def count_host_syncs() -> Iterator[dict[str, int]]:
    """Count calls of `HOST_SYNC_METHODS` on tensors made from Python inside the block.

    The methods are patched on `torch.Tensor` for the duration of the block and restored afterwards; calls made
    inside C++ kernels are not seen.

    Yields:
        A dict method name -> calls, filled while the block runs.
    """
    counts = {name: 0 for name in HOST_SYNC_METHODS}
    originals = {name: getattr(torch.Tensor, name) for name in HOST_SYNC_METHODS}

    def counting(name: str) -> Callable:
        original = originals[name]

        def wrapper(self, *args, **kwargs):
            counts[name] += 1
            return original(self, *args, **kwargs)

        return wrapper

    try:
        for name in HOST_SYNC_METHODS:
            setattr(torch.Tensor, name, counting(name))
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
