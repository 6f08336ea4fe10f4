"""Probes for sampling tests: random weights that make a network's outputs depend on them, and spies on the seeds
a GeCA draws and the `extras` (cell states) each of its network calls gets."""

from __future__ import annotations

import torch


def random_weights(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Move every parameter off its (partly zero) initialisation so outputs depend on the weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def record_starts(model: torch.nn.Module) -> tuple[list, list[torch.Tensor]]:
    """Spies (the real methods still run): the `extras` each network call gets, and every seed the model draws."""
    starts: list = []
    seeds: list[torch.Tensor] = []
    plain_forward, plain_seed = model.forward, model.seed

    def forward_spy(x, t, y, extras=None, **kw):
        starts.append(None if extras is None else extras.clone())
        return plain_forward(x, t, y, extras=extras, **kw)

    def seed_spy(*args, **kw):
        seeds.append(plain_seed(*args, **kw))
        return seeds[-1]

    model.forward, model.seed = forward_spy, seed_spy
    return starts, seeds


def is_fresh_seed(cells: torch.Tensor, out_channels: int) -> bool:
    """Zero everywhere but the centre cell's output channels, which are all non-zero (a single-cell seed)."""
    centre = cells[:, :out_channels, 4, 4]
    return bool(torch.count_nonzero(cells) == torch.count_nonzero(centre) == centre.numel())
