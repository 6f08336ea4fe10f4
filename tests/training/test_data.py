"""The per-epoch batch order of train.py (training/data.py)."""

from __future__ import annotations

from training.data import epoch_batches


def test_ranks_together_see_the_single_process_global_batches():
    """Sharded over 2 ranks of 3 images, each global batch is the single-process batch of 6, in rank order; an
    epoch visits distinct images, drops the incomplete last batch and its order is fixed by (seed, epoch)."""
    n, seed, epoch = 20, 7, 3
    single = epoch_batches(n, 6, 1, 0, seed, epoch)
    ranks = [epoch_batches(n, 3, 2, r, seed, epoch) for r in range(2)]
    assert [a + b for a, b in zip(*ranks)] == single
    flat = [i for batch in single for i in batch]
    assert len(single) == 3 and len(flat) == len(set(flat)) == 18 and set(flat) <= set(range(n))
    assert epoch_batches(n, 6, 1, 0, seed, epoch) == single  # deterministic: a resumed run sees the same order
    assert epoch_batches(n, 6, 1, 0, seed, epoch + 1) != single  # a new order every epoch
