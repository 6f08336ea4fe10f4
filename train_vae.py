"""Train a small domain autoencoder (diffusers AutoencoderKL: downsampling 8, 4 latent channels) for the latent path.

For modalities the SD-VAE reconstructs poorly and for machines without its weights (docs/DECISIONS.md §C7):
    python train_vae.py --data-path data_local/oct_phantom --fold 0 --image-size 64 --out vae_oct --steps 300
then pass `--vae vae_oct/vae` to extract_features.py, train.py, sample_ddp.py and sample_ddp_val.py.

Trains on the training split of one fold (any dataset kind the other scripts read) with L1 + kl_weight * KL and
random horizontal flips, AdamW at a constant learning rate. Writes into `--out`:
- `checkpoints/last.pt`: model, optimiser, step, loss history, training seconds and args, every `--ckpt-every` steps
  and at the end. A run whose `--out` already holds one continues from it (exactly: every random draw comes from a
  stream keyed by (`--global-seed`, step) or (`--global-seed`, image), so the step number is the whole random state);
  flags that change the result must match the checkpoint's.
- `vae/`: the diffusers folder (`config.json` + `diffusion_pytorch_model.safetensors`), its `scaling_factor` set to
  1 / std of posterior samples of every training image, the way SD's 0.18215 was derived; replaced atomically.
- `reconstructions.png` (validation images, top row, over their reconstructions from the posterior mean),
  `vae_report.json` (PSNR, scaling factor, steps, parameters, seconds), `metrics.csv` (loss every `--log-every`
  steps) and `log.txt`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from data.select import add_dataset_arguments, build_dataset, pick_dataset
from data.transforms import image_transform, to_uint8
from data.vae import posterior_sample
from data.vae import reconstruct as reconstruct_images
from infra.argtypes import number_at_least, positive_int, positive_number
from infra.atomic_io import atomic_save_grid, atomic_write_text
from infra.checkpoint import load_checkpoint, save_checkpoint
from infra.distributed import pick_device
from infra.errors import UserError, run_main
from infra.flags import (
    add_ckpt_every_flag,
    add_device_flag,
    add_fold_flag,
    add_global_seed_flag,
    add_image_size_flag,
    add_log_every_flag,
    add_num_workers_flag,
    add_tf32_flag,
    check_flag_values,
)
from infra.logs import create_logger
from infra.precision import set_tf32
from infra.rng import mixed_seed, randn, sample_generators
from infra.seeding import seed_everything

# Stream tags under --global-seed: the data order of an epoch, the flips and posterior noise of a training step,
# and the posterior noise of one training image when the scaling factor is measured.
ORDER_STREAM, STEP_STREAM, LATENT_STREAM = 0, 1, 2
# Validation images shown in reconstructions.png.
GRID_IMAGES = 8
# Flags whose change would make a resumed run differ from an uninterrupted one.
RESUME_KEYS = (
    "fold",
    "image_size",
    "batch_size",
    "lr",
    "kl_weight",
    "block_out_channels",
    "norm_num_groups",
    "global_seed",
)
METRIC_FIELDS = ("step", "loss", "l1", "kl")


# ----------------------------------------------------------------------------------------------------------------
# Helpers used only by this script
# ----------------------------------------------------------------------------------------------------------------


def stream_seed(global_seed: int, stream: int, key: int) -> int:
    """A 63-bit seed for (seed, stream, key), well mixed so that nearby keys give unrelated streams."""
    return mixed_seed(global_seed, stream, key)


def step_batch(step: int, num_items: int, batch_size: int, global_seed: int) -> list[int]:
    """The training images of optimiser step `step` (0-based): seeded permutations per epoch, remainder dropped.

    A pure function of its arguments, so a resumed run reads exactly the batches an uninterrupted one would.
    """
    per_epoch = num_items // batch_size
    epoch, position = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(stream_seed(global_seed, ORDER_STREAM, epoch))
    perm = torch.randperm(num_items, generator=g)
    return perm[position * batch_size : (position + 1) * batch_size].tolist()


class StepBatches:
    """Batch sampler over optimiser steps [start, stop) (DataLoader workers may read ahead: batches are stateless)."""

    def __init__(self, start: int, stop: int, num_items: int, batch_size: int, global_seed: int) -> None:
        self.start, self.stop = start, stop
        self.num_items, self.batch_size, self.global_seed = num_items, batch_size, global_seed

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            yield step_batch(step, self.num_items, self.batch_size, self.global_seed)


def build_autoencoder(block_out_channels: list[int], norm_num_groups: int, image_size: int) -> AutoencoderKL:
    """An SD-VAE-shaped AutoencoderKL: 4 resolution levels (downsampling 8), one ResNet layer per block, 4 latents."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(block_out_channels),
        up_block_types=("UpDecoderBlock2D",) * len(block_out_channels),
        block_out_channels=tuple(block_out_channels),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=norm_num_groups,
        sample_size=image_size,
    )


