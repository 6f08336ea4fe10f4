"""The measuring halves of `bench.gpu_check`, each run as its own capped subprocess: device facts, sampling
throughput (stage 4) and the fp16 against fp32 check (stage 5).

    python -m bench.gpu_workers device '{"json": "device.json"}'
    python -m bench.gpu_workers sample '{"json": "sample.json", "work": "DIR", "device": "cuda", "models": [...], ...}'
    python -m bench.gpu_workers fp16 '{"json": "fp16.json", "device": "cuda", "model": "GeCA-S", "batch": 32, ...}'

A worker takes its settings as one JSON object (as `bench.memory` does): "json", the file it writes, and the fields
its `run_*` function reads (`bench.gpu_check.stage_sample` and `stage_fp16` list them). Every command rewrites its
JSON (atomically) after each measurement, so a worker killed by its stage's time cap still leaves what it measured.
The orchestrator turns the JSON into the report.
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

from bench import NUM_CLASSES
from infra.stages import write_json

# Packages the five stages import; the device command reports the missing ones before any stage starts.
REQUIRED_PACKAGES = ("torch", "numpy", "diffusers", "accelerate", "timm", "pandas", "sklearn", "PIL", "tqdm")
REQUIRED_PACKAGES += ("matplotlib", "pytest")


def write_latents(folder: Path, count: int, side: int | None = None, seed: int = 0) -> Path:
    """Random multi-hot labels `labels_0/{i}.npy` (1, K) int64 and, given `side`, N(0, 1) latents
    `features_0/{i}.npy` (1, 4, side, side): extract_features.py's layout, which train.py and sample_ddp.py read."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for sub in ["labels_0", *(["features_0"] if side else [])]:
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        if side:
            np.save(folder / "features_0" / f"{i}.npy", rng.standard_normal((1, 4, side, side)).astype(np.float32))
        np.save(folder / "labels_0" / f"{i}.npy", (rng.random((1, NUM_CLASSES)) < 0.3).astype(np.int64))
    return folder


# device


def device_facts(query_cuda: bool = True) -> dict:
    """What the report's header states: interpreter, torch, CUDA device (name, memory, capability), missing packages.

    `query_cuda` is False only for the CPU dry run, in the orchestrator's own process. On a GPU the orchestrator calls
    this in a child process, so that it never initialises CUDA itself (a context in the parent would take GPU memory
    from every stage).
    """
    missing = [name for name in REQUIRED_PACKAGES if importlib.util.find_spec(name) is None]
    facts: dict = {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "missing_packages": missing,
    }
    if "torch" in missing:
        facts["cuda"] = False
        return facts
    import torch

    facts["torch"], facts["cuda_runtime"] = torch.__version__, torch.version.cuda
    facts["cuda"] = query_cuda and torch.cuda.is_available()
    if not facts["cuda"]:
        facts["name"] = platform.processor() or platform.machine()
        return facts
    props = torch.cuda.get_device_properties(0)
    facts["name"], facts["memory_bytes"] = props.name, int(props.total_memory)
    facts["capability"] = f"{props.major}.{props.minor}"
    facts["multiprocessors"], facts["device_count"] = props.multi_processor_count, torch.cuda.device_count()
    return facts


# sample (stage 4)


def write_sampling_inputs(work: Path, models: list[str], side: int, tiny_vae: bool) -> tuple[Path, dict[str, Path]]:
    """The VAE folder (`--vae DIR`) and one random-weight checkpoint per model (`--ckpt`), in `work`."""
    import torch

    from bench.timing import make_model
    from data.vae import sd_vae_like
    from infra.checkpoint import save_checkpoint

    sd_vae_like(tiny_vae).save_pretrained(work / "vae")
    ckpts = {key: work / "ckpt" / f"{key.replace('/', '-')}.pt" for key in models}
    for i, key in enumerate(models):
        torch.manual_seed(i)
        state = make_model(key, side).state_dict()
        save_checkpoint(ckpts[key], {"model": state, "ema": state})
    return work / "vae", ckpts


