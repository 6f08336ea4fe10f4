"""Train a GeCA, DiT or LDM-B denoiser on SD-VAE latents (or pixels) with EMA, KID-based selection and exact resume.

Reference launch (SPEC 1; 4 GPUs, fp16):
    accelerate launch --multi_gpu --num_processes 4 --mixed_precision fp16 train.py --model GeCA-S \
        --feature-path store/oct_features/ --num-classes 11 --global-batch-size 128 --epochs 14000 --fold 0 \
        --validate_every 700 --data-path data/oct_multilabel/ --results-dir ./results_oct_GeCA/
Plain single process (CPU or one GPU):
    python train.py --model GeCA-T --feature-path store/feats --data-path data/phantoms --num-classes 11 ...
"""

from __future__ import annotations

import argparse
import copy
import csv
import logging
import logging.handlers
import math
import os
import time
from collections import OrderedDict
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from data.latents import LatentDataset
from data.transforms import image_transform, to_uint8
from diffusion import create_diffusion
from infra import rng
from infra.argtypes import image_size_flag
from infra.atomic_io import atomic_save_grid, atomic_write, atomic_write_text, remove_stale_temps
from infra.checkpoint import find_model, load_checkpoint, non_finite_entries, save_checkpoint
from infra.distributed import all_gather_objects, unwrap_model
from infra.logs import create_logger
from infra.naming import experiment_dir
from infra.precision import add_tf32_flag, set_tf32
from infra.seeding import global_rng_state, isolated_global_rng, rank_seed, seed_everything, set_global_rng_state
from infra.tracker import Tracker
from models import DiT_models

METRIC_FIELDS = ("step", "epoch", "loss", "steps_per_sec", "images_per_sec", "kid_mean", "kid_std")


# ----------------------------------------------------------------------------------------------------------------
# Helpers used only by this script
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def update_ema(ema_model: torch.nn.Module, model: torch.nn.Module, decay: float = 0.9999) -> None:
    """ema <- decay * ema + (1 - decay) * model, over every parameter (the reference's rule, SPEC 8)."""
    ema_params = OrderedDict(ema_model.named_parameters())
    for name, param in model.named_parameters():
        ema_params[name].mul_(decay).add_(param.detach(), alpha=1 - decay)


def normalize_gradients(model: torch.nn.Module, eps: float = 1e-8) -> None:
    """`--grad_norm`: divide every parameter's gradient by (its own L2 norm + eps). Call on unscaled gradients."""
    for p in model.parameters():
        if p.grad is not None:
            p.grad.div_(p.grad.norm() + eps)


