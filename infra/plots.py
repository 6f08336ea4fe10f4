"""The project's figures: panels of named (x, y) series, and titled image grids side by side; PNGs written atomically.

train.py's `loss_curve.png`, the demo report's training curves and `demo.settle`'s steps-to-settle figure all go
through `plot_panels`, so they share one look and one atomic write; the demo reports' sample figures (real |
reconstruction | each model) through `plot_image_grids`. Matplotlib's object API is used (no pyplot state), so
plotting is safe in any process and with any backend.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

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
    _save(fig, path, dpi)


def _save(fig, path: str | Path, dpi: int) -> None:
    """Lay out `fig` and write it as a PNG, atomically."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    atomic_write(Path(path), lambda f: f.write(buffer.getvalue()))


def image_grid(images: Sequence[np.ndarray], cols: int, tile: int = 64, pad: int = 2) -> np.ndarray:
    """(H, W, 3) uint8 grid of (h, w, 3) uint8 images, `cols` per row, each resized to `tile` pixels by nearest
    neighbour (small images are enlarged without smoothing), on white with `pad` pixels between them."""
    rows = math.ceil(len(images) / cols)
    grid = np.full((rows * (tile + pad) + pad, cols * (tile + pad) + pad, 3), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        y, x = pad + r * (tile + pad), pad + c * (tile + pad)
        grid[y : y + tile, x : x + tile] = np.asarray(Image.fromarray(img).resize((tile, tile), Image.NEAREST))
    return grid


def plot_image_grids(path: str | Path, grids: Sequence[tuple[str, np.ndarray]]) -> None:
    """Image grids of one size (e.g. from `image_grid`) side by side, each under its title and shown at its own pixel
    size (100 dpi), written to `path` as a PNG, atomically."""
    from matplotlib.figure import Figure

    height, width = grids[0][1].shape[:2]
    fig = Figure(figsize=(len(grids) * (width / 100 + 0.2) + 0.2, height / 100 + 0.6))
    for ax, (title, grid) in zip(fig.subplots(1, len(grids), squeeze=False)[0], grids):
        ax.imshow(grid)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    _save(fig, path, 100)
