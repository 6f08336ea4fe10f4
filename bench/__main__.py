"""Print the performance table of issue 9: `python -m bench` (`make bench`).

    python -m bench                       # CPU: the configuration recorded in docs/PERFORMANCE.md (1 thread)
    python -m bench --device cuda         # GPU: larger batches, FlexAttention, training at batch 32 and 128
    OMP_WAIT_POLICY=PASSIVE python -m bench --threads 2   # CPU, both cores (see --threads)
    python -m bench --sections attention step --output table.md

Every ratio compares variants timed in the same run, interleaved, as the median of per-round ratios (see
`bench.timing`), so it is robust to other load on the machine; the load average is printed in the header.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from bench.attention import run_attention
from bench.memory import run_memory
from bench.sampling import SamplingSpec, run_sampling
from bench.step import run_step
from bench.throughput import run_training
from bench.timing import load_average, render_table
from infra.argtypes import non_negative_int, positive_int
from infra.distributed import pick_device
from infra.errors import run_main
from infra.flags import add_device_flag, add_tf32_flag
from infra.precision import set_tf32

SECTIONS = dict(attention=run_attention, step=run_step, sampling=run_sampling, memory=run_memory, training=run_training)


def plan(device: torch.device, quick: bool) -> dict[str, dict]:
    """Keyword arguments of each section's function for the device; `quick`: a seconds-long smoke run at 8x8."""
    if quick:
        return dict(
            attention=dict(batch=1, repeats=2, heads=2, head_dim=16, side=8),
            step=dict(batch=1, repeats=2, key="GeCA-T", side=8),
            sampling=dict(specs=[SamplingSpec("GeCA-T", 1, 2, side=8)]),
            memory=dict(key="GeCA-T", batch=1, segment_options=[3], side=8),
            training=dict(models=["GeCA-T", "DiT-T/2"], batches=[2], precisions=["fp32"], steps=1, side=8),
        )
    if device.type == "cuda":
        return dict(
            attention=dict(batch=32, repeats=20),
            step=dict(batch=32, repeats=20, precisions=(None, torch.bfloat16, torch.float16)),
            sampling=dict(specs=[SamplingSpec("GeCA-S", 32, 10), SamplingSpec("DiT-S/2", 32, 10)]),
            memory=dict(key="GeCA-S", batch=32, segment_options=[4, 12]),
            training=dict(
                models=["GeCA-S", "DiT-S/2"], batches=[32, 128], precisions=["fp32", "fp16", "bf16"], steps=10
            ),
        )
    return dict(
        attention=dict(batch=2, repeats=9),
        step=dict(batch=2, repeats=5),
        sampling=dict(specs=[SamplingSpec("GeCA-T", 2, 50), SamplingSpec("GeCA-S", 1, 2)]),
        memory=dict(key="GeCA-S", batch=2, segment_options=[4, 12]),
        training=dict(models=["GeCA-T", "DiT-T/2"], batches=[8], precisions=["fp32"], steps=5),
    )


def main(args: argparse.Namespace) -> str:
    """Run the chosen sections and print (and optionally write) the table; returns it."""
    torch.set_num_threads(args.threads)
    device = pick_device(device=args.device)
    set_tf32(args.tf32)  # as train.py and the sampling scripts
    sizes = plan(device, args.quick)
    sizes["training"]["nca_checkpoint"] = args.nca_checkpoint
    load_before, start = load_average(), time.time()
    rows = [row for name, run in SECTIONS.items() if name in args.sections for row in run(device=device, **sizes[name])]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    header = [
        f"GeCA benchmarks (issue 9): torch {torch.__version__}, {device.type} ({name}), "
        f"{torch.get_num_threads()} intra-op threads (OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'unset')})"
        f"{', TF32 on' if device.type == 'cuda' and args.tf32 else ''}{', quick sizes' if args.quick else ''}",
        f"load average (1/5/15 min): {load_before} at start, {load_average()} at end; {time.time() - start:.0f} s",
        "times: median over interleaved rounds (min-max); ratios: median of per-round ratios",
    ]
    table = render_table(rows, header)
    print(table)
    if args.output:
        Path(args.output).write_text(table + "\n")
    return table


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    add_device_flag(p)
    p.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="torch intra-op threads; 1 by default: on a busy machine idle OpenMP threads spin and slow every small "
        "op unless OMP_WAIT_POLICY=PASSIVE is set (see docs/PERFORMANCE.md)",
    )
    p.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS), help="what to measure")
    p.add_argument(
        "--nca-checkpoint",
        type=non_negative_int,
        default=0,
        help="training section: activation-checkpoint segments of the GeCA models (as train.py's flag)",
    )
    add_tf32_flag(p)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of every section in seconds")
    p.add_argument("--output", default=None, help="also write the table (markdown) to this file")
    return p


if __name__ == "__main__":
    run_main("python -m bench", lambda: main(build_parser().parse_args()))
