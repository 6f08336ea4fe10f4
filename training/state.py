"""Where a training run stands, and its checkpoints: `last.pt` (resumable) and `best_ckpt.pt` (reference layout).

A checkpoint is written only when every weight, EMA weight and optimiser moment is finite; a non-finite state
stops the run naming the newest finite resumable checkpoint that exists.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from infra.atomic_io import atomic_write_text
from infra.checkpoint import non_finite_entries, save_checkpoint
from infra.distributed import all_gather_objects, unwrap_model
from infra.seeding import global_rng_state


@dataclass
class RunState:
    """The position a `last.pt` stores, and the newest resumable checkpoint that exists.

    Attributes:
        train_steps: optimiser steps taken.
        epoch: the epoch in progress (after a finished epoch: the next one).
        batches_done: batches of `epoch` already trained.
        best_kid: lowest validation KID so far (what `--best-rule` compares with).
        best_kid_se: its standard error.
        best_step: the optimiser step of that validation (-1 before the first).
        newest_last: the newest finite resumable checkpoint and its step, or None before the first.
    """

    train_steps: int = 0
    epoch: int = 0
    batches_done: int = 0
    best_kid: float = math.inf
    best_kid_se: float = 0.0
    best_step: int = -1
    newest_last: tuple[Path, int] | None = None


def resume_hint(newest: tuple[Path, int] | None, ckpt_every: int) -> str:
    """The sentence a stopped run ends with: the newest finite resumable checkpoint that exists, or that none does."""
    if newest is None:
        return f"No checkpoint has been written yet (--ckpt-every {ckpt_every}): there is nothing to resume."
    path, step = newest
    return (
        f"The newest finite checkpoint is {path} (step {step}); --resume {path} continues from it "
        "(a smaller --lr may avoid the failure)."
    )


class Checkpoints:
    """Writes a run's `checkpoints/last.pt` and `best_ckpt.pt` (rank 0), after checking that the state is finite.

    Args:
        ckpt_dir: the experiment's `checkpoints/` folder.
        accelerator: the run's Accelerator (ranks, grad scaler).
        model: the online network (prepared, possibly compiled; unwrapped for saving).
        ema: the EMA network.
        opt: the optimiser.
        args: the run's flags, saved in every checkpoint.
        state: the run's position, saved in `last.pt`.
    """

    def __init__(
        self,
        ckpt_dir: Path,
        accelerator,
        model: torch.nn.Module,
        ema: torch.nn.Module,
        opt: torch.optim.Optimizer,
        args: argparse.Namespace,
        state: RunState,
    ) -> None:
        self.ckpt_dir, self.accelerator, self.args, self.state = ckpt_dir, accelerator, args, state
        self.model, self.ema, self.opt = model, ema, opt

    @property
    def last(self) -> Path:
        return self.ckpt_dir / "last.pt"

    @property
    def best(self) -> Path:
        return self.ckpt_dir / "best_ckpt.pt"

    def hint(self) -> str:
        """How to continue after a stop (see `resume_hint`)."""
        return resume_hint(self.state.newest_last, self.args.ckpt_every)

    def _weights(self) -> dict:
        return {
            "model": unwrap_model(self.model).state_dict(),
            "ema": self.ema.state_dict(),
            "opt": self.opt.state_dict(),
        }

    def require_finite(self, what: Path) -> None:
        """Stop (every rank alike: the states are replicated) before a non-finite state reaches checkpoint `what`.

        Raises:
            FloatingPointError: naming the first non-finite entries and the newest finite checkpoint.
        """
        bad = non_finite_entries(self._weights())
        if bad:
            raise FloatingPointError(
                f"non-finite values in {', '.join(bad[:3])} at step {self.state.train_steps}; {what} is not "
                "written. " + self.hint()
            )

    def save_last(self) -> None:
        """Write `last.pt` (collective: every rank's random states are gathered): all a resumed run needs."""
        self.require_finite(self.last)
        states = all_gather_objects(global_rng_state())
        scaler = self.accelerator.scaler
        if self.accelerator.is_main_process:
            save_checkpoint(
                self.last,
                {
                    **self._weights(),
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "args": self.args,
                    "train_steps": self.state.train_steps,
                    "epoch": self.state.epoch,
                    "batches_done": self.state.batches_done,
                    "best_kid": self.state.best_kid,
                    "best_kid_se": self.state.best_kid_se,
                    "best_step": self.state.best_step,
                    "rng": states,
                },
            )
        self.state.newest_last = (self.last, self.state.train_steps)
        self.accelerator.wait_for_everyone()

    @property
    def best_record(self) -> Path:
        """`best_ckpt.json` beside `best_ckpt.pt`: which validation chose it, by which rule, and why."""
        return self.best.with_suffix(".json")

    def save_best(self, record: dict | None = None) -> None:
        """Write `best_ckpt.pt` in the reference layout, {model, ema, opt, args}, then `record` (if given) as
        best_ckpt.json (rank 0 writes; call on all)."""
        self.require_finite(self.best)
        if self.accelerator.is_main_process:
            save_checkpoint(self.best, {**self._weights(), "args": self.args})
            if record is not None:
                atomic_write_text(self.best_record, json.dumps(record, indent=2) + "\n")
        self.accelerator.wait_for_everyone()
