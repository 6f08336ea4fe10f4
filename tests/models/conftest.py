"""Fixtures for the model tests: tiny settings and a way to move weights off their zero initialisation."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

# Tiny CPU settings, not paper configurations.
GRID = 8
CLASSES = 11
CHANNELS = 4


@pytest.fixture
def perturb() -> Callable[[nn.Module, int], nn.Module]:
    """Add N(0, 0.05^2) noise to every parameter, so zero-initialised gates and projections become active.

    At initialisation GeCA's updates and DiT's block outputs are exactly zero; tests of heredity, guidance and
    checkpointing need a model whose prediction actually depends on its inputs.
    """

    def _perturb(model: nn.Module, seed: int = 0) -> nn.Module:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        return model

    return _perturb


@pytest.fixture
def batch() -> Callable[[int, int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(x (N, C, H, W), t (N,), y (N, K) multi-hot) drawn from a fixed seed."""

    def _batch(n: int, height: int = GRID, width: int = GRID) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(123)
        x = torch.randn(n, CHANNELS, height, width, generator=g)
        t = torch.randint(0, 1000, (n,), generator=g)
        y = (torch.rand(n, CLASSES, generator=g) < 0.3).float()
        return x, t, y

    return _batch
