"""Local attention and gather, forward + backward, against the reference's impulse-filter convolution gather.

All variants start from the same qkv projection output (N, H*W, 3 * heads * d) and return the attention output
(N, H*W, heads * d) before the output projection, so each pays for its own layout changes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from bench.timing import Row, paired_ratio, time_interleaved
from infra.precision import set_tf32, set_tf32_state, tf32_state
from models.cellular import NEIGHBOUR_OFFSETS, flex_grid_local_attention, grid_local_attention, impulse_local_attention

AttentionFn = Callable[[torch.Tensor, int, int, int, float], torch.Tensor]


def on_tokens(grid_attention: Callable[[torch.Tensor, float], torch.Tensor]) -> AttentionFn:
    """A local attention of the (N, H, W, 3, heads, d) qkv layout as a function (qkv, H, W, heads, logit scale) of the
    qkv projection's output (N, T, 3 * heads * d), returning (N, T, heads * d)."""

    def attention(qkv: torch.Tensor, height: int, width: int, heads: int, scale: float) -> torch.Tensor:
        n, tokens, _ = qkv.shape
        return grid_attention(qkv.view(n, height, width, 3, heads, -1), scale).reshape(n, tokens, -1)

    return attention


def autograd_slices_attention(qkv: torch.Tensor, height: int, width: int, heads: int, scale: float) -> torch.Tensor:
    """The shifted-slice local attention before issue 9 (padded k, v, autograd through 9 slices), as `on_tokens`."""
    n, tokens, _ = qkv.shape
    q, k, v = (t.reshape(n, height, width, heads, -1) for t in qkv.chunk(3, dim=-1))  # (N, H, W, heads, d)
    k = F.pad(k, (0, 0, 0, 0, 1, 1, 1, 1))  # (N, H+2, W+2, heads, d)
    v = F.pad(v, (0, 0, 0, 0, 1, 1, 1, 1))
    shifts = [(1 + dr, 1 + dc) for dr, dc in NEIGHBOUR_OFFSETS]
    logits = torch.stack([(q * k[:, r : r + height, c : c + width]).sum(-1) for r, c in shifts], dim=-1)
    weights = (logits * scale).softmax(dim=-1)  # (N, H, W, heads, 9)
    out = sum(weights[..., i, None] * v[:, r : r + height, c : c + width] for i, (r, c) in enumerate(shifts))
    return out.reshape(n, tokens, -1)


def run_attention(
    batch: int, repeats: int, device: torch.device, heads: int = 12, head_dim: int = 64, side: int = 32
) -> list[Row]:
    """Forward + backward of each variant (default: GeCA-S shapes, a 32 x 32 grid for 256-pixel images): one row
    each, with the speed-up over the impulse gather and the largest output/gradient gap to it."""
    g = torch.Generator(device=device).manual_seed(0)
    qkv = torch.randn(batch, side * side, 3 * heads * head_dim, generator=g, device=device)
    grad_out = torch.randn(batch, side * side, heads * head_dim, generator=g, device=device)
    variants: dict[str, AttentionFn] = {  # the reference first; FlexAttention is compiled, CUDA only
        "impulse-filter conv gather (reference, docs/REFERENCE.md §6)": on_tokens(impulse_local_attention),
        "autograd shifted slices (before issue 9)": autograd_slices_attention,
        "overlap views + hand-written backward (grid_local_attention)": on_tokens(grid_local_attention),
    }
    if device.type == "cuda":
        variants["FlexAttention, exact borders (flex_grid_local_attention)"] = on_tokens(flex_grid_local_attention)

    def fwd_bwd(fn: AttentionFn) -> tuple[torch.Tensor, torch.Tensor]:
        leaf = qkv.detach().requires_grad_(True)
        out = fn(leaf, side, side, heads, head_dim**-0.5)
        out.backward(grad_out)
        return out.detach(), leaf.grad

    reference = next(iter(variants))
    # The gaps compare the algorithms in float32: TF32 (on by default on a GPU) would round the reference's
    # convolution and the products to 10 mantissa bits, a gap of about 1e-3 that says nothing about the gather.
    tf32 = tf32_state()
    set_tf32(False)
    try:
        ref_out, ref_grad = fwd_bwd(variants[reference])
        gaps = {}
        for name, fn in variants.items():
            out, grad = fwd_bwd(fn)
            gaps[name] = max((out - ref_out).abs().max().item(), (grad - ref_grad).abs().max().item())
    finally:
        set_tf32_state(tf32)
    label = f"local attention fwd+bwd (N={batch}, {heads}x{head_dim}, {side}x{side})"
    timers = {name: functools.partial(fwd_bwd, fn) for name, fn in variants.items()}
    rows, times = time_interleaved(label, timers, repeats, device)
    for row in rows[1:]:
        speedup = paired_ratio(times[reference], times[row.variant])
        row.ratio = f"{speedup:.1f}x faster; max |diff| {gaps[row.variant]:.1e}"
        if row.variant.endswith("grid_local_attention)"):  # ours and FlexAttention
            row.target = ">= 3x, |diff| < 1e-5"
            row.met = speedup >= 3.0 and gaps[row.variant] < 1e-5
    return rows