def vae_loss(
    vae: AutoencoderKL, x: torch.Tensor, kl_weight: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training loss: mean absolute reconstruction error of a posterior sample + kl_weight * KL.

    Args:
        vae: the autoencoder (train mode).
        x: (N, 3, H, W) images in [-1, 1].
        kl_weight: weight of the KL term.
        generator: CPU stream of the posterior noise.

    Returns:
        (loss, l1, kl) scalars; kl is KL(q(z|x) || N(0, I)) summed over a latent and averaged over the batch
        (diffusers' `DiagonalGaussianDistribution.kl`).
    """
    posterior = vae.encode(x).latent_dist
    eps = randn(posterior.mean.shape, generator, device=x.device, dtype=posterior.mean.dtype)  # (N, 4, H/8, W/8)
    recon = vae.decode(posterior.mean + posterior.std * eps).sample  # (N, 3, H, W)
    l1 = (recon - x).abs().mean()
    kl = posterior.kl().mean()
    return l1 + kl_weight * kl, l1, kl


def psnr_uint8(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of uint8 images, peak 255: 10 log10(255^2 / MSE) over all pixels and channels.

    Args:
        real: (N, C, H, W) uint8.
        fake: (N, C, H, W) uint8.

    Returns:
        (N,) float64; +inf for an exact copy.
    """
    mse = (real.double() - fake.double()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(255.0**2 / mse)


@torch.no_grad()
def measure_scaling_factor(
    vae: AutoencoderKL, dataset: Dataset, batch_size: int, num_workers: int, global_seed: int, device: torch.device
) -> tuple[float, float, float]:
    """1 / std of posterior samples over every element of every training latent (the derivation of SD's 0.18215).

    Image i (unflipped) draws its posterior noise from stream (global_seed, LATENT_STREAM, i), so the value does not
    depend on the batch size. Moments are accumulated in float64.

    Returns:
        (scaling factor, latent std, latent mean).
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    total, total_sq, count, index = 0.0, 0.0, 0, 0
    for x, _ in tqdm(loader, desc="latent std", unit="batch"):
        seeds = [stream_seed(global_seed, LATENT_STREAM, i) for i in range(index, index + len(x))]
        z = posterior_sample(vae, x.to(device), sample_generators(seeds)).double()  # (B, 4, H/8, W/8)
        total += z.sum().item()
        total_sq += z.pow(2).sum().item()
        count += z.numel()
        index += len(x)
    mean = total / count
    std = math.sqrt(max(total_sq / count - mean**2, 0.0))
    if not std > 0:
        raise FloatingPointError(f"training latents have std {std}; cannot set a scaling factor")
    return 1.0 / std, std, mean


@torch.no_grad()
def reconstruct(
    vae: AutoencoderKL, dataset: Dataset, batch_size: int, num_workers: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reconstruct every image of `dataset` from its posterior mean.

    Returns:
        (per-image PSNR (N,) float64 on uint8 [0, 255] images, the first GRID_IMAGES real uint8 images and their
        uint8 reconstructions, (G, 3, H, W) each).
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    psnrs, reals, fakes = [], [], []
    for x, _ in tqdm(loader, desc="reconstruction", unit="batch"):
        x = x.to(device)
        recon = reconstruct_images(vae, x)  # (B, 3, H, W)
        real_u8, fake_u8 = to_uint8(x).cpu(), to_uint8(recon).cpu()
        psnrs.append(psnr_uint8(real_u8, fake_u8))
        if sum(len(r) for r in reals) < GRID_IMAGES:
            reals.append(real_u8)
            fakes.append(fake_u8)
    return torch.cat(psnrs), torch.cat(reals)[:GRID_IMAGES], torch.cat(fakes)[:GRID_IMAGES]


def save_vae_folder(vae: AutoencoderKL, folder: Path) -> None:
    """`save_pretrained` into a temporary folder beside `folder`, then rename it onto `folder`.

    A reader never sees a half-written folder: before the swap it finds the previous one, after it the new one.
    """
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    old = tmp.with_suffix(".old")
    try:
        umask = os.umask(0)
        os.umask(umask)
        vae.save_pretrained(tmp, safe_serialization=True)
        # mkdtemp makes a 0700 folder and safetensors 0600 files; give them plain mkdir / open permissions.
        tmp.chmod(0o777 & ~umask)
        for file in tmp.iterdir():
            file.chmod(0o666 & ~umask)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def write_metrics(path: Path, history: list[list[float]]) -> None:
    """metrics.csv from the loss history rows (step, loss, l1, kl)."""
    lines = [",".join(METRIC_FIELDS)] + [f"{int(r[0])},{r[1]:.6f},{r[2]:.6f},{r[3]:.4f}" for r in history]
    atomic_write_text(path, "\n".join(lines) + "\n")


def check_args(args: argparse.Namespace) -> None:
    """Reject bad flag values before any work, naming the flag: each flag's range (checked at parsing, and again
    here for a Namespace built in code), then the autoencoder's widths."""
    check_flag_values(build_parser(), args)
    if len(args.block_out_channels) != 4:
        raise UserError(
            f"--block-out-channels needs 4 widths (4 resolution levels = downsampling by 8, as the SD-VAE the other "
            f"scripts expect), got {args.block_out_channels}"
        )
    if any(w <= 0 or w % args.norm_num_groups for w in args.block_out_channels):
        raise UserError(
            f"every --block-out-channels width must be a positive multiple of --norm-num-groups "
            f"{args.norm_num_groups} (group normalisation), got {args.block_out_channels}"
        )


def check_resume(ckpt: dict, args: argparse.Namespace, kind: str, ckpt_path: Path) -> None:
    """A checkpoint continues only the run it came from: same data, every flag of RESUME_KEYS, not past --steps."""
    saved = ckpt["args"]
    pairs = [(f"--{k.replace('_', '-')}", getattr(saved, k), getattr(args, k)) for k in RESUME_KEYS]
    pairs.append(("--data-path", str(Path(saved.data_path).resolve()), str(Path(args.data_path).resolve())))
    pairs.append(("--dataset", ckpt["dataset"], kind))
    for flag, before, now in pairs:
        if before != now:
            raise UserError(
                f"{ckpt_path} was trained with {flag} {before}, this run has {now}; use another --out for a new "
                "autoencoder, or the checkpoint's value to continue it"
            )
    if ckpt["step"] > args.steps:
        raise UserError(f"{ckpt_path} is at step {ckpt['step']}, beyond --steps {args.steps}")


# ----------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> dict:
    """Train (or continue), measure the scaling factor, save the diffusers folder and report; returns the report."""
    # Flags and data are checked before anything is written.
    check_args(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = pick_device(0, args.device)
    set_tf32(args.tf32)
    kind, train_set, val_set = load_data(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logger = create_logger("train_vae", out)
    logger.info(
        f"{kind} data, fold {args.fold}: {len(train_set)} training / {len(val_set)} validation images "
        f"at {args.image_size} px; device {device}, {torch.get_num_threads()} thread(s)"
    )
    run = open_run(args, kind, out, device, logger)
    train_steps(run, train_set, device, logger)
    scaling = set_scaling_factor(run, train_set, device, logger)
    return write_report(run, val_set, len(train_set), scaling, device, logger)


# ----------------------------------------------------------------------------------------------------------------
# The steps of main, in order
# ----------------------------------------------------------------------------------------------------------------


def load_data(args: argparse.Namespace) -> tuple[str, Dataset, Dataset]:
    """The dataset kind and the fold's checked training and validation sets."""
    kind = pick_dataset(args.data_path, args.dataset)
    transform = image_transform(args.image_size)
    train_set = build_dataset(kind, args.data_path, "train", args.fold, transform, args.label_columns)
    val_set = build_dataset(kind, args.data_path, "val", args.fold, transform, args.label_columns)
    if len(train_set) < args.batch_size:
        raise UserError(
            f"--batch-size {args.batch_size} exceeds the {len(train_set)} training images of fold {args.fold}"
        )
    if len(val_set) == 0:
        raise UserError(f"fold {args.fold} has no validation images (PSNR is measured on them)")
    return kind, train_set, val_set


@dataclass
class VaeRun:
    """The autoencoder being trained, its optimiser and where it stands (all of it saved in checkpoints/last.pt).

    Attributes:
        vae, opt: the autoencoder and its AdamW optimiser.
        args: the flags (saved with the checkpoint).
        kind: the dataset kind (saved, compared on resume).
        out: the output folder.
        step: optimiser steps done.
        history: loss rows (step, loss, l1, kl), one per log.
        seconds: training seconds so far.
    """

    vae: AutoencoderKL
    opt: torch.optim.Optimizer
    args: argparse.Namespace
    kind: str
    out: Path
    step: int = 0
    history: list[list[float]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ckpt_path(self) -> Path:
        return self.out / "checkpoints" / "last.pt"

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.vae.parameters())

    def save_last(self, step: int) -> None:
        """checkpoints/last.pt at `step`, and metrics.csv."""
        save_checkpoint(
            self.ckpt_path,
            {"model": self.vae.state_dict(), "opt": self.opt.state_dict(), "args": self.args, "dataset": self.kind,
             "step": step, "history": self.history, "seconds": self.seconds},
        )  # fmt: skip
        write_metrics(self.out / "metrics.csv", self.history)


def open_run(args: argparse.Namespace, kind: str, out: Path, device: torch.device, logger: logging.Logger) -> VaeRun:
    """A new autoencoder and optimiser (weights seeded by --global-seed), continued from --out's checkpoint if any."""
    seed_everything(args.global_seed)  # the initial weights
    vae = build_autoencoder(args.block_out_channels, args.norm_num_groups, args.image_size).to(device)
    run = VaeRun(vae, torch.optim.AdamW(vae.parameters(), lr=args.lr), args, kind, out)
    if run.ckpt_path.is_file():
        ckpt = load_checkpoint(run.ckpt_path)
        check_resume(ckpt, args, kind, run.ckpt_path)
        vae.load_state_dict(ckpt["model"])
        run.opt.load_state_dict(ckpt["opt"])
        run.step, run.history, run.seconds = ckpt["step"], ckpt["history"], ckpt["seconds"]
        logger.info(f"Continuing {run.ckpt_path} from step {run.step}")
    logger.info(
        f"AutoencoderKL widths {tuple(args.block_out_channels)}, {args.norm_num_groups} norm groups: "
        f"{run.num_params:,} parameters; latents 4 x {args.image_size // 8} x {args.image_size // 8}"
    )
    return run


def train_steps(run: VaeRun, train_set: Dataset, device: torch.device, logger: logging.Logger) -> None:
    """Train from `run.step` to --steps: batch, flips and posterior noise of step s come from streams keyed by s
    (exact resume); the mean loss is logged every --log-every steps, last.pt written every --ckpt-every and at the
    end."""
    vae, opt, args, start = run.vae, run.opt, run.args, run.step
    vae.train()
    loader = DataLoader(
        train_set,
        batch_sampler=StepBatches(start, args.steps, len(train_set), args.batch_size, args.global_seed),
        num_workers=args.num_workers,
        pin_memory=device.type == "cuda",
    )
    pbar = tqdm(total=args.steps, initial=start, unit="step", dynamic_ncols=True)
    running, tick = [], time.time()
    for step, (x, _) in zip(range(start, args.steps), loader):
        g = torch.Generator().manual_seed(stream_seed(args.global_seed, STEP_STREAM, step))
        x = x.to(device, non_blocking=True)
        flip = (torch.rand(len(x), generator=g) < 0.5).to(device)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)  # (B, 3, S, S), horizontal flips
        loss, l1, kl = vae_loss(vae, x, args.kl_weight, g)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss {loss.item()} at step {step + 1}; the last good checkpoint is {run.ckpt_path}"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running.append(torch.stack([loss.detach(), l1.detach(), kl.detach()]))
        done = step + 1
        pbar.update(1)
        if done % args.log_every == 0 or done == args.steps:
            mean = torch.stack(running).mean(0).tolist()
            run.history.append([float(done), *mean])
            running = []
            pbar.set_postfix(loss=f"{mean[0]:.4f}")
            logger.info(f"(step={done:07d}) loss {mean[0]:.4f} (L1 {mean[1]:.4f}, KL {mean[2]:.1f} per image)")
        if done % args.ckpt_every == 0 or done == args.steps:
            run.seconds, tick = run.seconds + time.time() - tick, time.time()
            run.save_last(done)
    pbar.close()
    if start < args.steps:
        logger.info(f"Trained to step {args.steps} in {run.seconds:.1f} s; checkpoint {run.ckpt_path}")


def set_scaling_factor(
    run: VaeRun, train_set: Dataset, device: torch.device, logger: logging.Logger
) -> dict[str, float]:
    """Unit-variance latents: the scaling factor, stored in the config every script reads; saves the diffusers
    folder. Returns {"scaling_factor", "latent_std", "latent_mean"}."""
    vae, args, out = run.vae, run.args, run.out
    vae.eval()
    scaling, latent_std, latent_mean = measure_scaling_factor(
        vae, train_set, args.batch_size, args.num_workers, args.global_seed, device
    )
    vae.register_to_config(scaling_factor=scaling)
    save_vae_folder(vae, out / "vae")
    logger.info(
        f"Latent std {latent_std:.4f} (mean {latent_mean:.4f}): scaling_factor {scaling:.5f}; saved {out / 'vae'}"
    )
    return {"scaling_factor": scaling, "latent_std": latent_std, "latent_mean": latent_mean}


def write_report(
    run: VaeRun,
    val_set: Dataset,
    num_train: int,
    scaling: dict[str, float],
    device: torch.device,
    logger: logging.Logger,
) -> dict:
    """Validation PSNR from the posterior mean, the real | reconstruction grid and vae_report.json; returns the
    report."""
    args, out = run.args, run.out
    psnr, real, fake = reconstruct(run.vae, val_set, args.batch_size, args.num_workers, device)
    atomic_save_grid(torch.cat([real, fake]), out / "reconstructions.png", nrow=len(real))
    report = {
        "psnr_db": float(psnr.mean()),
        "psnr_definition": "mean over validation images of 10 log10(255^2 / MSE), uint8 images, posterior mean",
        **scaling,
        "steps": args.steps,
        "params": run.num_params,
        "seconds": run.seconds,
        "seconds_per_step": run.seconds / args.steps,
        "final_loss": run.history[-1][1] if run.history else None,
        "image_size": args.image_size,
        "latent_shape": [4, args.image_size // 8, args.image_size // 8],
        "train_images": num_train,
        "val_images": len(val_set),
        "dataset": run.kind,
        "fold": args.fold,
        "vae": str(out / "vae"),
    }
    atomic_write_text(out / "vae_report.json", json.dumps(report, indent=2) + "\n")
    logger.info(
        f"Validation PSNR {report['psnr_db']:.2f} dB over {len(val_set)} images; wrote {out / 'reconstructions.png'} "
        f"and {out / 'vae_report.json'}. Use --vae {out / 'vae'} in the other scripts."
    )
    return report


# ----------------------------------------------------------------------------------------------------------------
# Flags
# ----------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-path", type=str, required=True, help="dataset root (fold CSVs, or retinamnist_224.npz)")
    add_dataset_arguments(p)
    add_fold_flag(p)
    add_image_size_flag(p)
    p.add_argument("--out", type=str, default="results_vae", help="output folder (continued if it holds a checkpoint)")
    p.add_argument(
        "--steps",
        type=positive_int,
        default=1000,
        help="optimiser steps in total (a continued run trains to this)",
    )
    p.add_argument("--batch-size", type=positive_int, default=16, help="images per optimiser step")
    p.add_argument("--lr", type=positive_number(), default=2e-3, help="AdamW learning rate, constant")
    p.add_argument(
        "--kl-weight",
        type=number_at_least(0.0),
        default=1e-6,
        help="weight of the KL term (per-latent sum) beside L1",
    )
    p.add_argument(
        "--block-out-channels",
        type=positive_int,
        nargs="+",
        default=[16, 32, 64, 64],
        help="widths of the 4 resolution levels (downsampling 8)",
    )
    p.add_argument(
        "--norm-num-groups", type=positive_int, default=16, help="group-norm groups; must divide every width"
    )
    add_num_workers_flag(p)
    add_global_seed_flag(p)
    add_ckpt_every_flag(p, default=500)
    add_log_every_flag(p, default=50)
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: the environment's)")
    add_device_flag(p)
    add_tf32_flag(p)
    return p


if __name__ == "__main__":
    run_main("train_vae.py", lambda: main(build_parser().parse_args()))