def epoch_batches(
    num_items: int, per_rank_batch: int, world_size: int, rank: int, seed: int, epoch: int
) -> list[list[int]]:
    """This rank's index batches for one epoch: a permutation seeded by (seed, epoch), sharded, drop_last.

    Deterministic from its arguments, so a resumed run sees exactly the order an uninterrupted run would.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(num_items, generator=g).tolist()
    global_batch = per_rank_batch * world_size
    start = rank * per_rank_batch
    return [
        perm[b * global_batch + start : b * global_batch + start + per_rank_batch]
        for b in range(num_items // global_batch)
    ]


def append_metrics(path: Path, row: dict) -> None:
    """Append one row to metrics.csv (header written on first use)."""
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in METRIC_FIELDS})


def truncate_metrics(path: Path, last_step: int, drop_kid_at_last_step: bool = False) -> None:
    """Drop rows logged after the checkpoint a run resumes from, so the curve has no duplicate steps.

    A last line that a killed run left half written is dropped too. With `drop_kid_at_last_step`, so is the KID row
    at `last_step`: the checkpoint preceded that validation, which the resumed run redoes.
    """
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]
    kept = []
    for row in csv.DictReader(lines):
        try:
            step = int(row["step"])
        except (TypeError, ValueError):
            continue
        if step > last_step or (drop_kid_at_last_step and step == last_step and row.get("kid_mean")):
            continue
        kept.append(row)
    out = [",".join(METRIC_FIELDS)] + [",".join(r.get(k, "") or "" for k in METRIC_FIELDS) for r in kept]
    atomic_write_text(path, "\n".join(out) + "\n")


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
# The largest --lr accepted: AdamW moves every weight by about lr per step, so lr >= 1 only destroys the network
# (the reference trains at 1e-4).
MAX_LR = 1.0


def check_args(args: argparse.Namespace) -> None:
    """Reject flag values that cannot work or are absurd, naming the flag, before any set-up.

    Raises:
        ValueError: the first bad flag.
    """
    if args.multi_scale:
        raise ValueError(
            "--multi_scale is not supported (docs/DECISIONS.md §C2.10): the reference's multi-scale path is "
            "experimental, unused by the reported results and broken"
        )
    if args.diffusion_steps <= 20:
        raise ValueError(
            f"--diffusion-steps {args.diffusion_steps} is too short: the linear schedule scaled to "
            "1000/T reaches beta = 1 at T = 20"
        )
    if not (math.isfinite(args.lr) and 0 < args.lr <= MAX_LR):
        raise ValueError(
            f"--lr must be a finite number in (0, {MAX_LR:g}], got {args.lr}: AdamW moves every weight by about lr "
            "per step (the reference trains at 1e-4)"
        )
    if not 0.0 <= args.ema_decay < 1.0:  # also rejects NaN
        raise ValueError(f"--ema-decay must be in [0, 1), got {args.ema_decay}")
    if not (math.isfinite(args.cfg_scale) and args.cfg_scale >= 1.0):
        raise ValueError(f"--cfg-scale must be a finite number >= 1, got {args.cfg_scale}")
    if args.image_size < 8 or args.image_size % 8 != 0:
        raise ValueError(
            f"--image-size {args.image_size} must be a positive multiple of 8: the VAE downsamples by 8, and the "
            "sampling scripts accept only such sizes"
        )
    if args.image_space and args.in_channels != 3:
        raise ValueError(f"--image_space trains on RGB pixels: --in_channels must be 3, got {args.in_channels}")
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
            raise ValueError(f"{flag} must be >= {low}, got {value}")
    if args.validate_every > 0 and args.val_samples < 2:
        raise ValueError(f"--val_samples must be >= 2 (KID compares sets of samples), got {args.val_samples}")
    if (
        args.validate_every > 0
        and args.val_mode == "final"
        and not 1 <= args.num_sampling_steps <= args.diffusion_steps
    ):
        raise ValueError(
            f"--num-sampling-steps must be in [1, --diffusion-steps {args.diffusion_steps}], got "
            f"{args.num_sampling_steps}"
        )


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
        raise ValueError(
            f"--image-size {args.image_size} gives a {what} side of {side}, which --model {args.model} cannot take: "
            f"it needs a multiple of {multiple}; use a multiple of {step} for --image-size"
        )


def _flag_names() -> dict[str, str]:
    """argparse destination -> the flag as spelled on the command line (e.g. image_space -> --image_space)."""
    return {a.dest: a.option_strings[0] for a in build_parser()._actions if a.option_strings}


def reconcile_resume_args(
    saved: argparse.Namespace, args: argparse.Namespace, resume_path: Path
) -> tuple[list[str], bool]:
    """Compare this run's flags with those the checkpoint was written with: refuse, or apply and report each change.

    Nothing is silently ignored: a flag in RESUME_FIXED that differs is refused; one in RESUME_UNUSED is reported as
    not used; every other change applies from the first resumed step and is reported (the optimiser's saved
    learning rate is replaced by `--lr`).

    Args:
        saved: the checkpoint's `args`.
        args: this run's flags.
        resume_path: the checkpoint, for messages.

    Returns:
        One message per change, to be logged, and whether the validation rule changed (then the checkpoint's best
        KID is not comparable and the next validation starts a new best).

    Raises:
        ValueError: naming every refused flag with both values.
    """
    old, new, names = vars(saved), vars(args), _flag_names()
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
        raise ValueError(
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


def resume_hint(newest: tuple[Path, int] | None, ckpt_every: int) -> str:
    """The sentence a stopped run ends with: the newest finite resumable checkpoint that exists, or that none does."""
    if newest is None:
        return f"No checkpoint has been written yet (--ckpt-every {ckpt_every}): there is nothing to resume."
    path, step = newest
    return (
        f"The newest finite checkpoint is {path} (step {step}); --resume {path} continues from it "
        "(a smaller --lr may avoid the failure)."
    )


def replay_into_log_file(records: list[logging.LogRecord], logger: logging.Logger) -> None:
    """Write records already shown on the console into the logger's log.txt (set up after they were emitted)."""
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            for record in records:
                handler.handle(record)


