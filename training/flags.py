"""Every check of train.py's flags, before any model is built or folder created.

`check_args` holds all checks that the flags alone decide; `check_input_size` the one that needs the model's input
multiple (known once the network is built, before any folder exists).
"""

from __future__ import annotations

import argparse
import math

from infra.errors import UserError

# The largest --lr accepted: AdamW moves every weight by about lr per step, so lr >= 1 only destroys the network
# (the reference trains at 1e-4).
MAX_LR = 1.0


def check_args(args: argparse.Namespace, world_size: int = 1) -> None:
    """Reject flag values that cannot work or are absurd, naming the flag, before any set-up.

    Args:
        args: train.py's flags (after a resumed run took its model-shape flags from the checkpoint).
        world_size: number of training processes (the global batch must split evenly over them).

    Raises:
        ValueError: the first bad flag.
    """
    if args.multi_scale:
        raise UserError(
            "--multi_scale is not supported (docs/DECISIONS.md §C2.10): the reference's multi-scale path is "
            "experimental, unused by the reported results and broken"
        )
    if args.diffusion_steps <= 20:
        raise UserError(
            f"--diffusion-steps {args.diffusion_steps} is too short: the linear schedule scaled to "
            "1000/T reaches beta = 1 at T = 20"
        )
    if not (math.isfinite(args.lr) and 0 < args.lr <= MAX_LR):
        raise UserError(
            f"--lr must be a finite number in (0, {MAX_LR:g}], got {args.lr}: AdamW moves every weight by about lr "
            "per step (the reference trains at 1e-4)"
        )
    if not 0.0 <= args.ema_decay < 1.0:  # also rejects NaN
        raise UserError(f"--ema-decay must be in [0, 1), got {args.ema_decay}")
    if not (math.isfinite(args.cfg_scale) and args.cfg_scale >= 1.0):
        raise UserError(f"--cfg-scale must be a finite number >= 1, got {args.cfg_scale}")
    if args.image_size < 8 or args.image_size % 8 != 0:
        raise UserError(
            f"--image-size {args.image_size} must be a positive multiple of 8: the VAE downsamples by 8, and the "
            "sampling scripts accept only such sizes"
        )
    if args.image_space and args.in_channels != 3:
        raise UserError(f"--image_space trains on RGB pixels: --in_channels must be 3, got {args.in_channels}")
    for flag, value, low in (
        ("--global-batch-size", args.global_batch_size, 1),
        ("--epochs", args.epochs, 1),
        ("--ckpt-every", args.ckpt_every, 1),
        ("--log-every", args.log_every, 1),
        ("--validate_every", args.validate_every, 0),
        ("--num-workers", args.num_workers, 0),
        ("--nca-checkpoint", args.nca_checkpoint, 0),
        ("--max-steps", 1 if args.max_steps is None else args.max_steps, 1),
    ):
        if value < low:
            raise UserError(f"{flag} must be >= {low}, got {value}")
    if args.validate_every > 0 and args.val_samples < 2:
        raise UserError(f"--val_samples must be >= 2 (KID compares sets of samples), got {args.val_samples}")
    if (
        args.validate_every > 0
        and args.val_mode == "final"
        and not 1 <= args.num_sampling_steps <= args.diffusion_steps
    ):
        raise UserError(
            f"--num-sampling-steps must be in [1, --diffusion-steps {args.diffusion_steps}], got "
            f"{args.num_sampling_steps}"
        )
    if args.global_batch_size % world_size != 0:
        raise UserError(f"--global-batch-size {args.global_batch_size} is not divisible by {world_size} processes")


def check_input_size(args: argparse.Namespace, multiple: int) -> None:
    """Reject an `--image-size` whose network input side (pixels, or latents = size / 8) the model cannot take.

    Args:
        args: the flags (`--image-size`, `--image_space`, `--model`).
        multiple: the model's `input_multiple` (DiT: its patch side; UNet: its total down-sampling; GeCA: 1).
    """
    side = args.image_size if args.image_space else args.image_size // 8
    if side % multiple != 0:
        step = multiple if args.image_space else 8 * multiple
        what = "pixel" if args.image_space else "latent (--image-size / 8)"
        raise UserError(
            f"--image-size {args.image_size} gives a {what} side of {side}, which --model {args.model} cannot take: "
            f"it needs a multiple of {multiple}; use a multiple of {step} for --image-size"
        )
