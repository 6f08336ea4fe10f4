"""One curve plotter for every figure of the project: panels of named (x, y) series, written as a PNG atomically.

train.py's `loss_curve.png`, the demo report's training curves and `demo.settle`'s steps-to-settle figure all go
through `plot_panels`, so they share one look and one atomic write. Matplotlib's object API is used (no pyplot
state), so plotting is safe in any process and with any backend.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from infra.atomic_io import atomic_write


@dataclass
class Series:
    """One curve.

    Attributes:
        points: (x, y) pairs in plotting order; an empty series draws nothing.
        label: legend entry (None: not in the legend).
        fmt: matplotlib format string, e.g. "-" (line), "o-" (line with circles), "s--" (dashed with squares).
    """

    points: Sequence[tuple[float, float]]
    label: str | None = None
    fmt: str = "-"


@dataclass
class Panel:
    """One set of axes.

    Attributes:
        title: panel title.
        xlabel: x-axis label.
        ylabel: y-axis label ("" for none).
        series: the curves, drawn in order (colours follow matplotlib's cycle).
        hlines: horizontal reference lines as (y, legend label), drawn in black after the curves.
        log_y: logarithmic y axis.
        legend: draw a legend when any curve or line is labelled.
        legend_fontsize: legend font size (None: matplotlib's default).
    """

    title: str
    xlabel: str
    ylabel: str = ""
    series: list[Series] = field(default_factory=list)
    hlines: list[tuple[float, str]] = field(default_factory=list)
    log_y: bool = False
    legend: bool = True
    legend_fontsize: float | None = None


def plot_panels(
    path: str | Path, panels: Sequence[Panel], figsize: tuple[float, float] | None = None, dpi: int = 100
) -> None:
    """Draw `panels` side by side and write them to `path` as a PNG, atomically (a reader never sees half a file).

    Args:
        path: the PNG to write; its folder must exist.
        panels: one or more panels, left to right.
        figsize: figure size in inches (default: 5 wide per panel, 3.5 high).
        dpi: resolution of the PNG.

    Raises:
        ValueError: no panel to draw.
    """
    from matplotlib.figure import Figure

    if not panels:
        raise ValueError(f"{path}: no panel to plot")
    fig = Figure(figsize=figsize or (5.0 * len(panels), 3.5))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        for series in panel.series:
            if series.points:
                xs, ys = zip(*series.points)
                ax.plot(xs, ys, series.fmt, label=series.label)
        for y, label in panel.hlines:
            ax.axhline(y, color="k", lw=1, label=label)
        if panel.log_y:
            ax.set_yscale("log")
        ax.set(xlabel=panel.xlabel, ylabel=panel.ylabel, title=panel.title)
        if panel.legend and any(not artist.get_label().startswith("_") for artist in ax.get_lines()):
            ax.legend(fontsize=panel.legend_fontsize)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    atomic_write(Path(path), lambda f: f.write(buffer.getvalue()))
