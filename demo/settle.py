"""Steps-to-settle curve: how many training steps a denoiser needs before its samples stay in the data's range.

    python -m demo.settle --data-path demo_out/data/oct_phantom --features demo_out/features \\
        --vae demo_out/vae_oct/vae --model GeCA-T --steps 250 500 1000 1500 2000 2500 3000 --out settle_out

Trains the model with train.py (the demo's optimisation flags; one run continued with `--resume` from one
checkpoint step to the next) and, at every checkpoint step, samples the first `--num-samples` validation label
vectors from the EMA weights twice, with Gene Heredity Guidance and with a fresh seed cell at every denoising step
(`--no-ghg`; the same for a non-cellular model), decodes them with the VAE, and measures the pixel mean, the pixel
standard deviation and the fraction of saturated values (0 or 255) against the real validation images. Writes
`settle.csv`, `settle.png` and the last samples as `samples_{step}.png`. docs/DEMO.md holds a measured curve.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from data.datasets import fold_csv_path
from data.images import open_rgb
from data.labels import OCT_LABELS
from data.transforms import center_crop_arr
from data.vae import load_vae
from data.validate import read_fold_csv
from demo.pixels import pixel_stats
from demo.profiles import FOLD, FULL
from diffusion import create_diffusion
from infra.argtypes import number_at_least, positive_int
from infra.atomic_io import atomic_save_grid, atomic_write_text
from infra.checkpoint import find_model
from infra.errors import UserError, run_main
from infra.flags import add_fold_flag, add_image_size_flag, add_model_flag
from infra.plots import Panel, Series, plot_panels
from infra.stages import REPO_ROOT
from models import DiT_models
from synthesis.generate import noise_seed, sample_images
from training.flags import EMA_DECAY, LEARNING_RATE


def real_validation(data_path: Path, fold: int, size: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` validation images (centre-cropped to `size`, uint8 NHWC) and their label vectors."""
    frame = read_fold_csv(fold_csv_path(data_path, "val", fold))[:count]
    images = [np.asarray(center_crop_arr(open_rgb(data_path / name), size)) for name in frame["filename"]]
    return np.stack(images), frame[list(OCT_LABELS)].to_numpy(dtype=np.float32)


def train_to(args: argparse.Namespace, step: int) -> Path:
    """Continue (or start) the training run until `step` optimiser steps; returns its last.pt."""
    results = Path(args.out) / "run"
    last = next(iter(sorted(results.glob("*/checkpoints/last.pt"))), None)
    command = [
        sys.executable, "train.py", "--model", args.model, "--feature-path", args.features, "--vae", args.vae,
        "--data-path", args.data_path, "--dataset", "oct", "--num-classes", str(len(OCT_LABELS)),
        "--image-size", str(args.image_size), "--fold", str(args.fold), "--results-dir", str(results),
        "--global-batch-size", str(args.batch_size), "--epochs", "100000", "--lr", str(args.lr),
        "--ema-decay", str(args.ema_decay), "--validate_every", "0", "--global-seed", "0", "--num-workers", "0",
        "--log-every", "50", "--max-steps", str(step), "--ckpt-every", str(step),
    ]  # fmt: skip
    if last is not None:
        command += ["--resume", str(last)]
    if (status := subprocess.run(command, cwd=REPO_ROOT).returncode) != 0:
        raise UserError(f"train.py stopped with exit status {status} before step {step} (its message is above)")
    return next(iter(sorted(results.glob("*/checkpoints/last.pt"))))


def curve_figure(rows: list[dict], real: dict[str, float], path: Path) -> None:
    """Saturated fraction and pixel mean against training steps, GHG and fresh-seed sampling, real as a line."""
    panels = []
    for key, title in (("saturated", "saturated fraction"), ("mean", "pixel mean")):
        series = [
            Series([(r["step"], r[key]) for r in rows if r["ghg"] == ghg], label, fmt)
            for ghg, label, fmt in ((True, "GHG", "o-"), (False, "fresh seed every step", "s--"))
        ]
        hline = [(real[key], "real validation images")]
        panels.append(Panel(title, "training steps", "", series, hline, log_y=key == "saturated", legend_fontsize=8))
    plot_panels(path, panels, figsize=(9, 3.4), dpi=110)


