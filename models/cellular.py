"""Cellular-automaton helpers of GeCA: seed grid, exact 3x3 local attention, 1-D position table, update mask.

All functions are pure: they take tensors (or a batch size and a grid size) plus numbers and return tensors. Random
draws go through `infra.rng`, so a list of per-sample generators makes each sample's draws independent of the batch
it is in.

The local attention comes in three implementations of one computation: `grid_local_attention` (the one GeCA runs
everywhere), `flex_grid_local_attention` (fused on CUDA) and `impulse_local_attention`, the readable reference that
gathers neighbours as the reference code does (docs/REFERENCE.md §6); tests and `python -m bench` check the fast ones
against it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from infra import rng

# Row-major 3x3 neighbourhood offsets (d_row, d_col): (-1,-1), (-1,0), (-1,+1), (0,-1), ..., (+1,+1)
# (docs/REFERENCE.md §4.5.5).
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

    The centre is (height // 2, width // 2), as in the reference `seed` (docs/REFERENCE.md §4.3); each sample gets its
    own draw.

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


def _overlap(size: int, offset: int) -> tuple[slice, slice]:
    """Along one grid axis: the query positions whose neighbour at `offset` is inside, and those neighbours."""
    return slice(max(0, -offset), size - max(0, offset)), slice(max(0, offset), size + min(0, offset))


def _neighbour_regions(height: int, width: int) -> list[tuple[tuple[slice, ...], tuple[slice, ...]]]:
    """For each of the 9 offsets (row-major), index tuples (queries, their neighbours) into (N, H, W, ...) tensors."""
    regions = []
    for dr, dc in NEIGHBOUR_OFFSETS:
        (q_rows, k_rows), (q_cols, k_cols) = _overlap(height, dr), _overlap(width, dc)
        regions.append(((slice(None), q_rows, q_cols), (slice(None), k_rows, k_cols)))
    return regions


# The centre offset covers the whole grid, so it initialises the output before the 8 border-clipped offsets add in.
_CENTRE = NEIGHBOUR_OFFSETS.index((0, 0))
_FILL_ORDER = (_CENTRE, *(s for s in range(len(NEIGHBOUR_OFFSETS)) if s != _CENTRE))


class _GridLocalAttention(torch.autograd.Function):
    """3x3 local attention on packed qkv with a hand-written backward.

    Every neighbour offset touches only the overlap of the grid with its shifted copy, so out-of-grid neighbours are
    never materialised: their logit stays exactly 0 (a zero key) and they add nothing to the output (a zero value),
    which is the reference's zero padding (docs/REFERENCE.md §6). Nothing of size 9 x (N, H, W, heads, d) is allocated,
    and only qkv (already kept by the qkv projection) and the (N, H, W, heads, 9) weights are saved for the backward.
    """

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, scale: float) -> torch.Tensor:
        n, height, width, _, heads, _ = qkv.shape
        q, k, v = qkv.unbind(3)  # each (N, H, W, heads, d), views
        regions = _neighbour_regions(height, width)
        logits = q.new_zeros(n, height, width, heads, len(regions))  # out-of-grid logits stay 0
        for s, (qi, ki) in enumerate(regions):
            torch.sum(q[qi] * k[ki], dim=-1, out=logits[(*qi, slice(None), s)])
        # The softmax runs in at least float32 (half-precision inputs under autocast).
        softmax_dtype = torch.promote_types(q.dtype, torch.float32)
        weights = torch.softmax(logits.to(softmax_dtype) * scale, dim=-1).to(q.dtype)  # (N, H, W, heads, 9)
        out = torch.mul(weights[..., _CENTRE, None], v)  # (N, H, W, heads, d)
        for s in _FILL_ORDER[1:]:
            qi, ki = regions[s]
            out[qi].addcmul_(weights[(*qi, slice(None), s, None)], v[ki])
        ctx.save_for_backward(qkv, weights)
        ctx.scale = scale
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:
        qkv, weights = ctx.saved_tensors
        _, height, width, _, _, _ = qkv.shape
        q, k, v = qkv.unbind(3)
        regions = _neighbour_regions(height, width)
        grad_weights = torch.zeros_like(weights)  # (N, H, W, heads, 9); zero for out-of-grid (zero) values
        for s, (qi, ki) in enumerate(regions):
            torch.sum(grad_out[qi] * v[ki], dim=-1, out=grad_weights[(*qi, slice(None), s)])
        # Softmax backward, then the logit scale.
        grad_logits = weights * (grad_weights - (weights * grad_weights).sum(-1, keepdim=True)) * ctx.scale
        grad_qkv = torch.zeros(qkv.shape, dtype=qkv.dtype, device=qkv.device)  # (N, H, W, 3, heads, d)
        grad_q, grad_k, grad_v = grad_qkv.unbind(3)
        for s, (qi, ki) in enumerate(regions):
            grad_logit = grad_logits[(*qi, slice(None), s, None)]
            grad_q[qi].addcmul_(grad_logit, k[ki])
            grad_k[ki].addcmul_(grad_logit, q[qi])
            grad_v[ki].addcmul_(weights[(*qi, slice(None), s, None)], grad_out[qi])
        return grad_qkv, None


def grid_local_attention(qkv: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Exact 3x3 local attention on packed, grid-shaped queries, keys and values (the layout of GeCA's qkv).

    Each cell attends to its 9 neighbours (itself included). Neighbours outside the grid are zero vectors: they take
    part in the softmax with logit 0 and contribute a zero value, exactly as the reference's zero-padded impulse
    convolution gather (docs/REFERENCE.md §4.5.5, §6), which is not used here: each offset works on the overlap of the
    grid with its shifted copy (views, no padding or gathered copies), and the backward is written out by hand. The
    softmax is computed in at least float32.

    Args:
        qkv: (N, H, W, 3, heads, d) queries | keys | values; any strides (e.g. a view of the qkv projection).
        scale: logit scale; d ** -0.5 when None.

    Returns:
        (N, H, W, heads, d) attention output (contiguous).
    """
    if qkv.ndim != 6 or qkv.shape[3] != 3:
        raise ValueError(f"expected qkv of shape (N, H, W, 3, heads, d), got {tuple(qkv.shape)}")
    scale = qkv.shape[-1] ** -0.5 if scale is None else scale
    return _GridLocalAttention.apply(qkv, scale)


