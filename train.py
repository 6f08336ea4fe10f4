"""Train a GeCA, DiT or LDM-B denoiser on SD-VAE latents (or pixels) with EMA, KID-based selection and exact resume.

Reference launch (docs/REFERENCE.md §1; 4 GPUs, fp16):
    accelerate launch --multi_gpu --num_processes 4 --mixed_precision fp16 train.py --model GeCA-S \
        --feature-path store/oct_features/ --num-classes 11 --global-batch-size 128 --epochs 14000 --fold 0 \
        --validate_every 700 --data-path data/oct_multilabel/ --results-dir ./results_oct_GeCA/
Plain single process (CPU or one GPU):
    python train.py --model GeCA-T --feature-path store/feats --data-path data/phantoms --num-classes 11 ...
Resume (the model-shape and data-stream flags not given come from the checkpoint):
    python train.py --resume results/000-GeCA-T-0 --feature-path store/feats --data-path data/phantoms

The loop, resume, validation and records live in `training/`; this file is the recipe.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

from data.select import add_dataset_arguments
from diffusion import create_diffusion
from diffusion.respace import SpacedDiffusion
from infra.argtypes import int_at_least, non_negative_int, positive_int
from infra.checkpoint import find_model
from infra.errors import UserError, run_main
from infra.flags import (
    add_ckpt_every_flag,
    add_compile_flag,
    add_epochs_flag,
    add_fold_flag,
    add_ghg_flag,
    add_global_batch_size_flag,
    add_global_seed_flag,
    add_guidance_flags,
    add_image_size_flag,
    add_image_space_flag,
    add_in_channels_flag,
    add_inception_weights_flag,
    add_log_every_flag,
    add_mixed_precision_flag,
    add_model_flag,
    add_num_classes_flag,
    add_num_workers_flag,
    add_results_dir_flag,
    add_tf32_flag,
    add_vae_flag,
    check_flag_values,
)
from infra.precision import set_tf32
from infra.run_args import given_flags
from infra.seeding import isolated_global_rng, rank_seed, seed_everything, set_global_rng_state
from infra.tracker import Tracker
from models import DiT_models
from training.data import load_training_set, load_validation_batch
from training.experiment import console_logger, open_experiment, plot_curves
from training.flags import EMA_DECAY, LEARNING_RATE, check_args, check_input_size
from training.loop import TrainingRun, run_training
from training.resume import ResumePoint, open_resume, restore
from training.selection import BEST_RULES
from training.state import Checkpoints, RunState
from training.validation import Validator


def main(args: argparse.Namespace, given: set[str] | None = None) -> Path:
    """Train, validate and checkpoint; returns the experiment folder.

    Args:
        args: the parsed flags (`build_parser`).
        given: the flags present on the command line (`infra.run_args.given_flags`). With `--resume`, the
            model-shape and data-stream flags not among them are taken from the checkpoint
            (`training.resume.RESUME_FILLED`); None means unknown: every flag is compared with the checkpoint's as
            given.
    """
    accelerator = make_accelerator(args.mixed_precision)
    rank, world = accelerator.process_index, accelerator.num_processes
    # Until every input is checked there is no experiment folder: messages are kept and go to log.txt later.
    logger, early_records = console_logger(rank)
    resume = settle_flags(args, given, world, logger)
    seed_everything(rank_seed(args.global_seed, world, rank))  # docs/DECISIONS.md §C2.4

    # Every input is checked before the model is built, and the model before the experiment folder is created.
    train_set, latent_size, real_batch = load_data(args, logger)
    model, ema, opt, diffusion = build_model(args, latent_size, resume is not None, accelerator.device, logger)
    validator = build_validator(args, accelerator, model, ema, latent_size, logger, real_batch)
    exp_dir, logger = open_experiment(
        args.results_dir, args.model, args.fold, resume.path if resume else None, accelerator, early_records.buffer
    )
    state, model, opt = restore_and_prepare(args, accelerator, resume, model, ema, opt, len(train_set), exp_dir, logger)
    tracker = Tracker(args.wandb and accelerator.is_main_process, "Fast-DiT", vars(args), logger)

    # Training loop: epochs of steps, loss logs, last.pt every --ckpt-every steps, validation and best_ckpt.pt.
    checkpoints = Checkpoints(exp_dir / "checkpoints", accelerator, model, ema, opt, args, state)
    run = TrainingRun(
        args=args,
        accelerator=accelerator,
        model=model,
        ema=ema,
        opt=opt,
        diffusion=diffusion,
        train_set=train_set,
        validator=validator,
        exp_dir=exp_dir,
        logger=logger,
        tracker=tracker,
        state=state,
        checkpoints=checkpoints,
    )
    run_training(run)
    finish(accelerator, exp_dir, checkpoints, state, tracker, logger)
    return exp_dir


# ----------------------------------------------------------------------------------------------------------------
# The steps of main, in order
# ----------------------------------------------------------------------------------------------------------------


def make_accelerator(mixed_precision: str):
    """Accelerate on CPU (gloo) when CUDA is absent; the launcher's mixed precision wins over --mixed-precision."""
    from accelerate import Accelerator

    launcher_precision = os.environ.get("ACCELERATE_MIXED_PRECISION")
    return Accelerator(
        cpu=not torch.cuda.is_available(), mixed_precision=None if launcher_precision else mixed_precision
    )