def main(args: argparse.Namespace) -> Path:
    """Train to each checkpoint step, sample both ways, measure; returns settle.csv."""
    torch.manual_seed(0)
    # train.py runs from the repository root: every path it gets is absolute.
    for name in ("data_path", "features", "vae", "out"):
        setattr(args, name, str(Path(getattr(args, name)).resolve()))
    real_images, labels = real_validation(Path(args.data_path), args.fold, args.image_size, args.num_samples)
    real = pixel_stats(real_images)
    vae = load_vae(args.vae)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    latent = args.image_size // 8
    diffusion = create_diffusion(str(args.sampling_steps))
    rows: list[dict] = []
    for step in args.steps:
        ckpt = train_to(args, step)
        model = DiT_models[args.model](input_size=latent, num_classes=len(OCT_LABELS), in_channels=4)
        model.load_state_dict(find_model(ckpt))
        model.eval()
        y = torch.as_tensor(labels)
        seeds = [noise_seed(0, i) for i in range(len(y))]
        for ghg in (True, False):
            images = sample_images(
                model, diffusion, y, seeds, (4, latent, latent), cfg_scale=args.cfg_scale, vae=vae, ghg=ghg
            )
            stats = pixel_stats(images.numpy())
            rows.append({"step": step, "ghg": ghg, **stats})
            print(f"step {step} {'GHG' if ghg else 'fresh'}: {stats} (real {real})", flush=True)
            if ghg:
                atomic_save_grid(images[:32], out / f"samples_{step}.png")
    lines = ["step,ghg,mean,std,saturated"] + [
        f"{r['step']},{int(r['ghg'])},{r['mean']:.2f},{r['std']:.2f},{r['saturated']:.4f}" for r in rows
    ]
    lines.append(f"real,,{real['mean']:.2f},{real['std']:.2f},{real['saturated']:.4f}")
    atomic_write_text(out / "settle.csv", "\n".join(lines) + "\n")
    curve_figure(rows, real, out / "settle.png")
    return out / "settle.csv"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m demo.settle", description=__doc__.split("\n")[0])
    # The defaults are the full demo's (demo/profiles.py), so the curve describes the training `make demo` runs.
    p.add_argument("--data-path", required=True, help="phantom dataset root (val_{fold}.csv)")
    p.add_argument("--features", required=True, help="extract_features.py output (features_{fold}/, labels_{fold}/)")
    p.add_argument("--vae", required=True, help="the VAE folder the latents were made with")
    add_model_flag(p, DiT_models)
    p.add_argument("--steps", type=positive_int, nargs="+", required=True, help="checkpoint steps, increasing")
    p.add_argument("--out", required=True, help="output folder (the training run, settle.csv, settle.png)")
    add_image_size_flag(p)
    add_fold_flag(p, FOLD)
    p.add_argument("--batch-size", type=positive_int, default=FULL.batch_size, help="training batch")
    p.add_argument("--lr", type=LEARNING_RATE, default=FULL.lr, help="AdamW learning rate")
    p.add_argument("--ema-decay", type=EMA_DECAY, default=FULL.ema_decay, help="EMA decay per step")
    p.add_argument(
        "--num-samples", type=positive_int, default=64, help="validation label vectors sampled per checkpoint"
    )
    p.add_argument("--sampling-steps", type=positive_int, default=FULL.sampling_steps, help="respaced DDPM steps")
    p.add_argument(
        "--cfg-scale", type=number_at_least(1.0), default=FULL.cfg_scale, help="guidance scale (GHG for GeCA)"
    )
    p.set_defaults(model="GeCA-T", image_size=FULL.image_size)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.steps != sorted(set(args.steps)):
        parser.error(f"argument --steps: must be increasing, got {' '.join(map(str, args.steps))}")
    return args


if __name__ == "__main__":
    run_main("python -m demo.settle", lambda: main(parse_args()))
