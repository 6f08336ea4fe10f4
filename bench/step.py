"""One GeCA cellular step, forward + backward, against its dense layers alone.

"Dense layers alone" is the same step with the local attention replaced by the identity (the values pass through):
the same linears, LayerNorms, activations, modulation and cell update. Their time ratio is what the attention and
its gather add to a step; a ratio near 1 means the step is GEMM-bound.
"""

from __future__ import annotations

import contextlib
from unittest import mock

import torch

import models.geca
from bench.timing import Row, format_time, make_model, paired_ratio, random_inputs, time_interleaved, timed
from infra import rng
from infra.markdown import format_bytes


def identity_attention(qkv: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Stand-in for the local attention that returns the values: (N, H, W, 3, heads, d) -> (N, H, W, heads, d)."""
    return qkv[:, :, :, 2]


@contextlib.contextmanager
def attention_replaced_by_identity():
    """Within the block, GeCA's local attention (both backends) passes its values through."""
    with (
        mock.patch.object(models.geca, "grid_local_attention", identity_attention),
        mock.patch.object(models.geca, "flex_grid_local_attention", identity_attention),
    ):
        yield


def run_step(
    batch: int,
    repeats: int,
    device: torch.device,
    key: str = "GeCA-S",
    side: int = 32,
    autocast: torch.dtype | None = None,
) -> list[Row]:
    """Time one cellular step (forward + backward through the model's `forward` with `steps = 1`).

    Args:
        batch: N.
        repeats: interleaved rounds.
        device: where to run.
        key: registry key of the GeCA configuration.
        side: latent grid side.
        autocast: run under autocast to this dtype, or None for float32.

    Returns:
        Rows for the full step and the dense-only step, with the ratio full / dense.
    """
    model = make_model(key, side).to(device).train()
    model.steps = 1
    x, t, y = random_inputs(batch, side, device)
    seeds = list(range(batch))

    def step() -> None:
        amp = contextlib.nullcontext() if autocast is None else torch.autocast(device.type, dtype=autocast)
        with amp:
            state = model(x, t, y, generator=rng.sample_generators(seeds, device))
        state[:, model.in_channels :].float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    def dense_step() -> None:
        with attention_replaced_by_identity():
            step()

    full, dense = f"{key} step", f"{key} step, attention -> identity (dense layers alone)"
    times = time_interleaved({full: step, dense: dense_step}, repeats, device)
    cuda = device.type == "cuda"
    memory = {
        name: format_bytes(timed(fn, device)[1]) if cuda else "" for name, fn in ((full, step), (dense, dense_step))
    }
    precision = "fp32" if autocast is None else f"{str(autocast).removeprefix('torch.')} autocast"
    label = f"one cellular step fwd+bwd (N={batch}, {side}x{side}, {precision})"
    ratio = paired_ratio(times[full], times[dense])
    return [
        Row(
            label,
            full,
            format_time(times[full]),
            f"{ratio:.2f}x the dense layers",
            "<= 1.3x",
            ratio <= 1.3,
            memory[full],
        ),
        Row(label, dense, format_time(times[dense]), memory=memory[dense]),
    ]