@functools.lru_cache(maxsize=16)
def _flex_neighbourhood(height: int, width: int, device: torch.device) -> tuple[object, Callable]:
    """FlexAttention block mask and score modifier of the exact 3x3 neighbourhood (see `flex_grid_local_attention`)."""
    from torch.nn.attention.flex_attention import create_block_mask

    tokens = height * width
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    rows_in = (rows + 1).clamp(max=height - 1) - (rows - 1).clamp(min=0) + 1  # (H,) neighbour rows inside the grid
    cols_in = (cols + 1).clamp(max=width - 1) - (cols - 1).clamp(min=0) + 1  # (W,)
    missing = (len(NEIGHBOUR_OFFSETS) - rows_in[:, None] * cols_in[None, :]).flatten()  # (T,) zero neighbours
    log_missing = missing.clamp(min=1).float().log()  # masked out where nothing is missing

    def mask_mod(b, h, q_idx, kv_idx):
        near = ((q_idx // width - kv_idx // width).abs() <= 1) & ((q_idx % width - kv_idx % width).abs() <= 1)
        return (near & (kv_idx < tokens)) | ((kv_idx == tokens) & (missing[q_idx] > 0))

    def score_mod(score, b, h, q_idx, kv_idx):
        # The extra key is zero, so its logit is 0; + log(m) makes it weigh as the m zero neighbours together.
        return torch.where(kv_idx == tokens, score + log_missing[q_idx], score)

    block_mask = create_block_mask(mask_mod, None, None, tokens, tokens + 1, device=device)
    return block_mask, score_mod


@functools.cache
def _compiled_flex_attention() -> Callable:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_grid_local_attention(
    qkv: torch.Tensor, scale: float | None = None, compile: bool | None = None
) -> torch.Tensor:
    """`grid_local_attention` through FlexAttention (one fused kernel on CUDA), with the same exact borders.

    FlexAttention drops masked keys, whereas the reference's out-of-grid neighbours are zero vectors that stay in the
    softmax (logit 0, value 0). One zero key is appended; the mask lets each cell see its in-grid neighbours and,
    when m > 0 of its 9 neighbours are outside, the zero key with logit 0 + log m. Its softmax weight then equals
    that of the m zero neighbours together and its value adds nothing, so the result equals the zero-padded 3x3
    attention up to float rounding (docs/REFERENCE.md §6). FlexAttention has no CPU backward in torch 2.14; on CPU this
    is for inference and tests.

    Args:
        qkv: (N, H, W, 3, heads, d) queries | keys | values.
        scale: logit scale; d ** -0.5 when None.
        compile: use the compiled (fused) kernel; default: when qkv is on CUDA. Uncompiled FlexAttention is a slow
            reference implementation.

    Returns:
        (N, H, W, heads, d) attention output.
    """
    from torch.nn.attention.flex_attention import flex_attention

    n, height, width, _, heads, dim = qkv.shape
    tokens = height * width
    scale = dim**-0.5 if scale is None else scale
    q, k, v = (t.reshape(n, tokens, heads, dim).transpose(1, 2) for t in qkv.unbind(3))  # (N, heads, T, d)
    zero = q.new_zeros(n, heads, 1, dim)
    k = torch.cat([k, zero], dim=2)  # (N, heads, T+1, d)
    v = torch.cat([v, zero], dim=2)  # (N, heads, T+1, d)
    block_mask, score_mod = _flex_neighbourhood(height, width, qkv.device)
    attend = _compiled_flex_attention() if (qkv.is_cuda if compile is None else compile) else flex_attention
    out = attend(q.contiguous(), k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)  # (N, heads, T, d)
    return out.transpose(1, 2).reshape(n, height, width, heads, dim)


def local_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, height: int, width: int, scale: float | None = None
) -> torch.Tensor:
    """Exact 3x3 local attention on a raster-ordered grid of tokens, in the (N, heads, T, d) layout.

    The same computation as `grid_local_attention` (zero-padding semantics of the reference, docs/REFERENCE.md §4.5.5),
    for separate q, k, v; they are packed into one tensor first.

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
    qkv = torch.stack([q, k, v], dim=2)  # (N, heads, 3, T, d)
    qkv = qkv.permute(0, 3, 2, 1, 4).reshape(n, height, width, 3, heads, dim)  # (N, H, W, 3, heads, d)
    out = grid_local_attention(qkv, scale)  # (N, H, W, heads, d)
    return out.reshape(n, tokens, heads, dim).transpose(1, 2)  # (N, heads, T, d)


def impulse_filters(device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """The 9 one-hot 3x3 kernels of the reference's neighbour gather, kernel k with its 1 at (k // 3, k % 3).

    Args:
        device: device of the result.
        dtype: dtype of the result.

    Returns:
        (9, 1, 3, 3) kernels, in the row-major order of `NEIGHBOUR_OFFSETS`.
    """
    filters = torch.zeros(9, 1, 3, 3, device=device, dtype=dtype)
    for k in range(9):
        filters[k, 0, k // 3, k % 3] = 1.0
    return filters


def impulse_gather(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Each cell's 3x3 neighbours, zero outside the grid, by convolution with impulse kernels (docs/REFERENCE.md §6).

    This is how the reference's `LocalizeAttention` gathers: every channel becomes a one-channel image, convolved
    with zero padding by the 9 kernels of `impulse_filters`. It materialises 9 copies of its input.

    Args:
        x: (N, heads, H*W, d) tokens in raster order.
        height: grid height H.
        width: grid width W.

    Returns:
        (N, heads, H*W, 9, d): entry k of a cell is its neighbour at offset `NEIGHBOUR_OFFSETS[k]`, 0 outside.
    """
    n, heads, tokens, dim = x.shape
    grid = x.permute(0, 1, 3, 2).reshape(n * heads * dim, 1, height, width)  # (N*heads*d, 1, H, W)
    gathered = F.conv2d(grid, impulse_filters(x.device, x.dtype), padding=1)  # (N*heads*d, 9, H, W)
    return gathered.view(n, heads, dim, 9, tokens).permute(0, 1, 4, 3, 2)  # (N, heads, T, 9, d)


def impulse_local_attention(qkv: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Reference implementation of the 3x3 local attention: gather the neighbours, then attend over the 9 of them.

    The computation of the reference (docs/REFERENCE.md §4.5.5, §6), written for reading and for checking the fast
    implementations, not for speed: keys and values are gathered with `impulse_gather` (zero vectors outside the
    grid, which take part in the softmax with logit 0) and each query attends to its 9 gathered keys. Same layout
    and result as `grid_local_attention` up to float rounding; autograd gives its backward.

    Args:
        qkv: (N, H, W, 3, heads, d) queries | keys | values.
        scale: logit scale; d ** -0.5 when None.

    Returns:
        (N, H, W, heads, d) attention output.
    """
    n, height, width, _, heads, dim = qkv.shape
    scale = dim**-0.5 if scale is None else scale
    tokens = height * width
    q, k, v = (t.reshape(n, tokens, heads, dim).transpose(1, 2) for t in qkv.unbind(3))  # (N, heads, T, d)
    keys, values = impulse_gather(k, height, width), impulse_gather(v, height, width)  # (N, heads, T, 9, d)
    logits = (q.unsqueeze(-2) @ keys.transpose(-1, -2)) * scale  # (N, heads, T, 1, 9)
    out = (logits.softmax(dim=-1) @ values).squeeze(-2)  # (N, heads, T, d)
    return out.transpose(1, 2).reshape(n, height, width, heads, dim)


def sinusoidal_table_1d(
    length: int, dim: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Fixed 1-D sinusoidal table over a flattened token index, as the reference's `vit_positional_encoding`.

    Entry (n, j) is sin(n * 10000^(-j/dim)) for even j and cos(n * 10000^(-j/dim)) for odd j: the odd dimension uses
    its own (odd) exponent rather than that of the preceding even one, a quirk of the reference kept on purpose
    (docs/REFERENCE.md §4.5.3).

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
    (docs/REFERENCE.md §4.5.7). All steps are drawn in one call per sample so that the draws do not depend on how the
    steps are later grouped (activation checkpointing re-runs steps and must see the same masks).

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
