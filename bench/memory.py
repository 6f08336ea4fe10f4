"""Peak training memory of GeCA with and without activation checkpointing over the cellular steps.

On CPU each setting runs in a fresh subprocess (`python -m bench.memory ...`, glibc's mmap threshold fixed at
128 KiB) and reports the growth of its peak resident set size (VmHWM) over the resident size just before the forward
pass; getrusage's ru_maxrss is not used, as it keeps the parent's resident size at the fork that started the process.
On CUDA it reports the peak allocated memory above the allocation before the forward pass. Each run also returns a
few gradient values, so the table can show that checkpointing leaves the gradients unchanged.
"""

from __future__ import annotations

import functools
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
    """One training forward + backward of `key` with `segments` checkpoint segments (0 = off): its peak memory above
    the pre-forward level ("peak_bytes"), "seconds", and the probe gradients ("grads": name -> list of floats)."""
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
    grads = {name: model.get_parameter(name).grad.flatten().tolist() for name in PROBE_PARAMS}
    return {"peak_bytes": peak - base, "seconds": seconds, "grads": grads}


def measure_in_subprocess(**setting: object) -> dict:
    """`measure` on CPU in a fresh interpreter (`python -m bench.memory SETTING_JSON`) with this process's thread
    count, so earlier allocations do not hide this run's peak."""
    threads = torch.get_num_threads()
    # A fixed glibc mmap threshold returns every freed large block to the system at once, so the peak resident size
    # tracks the peak of live tensors instead of the allocator's high-water mark.
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MALLOC_MMAP_THRESHOLD_": "131072"}
    cmd = [sys.executable, "-m", "bench.memory", json.dumps({**setting, "threads": threads})]
    out = subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_memory(key: str, batch: int, segment_options: list[int], device: torch.device, side: int = 32) -> list[Row]:
    """Peak memory of a training forward + backward for no checkpointing and each of `segment_options`, with the cut
    relative to none and the largest gradient gap."""
    run = functools.partial(measure, device=device) if device.type == "cuda" else measure_in_subprocess
    results = {s: run(key=key, batch=batch, segments=s, side=side) for s in [0, *(n for n in segment_options if n)]}
    plain = results[0]
    rows = []
    label = f"peak memory of a training fwd+bwd ({key}, N={batch}, {side}x{side}, 12 steps)"
    for segments, res in results.items():
        variant = f"--nca-checkpoint {segments}" if segments else "no checkpointing"
        row = Row(label, variant, f"{res['seconds']:.1f} s (one run)", memory=format_bytes(res["peak_bytes"]))
        if segments:
            gap = max(max(abs(a - b) for a, b in zip(res["grads"][k], plain["grads"][k])) for k in PROBE_PARAMS)
            cut = 1 - res["peak_bytes"] / plain["peak_bytes"]
            row.ratio = f"{cut:.0%} less memory; grad max |diff| {gap:.1e}"
            row.target = "less memory, equal gradients"
            row.met = cut > 0 and gap < 1e-5
        rows.append(row)
    return rows


if __name__ == "__main__":  # one CPU measurement for `measure_in_subprocess`, printed as one JSON line
    setting = json.loads(sys.argv[1])
    torch.set_num_threads(setting.pop("threads"))
    print(json.dumps(measure(**setting, device=torch.device("cpu"))))
