"""The flags several entry scripts share: one definition, one help text, one range check each.

Each `add_*` builder adds one flag (or a few that belong together) with the name, dest, default and choices of the
published command lines (docs/REFERENCE.md §3); where a default legitimately differs between scripts the builder
takes it as a parameter, and `ignored=True` marks a flag a script accepts only for the reference's command lines.
Range checks are argparse types (`infra.argtypes`), so a bad value is refused at parsing, naming the flag.
`check_flag_values` runs the same checks on values that did not come from the command line.

`--dataset` and `--label-columns` are added by `data.select.add_dataset_arguments`, next to the dataset kinds.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from infra.argtypes import CheckedType, image_size_flag, non_negative_int, number_at_least, positive_int
from infra.errors import UserError

# Help of a flag a script accepts only so that the reference's command lines run unchanged.
IGNORED_HELP = "no effect (accepted like the reference)"
# `--mixed-precision` choices (synthesis.cli maps them to autocast dtypes).
MIXED_PRECISION_CHOICES = ("no", "fp16", "bf16")


def _help(text: str, ignored: bool) -> str:
    return IGNORED_HELP if ignored else text


# ----------------------------------------------------------------------------------------------------------------
# Model and data shape


def add_model_flag(parser: argparse.ArgumentParser, registry: Iterable[str], ignored: bool = False) -> None:
    """`--model`: a key of the denoiser registry (`models.DiT_models`, passed in: infra does not import models)."""
    parser.add_argument(
        "--model", type=str, choices=list(registry), default="DiT-XL/2", help=_help("denoiser registry key", ignored)
    )


def add_image_size_flag(parser: argparse.ArgumentParser) -> None:
    """`--image-size`: a positive multiple of 8 (`infra.argtypes.image_size_flag`), default 256."""
    parser.add_argument(
        "--image-size",
        type=image_size_flag,
        default=256,
        help="image side in pixels, a positive multiple of 8 (latent side = size / 8; the reference allows "
        "128/256/512); real images are centre-cropped to it",
    )


def add_num_classes_flag(parser: argparse.ArgumentParser, default: int) -> None:
    """`--num-classes`: the label vector length (train.py and extract_features.py: the reference's 1000; sampling:
    11)."""
    parser.add_argument(
        "--num-classes",
        type=positive_int,
        default=default,
        help="label vector length (OCT 11, RetinaMNIST 5); must match the data's labels (extract_features.py skips "
        "the check at the reference's 1000)",
    )


def add_image_space_flag(parser: argparse.ArgumentParser) -> None:
    """`--image_space`: pixels instead of latents."""
    parser.add_argument(
        "--image_space",
        action="store_true",
        help="the denoiser works on RGB pixels instead of VAE latents (3 input channels, no VAE)",
    )


def add_in_channels_flag(parser: argparse.ArgumentParser) -> None:
    """`--in_channels`, default 4."""
    parser.add_argument(
        "--in_channels",
        type=positive_int,
        default=4,
        help="model input channels: 4 for VAE latents, 3 with --image_space",
    )


def add_vae_flag(parser: argparse.ArgumentParser) -> None:
    """`--vae`: the SD-VAE name or a local AutoencoderKL folder, default ema."""
    parser.add_argument(
        "--vae",
        type=str,
        default="ema",
        help="the autoencoder of the latents: ema | mse (stabilityai/sd-vae-ft-* from the HF cache) or a local "
        "AutoencoderKL folder (e.g. train_vae.py's {out}/vae)",
    )


def add_fold_flag(parser: argparse.ArgumentParser, default: int = 0) -> None:
    """`--fold` (train.py: default 5, as the reference; the other scripts 0)."""
    parser.add_argument(
        "--fold",
        type=int,
        default=default,
        help="fold number: the split files {train,val,test}_{fold}.csv and the latent folders *_{fold}/",
    )


# ----------------------------------------------------------------------------------------------------------------
# Run: seeds, steps, workers, devices


def add_global_seed_flag(parser: argparse.ArgumentParser) -> None:
    """`--global-seed`, default 0."""
    parser.add_argument(
        "--global-seed",
        type=non_negative_int,
        default=0,
        help="seed of the run: every random stream (weights, data order, flips, noise) is derived from it and the "
        "rank or image index",
    )


def add_epochs_flag(parser: argparse.ArgumentParser, default: int, ignored: bool = False) -> None:
    """`--epochs` (train.py and extract_features.py 1400, classify.py 80)."""
    parser.add_argument(
        "--epochs",
        type=positive_int,
        default=default,
        help=_help("maximum number of passes over the training set", ignored),
    )


def add_global_batch_size_flag(parser: argparse.ArgumentParser) -> None:
    """`--global-batch-size`, default 256; its divisibility by the number of processes is the script's check."""
    parser.add_argument(
        "--global-batch-size",
        type=positive_int,
        default=256,
        help="images per step over all processes (per process: this // number of processes)",
    )


def add_log_every_flag(parser: argparse.ArgumentParser, default: int, ignored: bool = False) -> None:
    """`--log-every` (train.py and extract_features.py 100, train_vae.py 50)."""
    parser.add_argument(
        "--log-every",
        type=positive_int,
        default=default,
        help=_help("log the mean loss every N optimiser steps (log and metrics.csv)", ignored),
    )