def settle_flags(
    args: argparse.Namespace, given: set[str] | None, world: int, logger: logging.Logger
) -> ResumePoint | None:
    """The run's final flags, checked, before any set-up; returns the checkpoint to resume from, or None.

    A resumed run first takes the model-shape and data-stream flags it was not given from its checkpoint, and every
    other flag left out keeps the checkpoint's value (changes are refused or logged). The range checks the parser
    ran on the command line then run again on every value (those from the checkpoint, or a Namespace built in code,
    did not pass through it), followed by the checks across flags. TF32 is applied last.
    """
    parser = build_parser()
    resume = open_resume(args, given, parser) if args.resume else None
    if resume is not None and resume.taken:
        logger.info(f"from the checkpoint: {', '.join(resume.taken)}")
    check_flag_values(parser, args)
    check_args(args, world)
    set_tf32(args.tf32)
    return resume


def load_data(args: argparse.Namespace, logger: logging.Logger) -> tuple[Dataset, int, torch.Tensor | None]:
    """The training set (every item checked), its latent side, and the fixed real validation batch (None: no
    validation), drawn from an isolated random stream."""
    train_set, latent_size = load_training_set(args)
    real_batch = None
    if args.validate_every > 0:
        with isolated_global_rng():
            real_batch = load_validation_batch(args, args.global_seed)
    logger.info(f"Dataset contains {len(train_set):,} items ({'images' if args.image_space else 'latents'})")
    return train_set, latent_size, real_batch


def build_model(
    args: argparse.Namespace, latent_size: int, resuming: bool, device: torch.device, logger: logging.Logger
) -> tuple[torch.nn.Module, torch.nn.Module, torch.optim.Optimizer, SpacedDiffusion]:
    """The denoiser (checked against --image-size, initialised from --load_from unless resuming), its EMA on
    `device`, the AdamW optimiser and the training diffusion."""
    model = DiT_models[args.model](input_size=latent_size, num_classes=args.num_classes, in_channels=args.in_channels)
    check_input_size(args, model.input_multiple)
    if args.nca_checkpoint:
        if not getattr(model, "is_cellular", False):
            raise UserError(f"--nca-checkpoint applies to cellular models (GeCA), not --model {args.model}")
        model.nca_checkpoint = args.nca_checkpoint
    if args.load_from and os.path.exists(args.load_from):
        if not resuming:
            model.load_state_dict(find_model(os.path.join(args.load_from, "best_ckpt.pt")))
            logger.info(f"Initialised from {args.load_from}/best_ckpt.pt")
        else:
            logger.info(
                f"--load_from {args.load_from} is not used: a resumed run takes its weights from the checkpoint"
            )
    ema = copy.deepcopy(model).to(device)
    ema.requires_grad_(False)
    ema.eval()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0)
    diffusion = create_diffusion(timestep_respacing="", diffusion_steps=args.diffusion_steps)
    logger.info(f"{args.model} parameters: {sum(p.numel() for p in model.parameters()):,}")
    return model, ema, opt, diffusion