def sample_argv(key: str, args: argparse.Namespace, batch: int, ckpt: Path, vae: Path) -> list[str]:
    """sample_ddp.py's flags for one batch of `batch` images (the paper's command shape, local paths)."""
    name = key.replace("/", "-")
    argv = ["--model", key, "--data-path", str(args.work / "labels" / name), "--dataset", "oct", "--fold", "0"]
    argv += ["--num-classes", str(NUM_CLASSES), "--image-size", str(args.image_size)]
    argv += ["--num-sampling-steps", str(args.steps), "--cfg-scale", str(args.cfg_scale)]
    argv += ["--per-proc-batch-size", str(batch), "--expand_ratio", "1", "--ckpt", str(ckpt), "--vae", str(vae)]
    return [*argv, "--sample-dir", str(args.work / "samples" / f"{name}-{batch}"), "--device", args.device]


def fit_batch(model, latent_shape: tuple, vae, args: argparse.Namespace, tried: list) -> int | None:
    """The first of `args.batches` whose guided model call and VAE decoding (one respaced step, the per-batch memory
    pattern) run without running out of memory, or None; each try goes into `tried`."""
    import torch

    from bench.timing import is_out_of_memory, random_labels
    from diffusion import create_diffusion
    from synthesis.generate import noise_seed, sample_images

    for batch in args.batches:
        labels = random_labels(batch, torch.Generator().manual_seed(0)).to(args.device)
        seeds = [noise_seed(0, i) for i in range(batch)]
        try:
            sample_images(model, create_diffusion("1"), labels, seeds, latent_shape, args.cfg_scale, vae=vae)
        except RuntimeError as err:
            if not is_out_of_memory(err):
                raise
            tried.append([batch, "out of memory"])
            torch.cuda.empty_cache()
            continue
        tried.append([batch, "fits"])
        return batch
    return None


def measure_denoising(args: argparse.Namespace, key: str, rec: dict, ckpt: Path, vae_dir: Path, vae) -> None:
    """Into `rec`: the largest batch that fits, then the seconds and peak memory of denoising one batch (no VAE)."""
    import numpy as np
    import torch

    import sample_ddp
    from bench.timing import timed
    from diffusion import create_diffusion
    from synthesis.cli import load_sampling_model
    from synthesis.generate import noise_seed, sample_images

    device = torch.device(args.device)
    model, latent_shape, _ = load_sampling_model(
        sample_ddp.parse_args(sample_argv(key, args, 1, ckpt, vae_dir)), device
    )
    batch = fit_batch(model, latent_shape, vae, args, rec["tried"])
    if batch is None:
        rec["status"] = "out of memory at every batch"
        return
    labels_dir = write_latents(args.work / "labels" / key.replace("/", "-"), batch)
    labels = torch.as_tensor(np.stack(sample_ddp.training_labels(str(labels_dir), 0, NUM_CLASSES))).float().to(device)
    diffusion, seeds = create_diffusion(str(args.steps)), [noise_seed(0, i) for i in range(batch)]
    seconds, peak = timed(lambda: sample_images(model, diffusion, labels, seeds, latent_shape, args.cfg_scale), device)
    rec.update(batch=batch, denoise={"seconds": seconds, "images": batch, "peak_bytes": peak})
    rec["status"] = "denoising measured"


def run_end_to_end(args: argparse.Namespace, key: str, rec: dict, ckpt: Path, vae_dir: Path) -> None:
    """Into `rec`: sample_ddp.py's main on the fitted batch, its own clock and the wall clock, unless the stage's
    deadline would cut it short."""
    import sample_ddp

    needed, left = 1.2 * rec["denoise"]["seconds"] + 5.0, args.deadline_at - time.time()
    if left < needed:
        rec["end_to_end"] = {"skipped": f"{left:.0f} s left in the stage cap, about {needed:.0f} s needed"}
        return
    argv = sample_argv(key, args, rec["batch"], ckpt, vae_dir)
    rec["command"] = "python sample_ddp.py " + " ".join(argv)
    start = time.perf_counter()
    summary = sample_ddp.main(sample_ddp.parse_args(argv))
    wall = time.perf_counter() - start
    rec["end_to_end"] = {"seconds": float(summary["seconds"]), "wall_seconds": wall, "images": summary["images"]}
    rec["status"] = "ok"


