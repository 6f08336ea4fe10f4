"""The measuring halves of `bench.gpu_check`, each run as its own capped subprocess: device facts, sampling
throughput (stage 4) and the fp16 against fp32 check (stage 5).

    python -m bench.gpu_workers device --json device.json
    python -m bench.gpu_workers sample --json sample.json --work DIR --device cuda --models GeCA-S DiT-S/2 LDM-B
    python -m bench.gpu_workers fp16 --json fp16.json --device cuda --model GeCA-S --batch 32

Every command rewrites its JSON (atomically) after each measurement, so a worker killed by its stage's time cap still
leaves what it measured. The orchestrator turns the JSON into the report.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

# Packages the five stages import; the device command reports the missing ones before any stage starts.
REQUIRED_PACKAGES = (
    "torch",
    "numpy",
    "diffusers",
    "accelerate",
    "timm",
    "pandas",
    "sklearn",
    "PIL",
    "tqdm",
    "matplotlib",
    "pytest",
)
# Label vectors of the generated sampling labels: OCT's 11 columns (any multi-hot vectors do for throughput).
NUM_CLASSES = 11


def write_json(path: str | Path, data: dict) -> None:
    """Replace `path` atomically with `data` as JSON (a reader never sees half a file)."""
    from infra.atomic_io import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


# ----------------------------------------------------------------------------------------------------------------
# device
# ----------------------------------------------------------------------------------------------------------------


def device_facts(query_cuda: bool = True) -> dict:
    """What the report's header states: interpreter, torch, CUDA device (name, memory, capability), missing packages.

    Args:
        query_cuda: look for a CUDA device. The orchestrator calls this in a child process on a GPU, so that it never
            initialises CUDA itself (a context in the parent would take GPU memory from every stage), and in its own
            process with False for the CPU dry run.
    """
    facts: dict = {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "missing_packages": [name for name in REQUIRED_PACKAGES if importlib.util.find_spec(name) is None],
    }
    if "torch" in facts["missing_packages"]:
        facts["cuda"] = False
        return facts
    import torch

    facts["torch"] = torch.__version__
    facts["cuda_runtime"] = torch.version.cuda
    facts["cuda"] = query_cuda and torch.cuda.is_available()
    if facts["cuda"]:
        props = torch.cuda.get_device_properties(0)
        facts.update(
            name=props.name,
            memory_bytes=int(props.total_memory),
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            device_count=torch.cuda.device_count(),
        )
    else:
        facts["name"] = platform.processor() or platform.machine()
    return facts


# ----------------------------------------------------------------------------------------------------------------
# sample (stage 4)
# ----------------------------------------------------------------------------------------------------------------


def sd_vae_like(tiny: bool, seed: int = 0):
    """A randomly initialised AutoencoderKL shaped like SD-VAE (`stabilityai/sd-vae-ft-ema`: 3 -> 4 channels, /8).

    Decoding cost depends on the shape, not on the weights, so random weights time the real decoder. `tiny` keeps
    the block layout with 8-channel blocks (the CPU dry run).
    """
    import torch
    from diffusers import AutoencoderKL

    widths, layers, groups = ((8, 8, 8, 8), 1, 4) if tiny else ((128, 256, 512, 512), 2, 32)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=widths,
            layers_per_block=layers,
            latent_channels=4,
            norm_num_groups=groups,
            sample_size=256,
            scaling_factor=0.18215,
        ).eval()


def write_sampling_inputs(work: Path, models: list[str], side: int, tiny_vae: bool) -> tuple[Path, dict[str, Path]]:
    """The VAE folder (`--vae DIR`) and one random-weight checkpoint per model (`--ckpt`), in `work`."""
    import torch

    from infra.checkpoint import save_checkpoint
    from models import DiT_models

    vae_dir = work / "vae"
    sd_vae_like(tiny_vae).save_pretrained(vae_dir)
    ckpts = {}
    for i, key in enumerate(models):
        torch.manual_seed(i)
        state = DiT_models[key](input_size=side, num_classes=NUM_CLASSES, in_channels=4).state_dict()
        ckpts[key] = work / "ckpt" / f"{key.replace('/', '-')}.pt"
        save_checkpoint(ckpts[key], {"model": state, "ema": state})
    return vae_dir, ckpts


def write_labels(folder: Path, count: int, seed: int = 0) -> Path:
    """`labels_0/{i}.npy` multi-hot (1, K) int64 files, the layout sample_ddp.py reads from `--data-path`."""
    import numpy as np

    rng = np.random.default_rng(seed)
    (folder / "labels_0").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        y = (rng.random((1, NUM_CLASSES)) < 0.3).astype(np.int64)
        np.save(folder / "labels_0" / f"{i}.npy", y)
    return folder


def sample_argv(key: str, args: argparse.Namespace, batch: int, labels: Path, ckpt: Path, vae: Path) -> list[str]:
    """sample_ddp.py's flags for one batch of `batch` images (the paper's command shape, local paths)."""
    return [
        "--model",
        key,
        "--data-path",
        str(labels),
        "--dataset",
        "oct",
        "--fold",
        "0",
        "--num-classes",
        str(NUM_CLASSES),
        "--image-size",
        str(args.image_size),
        "--num-sampling-steps",
        str(args.steps),
        "--cfg-scale",
        str(args.cfg_scale),
        "--per-proc-batch-size",
        str(batch),
        "--expand_ratio",
        "1",
        "--ckpt",
        str(ckpt),
        "--vae",
        str(vae),
        "--sample-dir",
        str(args.work / "samples" / f"{key.replace('/', '-')}-{batch}"),
        "--device",
        args.device,
    ]


def run_sample(args: argparse.Namespace) -> None:
    """Stage 4: per model, the largest batch that fits, then seconds per image with and without VAE decoding.

    Without decoding: `synthesis.generate.sample_images(..., vae=None)`, the function sample_ddp.py calls, timed
    around one batch (device synchronised). With decoding: `sample_ddp.main` end to end in this process, timed by its
    own clock (denoising, decoding and PNG writes of the batch; model and VAE loading excluded) and by the wall clock
    around it. All denoising runs come before the first end-to-end run, so a stage cut short by its cap still has
    the denoising figure of every model.
    """
    import numpy as np
    import torch

    import sample_ddp
    from bench.timing import synchronize
    from bench.train_probe import is_out_of_memory
    from data.vae import load_vae
    from diffusion import create_diffusion
    from synthesis.cli import load_sampling_model
    from synthesis.generate import noise_seed, sample_images

    device = torch.device(args.device)
    # TF32 on, as sample_ddp.py's (always on) --tf32 sets it; the end-to-end runs set it again themselves.
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    out: dict = {"models": {}, "steps": args.steps, "cfg_scale": args.cfg_scale, "image_size": args.image_size}

    def left() -> float:
        return args.deadline_at - time.time()

    side = args.image_size // 8
    vae_dir, ckpts = write_sampling_inputs(args.work, args.models, side, args.tiny_vae)
    out["vae"] = {"folder": str(vae_dir), "tiny": args.tiny_vae}
    write_json(args.json, out)
    vae = load_vae(str(vae_dir), device)
    out["vae"]["parameters"] = sum(p.numel() for p in vae.parameters())

    # 1. Largest batch that fits (one guided step + decoding, the per-batch memory pattern), then denoising alone.
    for key in args.models:
        rec: dict = {"tried": [], "status": "running"}
        out["models"][key] = rec
        labels_dir = args.work / "labels" / key.replace("/", "-")
        probe_args = sample_ddp.parse_args(sample_argv(key, args, 1, labels_dir, ckpts[key], vae_dir))
        model, latent_shape, _ = load_sampling_model(probe_args, device)
        for batch in args.batches:
            labels = (torch.rand(batch, NUM_CLASSES, generator=torch.Generator().manual_seed(0)) < 0.3).float()
            try:
                sample_images(
                    model,
                    create_diffusion("1"),
                    labels.to(device),
                    [noise_seed(0, i) for i in range(batch)],
                    latent_shape,
                    args.cfg_scale,
                    vae=vae,
                )
                rec["tried"].append([batch, "fits"])
                rec["batch"] = batch
                break
            except RuntimeError as err:
                if not is_out_of_memory(err):
                    raise
                rec["tried"].append([batch, "out of memory"])
                torch.cuda.empty_cache()
        if "batch" not in rec:
            rec["status"] = "out of memory at every batch"
            del model
            torch.cuda.empty_cache()
            write_json(args.json, out)
            continue
        batch = rec["batch"]
        write_labels(labels_dir, batch)
        diffusion = create_diffusion(str(args.steps))
        labels = torch.as_tensor(np.stack(sample_ddp.training_labels(str(labels_dir), 0, NUM_CLASSES)))
        labels = labels.float().to(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        synchronize(device)
        t0 = time.perf_counter()
        sample_images(
            model, diffusion, labels, [noise_seed(0, i) for i in range(batch)], latent_shape, args.cfg_scale, vae=None
        )
        synchronize(device)
        seconds = time.perf_counter() - t0
        rec["denoise"] = {
            "seconds": seconds,
            "images": batch,
            "peak_bytes": int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None,
        }
        rec["status"] = "denoising measured"
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        write_json(args.json, out)
    del vae

    # 2. sample_ddp.py end to end (VAE decoding and PNG writes included), while the cap leaves time for it.
    for key in args.models:
        rec = out["models"][key]
        if "denoise" not in rec:
            continue
        needed = 1.2 * rec["denoise"]["seconds"] + 5.0
        if left() < needed:
            rec["end_to_end"] = {"skipped": f"{left():.0f} s left in the stage cap, about {needed:.0f} s needed"}
            write_json(args.json, out)
            continue
        batch = rec["batch"]
        labels_dir = args.work / "labels" / key.replace("/", "-")
        argv = sample_argv(key, args, batch, labels_dir, ckpts[key], vae_dir)
        rec["command"] = "python sample_ddp.py " + " ".join(argv)
        t0 = time.perf_counter()
        summary = sample_ddp.main(sample_ddp.parse_args(argv))
        wall = time.perf_counter() - t0
        rec["end_to_end"] = {"seconds": float(summary["seconds"]), "wall_seconds": wall, "images": summary["images"]}
        rec["status"] = "ok"
        if device.type == "cuda":
            torch.cuda.empty_cache()
        write_json(args.json, out)


# ----------------------------------------------------------------------------------------------------------------
# fp16 (stage 5)
# ----------------------------------------------------------------------------------------------------------------


def perturb_zero_tensors(model, std: float, seed: int) -> int:
    """Redraw every all-zero parameter from N(0, std^2); returns how many tensors were redrawn.

    adaLN-Zero makes a fresh GeCA's every cell update exactly zero, and zeros stay finite in any precision; drawing
    those tensors makes the automaton's state evolve, which is what fp16 must survive.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    count = 0
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().max() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * std)
                count += 1
    return count


