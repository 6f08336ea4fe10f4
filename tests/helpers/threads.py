"""The suite's one way to run torch on a single intra-op thread (tiny tensors gain nothing from more, and on a
shared 2-core CPU the extra threads only wait; docs/PERFORMANCE.md)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with `count` torch intra-op threads, then restore the previous setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
