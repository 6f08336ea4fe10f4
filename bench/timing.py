"""Timing and reporting helpers shared by the benchmarks.

The benchmark machine is shared, so single timings are unreliable. Variants are therefore run interleaved (one call
of each variant per round, the order alternating between rounds) and compared by the median over rounds of their
per-round time ratio, which cancels slow drifts of the machine's load.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from infra.markdown import markdown_table


@dataclass
class Row:
    """One line of the benchmark table.

    Attributes:
        benchmark: what is measured (the group of variants).
        variant: which implementation or setting.
        time: the measured quantity, formatted (median time, or a rate).
        ratio: the comparison this row reports, formatted; empty if none.
        target: the issue's target for that ratio, formatted; empty if none.
        met: whether the target is met; None when the row has no target.
        memory: peak memory, formatted; empty if not measured.
    """

    benchmark: str
    variant: str
    time: str = ""
    ratio: str = ""
    target: str = ""
    met: bool | None = None
    memory: str = ""


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so a timer sees the work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    variants: dict[str, Callable[[], object]], repeats: int, device: torch.device, warmup: int = 1
) -> dict[str, list[float]]:
    """Wall-clock seconds of each variant over `repeats` rounds, the variants interleaved within a round.

    Args:
        variants: name -> zero-argument callable doing one unit of work.
        repeats: number of rounds.
        device: synchronised around every call.
        warmup: untimed calls of each variant first (allocator, caches, lazy initialisation).

    Returns:
        name -> list of `repeats` durations in seconds, in round order.
    """
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            start = time.perf_counter()
            variants[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


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
    lines = [f"# {line}" for line in header]
    cols = ["benchmark", "variant", "time / rate", "ratio", "target", "met", "peak memory"]
    cells = [
        [
            r.benchmark,
            r.variant,
            r.time,
            r.ratio,
            r.target,
            "" if r.met is None else ("yes" if r.met else "NO"),
            r.memory,
        ]
        for r in rows
    ]
    return "\n".join([*lines, markdown_table(cols, cells, padded=True)])
