"""The checks of train.py's flags that argparse cannot make, before any model is built or folder created.

A flag's own range (`--lr` in (0, 1], counts at least 1, `--image-size` a multiple of 8, ...) is checked by its
argparse type in train.py (`infra.argtypes`), and again by `infra.flags.check_flag_values` on the values a resumed
run takes from its checkpoint. Here: `check_args`, the checks across flags and the refused `--multi_scale`;
`check_input_size`, the one that needs the model's input multiple (known once the network is built, before any
folder exists).
"""

from __future__ import annotations

import argparse

from infra.argtypes import number_in
from infra.errors import UserError

# The argparse types of `--lr` and `--ema-decay` (train.py, and demo.settle, which passes them on to it).
LEARNING_RATE = number_in(
    0.0, 1.0, "high", "AdamW moves every weight by about lr per step (the reference trains at 1e-4)"
)
EMA_DECAY = number_in(0.0, 1.0, "low", "the EMA keeps this fraction of itself at every optimiser step")


def check_args(args: argparse.Namespace, world_size: int = 1) -> None:
    """Reject flag combinations that cannot work, naming the flags, before any set-up.

    Args:
        args: train.py's flags (after a resumed run took its flags from the checkpoint), each within its range.
        world_size: number of training processes (the global batch must split evenly over them).

    Raises:
        ValueError: the first bad flag.
    """
    if args.multi_scale:
        raise UserError(
            "--multi_scale is not supported (docs/DECISIONS.md §C2.10): the reference's multi-scale path is "
            "experimental, unused by the reported results and broken"
        )
    if args.image_space and args.in_channels != 3:
        raise UserError(f"--image_space trains on RGB pixels: --in_channels must be 3, got {args.in_channels}")
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
