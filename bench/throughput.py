"""Training throughput: optimiser steps per second of GeCA against DiT in the same run, per batch and precision.

One step is what `train.py` does per batch: the diffusion loss (MSE + VB, a fresh seed for a cellular model) under
autocast, backward (with a gradient scaler for fp16) and an AdamW update.
"""

from __future__ import annotations

import itertools
import statistics

import torch

from bench.timing import Row, make_model, random_inputs, timed, training_step
from diffusion import create_diffusion
from infra.markdown import format_bytes

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def time_training(
    key: str, batch: int, precision: str, device: torch.device, steps: int, side: int = 32, nca_checkpoint: int = 0
) -> tuple[float, int, bool]:
    """Median seconds of `steps` optimiser steps of `key` under `precision` (after one warm-up step), the peak CUDA
    memory (0 on CPU) and whether the model is cellular (`nca_checkpoint` applies only then)."""
    model = make_model(key, side).to(device).train()
    if model.is_cellular:
        model.nca_checkpoint = nca_checkpoint
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0)
    diffusion = create_diffusion(timestep_respacing="")
    dtype = PRECISIONS[precision]
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    x, _, y = random_inputs(batch, side, device)

    def step() -> None:
        t = torch.randint(0, diffusion.num_timesteps, (batch,), device=device)
        training_step(model, diffusion, opt, scaler, x, t, y, dtype)

    step()
    measured = [timed(step, device) for _ in range(steps)]
    peak = max((peak or 0 for _, peak in measured), default=0)
    return statistics.median(seconds for seconds, _ in measured), peak, model.is_cellular


def run_training(
    models: list[str],
    batches: list[int],
    precisions: list[str],
    device: torch.device,
    steps: int,
    side: int = 32,
    nca_checkpoint: int = 0,
) -> list[Row]:
    """Steps/s and images/s of every (model, batch, precision), out-of-memory settings reported as such; the ratio
    column gives the GeCA : DiT time per step when both were measured."""
    rows = []
    for batch, precision in itertools.product(batches, precisions):
        label = f"training step (AdamW), N={batch}, {side}x{side}, {precision}"
        times, cellular = {}, {}
        for key in models:
            try:
                times[key], peak, cellular[key] = time_training(
                    key, batch, precision, device, steps, side, nca_checkpoint
                )
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                rows.append(Row(label, key, "out of memory"))
                continue
            sps = 1 / times[key]
            variant = key + (f", --nca-checkpoint {nca_checkpoint}" if cellular[key] and nca_checkpoint else "")
            memory = format_bytes(peak) if peak else ""
            rows.append(Row(label, variant, f"{sps:.3g} steps/s, {sps * batch:.3g} images/s", memory=memory))
        a, b = (next((k for k in times if cellular[k] == c), None) for c in (True, False))
        if a and b:
            rows[-1].ratio = f"{a} / {b} time per step: {times[a] / times[b]:.1f}x"
    return rows
