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
import os
from pathlib import Path

import torch

from diffusion import create_diffusion
from infra.argtypes import image_size_flag
from infra.checkpoint import find_model
from infra.errors import UserError, run_main
from infra.precision import add_tf32_flag, set_tf32
from infra.run_args import given_flags
from infra.seeding import isolated_global_rng, rank_seed, seed_everything, set_global_rng_state
from infra.tracker import Tracker
from models import DiT_models
from training.data import load_training_set, load_validation_batch
from training.experiment import console_logger, open_experiment, plot_curves
from training.flags import check_args, check_input_size
from training.loop import TrainingRun, run_training
from training.resume import open_resume, restore
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
    # Accelerate: CPU (gloo) when CUDA is absent; the launcher's mixed precision wins over --mixed-precision.
    from accelerate import Accelerator

    launcher_precision = os.environ.get("ACCELERATE_MIXED_PRECISION")
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(), mixed_precision=None if launcher_precision else args.mixed_precision
    )
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    # Until every input is checked there is no experiment folder: messages are kept and go to log.txt later.
    logger, early_records = console_logger(rank)

    # Flags: a resumed run first takes the model-shape and data-stream flags it was not given from its checkpoint
    # (and refuses or logs every other change); then every flag is checked, before any set-up.
    resume = open_resume(args, given, build_parser()) if args.resume else None
    if resume is not None and resume.taken:
        logger.info(f"from the checkpoint: {', '.join(resume.taken)}")
    check_args(args, world)
    set_tf32(args.tf32)

    # Seed every rank (docs/DECISIONS.md §C2.4).
    seed_everything(rank_seed(args.global_seed, world, rank))

    # Data: every training and validation input is checked before the model is built.
    train_set, latent_size = load_training_set(args)
    real_batch = None
    if args.validate_every > 0:
        with isolated_global_rng():
            real_batch = load_validation_batch(args, args.global_seed)
    logger.info(f"Dataset contains {len(train_set):,} items ({'images' if args.image_space else 'latents'})")

    # Model, EMA, optimiser, diffusion.
    model = DiT_models[args.model](input_size=latent_size, num_classes=args.num_classes, in_channels=args.in_channels)
    check_input_size(args, model.input_multiple)
    if args.nca_checkpoint:
        if not getattr(model, "is_cellular", False):
            raise UserError(f"--nca-checkpoint applies to cellular models (GeCA), not --model {args.model}")
        model.nca_checkpoint = args.nca_checkpoint
    if args.load_from and os.path.exists(args.load_from):
        if resume is None:
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

    # Validation: the fixed real batch's features and the VAE. Loading those networks draws random numbers (layers
    # are initialised before their weights are loaded); isolated, so a resumed run's streams match an uninterrupted
    # run's.
    validator = None
    if real_batch is not None:
        with isolated_global_rng():
            validator = Validator(args, accelerator, model, ema, latent_size, logger, real_batch)

    # Experiment folder: a new one, or the resumed checkpoint's; log.txt from here on.
    exp_dir, logger = open_experiment(
        args.results_dir, args.model, args.fold, resume.path if resume else None, accelerator, early_records.buffer
    )

    # Resume: weights, EMA, optimiser, position and best KID from the checkpoint (before accelerate wraps them).
    state, saved_rng = RunState(), None
    if resume is not None:
        steps_per_epoch = len(train_set) // args.global_batch_size
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

    # Final save: last.pt at the position reached, the loss curve.
    checkpoints.save_last()
    if accelerator.is_main_process and (exp_dir / "metrics.csv").exists():
        plot_curves(exp_dir / "metrics.csv", exp_dir / "loss_curve.png")
    logger.info(f"Done! {state.train_steps} steps; last checkpoint {checkpoints.last}")
    tracker.finish()
    accelerator.end_training()
    return exp_dir