def run_sample(args: argparse.Namespace) -> None:
    """Stage 4: per model, the largest batch that fits, then seconds per image with and without VAE decoding.

    Without decoding: `synthesis.generate.sample_images(..., vae=None)`, the function sample_ddp.py calls, timed
    around one batch (device synchronised). With decoding: `sample_ddp.main` end to end in this process, timed by its
    own clock (denoising, decoding and PNG writes of the batch; model and VAE loading excluded) and by the wall clock
    around it. All denoising runs come before the first end-to-end run, so a stage cut short by its cap still has
    the denoising figure of every model.
    """
    import torch

    from data.vae import load_vae
    from infra.precision import set_tf32

    set_tf32(True)  # as sample_ddp.py's (default) --tf32 sets it; the end-to-end runs set it again themselves
    args.work = Path(args.work)
    out: dict = {"models": {}, "steps": args.steps, "cfg_scale": args.cfg_scale, "image_size": args.image_size}
    vae_dir, ckpts = write_sampling_inputs(args.work, args.models, args.image_size // 8, args.tiny_vae)
    out["vae"] = {"folder": str(vae_dir), "tiny": args.tiny_vae}
    write_json(args.json, out)
    vae = load_vae(str(vae_dir), torch.device(args.device))
    out["vae"]["parameters"] = sum(p.numel() for p in vae.parameters())
    for key in args.models:  # 1. the largest batch that fits, then denoising alone
        out["models"][key] = {"tried": [], "status": "running"}
        measure_denoising(args, key, out["models"][key], ckpts[key], vae_dir, vae)
        torch.cuda.empty_cache()  # a no-op where CUDA was never initialised
        write_json(args.json, out)
    del vae
    for key in args.models:  # 2. sample_ddp.py end to end (VAE decoding and PNG writes), while the cap leaves time
        if "denoise" in out["models"][key]:
            run_end_to_end(args, key, out["models"][key], ckpts[key], vae_dir)
            torch.cuda.empty_cache()
            write_json(args.json, out)


# fp16 (stage 5)


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


def compare_training(args: argparse.Namespace, out: dict) -> None:
    """Into `out`, after every step: the losses of the same training steps in fp16 autocast and in fp32.

    One model, two copies (fp32 with TF32 off; fp16 autocast with a gradient scaler, as accelerate's fp16 does), the
    same batches, timesteps and random draws (the global seed is reset before each step of each copy), and the same
    optimiser steps, so the loss difference at every step is the precision's alone.
    """
    import torch

    from bench.timing import make_model, random_labels, training_step
    from diffusion import create_diffusion
    from infra.precision import set_tf32

    device, side = torch.device(args.device), args.image_size // 8
    set_tf32(False)  # fp32 means fp32: TF32 would round the reference's matrix products to 10 mantissa bits
    torch.manual_seed(0)
    m32 = make_model(args.model, side).to(device).train()
    m16 = copy.deepcopy(m32)
    opt32, opt16 = (torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0) for m in (m32, m16))
    scaler = torch.amp.GradScaler(device.type)
    diffusion = create_diffusion(timestep_respacing="")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 4, side, side, generator=g).to(device)
    y = random_labels(args.batch, g).to(device)
    timesteps = torch.randint(0, diffusion.num_timesteps, (args.steps, args.batch), generator=g)
    no_scaler = torch.amp.GradScaler(device.type, enabled=False)
    out.update(losses_fp32=[], losses_fp16=[], scaler_skipped_steps=0)
    for k in range(args.steps):
        t, scale = timesteps[k].to(device), scaler.get_scale()
        torch.manual_seed(10_000 + k)
        loss = training_step(m16, diffusion, opt16, scaler, x, t, y, torch.float16)
        skip = scaler.get_scale() < scale  # the scaler backs off only when it skipped a step with inf/NaN gradients
        out["scaler_skipped_steps"] += int(skip)
        out["losses_fp16"].append(loss.item())
        # A scaler skip is its loss-scale calibration, not a rounding error: the fp32 copy skips the same update, so
        # later steps compare the same trajectory and the gap is the precision's alone.
        torch.manual_seed(10_000 + k)
        out["losses_fp32"].append(training_step(m32, diffusion, opt32, no_scaler, x, t, y, update=not skip).item())
        write_json(args.json, out)