def add_ckpt_every_flag(parser: argparse.ArgumentParser, default: int, ignored: bool = False) -> None:
    """`--ckpt-every` (train.py and extract_features.py 50000, train_vae.py 500)."""
    parser.add_argument(
        "--ckpt-every",
        type=positive_int,
        default=default,
        help=_help("write the resumable checkpoints/last.pt every N optimiser steps (and at the end)", ignored),
    )


def add_results_dir_flag(parser: argparse.ArgumentParser, ignored: bool = False) -> None:
    """`--results-dir`, default results."""
    parser.add_argument("--results-dir", type=str, default="results", help=_help("experiment folders go here", ignored))


def add_num_workers_flag(parser: argparse.ArgumentParser, underscore_alias: bool = False) -> None:
    """`--num-workers`, default 4 (train.py also takes the reference's spelling `--num_workers`)."""
    names = ("--num-workers", "--num_workers") if underscore_alias else ("--num-workers",)
    parser.add_argument(
        *names,
        dest="num_workers",
        type=non_negative_int,
        default=4,
        help="DataLoader worker processes (0: load in the main process)",
    )


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    """`--device`, default None (CUDA when available)."""
    parser.add_argument(
        "--device", type=str, default=None, help="cpu, cuda, cuda:1, ... (default: CUDA when available, else CPU)"
    )


def add_tf32_flag(parser: argparse.ArgumentParser) -> None:
    """`--tf32/--no-tf32` (default on), applied by `infra.precision.set_tf32` in the script's `main()`."""
    parser.add_argument(
        "--tf32",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="TF32 for CUDA matmuls and cuDNN convolutions (default on, as the reference); no effect on CPU",
    )


def add_mixed_precision_flag(parser: argparse.ArgumentParser) -> None:
    """`--mixed-precision` of the denoiser (train.py and the sampling scripts), default no."""
    parser.add_argument(
        "--mixed-precision",
        choices=list(MIXED_PRECISION_CHOICES),
        default="no",
        help="autocast of the denoiser's forward, its outputs back in float32: bf16 or fp16 on CUDA, bf16 on CPU; "
        "an accelerate launcher's --mixed_precision takes precedence",
    )


def add_compile_flag(parser: argparse.ArgumentParser) -> None:
    """`--compile` of the denoiser (train.py and the sampling scripts)."""
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the denoiser's forward (the first step or batch compiles; on CPU this needs a C++ "
        "compiler)",
    )


# ----------------------------------------------------------------------------------------------------------------
# Sampling and metrics


def add_guidance_flags(parser: argparse.ArgumentParser) -> None:
    """`--cfg-scale` (default 1.5) and `--num-sampling-steps` (default 250): the sampling scripts' sampler, and
    train.py's with `--val-mode final`. Their bound by the diffusion's length is the script's check."""
    parser.add_argument(
        "--cfg-scale",
        type=number_at_least(1.0),
        default=1.5,
        help="classifier-free guidance scale (>= 1; 1 = off); train.py: of --val-mode final",
    )
    parser.add_argument(
        "--num-sampling-steps",
        type=positive_int,
        default=250,
        help="respaced diffusion steps, at most the training's --diffusion-steps; train.py: of --val-mode final",
    )


def add_ghg_flag(parser: argparse.ArgumentParser) -> None:
    """`--ghg/--no-ghg` (default on, the reference's sampling of GeCA)."""
    parser.add_argument(
        "--ghg",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="GeCA sampling (train.py: its validation samples): Gene Heredity Guidance, the cell state carried "
        "between denoising steps (default, reference); --no-ghg starts every step from a fresh seed cell, output "
        "and hidden, as in training (sample folder suffix -noghg). No effect on the samples of non-cellular models "
        "(DiT, LDM)",
    )


def add_inception_weights_flag(parser: argparse.ArgumentParser) -> None:
    """`--inception-weights`, default None (found automatically)."""
    parser.add_argument(
        "--inception-weights",
        type=str,
        default=None,
        help="Inception FID weights of KID: torch-fidelity .pth or fid-helper default_1.pt (default: found "
        "automatically)",
    )


# ----------------------------------------------------------------------------------------------------------------
# Checks of values that did not come from the command line


def check_flag_values(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Run every range check of `parser`'s flags (`CheckedType`) on the values `args` holds now.

    Parsing already checked what the command line gave; this covers values set otherwise: those a resumed run took
    from its checkpoint, or a Namespace built or edited in code. None (an unset optional flag) is skipped.

    Raises:
        UserError: `argument --flag: must be ...`, the message argparse gives for the same value on the command line.
    """
    for action in parser._actions:  # noqa: SLF001 - argparse has no public list of its actions
        value = getattr(args, action.dest, None)
        if not isinstance(action.type, CheckedType) or value is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            try:
                action.type(item)
            except argparse.ArgumentTypeError as err:
                raise UserError(f"argument {'/'.join(action.option_strings)}: {err}") from None
