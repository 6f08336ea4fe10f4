"""One GeCA cellular step, forward + backward, against its dense layers alone.

"Dense layers alone" is the same step with the local attention replaced by the identity (the values pass through):
the same linears, LayerNorms, activations, modulation and cell update. Their time ratio is what the attention and
its gather add to a step; a ratio near 1 means the step is GEMM-bound.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import replace
from unittest import mock

import torch

import models.geca
from bench.timing import Row, autocast, make_model, paired_ratio, random_inputs, time_interleaved, timed
from infra import rng
from infra.markdown import format_bytes


def attention_replaced_by_identity() -> contextlib.AbstractContextManager:
    """Within the block, GeCA's local attention (both backends) passes its values through: qkv (N, H, W, 3, heads, d)
    -> v (N, H, W, heads, d)."""
    backends = ("grid_local_attention", "flex_grid_local_attention")
    return mock.patch.multiple(models.geca, **dict.fromkeys(backends, lambda qkv, scale=None: qkv[:, :, :, 2]))


def run_step(
    batch: int, repeats: int, device: torch.device, key: str = "GeCA-S", side: int = 32, precisions: tuple = (None,)
) -> list[Row]:
    """One cellular step (forward + backward through the model's `forward` with `steps = 1`) against the dense-only
    step, per precision (an autocast dtype, None: float32): a row each, with the ratio full / dense."""
    model = make_model(key, side).to(device).train()
    model.steps = 1
    x, t, y = random_inputs(batch, side, device)

    def step(dtype: torch.dtype | None) -> None:
        with autocast(device, dtype):
            state = model(x, t, y, generator=rng.sample_generators(range(batch), device))
        state[:, model.in_channels :].float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    def dense_step(dtype: torch.dtype | None) -> None:
        with attention_replaced_by_identity():
            step(dtype)

    full, dense = f"{key} step", f"{key} step, attention -> identity (dense layers alone)"
    rows = []
    for dtype in precisions:
        precision = "fp32" if dtype is None else f"{str(dtype).removeprefix('torch.')} autocast"
        label = f"one cellular step fwd+bwd (N={batch}, {side}x{side}, {precision})"
        variants = {full: functools.partial(step, dtype), dense: functools.partial(dense_step, dtype)}
        pair, times = time_interleaved(label, variants, repeats, device)
        ratio = paired_ratio(times[full], times[dense])
        pair[0] = replace(pair[0], ratio=f"{ratio:.2f}x the dense layers", target="<= 1.3x", met=ratio <= 1.3)
        if device.type == "cuda":
            for row in pair:
                row.memory = format_bytes(timed(variants[row.variant], device)[1])
        rows += pair
    return rows