def run_fp16(args: argparse.Namespace) -> None:
    """Stage 5: fp16 autocast against fp32 over the same training steps, then GHG sampling in fp16.

    Training: one model, two copies (fp32 with TF32 off; fp16 autocast with a gradient scaler, as accelerate's fp16
    does), the same batches, timesteps and random draws (the global seed is reset before each step of each copy), and
    the same optimiser steps (a step the scaler skips is skipped in fp32 too), so the loss difference at every step is
    the precision's alone. Sampling: Gene Heredity Guidance (guided, cell state
    carried between timesteps) with the model call under fp16 autocast as `sample_ddp.py --mixed-precision fp16`
    routes it, every step's sample and cell state checked for NaN and infinity, and the result compared with fp32.
    """
    import torch

    from diffusion import create_diffusion
    from infra import rng
    from models import DiT_models
    from synthesis.cli import configure_model_call

    device = torch.device(args.device)
    # fp32 means fp32: TF32 would round the reference's matrix products to 10 mantissa bits.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    side = args.image_size // 8
    out: dict = {"model": args.model, "batch": args.batch, "steps": args.steps, "rtol": args.rtol}

    # 1. Training losses, step by step.
    torch.manual_seed(0)
    m32 = DiT_models[args.model](input_size=side, num_classes=NUM_CLASSES, in_channels=4).to(device).train()
    m16 = copy.deepcopy(m32)
    opt32 = torch.optim.AdamW(m32.parameters(), lr=1e-4, weight_decay=0)
    opt16 = torch.optim.AdamW(m16.parameters(), lr=1e-4, weight_decay=0)
    scaler = torch.amp.GradScaler(device.type)
    diffusion = create_diffusion(timestep_respacing="")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 4, side, side, generator=g).to(device)
    y = (torch.rand(args.batch, NUM_CLASSES, generator=g) < 0.3).float().to(device)
    timesteps = torch.randint(0, diffusion.num_timesteps, (args.steps, args.batch), generator=g)
    losses32, losses16, skipped = [], [], 0
    for k in range(args.steps):
        t = timesteps[k].to(device)
        torch.manual_seed(10_000 + k)
        with torch.autocast(device.type, dtype=torch.float16):
            loss = diffusion.training_losses(m16, x, t, {"y": y})["loss"].mean()
        opt16.zero_grad(set_to_none=True)
        scale = scaler.get_scale()
        scaler.scale(loss).backward()
        scaler.step(opt16)
        scaler.update()
        skip = scaler.get_scale() < scale  # the scaler backs off only when it skipped a step with inf/NaN gradients
        skipped += int(skip)
        losses16.append(loss.item())

        torch.manual_seed(10_000 + k)
        loss = diffusion.training_losses(m32, x, t, {"y": y})["loss"].mean()
        opt32.zero_grad(set_to_none=True)
        loss.backward()
        if not skip:
            # A scaler skip is its loss-scale calibration, not a rounding error: the fp32 copy skips the same
            # update, so later steps compare the same trajectory and the gap is the precision's alone.
            opt32.step()
        losses32.append(loss.item())
        out.update(losses_fp32=losses32, losses_fp16=losses16, scaler_skipped_steps=skipped)
        write_json(args.json, out)

    # 2. GHG sampling in fp16 against sample_ddp.py's default float32 call (TF32 on, as its --tf32 sets it).
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    base = DiT_models[args.model](input_size=side, num_classes=NUM_CLASSES, in_channels=4)
    redrawn = perturb_zero_tensors(base, std=0.02, seed=0)
    sampling = create_diffusion(str(args.ghg_steps))
    labels = (torch.rand(args.ghg_batch, NUM_CLASSES, generator=torch.Generator().manual_seed(2)) < 0.3).float()
    labels = labels.to(device)
    ghg: dict = {"batch": args.ghg_batch, "steps": args.ghg_steps, "cfg_scale": args.cfg_scale, "redrawn": redrawn}
    finals = {}
    for precision in ("no", "fp16"):
        model = configure_model_call(copy.deepcopy(base).to(device).eval(), device.type, precision)
        gens = rng.sample_generators(list(range(args.ghg_batch)), device)
        z = rng.randn((args.ghg_batch, 4, side, side), gens, device)
        z = torch.cat([z, z])
        kwargs = {"y": torch.cat([labels, torch.zeros_like(labels)]), "cfg_scale": args.cfg_scale}
        kwargs["extras"] = model.seed(z, generator=gens)
        first_bad, max_sample, max_cells = None, 0.0, 0.0
        loop = sampling.p_sample_loop_progressive(
            model.forward_with_cfg, z.shape, noise=z, model_kwargs=kwargs, device=device, generator=gens
        )
        for i, step in enumerate(loop):
            sample_max = step["sample"].abs().max().item()
            cells_max = step["extras"].abs().max().item() if step["extras"] is not None else 0.0
            if first_bad is None and not (math.isfinite(sample_max) and math.isfinite(cells_max)):
                first_bad = i
            max_sample, max_cells = max(max_sample, sample_max), max(max_cells, cells_max)
            finals[precision] = step["sample"][: args.ghg_batch].float()
        name = "fp32" if precision == "no" else "fp16"
        ghg[name] = {"first_non_finite_step": first_bad, "max_abs_sample": max_sample, "max_abs_cells": max_cells}
        out["ghg"] = ghg
        write_json(args.json, out)
    reference = finals["no"].abs().max().item()
    ghg["fp16_vs_fp32_max_abs_diff_rel"] = (finals["fp16"] - finals["no"]).abs().max().item() / max(reference, 1e-12)
    write_json(args.json, out)


