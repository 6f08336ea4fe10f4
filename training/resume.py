"""Continuing a run from `checkpoints/last.pt`: open it, take its model-shape flags, reconcile flags, restore state.

Nothing is silently ignored: a flag that fixes the network or the data stream must equal the checkpoint's (or the
run is refused naming it); every other change applies from the first resumed step and is logged.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from infra.checkpoint import load_checkpoint
from infra.errors import UserError
from infra.run_args import MODEL_SHAPE_FLAGS, fill_from_checkpoint, flag_name, format_setting
from training.experiment import truncate_metrics
from training.state import RunState

# Entries a checkpoint needs to resume a run (best_ckpt.pt, in the reference layout, lacks the position and RNG).
RESUME_KEYS = ("model", "ema", "opt", "args", "train_steps", "epoch", "batches_done", "best_kid", "rng")
# Flags a resumed run cannot change, and what they fix: the network, what it learns, or the data and its order.
RESUME_FIXED = {
    "model": "the network",
    "num_classes": "the network",
    "in_channels": "the network",
    "image_size": "the network's input",
    "image_space": "the network's input",
    "diffusion_steps": "the training objective",
    "global_seed": "the data order and random streams",
    "global_batch_size": "the position in the data order",
    "fold": "the training data",
    "dataset": "the labels",
    "label_columns": "the labels",
}
# Settings a resumed run takes from its checkpoint when they are not on the command line: the model's shape (as the
# sampling scripts do) and the rest of RESUME_FIXED, which can only take the checkpoint's value anyway.
RESUME_FILLED = (*MODEL_SHAPE_FLAGS, *(key for key in RESUME_FIXED if key not in MODEL_SHAPE_FLAGS))
# Flags that define the validation rule: after a change, the checkpoint's best KID is no longer comparable.
VALIDATION_RULE_FLAGS = (
    "val_mode",
    "val_samples",
    "cfg_scale",
    "num_sampling_steps",
    "ghg",
    "inception_weights",
    "vae",
    "data_path",
)
# Flags a resumed run does not use, and why.
RESUME_UNUSED = {
    "results_dir": "a resumed run continues in the checkpoint's experiment folder",
    "load_from": "a resumed run takes its weights from the checkpoint",
}


@dataclass
class ResumePoint:
    """An opened checkpoint to continue from.

    Attributes:
        path: the checkpoint file.
        checkpoint: its entries (RESUME_KEYS, and `scaler`).
        notes: one log line per flag change (applied, unused or unrecorded).
        rule_changed: the validation rule changed, so the checkpoint's best KID is not comparable.
        taken: the settings taken from the checkpoint ("--flag value"), for the log: the model-shape and data-stream
            flags, and every other flag the command line left out whose default differs from the saved value.
    """

    path: Path
    checkpoint: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    rule_changed: bool = False
    taken: list[str] = field(default_factory=list)


def open_resume(args: argparse.Namespace, given: set[str] | None, parser: argparse.ArgumentParser) -> ResumePoint:
    """Load `--resume`, fill the RESUME_FILLED settings the user did not give from it, and reconcile every flag.

    A given RESUME_FILLED flag that contradicts the checkpoint stops with one line naming both values (a given
    `--vae` wins, as for sampling, and counts as a change of the validation rule). Every other flag left out takes
    the checkpoint's value, so a bare `--resume` continues the run unchanged; a given one is applied, and each
    difference from the checkpoint is refused or logged by `reconcile_resume_args`.

    Args:
        args: this run's flags; the RESUME_FILLED settings not in `given` are replaced by the checkpoint's, in place.
        given: the flags present on the command line (`infra.run_args.given_flags`); None: unknown, nothing is
            filled and every flag is compared as given.
        parser: train.py's parser (flag spellings for messages).

    Raises:
        FileNotFoundError: no checkpoint at `--resume`.
        ValueError: an unreadable or non-resumable checkpoint, a given shape flag contradicting it (one line), or
            flags that cannot change in a resumed run.
    """
    path = Path(args.resume)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"--resume {args.resume}: no checkpoint at {path}")
    checkpoint = load_checkpoint(path, RESUME_KEYS, "a resumable checkpoints/last.pt written by train.py")
    taken = []
    if given is not None:
        saved = checkpoint["args"]
        taken, _ = fill_from_checkpoint(parser, args, given, saved, f"--resume {path}", RESUME_FILLED)
        # A resume continues the run as it was: every other flag left out keeps the checkpoint's value (not the
        # parser's default); a flag given on the command line is applied and logged by reconcile_resume_args.
        for key, value in sorted(vars(saved).items()):
            if key in RESUME_FILLED or key in RESUME_UNUSED or key == "resume" or not hasattr(args, key):
                continue
            if key not in given and getattr(args, key) != value:
                setattr(args, key, value)
                taken.append(format_setting(flag_name(parser, key), value))
    notes, rule_changed = reconcile_resume_args(checkpoint["args"], args, path, parser)
    return ResumePoint(path, checkpoint, notes, rule_changed, taken)


def reconcile_resume_args(
    saved: argparse.Namespace, args: argparse.Namespace, resume_path: Path, parser: argparse.ArgumentParser
) -> tuple[list[str], bool]:
    """Compare this run's flags with those the checkpoint was written with: refuse, or apply and report each change.

    A flag in RESUME_FIXED that differs is refused; one in RESUME_UNUSED is reported as not used; every other change
    applies from the first resumed step and is reported (the optimiser's saved learning rate is replaced by `--lr`).

    Args:
        saved: the checkpoint's `args`.
        args: this run's flags.
        resume_path: the checkpoint, for messages.
        parser: train.py's parser (flag spellings).

    Returns:
        One message per change, to be logged, and whether the validation rule changed (then the checkpoint's best
        KID is not comparable and the next validation starts a new best).

    Raises:
        ValueError: naming every refused flag with both values.
    """
    names = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}
    old, new = vars(saved), vars(args)
    refused, notes, rule_changed, unrecorded = [], [], False, []
    for key in sorted(set(new) - {"resume"}):
        flag = names.get(key, f"--{key}")
        if key not in old:
            unrecorded.append(flag)
            continue
        if old[key] == new[key]:
            continue
        change = f"{flag} {old[key]!r} -> {new[key]!r}"
        if key in RESUME_FIXED:
            refused.append(f"{change} (it fixes {RESUME_FIXED[key]})")
        elif key in RESUME_UNUSED:
            notes.append(f"{flag} {new[key]!r} is not used: {RESUME_UNUSED[key]}")
        else:
            notes.append(f"{change}: applied from the first resumed step")
            rule_changed |= key in VALIDATION_RULE_FLAGS
    if refused:
        raise UserError(
            f"--resume {resume_path}: these flags differ from the checkpoint's and cannot change in a resumed run: "
            + "; ".join(refused)
            + ". Pass the checkpoint's values or start a new run."
        )
    if unrecorded:
        notes.append(
            f"{', '.join(unrecorded)}: not recorded in the checkpoint (older train.py); this run's values apply"
        )
    if rule_changed:
        notes.append(
            "the validation rule changed: the checkpoint's best KID is not comparable; the next validation "
            "starts a new best_ckpt.pt"
        )
    return notes, rule_changed


def restore(
    point: ResumePoint,
    model: torch.nn.Module,
    ema: torch.nn.Module,
    opt: torch.optim.Optimizer,
    args: argparse.Namespace,
    accelerator,
    steps_per_epoch: int,
    exp_dir: Path,
    logger: logging.Logger,
) -> tuple[RunState, dict | None]:
    """Load the checkpoint's weights, EMA and optimiser, and return where the run stands and this rank's RNG state.

    Call before `accelerator.prepare` (bare network and optimiser). The optimiser runs at `--lr` (the saved rate is
    replaced; a change was logged by the notes). metrics.csv loses the rows logged after the checkpoint; a
    checkpoint written at the end of an epoch precedes that epoch's validation, whose row goes too (it is redone).

    Args:
        point: the opened checkpoint.
        model, ema, opt: the bare network, its EMA and the optimiser, loaded in place.
        args: the run's flags.
        accelerator: the run's Accelerator (ranks).
        steps_per_epoch: optimiser steps in one epoch (len(train set) // global batch).
        exp_dir: the experiment folder (metrics.csv).
        logger: the run's logger.

    Returns:
        The run state (step, epoch position, best KID, newest checkpoint) and this rank's saved global random
        states, or None when the checkpoint was written by a different number of processes.
    """
    for note in point.notes:
        logger.info(f"--resume: {note}")
    ckpt = point.checkpoint
    model.load_state_dict(ckpt["model"])
    ema.load_state_dict(ckpt["ema"])
    opt.load_state_dict(ckpt["opt"])
    for group in opt.param_groups:
        group["lr"] = args.lr  # the optimiser state carries the old rate; --lr applies (logged above if changed)
    state = RunState(
        train_steps=ckpt["train_steps"],
        epoch=ckpt["epoch"],
        batches_done=ckpt["batches_done"],
        best_kid=math.inf if point.rule_changed else ckpt["best_kid"],
        # Checkpoints written before the standard error was recorded compare with the lowest KID as exact.
        best_kid_se=0.0 if point.rule_changed else ckpt.get("best_kid_se", 0.0),
        best_step=-1 if point.rule_changed else ckpt.get("best_step", -1),
        newest_last=(point.path, ckpt["train_steps"]),
    )
    saved_rng = None
    if len(ckpt["rng"]) == accelerator.num_processes:
        saved_rng = ckpt["rng"][accelerator.process_index]
    else:
        logger.info(
            f"checkpoint was written by {len(ckpt['rng'])} processes, this run has {accelerator.num_processes}: "
            "random streams restart from --global-seed"
        )
    if accelerator.is_main_process:
        redo_validation = state.batches_done >= steps_per_epoch
        truncate_metrics(exp_dir / "metrics.csv", state.train_steps, drop_kid_at_last_step=redo_validation)
    logger.info(
        f"Resumed from {point.path} at step {state.train_steps} (epoch {state.epoch}, batch {state.batches_done})"
    )
    return state, saved_rng