def build_validator(
    args: argparse.Namespace,
    accelerator,
    model: torch.nn.Module,
    ema: torch.nn.Module,
    latent_size: int,
    logger: logging.Logger,
    real_batch: torch.Tensor | None,
) -> Validator | None:
    """The validation's fixed real batch features and VAE (None without validation).

    Loading those networks draws random numbers (layers are initialised before their weights are loaded); isolated,
    so a resumed run's streams match an uninterrupted run's.
    """
    if real_batch is None:
        return None
    with isolated_global_rng():
        return Validator(args, accelerator, model, ema, latent_size, logger, real_batch)


def restore_and_prepare(
    args: argparse.Namespace,
    accelerator,
    resume: ResumePoint | None,
    model: torch.nn.Module,
    ema: torch.nn.Module,
    opt: torch.optim.Optimizer,
    num_items: int,
    exp_dir: Path,
    logger: logging.Logger,
) -> tuple[RunState, torch.nn.Module, torch.optim.Optimizer]:
    """Resume the weights, EMA, optimiser, position and best KID from the checkpoint (before accelerate wraps them),
    wrap model and optimiser, compile, and restore the grad scaler and random streams.

    Returns:
        (the run's state, the wrapped model, the wrapped optimiser).
    """
    state, saved_rng = RunState(), None
    if resume is not None:
        steps_per_epoch = num_items // args.global_batch_size
        state, saved_rng = restore(resume, model, ema, opt, args, accelerator, steps_per_epoch, exp_dir, logger)
    model, opt = accelerator.prepare(model, opt)
    if args.compile:
        # Compiled on the first step; checkpoints and the EMA still see the bare network (unwrap_model).
        model = torch.compile(model)
        logger.info("torch.compile: the model is compiled on the first training step")
    if resume is not None and accelerator.scaler is not None and resume.checkpoint.get("scaler"):
        accelerator.scaler.load_state_dict(resume.checkpoint["scaler"])
    if saved_rng is not None:
        set_global_rng_state(saved_rng)
    return state, model, opt


def finish(
    accelerator, exp_dir: Path, checkpoints: Checkpoints, state: RunState, tracker: Tracker, logger: logging.Logger
) -> None:
    """Final save: last.pt at the position reached, the loss curve; close the tracker and accelerate."""
    checkpoints.save_last()
    if accelerator.is_main_process and (exp_dir / "metrics.csv").exists():
        plot_curves(exp_dir / "metrics.csv", exp_dir / "loss_curve.png")
    logger.info(f"Done! {state.train_steps} steps; last checkpoint {checkpoints.last}")
    tracker.finish()
    accelerator.end_training()


# ----------------------------------------------------------------------------------------------------------------
# Flags
# ----------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The reference flags of train.py (docs/REFERENCE.md §3.2) plus this project's additions.

    The additions (validation rule, resume, precision, ...) are described in docs/DECISIONS.md §C2.4, §C2.5. Flags
    shared with other scripts come from `infra.flags`; the order of the flags is the order of the saved `args`.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_reference_flags(p)
    add_project_flags(p)
    return p