def plot_curves(metrics_csv: Path, out_png: Path) -> None:
    """Loss (and KID, when measured) against optimiser step, from metrics.csv."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    loss = [(int(r["step"]), float(r["loss"])) for r in rows if r["loss"]]
    kid = [(int(r["step"]), float(r["kid_mean"]) * 1e3) for r in rows if r["kid_mean"]]
    fig, axes = plt.subplots(1, 2 if kid else 1, figsize=(10 if kid else 5, 3.5), squeeze=False)
    if loss:
        axes[0, 0].plot(*zip(*loss))
    axes[0, 0].set(xlabel="optimiser step", ylabel="train loss (MSE + VB)", title="training loss")
    if kid:
        axes[0, 1].plot(*zip(*kid), marker="o")
        axes[0, 1].set(xlabel="optimiser step", ylabel="KID x 1e3", title="validation KID")
    fig.tight_layout()
    atomic_write(out_png, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def build_image_dataset(args: argparse.Namespace, split: str, transform) -> tuple[Dataset, list[str]]:
    """The raw image dataset of `--data-path` for a split, and its label names (from the dataset, not the path)."""
    from data.select import build_dataset, label_names_for, pick_dataset

    kind = pick_dataset(args.data_path, args.dataset)
    ds = build_dataset(
        kind,
        args.data_path,
        split=split,
        fold=args.fold,
        transform=transform,
        label_columns=args.label_columns,
        min_size=args.image_size,  # every image file is checked (and must not be smaller than the crop) up front
    )
    return ds, list(label_names_for(kind, args.label_columns))


def load_validation_batch(args: argparse.Namespace, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed real validation batch: `--val_samples` images ([-1, 1]) and their labels, drawn once by a seed."""
    ds, names = build_image_dataset(args, "val", image_transform(args.image_size))
    if len(names) != args.num_classes:
        raise ValueError(
            f"--data-path {args.data_path} has {len(names)} labels, but --num-classes is {args.num_classes}"
        )
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds), generator=g)[: args.val_samples].tolist()
    xs, ys = zip(*(ds[i] for i in idx))
    return torch.stack(xs), torch.stack([torch.as_tensor(y).reshape(-1) for y in ys]).float()