def ghg_sample(model, sampling, labels, args: argparse.Namespace) -> tuple[dict, object]:
    """One guided GHG sampling run, every step's sample and cell state checked: (record, final samples)."""
    import torch

    from infra import rng

    device, side, n = torch.device(args.device), args.image_size // 8, args.ghg_batch
    gens = rng.sample_generators(list(range(n)), device)
    z = rng.randn((n, 4, side, side), gens, device)
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
    record = {"first_non_finite_step": first_bad, "max_abs_sample": max_sample, "max_abs_cells": max_cells}
    return record, step["sample"][:n].float()


def compare_ghg(args: argparse.Namespace, out: dict) -> None:
    """Into `out["ghg"]`: GHG sampling with the model call in fp16 autocast (as `sample_ddp.py --mixed-precision
    fp16` routes it) against sample_ddp.py's default float32 call (TF32 on, as its --tf32 sets it)."""
    import torch

    from bench.timing import make_model, random_labels
    from diffusion import create_diffusion
    from infra.precision import set_tf32
    from synthesis.cli import configure_model_call

    device = torch.device(args.device)
    set_tf32(True)
    torch.manual_seed(0)
    base = make_model(args.model, args.image_size // 8)
    redrawn = perturb_zero_tensors(base, std=0.02, seed=0)
    sampling = create_diffusion(str(args.ghg_steps))
    labels = random_labels(args.ghg_batch, torch.Generator().manual_seed(2)).to(device)
    ghg: dict = {"batch": args.ghg_batch, "steps": args.ghg_steps, "cfg_scale": args.cfg_scale, "redrawn": redrawn}
    finals = {}
    for name, precision in (("fp32", "no"), ("fp16", "fp16")):
        model = configure_model_call(copy.deepcopy(base).to(device).eval(), device.type, precision)
        ghg[name], finals[name] = ghg_sample(model, sampling, labels, args)
        out["ghg"] = ghg
        write_json(args.json, out)
    reference = finals["fp32"].abs().max().item()
    ghg["fp16_vs_fp32_max_abs_diff_rel"] = (finals["fp16"] - finals["fp32"]).abs().max().item() / max(reference, 1e-12)
    write_json(args.json, out)


def run_fp16(args: argparse.Namespace) -> None:
    """Stage 5: fp16 autocast against fp32 over the same training steps, then GHG sampling in fp16 (every step's
    sample and cell state checked for NaN and infinity, the result compared with fp32)."""
    out = {"model": args.model, "batch": args.batch, "steps": args.steps, "rtol": args.rtol}
    compare_training(args, out)
    compare_ghg(args, out)


# command line


def main(command: str, settings: dict) -> None:
    """Run one command with its settings. The device facts are written plainly (read only after this process ends):
    the atomic writer needs torch, which they may report missing."""
    if command == "device":
        Path(settings["json"]).write_text(json.dumps(device_facts(), indent=2) + "\n")
    else:
        {"sample": run_sample, "fp16": run_fp16}[command](argparse.Namespace(**settings))


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