def add_reference_flags(p: argparse.ArgumentParser) -> None:
    """The flags of the reference's train.py, with their defaults."""
    p.add_argument(
        "--feature-path", type=str, default="features", help="folder with features_{fold}/ and labels_{fold}/"
    )
    p.add_argument("--data-path", type=str, default="data", help="raw dataset root (validation images; --image_space)")
    add_results_dir_flag(p)
    p.add_argument(
        "--load_from",
        type=str,
        default="load_from",
        help="if this folder exists, initialise from {load_from}/best_ckpt.pt (its EMA weights)",
    )
    add_model_flag(p, DiT_models)
    add_image_size_flag(p)
    add_num_classes_flag(p, default=1000)
    add_epochs_flag(p, default=1400)
    add_global_batch_size_flag(p)
    add_global_seed_flag(p)
    add_vae_flag(p)
    add_num_workers_flag(p, underscore_alias=True)
    add_log_every_flag(p, default=100)
    add_ckpt_every_flag(p, default=50_000)
    p.add_argument(
        "--validate_every",
        type=non_negative_int,
        default=10,
        help="validate (KID) every N epochs, from epoch 0; 0 = off",
    )
    p.add_argument("--val_samples", type=int, default=24, help="number of validation samples (KID batch)")
    add_fold_flag(p, default=5)
    add_in_channels_flag(p)
    p.add_argument("--grad_norm", action="store_true", help="divide each gradient tensor by its own L2 norm")
    add_image_space_flag(p)
    p.add_argument(
        "--cache", action="store_true", help="cache latents in memory (ignored with --image_space: docs/DEVIATIONS.md)"
    )
    p.add_argument(
        "--multi_scale", action="store_true", help="not supported (docs/DECISIONS.md §C2.10): rejected with an error"
    )


def add_project_flags(p: argparse.ArgumentParser) -> None:
    """This project's additions: validation rule, resume, precision, data kind, run length and optimiser."""
    p.add_argument(
        "--val-mode",
        choices=["legacy", "final"],
        default="legacy",
        help="legacy: online model, zero labels, no CFG, all steps; final: EMA, real labels, CFG, respaced",
    )
    add_guidance_flags(p)
    p.add_argument(
        "--best-rule",
        choices=list(BEST_RULES),
        default="lowest",
        help="which validation becomes best_ckpt.pt: lowest = the lowest KID (reference); within-noise = the latest "
        "whose KID is within 2 standard errors of the lowest (docs/DECISIONS.md §C9)",
    )
    add_ghg_flag(p)
    p.add_argument(
        "--diffusion-steps",
        type=int_at_least(21, "the linear schedule scaled to 1000/T reaches beta = 1 at T = 20"),
        default=1000,
        help="length T of the training diffusion (reference 1000; smaller only for quick CPU runs)",
    )
    p.add_argument(
        "--resume",
        type=str,
        default=None,
        help="checkpoints/last.pt (or its experiment folder) to resume; the model-shape and data-stream flags not "
        "given are taken from it",
    )
    add_mixed_precision_flag(p)
    add_tf32_flag(p)
    p.add_argument("--wandb", action="store_true", help="log to wandb (project Fast-DiT) when installed")
    add_dataset_arguments(p)
    add_inception_weights_flag(p)
    p.add_argument("--max-steps", type=positive_int, default=None, help="stop after this many optimiser steps")
    p.add_argument(
        "--lr",
        type=LEARNING_RATE,
        default=1e-4,
        help="AdamW learning rate, constant (reference 1e-4; larger only for runs of a few hundred steps)",
    )
    p.add_argument(
        "--ema-decay",
        type=EMA_DECAY,
        default=0.9999,
        help="EMA decay per optimiser step (reference 0.9999; smaller only for runs of a few hundred steps)",
    )
    p.add_argument(
        "--nca-checkpoint",
        type=non_negative_int,
        default=0,
        help="GeCA: activation checkpointing over the cellular steps in K segments (0 = off)",
    )
    add_compile_flag(p)


if __name__ == "__main__":
    parser = build_parser()
    run_main("train.py", lambda: main(parser.parse_args(), given_flags(parser, None)))