# ----------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> Path:
    """Train, validate and checkpoint; returns the experiment folder."""
    # Reject impossible or absurd flags before any set-up.
    check_args(args)

    # Accelerate: CPU (gloo) when CUDA is absent; the launcher's mixed precision wins over --mixed-precision.
    from accelerate import Accelerator

    launcher_precision = os.environ.get("ACCELERATE_MIXED_PRECISION")
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(), mixed_precision=None if launcher_precision else args.mixed_precision
    )
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    set_tf32(args.tf32)
    if args.global_batch_size % world != 0:
        raise ValueError(f"--global-batch-size {args.global_batch_size} is not divisible by {world} processes")
    per_rank_batch = args.global_batch_size // world

    # Until every input is checked there is no experiment folder (a run that fails its checks leaves none behind):
    # messages go to the console and are kept, then replayed into log.txt once the folder exists.
    logger = create_logger("train", None, rank)
    early_records = logging.handlers.BufferingHandler(capacity=100_000)
    logger.addHandler(early_records)

    # The checkpoint to resume, and what changed since it was written (refused, or applied and logged).
    resume_path, ckpt, resume_notes, validation_rule_changed = None, None, [], False
    if args.resume:
        resume_path = Path(args.resume)
        if resume_path.is_dir():
            resume_path = resume_path / "checkpoints" / "last.pt"
        if not resume_path.is_file():
            raise FileNotFoundError(f"--resume {args.resume}: no checkpoint at {resume_path}")
        ckpt = load_checkpoint(resume_path, RESUME_KEYS, "a resumable checkpoints/last.pt written by train.py")
        resume_notes, validation_rule_changed = reconcile_resume_args(ckpt["args"], args, resume_path)

    # Seed every rank (SPEC C2.4).
    seed_everything(rank_seed(args.global_seed, world, rank))

    # Data: every training and validation input is checked before the model is built.
    if args.image_space:
        latent_size = args.image_size
        train_set, names = build_image_dataset(args, "train", image_transform(args.image_size))
        if len(names) != args.num_classes:
            raise ValueError(
                f"--data-path {args.data_path} has {len(names)} labels, --num-classes is {args.num_classes}"
            )
    else:
        latent_size = args.image_size // 8
        train_set = LatentDataset(args.feature_path, args.fold, cache=args.cache)
        train_set.check_shapes((args.in_channels, latent_size, latent_size), args.num_classes)
    if len(train_set) < args.global_batch_size:
        raise ValueError(
            f"fold {args.fold} has {len(train_set)} training items, fewer than --global-batch-size "
            f"{args.global_batch_size} (batches drop the remainder)"
        )
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
            raise ValueError(f"--nca-checkpoint applies to cellular models (GeCA), not --model {args.model}")
        model.nca_checkpoint = args.nca_checkpoint
    if args.load_from and os.path.exists(args.load_from):
        if resume_path is None:
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

    # Validation set-up: fixed real batch and its Inception features, VAE for decoding. Loading those networks
    # draws random numbers (layers are initialised before their weights are loaded); isolated, so that a resumed
    # run's random streams match an uninterrupted run's.
    validator = None
    if real_batch is not None:
        with isolated_global_rng():
            validator = Validator(args, accelerator, model, ema, latent_size, logger, real_batch)

    # Experiment folder (rank 0 creates it; resume reuses the checkpoint's folder), cleared of the temporary files
    # of writes a killed run left behind.
    if resume_path is not None:
        exp_dir = resume_path.parent.parent
    else:
        exp_dir = experiment_dir(args.results_dir, args.model, args.fold) if accelerator.is_main_process else None
        exp_dir = all_gather_objects(exp_dir)[0] if world > 1 else exp_dir
    ckpt_dir = exp_dir / "checkpoints"
    if accelerator.is_main_process:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        (exp_dir / "samples").mkdir(exist_ok=True)
        stale = remove_stale_temps(exp_dir)
    else:
        stale = []
    accelerator.wait_for_everyone()
    logger = create_logger("train", exp_dir if accelerator.is_main_process else None, rank)
    replay_into_log_file(early_records.buffer, logger)
    logger.info(
        f"Experiment directory {exp_dir}; device {device}, {world} process(es), "
        f"mixed precision {accelerator.mixed_precision}"
    )
    if accelerator.is_main_process and stale:
        logger.info(f"Removed {len(stale)} temporary file(s) of interrupted writes: {[str(p) for p in stale[:5]]}")

    train_steps, start_epoch, skip_batches, best_kid = 0, 0, 0, float("inf")
    newest_last: tuple[Path, int] | None = None  # the newest resumable checkpoint that exists, and its step
    saved_rng = None
    if resume_path is not None:
        for note in resume_notes:
            logger.info(f"--resume: {note}")
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["opt"])
        for group in opt.param_groups:
            group["lr"] = args.lr  # the optimiser state carries the old rate; --lr applies (logged above if changed)
        train_steps, start_epoch, skip_batches = ckpt["train_steps"], ckpt["epoch"], ckpt["batches_done"]
        best_kid = float("inf") if validation_rule_changed else ckpt["best_kid"]
        newest_last = (resume_path, train_steps)
        ranks_rng = ckpt["rng"]
        if len(ranks_rng) == world:
            saved_rng = ranks_rng[rank]
        else:
            logger.info(
                f"checkpoint was written by {len(ranks_rng)} processes, this run has {world}: "
                "random streams restart from --global-seed"
            )
        # A checkpoint written at the end of an epoch precedes that epoch's validation, which is redone.
        redo_validation = skip_batches >= len(train_set) // args.global_batch_size
        if accelerator.is_main_process:
            truncate_metrics(exp_dir / "metrics.csv", train_steps, drop_kid_at_last_step=redo_validation)
        logger.info(f"Resumed from {resume_path} at step {train_steps} (epoch {start_epoch}, batch {skip_batches})")

    model, opt = accelerator.prepare(model, opt)
    if args.compile:
        # Compiled on the first step; checkpoints and the EMA still see the bare network (unwrap_model).
        model = torch.compile(model)
        logger.info("torch.compile: the model is compiled on the first training step")
    if resume_path is not None and accelerator.scaler is not None and ckpt.get("scaler"):
        accelerator.scaler.load_state_dict(ckpt["scaler"])
    if saved_rng is not None:
        set_global_rng_state(saved_rng)
    tracker = Tracker(args.wandb and accelerator.is_main_process, "Fast-DiT", vars(args), logger)

    def require_finite(what: str) -> None:
        """Stop (every rank alike: the states are replicated) before a non-finite state reaches a checkpoint."""
        bad = non_finite_entries(
            {"model": unwrap_model(model).state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict()}
        )
        if bad:
            raise FloatingPointError(
                f"non-finite values in {', '.join(bad[:3])} at step {train_steps}; {what} is not written. "
                + resume_hint(newest_last, args.ckpt_every)
            )

    def save_last(epoch: int, batches_done: int) -> None:
        nonlocal newest_last
        require_finite(f"{ckpt_dir / 'last.pt'}")
        states = all_gather_objects(global_rng_state())
        if accelerator.is_main_process:
            save_checkpoint(
                ckpt_dir / "last.pt",
                {
                    "model": unwrap_model(model).state_dict(),
                    "ema": ema.state_dict(),
                    "opt": opt.state_dict(),
                    "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                    "args": args,
                    "train_steps": train_steps,
                    "epoch": epoch,
                    "batches_done": batches_done,
                    "best_kid": best_kid,
                    "rng": states,
                },
            )
        newest_last = (ckpt_dir / "last.pt", train_steps)
        accelerator.wait_for_everyone()

    # Training loop.
    model.train()
    running_loss, log_steps, start_time = 0.0, 0, time.time()
    max_steps = args.max_steps if args.max_steps is not None else math.inf
    epoch, batches_done = start_epoch, skip_batches
    pbar = tqdm(
        total=None if math.isinf(max_steps) else max_steps,
        initial=train_steps,
        unit="step",
        disable=not accelerator.is_main_process,
        dynamic_ncols=True,
    )
    for epoch in range(start_epoch, args.epochs):
        if train_steps >= max_steps:
            break
        batches = epoch_batches(len(train_set), per_rank_batch, world, rank, args.global_seed, epoch)
        first = skip_batches if epoch == start_epoch else 0
        # The loader gets its own generator: drawing its base seed from the global stream would make a resumed
        # run's random numbers differ from an uninterrupted one.
        loader = DataLoader(
            train_set,
            batch_sampler=batches[first:],
            num_workers=args.num_workers,
            pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(args.global_seed * 1_000_003 + epoch),
        )
        batches_done = first
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            if not args.image_space:
                x, y = x.squeeze(1), y.squeeze(1)  # (B, 1, C, h, w) -> (B, C, h, w); (B, 1, K) -> (B, K)
            y = y.reshape(y.shape[0], -1).float()
            t = torch.randint(0, diffusion.num_timesteps, (x.shape[0],), device=device)
            # Autocast covers the model's forward only (accelerator.prepare wraps it and returns float32 outputs);
            # the loss is computed in float32 outside it, as the reference does.
            loss = diffusion.training_losses(model, x, t, {"y": y})["loss"].mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite training loss {loss.item()} at step {train_steps + 1} (epoch {epoch}); stopping. "
                    + resume_hint(newest_last, args.ckpt_every)
                )
            opt.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            if args.grad_norm:
                accelerator.unscale_gradients(opt)  # normalise true gradients, not loss-scaled ones (C2.4)
                normalize_gradients(model)
            opt.step()
            update_ema(ema, unwrap_model(model), args.ema_decay)

            running_loss += loss.detach()
            log_steps += 1
            train_steps += 1
            batches_done += 1
            pbar.update(1)
            if train_steps % args.log_every == 0 or train_steps == 1:
                elapsed = time.time() - start_time
                avg = accelerator.reduce(running_loss / log_steps, reduction="mean").item()  # all ranks (C2.4)
                sps = log_steps / max(elapsed, 1e-9)
                logger.info(
                    f"(step={train_steps:07d}) Train Loss: {avg:.4f}, Train Steps/Sec: {sps:.2f}, "
                    f"Images/Sec: {sps * args.global_batch_size:.1f}"
                )
                if accelerator.is_main_process:
                    append_metrics(
                        exp_dir / "metrics.csv",
                        {
                            "step": train_steps,
                            "epoch": epoch,
                            "loss": f"{avg:.6f}",
                            "steps_per_sec": f"{sps:.4f}",
                            "images_per_sec": f"{sps * args.global_batch_size:.2f}",
                        },
                    )
                tracker.log({"train_loss": avg}, step=train_steps)
                running_loss, log_steps, start_time = 0.0, 0, time.time()
            if train_steps % args.ckpt_every == 0:
                save_last(epoch, batches_done)
                logger.info(f"Saved {ckpt_dir / 'last.pt'} at step {train_steps}")
            if train_steps >= max_steps:
                break
        if batches_done < len(batches):
            break  # --max-steps ended the run inside this epoch; last.pt resumes at this batch
        # The epoch is complete (also when --max-steps ends the run exactly here): validate, then move on.
        if validator is not None and epoch % args.validate_every == 0:
            model.eval()
            with isolated_global_rng():  # validation never moves the training's random streams
                kid_mean, kid_std, grid = validator.run(ema, train_steps)
            model.train()
            if accelerator.is_main_process:
                logger.info(
                    f"(step={train_steps:07d}, epoch={epoch}) KID mean: {kid_mean:.6f}, "
                    f"KID std: {kid_std:.6f} ({args.val_mode} rule)"
                )
                append_metrics(
                    exp_dir / "metrics.csv",
                    {
                        "step": train_steps,
                        "epoch": epoch,
                        "kid_mean": f"{kid_mean:.8f}",
                        "kid_std": f"{kid_std:.8f}",
                    },
                )
                atomic_save_grid(grid, exp_dir / "samples" / f"val_{train_steps:07d}.png")
                tracker.log({"KID mean": kid_mean, "KID std": kid_std}, step=train_steps)
            if kid_mean < best_kid:
                require_finite(f"{ckpt_dir / 'best_ckpt.pt'}")
                best_kid = kid_mean
                if accelerator.is_main_process:
                    save_checkpoint(
                        ckpt_dir / "best_ckpt.pt",
                        {
                            "model": unwrap_model(model).state_dict(),
                            "ema": ema.state_dict(),
                            "opt": opt.state_dict(),
                            "args": args,
                        },
                    )
                    logger.info(f"Saved checkpoint to {ckpt_dir / 'best_ckpt.pt'}")
                    tracker.log_image("examples", grid.permute(0, 2, 3, 1).numpy()[0], caption="Hey", step=train_steps)
                accelerator.wait_for_everyone()
        epoch, batches_done = epoch + 1, 0  # position after a finished epoch, for last.pt
    pbar.close()

    save_last(epoch, batches_done)
    if accelerator.is_main_process and (exp_dir / "metrics.csv").exists():
        plot_curves(exp_dir / "metrics.csv", exp_dir / "loss_curve.png")
    logger.info(f"Done! {train_steps} steps; last checkpoint {ckpt_dir / 'last.pt'}")
    tracker.finish()
    accelerator.end_training()
    return exp_dir


