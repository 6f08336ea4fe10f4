"""Timing, measuring and reporting helpers shared by the benchmarks.

The benchmark machine is shared, so single timings are unreliable. Variants are therefore run interleaved (one call
of each variant per round, the order alternating between rounds) and compared by the median over rounds of their
per-round time ratio, which cancels slow drifts of the machine's load.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bench import NUM_CLASSES
from infra.markdown import markdown_table
from models import DiT_models


@dataclass
class Row:
    """One line of the benchmark table: what is measured (`benchmark`, the group of variants), which implementation or
    setting (`variant`), then formatted cells; `met` is None when the row has no target."""

    benchmark: str
    variant: str
    time: str = ""  # median time, or a rate
    ratio: str = ""
    target: str = ""
    met: bool | None = None
    memory: str = ""  # peak memory


def make_model(key: str, side: int, **kwargs: object) -> torch.nn.Module:
    """A registry model for `side` x `side` x 4 latents and the benchmarks' label count, on the CPU."""
    return DiT_models[key](input_size=side, num_classes=NUM_CLASSES, in_channels=4, **kwargs)


def random_labels(batch: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, NUM_CLASSES) float multi-hot labels, each set with probability 0.3, on the generator's device."""
    return (torch.rand(batch, NUM_CLASSES, generator=generator, device=generator.device) < 0.3).float()


def random_inputs(batch: int, side: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded latents x (batch, 4, side, side), timesteps t and labels y of one training batch."""
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, 4, side, side, generator=g, device=device)
    t = torch.randint(0, 1000, (batch,), generator=g, device=device)
    return x, t, random_labels(batch, g)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on the device's type; None: none (float32)."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def training_step(model, diffusion, opt, scaler, x, t, y, dtype: torch.dtype | None = None, update: bool = True):
    """One step of train.py's loop, returning the loss: the diffusion loss under autocast to `dtype`, backward through
    the gradient scaler, then (unless `update` is False) the optimiser step and the scaler's update."""
    with autocast(x.device, dtype):
        loss = diffusion.training_losses(model, x, t, {"y": y})["loss"].mean()
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if update:
        scaler.step(opt)
        scaler.update()
    return loss


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, int | None]:
    """Seconds of one call of `fn` (the device synchronised around it) and its peak CUDA allocation (None on CPU)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return seconds, int(torch.cuda.max_memory_allocated(device)) if cuda else None


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA out-of-memory, whether raised as such or wrapped by a library (cuBLAS/cuDNN allocation failures)."""
    text = str(err).lower()
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in text or "alloc_failed" in text


def resident_bytes(field: str = "VmRSS") -> int:
    """A memory field of /proc/self/status in bytes (VmRSS: resident now, VmHWM: peak), or 0 where unavailable."""
    try:
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":")), 0)  # in kB
    except OSError:
        return 0


def reset_peak_resident() -> None:
    """Restart the peak-RSS mark (VmHWM) of this process from its current size (Linux, /proc/self/clear_refs)."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def time_interleaved(
    benchmark: str, variants: dict[str, Callable[[], object]], repeats: int, device: torch.device
) -> tuple[list[Row], dict[str, list[float]]]:
    """Seconds of each zero-argument variant over `repeats` rounds (name -> durations in round order), the variants
    interleaved within a round, after an untimed call of each (allocator, caches, lazy initialisation); and one row
    per variant with its median time (the ratios are the caller's)."""
    for fn in variants.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            times[name].append(timed(variants[name], device)[0])
    return [Row(benchmark, name, format_time(times[name])) for name in variants], times


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of numerator[i] / denominator[i] (times measured in the same round)."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def format_time(seconds: list[float]) -> str:
    """'median ms (min-max)' of a list of durations."""
    return f"{statistics.median(seconds) * 1e3:.1f} ms ({min(seconds) * 1e3:.0f}-{max(seconds) * 1e3:.0f})"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages of the machine, or 'n/a'."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def render_table(rows: list[Row], header: list[str]) -> str:
    """A markdown table of the rows, preceded by `header` lines (each prefixed with '# ')."""
    cols = ["benchmark", "variant", "time / rate", "ratio", "target", "met", "peak memory"]
    met = {None: "", True: "yes", False: "NO"}
    cells = [[r.benchmark, r.variant, r.time, r.ratio, r.target, met[r.met], r.memory] for r in rows]
    return "\n".join([*(f"# {line}" for line in header), markdown_table(cols, cells, padded=True)])
