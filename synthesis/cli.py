"""Command-line pieces shared by the two sampling scripts: their common flags and model/VAE/diffusion set-up."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from data.select import add_dataset_arguments
from diffusion import create_diffusion
from infra.argtypes import positive_int
from infra.checkpoint import load_checkpoint, model_weights
from infra.distributed import DistInfo
from infra.errors import UserError
from infra.flags import (
    add_compile_flag,
    add_device_flag,
    add_fold_flag,
    add_ghg_flag,
    add_global_seed_flag,
    add_guidance_flags,
    add_image_size_flag,
    add_image_space_flag,
    add_mixed_precision_flag,
    add_model_flag,
    add_num_classes_flag,
    add_tf32_flag,
    add_vae_flag,
)
from infra.naming import sample_folder_name
from infra.precision import set_tf32
from infra.rng import keyed_seed
from infra.run_args import CheckpointArgsError, fill_from_checkpoint, given_flags
from models import DiT_models

# Autocast dtypes of the `--mixed-precision` choices (infra.flags.MIXED_PRECISION_CHOICES; None: float32, no autocast).
AUTOCAST_DTYPES = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """Flags common to `sample_ddp.py` and `sample_ddp_val.py` (docs/REFERENCE.md §3.3) and this project's additions."""
    add_model_flag(p, DiT_models)
    add_vae_flag(p)
    p.add_argument("--sample-dir", type=str, default="samples", help="parent of the sample folder")
    p.add_argument("--per-proc-batch-size", type=positive_int, default=32, help="images per process per batch")
    p.add_argument("--num-fid-samples", type=int, default=50_000, help="no effect (unused by the reference too)")
    add_image_size_flag(p)
    add_num_classes_flag(p, default=11)
    add_guidance_flags(p)
    add_global_seed_flag(p)
    add_tf32_flag(p)
    p.add_argument("--ckpt", type=str, default=None, help="checkpoint from train.py (its EMA weights are used)")
    add_fold_flag(p)
    p.add_argument(
        "--expand_ratio", type=positive_int, default=1, help="images per label vector (passes over the labels)"
    )
    add_image_space_flag(p)
    p.add_argument(
        "--sampler",
        choices=["ddpm", "ddim"],
        default="ddpm",
        help="ddpm: ancestral sampling (reference); ddim: deterministic, fewer steps, keeps the cell state",
    )
    add_ghg_flag(p)
    add_dataset_arguments(p)
    add_device_flag(p)
    add_mixed_precision_flag(p)
    add_compile_flag(p)