class Validator:
    """Generates validation samples by the chosen rule and measures KID against a fixed real batch (SPEC 3.2, C2.5).

    `legacy`: online model, all-zero labels, no CFG, every training timestep (the reference's selection rule).
    `final`: EMA weights, real validation label vectors, CFG `--cfg-scale`, `--num-sampling-steps` respaced steps
    (the rule of the reported results). KID is recomputed from scratch each time (C2.4: no cumulative state).
    """

    def __init__(
        self,
        args: argparse.Namespace,
        accelerator,
        net: torch.nn.Module,
        ema: torch.nn.Module,
        latent_size: int,
        logger,
        real_batch: tuple[torch.Tensor, torch.Tensor],
    ) -> None:
        """Load the feature network (and VAE) and measure the real batch.

        Args:
            args: the training flags.
            accelerator: the run's Accelerator (device, ranks).
            net: the bare online network (legacy rule).
            ema: the EMA network (final rule).
            latent_size: the network's input side.
            logger: the run's logger.
            real_batch: `load_validation_batch`'s (N, 3, H, W) images in [-1, 1] and (N, K) labels.
        """
        from metrics.inception import load_inception

        self.args, self.accelerator, self.net, self.latent_size = args, accelerator, net, latent_size
        self.device = accelerator.device
        real, self.real_labels = real_batch
        self.real_u8 = to_uint8(real)
        self.inception = load_inception(args.inception_weights, self.device)
        self.real_feats = self._features(self.real_u8)
        self.vae = None
        if not args.image_space:
            from data.vae import load_vae

            self.vae = load_vae(args.vae, self.device)
        steps = "" if args.val_mode == "legacy" else str(args.num_sampling_steps)
        self.diffusion = create_diffusion(timestep_respacing=steps, diffusion_steps=args.diffusion_steps)
        logger.info(
            f"Validation: {args.val_samples} samples by the {args.val_mode} rule against "
            f"{len(self.real_u8)} real images"
        )

    @torch.no_grad()
    def _features(self, images_u8: torch.Tensor) -> torch.Tensor:
        feats = [
            self.inception(images_u8[i : i + 16].to(self.device)).float().cpu() for i in range(0, len(images_u8), 16)
        ]
        return torch.cat(feats)

    @torch.no_grad()
    def run(self, ema: torch.nn.Module, step: int) -> tuple[float, float, torch.Tensor]:
        """Sample this rank's share, gather, and return (KID mean, KID std, uint8 sample grid batch)."""
        from metrics.kid import kid

        args, acc = self.args, self.accelerator
        n_total = args.val_samples
        per_rank = math.ceil(n_total / acc.num_processes)
        lo = min(acc.process_index * per_rank, n_total)
        hi = min(lo + per_rank, n_total)
        images = torch.zeros(0, 3, args.image_size, args.image_size, dtype=torch.uint8)
        if hi > lo:
            images = self._sample(ema, lo, hi, step)
        gathered = torch.cat([t for t in all_gather_objects(images)])
        fake_feats = self._features(gathered)
        subset = max(2, min(n_total // 4, len(fake_feats), len(self.real_feats)))
        g = torch.Generator().manual_seed(args.global_seed * 1_000_003 + step)
        mean, std = kid(self.real_feats.double(), fake_feats.double(), subsets=100, subset_size=subset, generator=g)
        return float(mean), float(std), gathered

    def _sample(self, ema: torch.nn.Module, lo: int, hi: int, step: int) -> torch.Tensor:
        args = self.args
        model = self.net if args.val_mode == "legacy" else ema
        model.eval()
        n = hi - lo
        gens = rng.sample_generators(
            [(args.global_seed * 1_000_003 + step) * 10_000 + i for i in range(lo, hi)], self.device
        )
        shape = (n, args.in_channels, self.latent_size, self.latent_size)
        z = rng.randn(shape, gens, self.device)
        if args.val_mode == "legacy":
            y = torch.zeros(n, args.num_classes, device=self.device)
            use_cfg = False
        else:
            y = self.real_labels[lo:hi].to(self.device)
            use_cfg = args.cfg_scale > 1.0
        kwargs = {"y": y}
        fn = model.forward
        if use_cfg:
            z = torch.cat([z, z])
            kwargs = {"y": torch.cat([y, torch.zeros_like(y)]), "cfg_scale": args.cfg_scale}
            fn = model.forward_with_cfg
        if args.ghg and getattr(model, "is_cellular", False):
            kwargs["extras"] = model.seed(z, generator=gens)
        samples = self.diffusion.p_sample_loop(
            fn,
            z.shape,
            noise=z,
            clip_denoised=False,
            model_kwargs=kwargs,
            device=self.device,
            generator=gens,
            inherit_state=args.ghg,
        )
        if use_cfg:
            samples = samples[:n]
        if self.vae is not None:
            from data.vae import decode_latents

            samples = decode_latents(self.vae, samples)
        return to_uint8(samples).cpu()


def build_parser() -> argparse.ArgumentParser:
    """The reference flags of train.py (SPEC 3.2) plus this project's additions (SPEC C2.4, C2.5)."""
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
    p.add_argument("--multi_scale", action="store_true", help="not supported (SPEC C2.10): rejected with an error")
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
    p.add_argument("--resume", type=str, default=None, help="checkpoints/last.pt (or its experiment folder) to resume")
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
    main(build_parser().parse_args())
