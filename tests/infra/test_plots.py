"""infra.plots: panels of named series, and titled image grids, written as one PNG, atomically."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from infra.plots import Panel, Series, image_grid, plot_image_grids, plot_panels

C0 = (0x1F, 0x77, 0xB4)  # matplotlib's first cycle colour


def colour_pixels(path, rgb) -> int:
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int((np.abs(pixels - np.array(rgb)).sum(-1) <= 30).sum())


def test_panels_side_by_side_with_their_curves(tmp_path):
    loss = Panel("training loss", "optimiser step", "loss", [Series([(1, 2.0), (2, 1.0), (3, 0.5)], "GeCA")])
    one = tmp_path / "one.png"
    plot_panels(one, [loss])
    assert Image.open(one).size == (500, 350)  # 5 x 3.5 inches per panel at 100 dpi
    assert colour_pixels(one, C0) > 50  # the curve is drawn
    kid = Panel(
        "KID", "optimiser step", "KID", [Series([(1, 1e-3), (3, 1e-4)], fmt="o-")], [(5e-4, "real")], log_y=True
    )
    two = tmp_path / "two.png"
    plot_panels(two, [loss, kid], figsize=(9, 3.4), dpi=110)
    assert Image.open(two).size == (990, 374)
    assert colour_pixels(two, (0, 0, 0)) > colour_pixels(one, (0, 0, 0))  # the second panel's axes and line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.png", "two.png"]  # no temporary file left


def test_empty_series_draw_nothing_and_no_panel_is_an_error(tmp_path):
    path = tmp_path / "empty.png"
    plot_panels(path, [Panel("validation KID", "optimiser step", "KID", [Series([], "GeCA")])])
    assert colour_pixels(path, C0) == 0
    with pytest.raises(ValueError, match="no panel"):
        plot_panels(tmp_path / "none.png", [])
    assert not (tmp_path / "none.png").exists()


def test_image_grid_enlarges_without_smoothing_and_pads_white():
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    checker = np.zeros((2, 2, 3), np.uint8)
    checker[0, 0] = checker[1, 1] = 255
    grid = image_grid([red, checker, red], cols=2, tile=4, pad=1)
    assert grid.shape == (2 * 5 + 1, 2 * 5 + 1, 3) and grid.dtype == np.uint8
    assert (grid[1:5, 1:5] == [255, 0, 0]).all()  # each pixel became a 2x2 block of the same colour
    assert (grid[1:3, 6:8] == 255).all() and (grid[3:5, 6:8] == 0).all() and (grid[1:3, 8:10] == 0).all()
    assert (grid[0] == 255).all() and (grid[:, 5] == 255).all()  # white padding around and between tiles
    assert (grid[6:10, 6:10] == 255).all()  # the empty last cell stays white


def test_image_grids_side_by_side_under_their_titles(tmp_path):
    grid = np.full((100, 200, 3), (0x1F, 0x77, 0xB4), np.uint8)
    path = tmp_path / "grids.png"
    plot_image_grids(path, [("real", grid), ("model", grid)])
    # Each grid at its own pixel size (100 dpi) plus 0.2 inch around and 0.6 inch for the titles.
    assert Image.open(path).size == (2 * (200 + 20) + 20, 100 + 60)
    assert colour_pixels(path, C0) > 1.5 * 100 * 200
    assert [p.name for p in tmp_path.iterdir()] == ["grids.png"]