# ----------------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("device", help="device facts and missing packages")
    d.add_argument("--json", required=True, help="output file")

    s = sub.add_parser("sample", help="stage 4: sampling throughput")
    s.add_argument("--json", required=True, help="output file, rewritten after each measurement")
    s.add_argument("--work", type=Path, required=True, help="scratch folder (checkpoints, VAE, labels, samples)")
    s.add_argument("--device", default="cuda", help="cuda or cpu")
    s.add_argument("--models", nargs="+", required=True, help="registry keys")
    s.add_argument("--batches", type=int, nargs="+", required=True, help="batch sizes to try, largest first")
    s.add_argument("--image-size", type=int, default=256, help="image side (latent side = size // 8)")
    s.add_argument("--steps", type=int, default=250, help="respaced sampling steps")
    s.add_argument("--cfg-scale", type=float, default=1.5, help="guidance scale")
    s.add_argument("--tiny-vae", action="store_true", help="8-channel blocks instead of SD-VAE's widths (CPU)")
    s.add_argument(
        "--deadline-at", type=float, default=math.inf, help="Unix time by which the last end-to-end run must end"
    )

    f = sub.add_parser("fp16", help="stage 5: fp16 against fp32")
    f.add_argument("--json", required=True, help="output file, rewritten after each step")
    f.add_argument("--device", default="cuda", help="cuda or cpu")
    f.add_argument("--model", default="GeCA-S", help="registry key")
    f.add_argument("--image-size", type=int, default=256, help="image side (latent side = size // 8)")
    f.add_argument("--batch", type=int, default=32, help="training batch")
    f.add_argument("--steps", type=int, default=20, help="training steps compared")
    f.add_argument("--rtol", type=float, default=1e-2, help="stated tolerance on each step's relative loss gap")
    f.add_argument("--ghg-batch", type=int, default=8, help="images of the GHG sampling check")
    f.add_argument("--ghg-steps", type=int, default=250, help="respaced steps of the GHG sampling check")
    f.add_argument("--cfg-scale", type=float, default=1.5, help="guidance scale of the GHG check")
    return p


def main(args: argparse.Namespace) -> None:
    if args.command == "device":
        facts = device_facts()
        if "torch" in facts["missing_packages"]:  # infra.atomic_io needs torch; the orchestrator reads this later
            Path(args.json).write_text(json.dumps(facts, indent=2) + "\n")
        else:
            write_json(args.json, facts)
    elif args.command == "sample":
        run_sample(args)
    else:
        run_fp16(args)


if __name__ == "__main__":
    main(build_parser().parse_args())