def build_parser() -> argparse.ArgumentParser:
    """The reference flags of train.py (docs/REFERENCE.md §3.2) plus this project's additions.

    The additions (validation rule, resume, precision, ...) are described in docs/DECISIONS.md §C2.4, §C2.5.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--feature-path", type=str, default="features", help="folder with features_{fold}/ and labels_{fold}/"
    )
    p.add_argument("--data-path", type=str, default="data", help="raw dataset root (validation images; --image_space)")
    p.add_argument("--results-dir", type=str, default="results", help="experiment folders go here")
    p.add_argument(
        "--load_from",
        type=str,
        default="load_from",
        help="if this folder exists, initialise from {load_from}/best_ckpt.pt (its EMA weights)",
    )
    p.add_argument("--model", type=str, choices=list(DiT_models.keys()), default="DiT-XL/2", help="registry key")
    p.add_argument(
        "--image-size",
        type=image_size_flag,
        default=256,
        help="image side in pixels, a multiple of 8 (latent side = size // 8) that the model's patches divide",
    )
    p.add_argument("--num-classes", type=int, default=1000, help="label vector length (OCT 11, RetinaMNIST 5)")
    p.add_argument("--epochs", type=int, default=1400, help="number of passes over the training set")
    p.add_argument("--global-batch-size", type=int, default=256, help="batch over all processes")
    p.add_argument("--global-seed", type=int, default=0, help="seeds every rank as seed * world + rank")
    p.add_argument(
        "--vae",
        type=str,
        default="ema",
        help="ema | mse (stabilityai/sd-vae-ft-*) or a local AutoencoderKL folder (validation decoding)",
    )
    p.add_argument(
        "--num-workers", "--num_workers", dest="num_workers", type=int, default=4, help="data loader workers"
    )
    p.add_argument("--log-every", type=int, default=100, help="log the loss every N optimiser steps")
    p.add_argument(
        "--ckpt-every", type=int, default=50000, help="write the resumable checkpoints/last.pt every N steps"
    )
    p.add_argument(
        "--validate_every", type=int, default=10, help="validate (KID) every N epochs, from epoch 0; 0 = off"
    )
    p.add_argument("--val_samples", type=int, default=24, help="number of validation samples (KID batch)")
    p.add_argument("--fold", type=int, default=5, help="fold number")
    p.add_argument("--in_channels", type=int, default=4, help="latent channels (3 with --image_space)")
    p.add_argument("--grad_norm", action="store_true", help="divide each gradient tensor by its own L2 norm")
    p.add_argument("--image_space", action="store_true", help="train on pixels instead of latents")
    p.add_argument("--cache", action="store_true", help="cache latents in memory")
    p.add_argument(
        "--multi_scale", action="store_true", help="not supported (docs/DECISIONS.md §C2.10): rejected with an error"
    )
    # Additions of this project.
    p.add_argument(
        "--val-mode",
        choices=["legacy", "final"],
        default="legacy",
        help="legacy: online model, zero labels, no CFG, all steps; final: EMA, real labels, CFG, respaced",
    )
    p.add_argument("--cfg-scale", type=float, default=1.5, help="guidance scale of --val-mode final")
    p.add_argument("--num-sampling-steps", type=int, default=250, help="respaced steps of --val-mode final")
    p.add_argument(
        "--best-rule",
        choices=list(BEST_RULES),
        default="lowest",
        help="which validation becomes best_ckpt.pt: lowest = the lowest KID (reference); within-noise = the latest "
        "whose KID is within 2 standard errors of the lowest (docs/DECISIONS.md §C9)",
    )
    p.add_argument(
        "--ghg",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="GeCA validation sampling: Gene Heredity Guidance (default, reference); --no-ghg starts every step "
        "from a fresh seed cell as in training. No effect on non-cellular models",
    )
    p.add_argument(
        "--diffusion-steps",
        type=int,
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
    p.add_argument(
        "--mixed-precision",
        choices=["no", "fp16", "bf16"],
        default="no",
        help="autocast for plain runs; an accelerate launcher's --mixed_precision takes precedence",
    )
    add_tf32_flag(p)
    p.add_argument("--wandb", action="store_true", help="log to wandb (project Fast-DiT) when installed")
    p.add_argument(
        "--dataset",
        choices=["oct", "retinamnist", "csv", "tnbc"],
        default=None,
        help="dataset kind; default: guessed from --data-path as the reference does",
    )
    p.add_argument("--label-columns", nargs="+", default=None, help="label columns of a --dataset csv")
    p.add_argument("--inception-weights", type=str, default=None, help="FID Inception weights file for KID")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps")
    p.add_argument(
        "--lr",
        type=float,
        default=1e-4,
        help="AdamW learning rate, constant (reference 1e-4; larger only for runs of a few hundred steps)",
    )
    p.add_argument(
        "--ema-decay",
        type=float,
        default=0.9999,
        help="EMA decay per optimiser step (reference 0.9999; smaller only for runs of a few hundred steps)",
    )
    p.add_argument(
        "--nca-checkpoint",
        type=int,
        default=0,
        help="GeCA: activation checkpointing over the cellular steps in K segments (0 = off)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model for training (the first step compiles; on CPU this needs a C++ compiler)",
    )
    return p


if __name__ == "__main__":
    parser = build_parser()
    run_main("train.py", lambda: main(parser.parse_args(), given_flags(parser, None)))
