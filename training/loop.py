"""The training loop: epochs of optimiser steps with EMA, loss logging, checkpoints and validation.

Each epoch reads its batches in an order fixed by (seed, epoch), skipping those a resumed run already trained; a
finished epoch is validated every `--validate_every` epochs (from epoch 0). Validation runs with the global random
streams saved and restored, so a run with validation trains exactly as one without.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from infra.atomic_io import atomic_save_grid
from infra.distributed import unwrap_model
from infra.seeding import isolated_global_rng
from infra.tracker import Tracker
from training.data import epoch_batches, epoch_loader
from training.experiment import append_metrics
from training.selection import Validation, decide
from training.state import Checkpoints, RunState
from training.validation import Validator


@torch.no_grad()
def update_ema(ema_model: torch.nn.Module, model: torch.nn.Module, decay: float = 0.9999) -> None:
    """ema <- decay * ema + (1 - decay) * model, over every parameter (the reference's rule, docs/REFERENCE.md §8)."""
    ema_params = OrderedDict(ema_model.named_parameters())
    for name, param in model.named_parameters():
        ema_params[name].mul_(decay).add_(param.detach(), alpha=1 - decay)


def normalize_gradients(model: torch.nn.Module, eps: float = 1e-8) -> None:
    """`--grad_norm`: divide every parameter's gradient by (its own L2 norm + eps). Call on unscaled gradients."""
    for p in model.parameters():
        if p.grad is not None:
            p.grad.div_(p.grad.norm() + eps)


@dataclass
class TrainingRun:
    """Everything the loop works with, as train.main set it up.

    Attributes:
        args: the run's flags.
        accelerator: the run's Accelerator.
        model: the online network (prepared, possibly compiled).
        ema: the EMA network.
        opt: the prepared optimiser.
        diffusion: the training diffusion (all `--diffusion-steps` timesteps).
        train_set: the training items (x, y).
        validator: validation sampling and KID, or None with `--validate_every 0`.
        exp_dir: the experiment folder (metrics.csv, samples/).
        logger: the run's logger.
        tracker: wandb, or nothing.
        state: the run's position, updated in place.
        checkpoints: writes last.pt and best_ckpt.pt from `state`.
    """

    args: argparse.Namespace
    accelerator: object
    model: torch.nn.Module
    ema: torch.nn.Module
    opt: torch.optim.Optimizer
    diffusion: object
    train_set: Dataset
    validator: Validator | None
    exp_dir: Path
    logger: logging.Logger
    tracker: Tracker
    state: RunState
    checkpoints: Checkpoints


@dataclass
class LossMeter:
    """The loss summed since the last log line, its step count and the time the count started."""

    running_loss: float | torch.Tensor = 0.0
    steps: int = 0
    start: float = field(default_factory=time.time)

    def reset(self) -> None:
        self.running_loss, self.steps, self.start = 0.0, 0, time.time()


def run_training(run: TrainingRun) -> None:
    """Train from `run.state`'s position to `--epochs` epochs or `--max-steps` optimiser steps.

    On return `run.state` holds the position a final `last.pt` records: inside an epoch stopped by `--max-steps`,
    or at the start of the epoch after the last finished one.
    """
    args, state = run.args, run.state
    run.model.train()
    meter = LossMeter()
    max_steps = args.max_steps if args.max_steps is not None else math.inf
    start_epoch, skip_batches = state.epoch, state.batches_done
    pbar = tqdm(
        total=None if math.isinf(max_steps) else max_steps,
        initial=state.train_steps,
        unit="step",
        disable=not run.accelerator.is_main_process,
        dynamic_ncols=True,
    )
    for epoch in range(start_epoch, args.epochs):
        if state.train_steps >= max_steps:
            break
        state.epoch = epoch
        finished = train_epoch(run, skip_batches if epoch == start_epoch else 0, max_steps, meter, pbar)
        if not finished:
            break  # --max-steps ended the run inside this epoch; last.pt resumes at this batch
        # The epoch is complete (also when --max-steps ends the run exactly here): validate, then move on.
        if run.validator is not None and epoch % args.validate_every == 0:
            validate(run)
        state.epoch, state.batches_done = epoch + 1, 0  # position after a finished epoch, for last.pt
    pbar.close()


def train_epoch(run: TrainingRun, first: int, max_steps: float, meter: LossMeter, pbar: tqdm) -> bool:
    """Train `run.state.epoch` from batch `first` on; returns whether the epoch finished (else --max-steps hit)."""
    args, state, acc = run.args, run.state, run.accelerator
    world, rank = acc.num_processes, acc.process_index
    batches = epoch_batches(
        len(run.train_set), args.global_batch_size // world, world, rank, args.global_seed, state.epoch
    )
    loader = epoch_loader(run.train_set, batches[first:], args, state.epoch, pin_memory=acc.device.type == "cuda")
    state.batches_done = first
    for x, y in loader:
        loss = train_step(run, x, y)
        meter.running_loss += loss
        meter.steps += 1
        state.train_steps += 1
        state.batches_done += 1
        pbar.update(1)
        if state.train_steps % args.log_every == 0 or state.train_steps == 1:
            log_loss(run, meter)
        if state.train_steps % args.ckpt_every == 0:
            run.checkpoints.save_last()
            run.logger.info(f"Saved {run.checkpoints.last} at step {state.train_steps}")
        if state.train_steps >= max_steps:
            break
    return state.batches_done >= len(batches)


def train_step(run: TrainingRun, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One optimiser step and EMA update on a batch; returns the (detached) mean loss.

    Raises:
        FloatingPointError: a non-finite loss (before the step, so the weights stay finite).
    """
    args, acc, model, device = run.args, run.accelerator, run.model, run.accelerator.device
    x = x.to(device, non_blocking=True)
    y = y.to(device, non_blocking=True)
    if not args.image_space:
        x, y = x.squeeze(1), y.squeeze(1)  # (B, 1, C, h, w) -> (B, C, h, w); (B, 1, K) -> (B, K)
    y = y.reshape(y.shape[0], -1).float()
    t = torch.randint(0, run.diffusion.num_timesteps, (x.shape[0],), device=device)
    # Autocast covers the model's forward only (accelerator.prepare wraps it and returns float32 outputs); the loss
    # is computed in float32 outside it, as the reference does.
    loss = run.diffusion.training_losses(model, x, t, {"y": y})["loss"].mean()
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"non-finite training loss {loss.item()} at step {run.state.train_steps + 1} (epoch {run.state.epoch}); "
            "stopping. " + run.checkpoints.hint()
        )
    run.opt.zero_grad(set_to_none=True)
    acc.backward(loss)
    if args.grad_norm:
        acc.unscale_gradients(run.opt)  # normalise true gradients, not loss-scaled ones (docs/DECISIONS.md §C2.4)
        normalize_gradients(model)
    run.opt.step()
    update_ema(run.ema, unwrap_model(model), args.ema_decay)
    return loss.detach()


def log_loss(run: TrainingRun, meter: LossMeter) -> None:
    """Log the mean loss over all ranks since the last log line, with steps/s, to the log, metrics.csv and wandb."""
    args, state = run.args, run.state
    elapsed = time.time() - meter.start
    avg = run.accelerator.reduce(
        meter.running_loss / meter.steps, reduction="mean"
    ).item()  # all ranks (docs/DECISIONS.md §C2.4)
    sps = meter.steps / max(elapsed, 1e-9)
    run.logger.info(
        f"(step={state.train_steps:07d}) Train Loss: {avg:.4f}, Train Steps/Sec: {sps:.2f}, "
        f"Images/Sec: {sps * args.global_batch_size:.1f}"
    )
    if run.accelerator.is_main_process:
        append_metrics(
            run.exp_dir / "metrics.csv",
            {
                "step": state.train_steps,
                "epoch": state.epoch,
                "loss": f"{avg:.6f}",
                "steps_per_sec": f"{sps:.4f}",
                "images_per_sec": f"{sps * args.global_batch_size:.2f}",
            },
        )
    run.tracker.log({"train_loss": avg}, step=state.train_steps)
    meter.reset()


def validate(run: TrainingRun) -> None:
    """Validate after a finished epoch: KID and its standard error to the log and metrics.csv, the sample grid, and
    best_ckpt.pt (+ best_ckpt.json) when `--best-rule` chooses this validation (training/selection.py)."""
    args, state, acc = run.args, run.state, run.accelerator
    run.model.eval()
    with isolated_global_rng():  # validation never moves the training's random streams
        kid_mean, kid_std, kid_se, grid = run.validator.run(run.ema, state.train_steps)
    run.model.train()
    if acc.is_main_process:
        run.logger.info(
            f"(step={state.train_steps:07d}, epoch={state.epoch}) KID mean: {kid_mean:.6f}, "
            f"KID std: {kid_std:.6f}, KID standard error: {kid_se:.6f} ({args.val_mode} rule)"
        )
        append_metrics(
            run.exp_dir / "metrics.csv",
            {
                "step": state.train_steps,
                "epoch": state.epoch,
                "kid_mean": f"{kid_mean:.8f}",
                "kid_std": f"{kid_std:.8f}",
                "kid_se": f"{kid_se:.8f}",
            },
        )
        atomic_save_grid(grid, run.exp_dir / "samples" / f"val_{state.train_steps:07d}.png")
        run.tracker.log({"KID mean": kid_mean, "KID std": kid_std}, step=state.train_steps)
    lowest = None
    if state.best_step >= 0 or math.isfinite(state.best_kid):
        lowest = Validation(state.best_step, state.best_kid, state.best_kid_se)
    new = Validation(state.train_steps, kid_mean, kid_se)
    decision = decide(args.best_rule, lowest, new)
    state.best_kid, state.best_kid_se, state.best_step = decision.lowest.kid, decision.lowest.se, decision.lowest.step
    if decision.chosen:
        record = {
            **new.as_dict(),
            "epoch": state.epoch,
            "rule": args.best_rule,
            "reason": decision.reason,
            "lowest": decision.lowest.as_dict(),
        }
        run.checkpoints.save_best(record)
        if acc.is_main_process:
            run.logger.info(f"Saved checkpoint to {run.checkpoints.best}: {decision.reason}")
            run.tracker.log_image(
                "examples", grid.permute(0, 2, 3, 1).numpy()[0], caption="Hey", step=state.train_steps
            )
