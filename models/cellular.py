"""Cellular-automaton helpers of GeCA: seed grid, exact 3x3 local attention, 1-D position table, update mask.

All functions are pure: they take tensors (or a batch size and a grid size) plus numbers and return tensors. Random
draws go through `infra.rng`, so a list of per-sample generators makes each sample's draws independent of the batch
it is in.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from infra import rng

# Row-major 3x3 neighbourhood offsets (d_row, d_col): (-1,-1), (-1,0), (-1,+1), (0,-1), ..., (+1,+1) (SPEC A 4.5.5).
NEIGHBOUR_OFFSETS = tuple((dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1))


def seed_cells(
    batch: int,
    seed_channels: int,
    total_channels: int,
    height: int,
    width: int,
    generator: rng.Generator = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Single-cell seed: zeros except the centre cell, whose first `seed_channels` channels are i.i.d. N(0, 1).

    The centre is (height // 2, width // 2), as in the reference `seed` (SPEC A 4.3); each sample gets its own draw.

    Args:
        batch: number of grids N.
        seed_channels: leading channels of the centre cell that are drawn (the output channels, 2C).
        total_channels: channels of the returned state (output + hidden, 2C + h).
        height: grid height H.
        width: grid width W.
        generator: random stream(s) for the centre cell, see `infra.rng`.
        device: device of the result.
        dtype: dtype of the result.

    Returns:
        (N, total_channels, H, W) seed state.
    """
    cells = torch.zeros(batch, total_channels, height, width, device=device, dtype=dtype)
    cells[:, :seed_channels, height // 2, width // 2] = rng.randn((batch, seed_channels), generator, device, dtype)
    return cells


def local_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, height: int, width: int, scale: float | None = None
) -> torch.Tensor:
    """Exact 3x3 local attention on a raster-ordered grid of tokens.

    Each cell attends to its 9 neighbours (itself included). Neighbours outside the grid are zero vectors: they take
    part in the softmax with logit 0 and contribute a zero value, exactly as the reference's zero-padded impulse
    convolution gather (SPEC A 4.5.5, A 6), which is not used here. Keys and values are zero-padded by one cell and
    the 9 shifted views are slices of the padded tensor, so nothing of size 9 x (N, heads, H*W, d) is materialised.

    Args:
        q: (N, heads, H*W, d) queries, token n = row * W + col.
        k: (N, heads, H*W, d) keys.
        v: (N, heads, H*W, d) values.
        height: grid height H.
        width: grid width W.
        scale: logit scale; d ** -0.5 when None.

    Returns:
        (N, heads, H*W, d) attention output.
    """
    n, heads, tokens, dim = q.shape
    if tokens != height * width:
        raise ValueError(f"{tokens} tokens do not form a {height}x{width} grid")
    scale = dim**-0.5 if scale is None else scale
    q = q.reshape(n, heads, height, width, dim)
    # Pad rows and columns (dims 2 and 3) by one zero cell on each side.
    k = F.pad(k.reshape(n, heads, height, width, dim), (0, 0, 1, 1, 1, 1))  # (N, heads, H+2, W+2, d)
    v = F.pad(v.reshape(n, heads, height, width, dim), (0, 0, 1, 1, 1, 1))  # (N, heads, H+2, W+2, d)
    shifts = [(1 + dr, 1 + dc) for dr, dc in NEIGHBOUR_OFFSETS]
    logits = torch.stack(
        [(q * k[:, :, r : r + height, c : c + width]).sum(-1) for r, c in shifts], dim=-1
    )  # (N, heads, H, W, 9)
    weights = (logits * scale).softmax(dim=-1)  # (N, heads, H, W, 9)
    out = weights[..., 0, None] * v[:, :, :height, :width]
    for i, (r, c) in enumerate(shifts[1:], start=1):
        out = out + weights[..., i, None] * v[:, :, r : r + height, c : c + width]  # (N, heads, H, W, d)
    return out.reshape(n, heads, tokens, dim)


def sinusoidal_table_1d(
    length: int, dim: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Fixed 1-D sinusoidal table over a flattened token index, as the reference's `vit_positional_encoding`.

    Entry (n, j) is sin(n * 10000^(-j/dim)) for even j and cos(n * 10000^(-j/dim)) for odd j: the odd dimension uses
    its own (odd) exponent rather than that of the preceding even one, a quirk of the reference kept on purpose
    (SPEC A 4.5.3).

    Args:
        length: number of tokens T (H * W, raster order).
        dim: width D.
        device: device of the result.
        dtype: dtype of the result.

    Returns:
        (T, D) table.
    """
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]  # (T, 1)
    j = torch.arange(dim, device=device, dtype=torch.float32)
    angle = pos * torch.exp(j * (-math.log(10000.0) / dim))  # (T, D)
    table = torch.where(j.remainder(2) == 0, torch.sin(angle), torch.cos(angle))
    return table.to(dtype)


def update_masks(
    batch: int,
    steps: int,
    height: int,
    width: int,
    rate: float,
    generator: rng.Generator = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Stochastic (asynchronous) per-cell update masks for all cellular steps of one forward.

    M = floor(u + rate) with u ~ U[0, 1): each cell is updated with probability `rate`, the mask shared over channels
    (SPEC A 4.5.7). All steps are drawn in one call per sample so that the draws do not depend on how the steps are
    later grouped (activation checkpointing re-runs steps and must see the same masks).

    Args:
        batch: number of grids N.
        steps: number of cellular steps S.
        height: grid height H.
        width: grid width W.
        rate: update probability in (0, 1); callers skip the mask when rate >= 1.
        generator: random stream(s), see `infra.rng`.
        device: device of the result.
        dtype: dtype of the result.

    Returns:
        (N, S, H, W) tensor of zeros and ones.
    """
    # Drawn in float32 whatever `dtype` is, so the mask does not depend on the compute precision.
    u = rng.rand((batch, steps, height, width), generator, device, torch.float32)
    return torch.floor(u + rate).to(dtype)
