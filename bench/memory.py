"""Peak training memory of GeCA with and without activation checkpointing over the cellular steps.

On CPU each setting runs in a fresh subprocess (`python -m bench.memory ...`, glibc's mmap threshold fixed at
128 KiB) and reports the growth of its peak resident set size over the resident size just before the forward pass;
on CUDA it reports the peak allocated memory above the allocation before the forward pass. Each run also returns a
few gradient values, so the table can show that checkpointing leaves the gradients unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.timing import Row
from infra import rng
from infra.markdown import format_bytes
from models import DiT_models

REPO = Path(__file__).resolve().parents[1]
# Gradient entries compared between settings: small tensors that every step influences.
PROBE_PARAMS = ("final_layer.linear.bias", "cell_to_embedding.bias")


def _status_bytes(field: str) -> int:
    """A memory field of /proc/self/status ("VmRSS", "VmHWM") in bytes, or 0 where unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    return 0


def reset_peak_resident() -> None:
    """Restart the peak-RSS mark (VmHWM) of this process from its current size (Linux, /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_resident_bytes() -> int:
    """Peak resident set size of this process since start or `reset_peak_resident`.

    VmHWM belongs to this process image. getrusage's ru_maxrss is not used: it keeps the parent's resident size at
    the fork that started the process, which would hide the child's own peak.
    """
    return _status_bytes("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # ru_maxrss in KiB


def measure(key: str, batch: int, segments: int, side: int, device: torch.device) -> dict:
    """One training forward + backward; peak memory above the pre-forward level, seconds, probe gradients.

    Args:
        key: registry key of the GeCA configuration.
        batch: N.
        segments: `nca_checkpoint` segments (0 = off).
        side: latent grid side.
        device: where to run.

    Returns:
        Dict with "peak_bytes", "seconds" and "grads" (name -> list of floats).
    """
    torch.manual_seed(0)
    model = DiT_models[key](input_size=side, num_classes=11, in_channels=4, nca_checkpoint=segments)
    with torch.no_grad():  # move the zero-initialised gates and projections so every step gets gradients
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model = model.to(device).train()
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, 4, side, side, generator=g, device=device)
    t = torch.randint(0, 1000, (batch,), generator=g, device=device)
    y = (torch.rand(batch, 11, generator=g, device=device) < 0.3).float()
    gens = rng.sample_generators(range(batch), device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        reset_peak_resident()
        base = _status_bytes("VmRSS")
    start = time.perf_counter()
    state = model(x, t, y, generator=gens)
    state[:, model.in_channels :].square().mean().backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = peak_resident_bytes()
    seconds = time.perf_counter() - start
    params = dict(model.named_parameters())
    grads = {name: params[name].grad.flatten().tolist() for name in PROBE_PARAMS}
    return {"peak_bytes": peak - base, "seconds": seconds, "grads": grads}


def measure_in_subprocess(key: str, batch: int, segments: int, side: int, threads: int) -> dict:
    """`measure` on CPU in a fresh interpreter, so earlier allocations do not hide this run's peak."""
    # A fixed glibc mmap threshold returns every freed large block to the system at once, so the peak resident size
    # tracks the peak of live tensors instead of the allocator's high-water mark.
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MALLOC_MMAP_THRESHOLD_": "131072"}
    cmd = [sys.executable, "-m", "bench.memory", "--model", key, "--batch", str(batch), "--segments", str(segments)]
    cmd += ["--side", str(side), "--threads", str(threads)]
    out = subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_memory(
    key: str, batch: int, segment_options: list[int], device: torch.device, threads: int, side: int = 32
) -> list[Row]:
    """Peak memory of a training forward + backward for each checkpointing setting; the cut relative to none.

    Args:
        key: registry key of the GeCA configuration.
        batch: N.
        segment_options: `nca_checkpoint` values; 0 (off) is always measured first.
        device: where to run.
        threads: intra-op threads of the CPU subprocesses.
        side: latent grid side.

    Returns:
        Table rows.
    """
    results = {}
    for segments in [0, *(s for s in segment_options if s != 0)]:
        if device.type == "cuda":
            results[segments] = measure(key, batch, segments, side, device)
        else:
            results[segments] = measure_in_subprocess(key, batch, segments, side, threads)
    plain = results[0]
    rows = []
    label = f"peak memory of a training fwd+bwd ({key}, N={batch}, {side}x{side}, 12 steps)"
    for segments, res in results.items():
        gap = max(max(abs(a - b) for a, b in zip(res["grads"][name], plain["grads"][name])) for name in PROBE_PARAMS)
        row = Row(
            label,
            "no checkpointing" if segments == 0 else f"--nca-checkpoint {segments}",
            f"{res['seconds']:.1f} s (one run)",
            memory=format_bytes(res["peak_bytes"]),
        )
        if segments:
            cut = 1 - res["peak_bytes"] / plain["peak_bytes"]
            row.ratio = f"{cut:.0%} less memory; grad max |diff| {gap:.1e}"
            row.target = "less memory, equal gradients"
            row.met = cut > 0 and gap < 1e-5
        rows.append(row)
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="One measured training forward + backward (used by `python -m bench`).")
    p.add_argument("--model", default="GeCA-S", help="GeCA registry key")
    p.add_argument("--batch", type=int, default=2, help="batch size N")
    p.add_argument("--segments", type=int, default=0, help="nca_checkpoint segments (0 = off)")
    p.add_argument("--side", type=int, default=32, help="latent grid side")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    return p


def main(args: argparse.Namespace) -> None:
    """Print the measurement as one JSON line."""
    torch.set_num_threads(args.threads)
    print(json.dumps(measure(args.model, args.batch, args.segments, args.side, torch.device("cpu"))))


if __name__ == "__main__":
    main(build_parser().parse_args())
