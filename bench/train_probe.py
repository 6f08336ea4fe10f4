"""Run `train.py` unchanged as `__main__` and record what its log leaves out: peak memory and FLOPs per step.

`bench.gpu_check` launches this module in train.py's place, with train.py's own flags after `--`:

    accelerate launch --num_processes 1 --mixed_precision fp16 -m bench.train_probe --probe-json run.json -- \
        --model GeCA-S --feature-path LATENTS --num-classes 11 --global-batch-size 128 ...

train.py itself reports steps/s and images/s in `metrics.csv`. After it returns (or fails), this writes `run.json`:
the process's peak memory, whether it ran out of memory, the error if any, and the FLOPs of one training step.
"""

from __future__ import annotations

import argparse
import runpy
import sys
import time
from pathlib import Path

import torch

from bench.timing import is_out_of_memory, resident_bytes
from infra.stages import write_json

TRAIN_SCRIPT = Path(__file__).resolve().parents[1] / "train.py"


def peak_memory(device_type: str) -> dict:
    """Peak memory of this process so far: CUDA allocator peaks on a GPU, peak resident set size (VmHWM) on CPU."""
    if device_type == "cuda":
        allocated, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
        return {"memory_kind": "cuda allocated", "peak_bytes": int(allocated), "peak_reserved_bytes": int(reserved)}
    return {"memory_kind": "cpu resident (VmHWM)", "peak_bytes": resident_bytes("VmHWM"), "peak_reserved_bytes": None}


def training_step_flops(train_args: argparse.Namespace, device: torch.device) -> int:
    """FLOPs (multiply-adds count 2) of one optimiser step at train.py's `--global-batch-size`: FlopCounterMode over
    one forward + backward of the diffusion loss at batch 1 (matrix products, convolutions and attention), times the
    batch, since every counted operation is linear in it."""
    from torch.utils.flop_counter import FlopCounterMode

    from diffusion import create_diffusion
    from models import DiT_models

    side = train_args.image_size if train_args.image_space else train_args.image_size // 8
    model = DiT_models[train_args.model](
        input_size=side, num_classes=train_args.num_classes, in_channels=train_args.in_channels
    ).to(device)
    model.train()
    diffusion = create_diffusion(timestep_respacing="", diffusion_steps=train_args.diffusion_steps)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, train_args.in_channels, side, side, generator=g).to(device)
    y = torch.zeros(1, train_args.num_classes, device=device)
    t = torch.tensor([train_args.diffusion_steps // 2], device=device)
    with FlopCounterMode(display=False) as counter:
        diffusion.training_losses(model, x, t, {"y": y})["loss"].mean().backward()
    return int(counter.get_total_flops()) * train_args.global_batch_size


def main(argv: list[str]) -> int:
    """Run train.py with the flags after `--`, then write the probe's JSON; returns train.py's exit status."""
    if "--" not in argv:
        raise SystemExit("usage: python -m bench.train_probe --probe-json FILE -- <train.py flags>")
    cut = argv.index("--")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--probe-json", required=True, help="where to write peak memory, FLOPs and the outcome")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    ours, train_argv = p.parse_args(argv[:cut]), argv[cut + 1 :]

    import train  # its parser: the run's model, batch and sizes for the FLOP count

    train_args = train.build_parser().parse_args(train_argv)
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    result: dict = {"oom": False, "error": None, "train_argv": train_argv, "device": device_type}
    status, start = 0, time.time()
    sys.argv = [str(TRAIN_SCRIPT), *train_argv]
    try:
        runpy.run_path(str(TRAIN_SCRIPT), run_name="__main__")
    except BaseException as err:  # recorded, then reported through the exit status
        result["oom"] = is_out_of_memory(err)
        result["error"] = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        status = 3 if result["oom"] else 1
    result["train_seconds"] = time.time() - start
    result.update(peak_memory(device_type))
    if device_type == "cuda":
        result["device_name"] = torch.cuda.get_device_name()
    if status == 0 and not ours.no_flops:
        torch.cuda.empty_cache()  # a no-op where CUDA was never initialised
        result["flops_per_step"] = training_step_flops(train_args, torch.device(device_type))
    write_json(ours.probe_json, result)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