def check_sampling_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject a missing checkpoint before any work (each flag's range was checked at parsing)."""
    if args.ckpt is None:
        p.error(
            "--ckpt is required: the reference's fallback downloads an ImageNet DiT-XL/2, which does not fit "
            "multi-hot labels"
        )
    if not Path(args.ckpt).is_file():
        p.error(f"--ckpt {args.ckpt} does not exist")


def parse_sampling_args(p: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check a sampling script's flags, then fill the model-shape flags left out from `--ckpt`.

    `train.py` saves its flags in the checkpoint, so the model key, image size, input channels, number of classes,
    pixel or latent space, diffusion length and VAE need not be repeated: each one not on the command line is taken
    from there (also `in_channels` and `diffusion_steps`, which sample_ddp.py has no flag for), and listed in
    `args.checkpoint_settings` for the run's log. A given flag that contradicts the checkpoint stops here with one
    line naming both values; a given `--vae` replaces the saved one (noted in `args.checkpoint_overrides`). A
    checkpoint without saved flags (a bare state dict, a reference checkpoint) leaves the flags as given.

    Args:
        p: the script's parser.
        argv: its arguments (None: sys.argv[1:]).

    Returns:
        The flags with the checkpoint's settings filled in.
    """
    args = p.parse_args(argv)
    check_sampling_args(p, args)
    checkpoint = load_checkpoint(args.ckpt, expected="--ckpt: a checkpoint of train.py or a state dict")
    try:
        args.checkpoint_settings, args.checkpoint_overrides = fill_from_checkpoint(
            p, args, given_flags(p, argv), checkpoint.get("args"), f"--ckpt {args.ckpt}"
        )
    except CheckpointArgsError as err:
        p.error(str(err))
    return args


def resolve_label_names(args: argparse.Namespace) -> list[str]:
    """Label names from `--dataset`, else from the path as the reference guesses; checked against --num-classes."""
    from data.select import label_names_for, pick_dataset

    kind = pick_dataset(args.data_path, args.dataset)
    names = list(label_names_for(kind, args.label_columns))
    if len(names) != args.num_classes:
        raise UserError(
            f"--num-classes {args.num_classes} does not match the {len(names)} labels of "
            f"--data-path {args.data_path} ({kind}: {names})"
        )
    return names


def load_sampling_model(
    args: argparse.Namespace, device: torch.device
) -> tuple[torch.nn.Module, tuple[int, int, int], int]:
    """The EMA weights of `--ckpt` in the `--model` architecture, in eval mode.

    Returns:
        The model, the latent shape (C, h, w), and the length T of the diffusion it was trained with (the
        checkpoint's `--diffusion-steps`; 1000 for reference checkpoints and bare state dicts).
    """
    latent = args.image_size if args.image_space else args.image_size // 8
    in_channels = getattr(args, "in_channels", 3 if args.image_space else 4)
    model = DiT_models[args.model](input_size=latent, num_classes=args.num_classes, in_channels=in_channels)
    checkpoint = load_checkpoint(args.ckpt)
    train_args = checkpoint.get("args")
    diffusion_steps = int(getattr(train_args, "diffusion_steps", 1000))
    state = model_weights(checkpoint)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise UserError(
            f"--ckpt {args.ckpt} does not match --model {args.model} with --num-classes "
            f"{args.num_classes}, --image-size {args.image_size}: {str(err).splitlines()[0]}"
        ) from err
    if args.num_sampling_steps > diffusion_steps:
        raise UserError(
            f"--num-sampling-steps {args.num_sampling_steps} exceeds the {diffusion_steps} diffusion steps "
            "--ckpt was trained with"
        )
    return model.to(device).eval(), (in_channels, latent, latent), diffusion_steps


def autocast_call(fn: Callable[..., Any], device_type: str, dtype: torch.dtype) -> Callable[..., Any]:
    """`fn` run under autocast, its tensor outputs (a tensor or a tuple of tensors) cast back to float32.

    Only the network runs in reduced precision: guidance, the diffusion update and a cellular model's carried
    state stay in float32.
    """

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type, dtype=dtype):
            out = fn(*args, **kwargs)
        return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()

    return call


def configure_model_call(
    model: torch.nn.Module, device_type: str, mixed_precision: str = "no", use_compile: bool = False
) -> torch.nn.Module:
    """Route the model's `forward` through autocast and/or torch.compile (`--mixed-precision`, `--compile`).

    The instance's `forward` is replaced, so `model(...)`, `model.forward(...)` and `forward_with_cfg` (which calls
    `self.forward`) all use it; attributes, `seed` and the state dict are untouched.

    Args:
        model: the denoiser.
        device_type: "cpu" or "cuda" (autocast's device type).
        mixed_precision: "no", "fp16" or "bf16".
        use_compile: compile the (possibly autocast) forward with torch.compile.

    Returns:
        The same model object.
    """
    dtype = AUTOCAST_DTYPES[mixed_precision]
    if dtype is None and not use_compile:
        return model
    forward = model.forward
    if dtype is not None:
        forward = autocast_call(forward, device_type, dtype)
    if use_compile:
        forward = torch.compile(forward)
    model.forward = forward
    return model


def sampling_setup(args: argparse.Namespace, dist: DistInfo):
    """Model, respaced diffusion, VAE (None in image space) and the sample folder of a sampling run.

    The folder's `-noghg` suffix follows `--no-ghg` for every model (see `sample_folder_name`), even where the flag
    changes nothing.
    """
    set_tf32(args.tf32)
    model, latent_shape, diffusion_steps = load_sampling_model(args, dist.device)
    configure_model_call(model, dist.device.type, args.mixed_precision, args.compile)
    spacing = f"ddim{args.num_sampling_steps}" if args.sampler == "ddim" else str(args.num_sampling_steps)
    diffusion = create_diffusion(spacing, diffusion_steps=diffusion_steps)
    vae = None
    if not args.image_space:
        from data.vae import load_vae

        vae = load_vae(args.vae, dist.device)
    name = sample_folder_name(
        args.model,
        args.fold,
        args.num_sampling_steps,
        args.ckpt,
        args.image_size,
        args.vae,
        args.cfg_scale,
        args.global_seed,
        sampler=args.sampler,
        ghg=args.ghg,
    )
    return model, diffusion, vae, latent_shape, Path(args.sample_dir) / name


def repeat_labels(labels: Sequence, expand_ratio: int, shuffle_seed: int | None) -> list:
    """`expand_ratio` passes over the label list, each pass in its own seeded order (None keeps file order)."""
    out = []
    for r in range(expand_ratio):
        if shuffle_seed is None:
            out.extend(labels)
        else:
            g = torch.Generator().manual_seed(keyed_seed(shuffle_seed, r))
            out.extend(labels[i] for i in torch.randperm(len(labels), generator=g).tolist())
    return out
