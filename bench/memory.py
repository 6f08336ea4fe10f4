"""Peak training memory of GeCA with and without activation checkpointing over the cellular steps.

On CPU each setting runs in a fresh subprocess (`python -m bench.memory ...`, glibc's mmap threshold fixed at
128 KiB) and reports the growth of its peak resident set size (VmHWM) over the resident size just before the forward
pass; getrusage's ru_maxrss is not used, as it keeps the parent's resident size at the fork that started the process.
On CUDA it reports the peak allocated memory above the allocation before the forward pass. Each run also returns a
few gradient values, so the table can show that checkpointing leaves the gradients unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from bench.timing import Row, make_model, random_inputs, reset_peak_resident, resident_bytes, timed
from infra import rng
from infra.markdown import format_bytes

REPO = Path(__file__).resolve().parents[1]
# Gradient entries compared between settings: small tensors that every step influences.
PROBE_PARAMS = ("final_layer.linear.bias", "cell_to_embedding.bias")


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
    model = make_model(key, side, nca_checkpoint=segments)
    with torch.no_grad():  # move the zero-initialised gates and projections so every step gets gradients
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model = model.to(device).train()
    x, t, y = random_inputs(batch, side, device)
    gens = rng.sample_generators(range(batch), device)

    def fwd_bwd() -> None:
        state = model(x, t, y, generator=gens)
        state[:, model.in_channels :].square().mean().backward()

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        seconds, peak = timed(fwd_bwd, device)
    else:
        reset_peak_resident()
        base = resident_bytes()
        seconds, _ = timed(fwd_bwd, device)
        peak = resident_bytes("VmHWM")
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


def main(argv: list[str] | None = None) -> None:
    """Print one measurement on the CPU as one JSON line."""
    p = argparse.ArgumentParser(description="One measured training forward + backward (used by `python -m bench`).")
    p.add_argument("--model", default="GeCA-S", help="GeCA registry key")
    p.add_argument("--batch", type=int, default=2, help="batch size N")
    p.add_argument("--segments", type=int, default=0, help="nca_checkpoint segments (0 = off)")
    p.add_argument("--side", type=int, default=32, help="latent grid side")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(json.dumps(measure(args.model, args.batch, args.segments, args.side, torch.device("cpu"))))


if __name__ == "__main__":
    main()
