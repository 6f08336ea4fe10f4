"""The fundus phantom renderer (docs/DECISIONS.md §C5): a fundus photograph drawn for a diabetic-retinopathy grade
0-4 (optic disc, vessels, lesions growing with the grade), and the grade frequencies of RetinaMNIST.

Used by data/phantoms.py, which writes the dataset; every random draw comes from the seed sequence it is given.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from infra.rng import spawned_generators as _streams

# --------------------------------------------------------------------------------------------------------------------
# Fundus photographs: diabetic-retinopathy grades 0..4 (RetinaMNIST classes) with lesions growing with the grade.

# Grade frequencies of RetinaMNIST's training split (486, 128, 206, 194, 66 of 1080 images).
GRADE_PROBS = np.array([486, 128, 206, 194, 66]) / 1080
# Lesion counts per grade: microaneurysms, haemorrhages, hard exudates, cotton-wool spots, new-vessel tufts.
_LESIONS_PER_GRADE = np.array([[0, 0, 0, 0, 0], [4, 0, 0, 0, 0], [8, 2, 3, 0, 0], [12, 6, 8, 2, 0], [16, 9, 12, 3, 3]])


def _paint(img: np.ndarray, mask: np.ndarray, colour: tuple[float, float, float], alpha: float = 1.0) -> np.ndarray:
    """Blend `colour` into the (H, W, 3) image where the (H, W) soft `mask` (0..1) is set."""
    m = (alpha * np.clip(mask, 0.0, 1.0))[:, :, None]
    return img * (1 - m) + m * np.asarray(colour)[None, None, :]


def _discs(yy: np.ndarray, xx: np.ndarray, cy: np.ndarray, cx: np.ndarray, rad: np.ndarray) -> np.ndarray:
    """Soft (H, W) union of discs (one pixel of anti-aliasing)."""
    if len(cy) == 0:
        return np.zeros(yy.shape)
    d = np.sqrt((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2) - rad[:, None, None]
    return np.clip(0.5 - d, 0.0, 1.0).max(axis=0)


def _polyline_points(
    rng: np.random.Generator, start: np.ndarray, angle: float, length: float, bend: float, n: int
) -> np.ndarray:
    """(n, 2) points of a gently curving vessel from `start` (y, x) in direction `angle`."""
    t = np.linspace(0.0, 1.0, n)
    heading = angle + bend * t + 0.15 * np.cumsum(rng.normal(0.0, 0.1, n))
    steps = np.stack([np.sin(heading), np.cos(heading)], axis=1) * (length / n)
    return start[None, :] + np.cumsum(steps, axis=0)


def _fundus_background(
    base: np.random.Generator, yy: np.ndarray, xx: np.ndarray, r: np.ndarray, S: int
) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Orange-red fundus with vignetting, choroidal texture and a darker macula.

    Returns:
        (image (S, S, 3) float, side (+1/-1: which side the optic disc is on), disc centre (y, x), macula centre).
    """
    c = np.array([S / 2, S / 2])
    tint = np.array([0.85, 0.36, 0.14]) * base.uniform(0.85, 1.1, 3)
    texture = 1 + 0.08 * gaussian_filter(base.standard_normal((S, S)), S / 30)
    img = tint[None, None, :] * (1 - 0.45 * r[:, :, None] ** 2) * texture[:, :, None]
    side = 1.0 if base.random() < 0.5 else -1.0
    disc = c + np.array([base.uniform(-0.04, 0.04), side * base.uniform(0.22, 0.28)]) * S
    macula = c + np.array([base.uniform(-0.03, 0.03), -side * base.uniform(0.02, 0.06)]) * S
    dm = np.sqrt((yy - macula[0]) ** 2 + (xx - macula[1]) ** 2) / (0.12 * S)
    img *= (1 - 0.35 * np.exp(-(dm**2)))[:, :, None]
    return img, side, disc, macula


def _paint_vessels_and_disc(
    img: np.ndarray, base: np.random.Generator, yy: np.ndarray, xx: np.ndarray, side: float, disc: np.ndarray, S: int
) -> np.ndarray:
    """Vessel tree (four arcades leaving the optic disc around the macula, each with two branches), then the disc."""
    points, widths = [], []
    for k, angle in enumerate((-0.6, 0.6, np.pi + 0.6, np.pi - 0.6)):
        toward = angle if side < 0 else np.pi - angle
        main = _polyline_points(base, disc, toward, base.uniform(0.45, 0.6) * S, 0.9 * (1 if k % 2 else -1), 40)
        points.append(main)
        widths.append(np.linspace(0.018, 0.008, 40) * S)
        for _ in range(2):
            at = base.integers(8, 30)
            branch = _polyline_points(
                base, main[at], toward + base.uniform(-1.0, 1.0), base.uniform(0.15, 0.3) * S, 0.0, 20
            )
            points.append(branch)
            widths.append(np.linspace(0.01, 0.005, 20) * S)
    pts, wid = np.concatenate(points), np.maximum(np.concatenate(widths), 0.45)
    vessels = _discs(yy, xx, pts[:, 0], pts[:, 1], wid)
    img = _paint(img, vessels, (0.5, 0.1, 0.06), 0.85)
    dd = np.sqrt((yy - disc[0]) ** 2 + (xx - disc[1]) ** 2) / (0.075 * S)
    img = _paint(img, np.clip(1.2 - dd, 0, 1), (1.0, 0.88, 0.6))
    return _paint(img, np.clip(1.0 - 2.2 * dd, 0, 1), (1.0, 0.97, 0.85))


def _paint_lesions(
    img: np.ndarray,
    les: np.random.Generator,
    grade: int,
    yy: np.ndarray,
    xx: np.ndarray,
    disc: np.ndarray,
    macula: np.ndarray,
    S: int,
) -> np.ndarray:
    """Lesions growing with the grade, scattered over the posterior pole (neovascular tufts near the disc)."""
    micro, haem, exud, cotton, tufts = _LESIONS_PER_GRADE[grade] + les.integers(0, 2, 5) * (
        _LESIONS_PER_GRADE[grade] > 0
    )

    def spots(n: int, spread: float) -> tuple[np.ndarray, np.ndarray]:
        ang, dist = les.uniform(0, 2 * np.pi, n), np.sqrt(les.random(n)) * spread * S
        return macula[0] + dist * np.sin(ang), macula[1] + dist * np.cos(ang)

    cy, cx = spots(haem, 0.33)
    img = _paint(img, _discs(yy, xx, cy, cx, les.uniform(0.02, 0.04, haem) * S), (0.35, 0.04, 0.03), 0.9)
    cy, cx = spots(micro, 0.33)
    img = _paint(img, _discs(yy, xx, cy, cx, np.full(micro, max(0.01 * S, 0.7))), (0.4, 0.03, 0.03))
    cy, cx = spots(exud, 0.22)
    img = _paint(img, _discs(yy, xx, cy, cx, np.maximum(les.uniform(0.01, 0.018, exud) * S, 0.7)), (1.0, 0.92, 0.35))
    cy, cx = spots(cotton, 0.3)
    soft = gaussian_filter(_discs(yy, xx, cy, cx, les.uniform(0.025, 0.035, cotton) * S), max(S / 100, 0.5))
    img = _paint(img, 1.5 * soft, (0.95, 0.93, 0.85), 0.8)
    for _ in range(tufts):  # neovascularisation: tangles of thin vessels near the disc
        start = disc + les.normal(0, 0.05 * S, 2)
        tangle = np.concatenate(
            [_polyline_points(les, start, les.uniform(0, 6.3), 0.12 * S, 6.0, 25) for _ in range(3)]
        )
        img = _paint(
            img,
            _discs(yy, xx, tangle[:, 0], tangle[:, 1], np.full(len(tangle), max(0.004 * S, 0.45))),
            (0.55, 0.08, 0.08),
            0.9,
        )
    return img


def _camera(img: np.ndarray, noise: np.random.Generator, r: np.ndarray, S: int) -> np.ndarray:
    """Black outside the field of view, slight blur and noise; (S, S, 3) uint8."""
    img = img * np.clip((1 - r) * S * 0.5, 0, 1)[:, :, None]
    img = gaussian_filter(img, sigma=(max(S / 256, 0.4), max(S / 256, 0.4), 0))
    img = img + noise.normal(0.0, 0.015, img.shape)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def draw_fundus(grade: int, size: int, seed: np.random.SeedSequence) -> np.ndarray:
    """One fundus-like photograph of diabetic-retinopathy `grade` (0..4).

    Args:
        grade: RetinaMNIST class.
        size: image side S in pixels.
        seed: the image's seed sequence (anatomy and lesions use separate streams).

    Returns:
        (S, S, 3) uint8 RGB image.
    """
    base, les, noise = _streams(seed, 3)
    S = size
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float64) + 0.5
    r = np.sqrt((yy - S / 2) ** 2 + (xx - S / 2) ** 2) / (0.47 * S)
    img, side, disc, macula = _fundus_background(base, yy, xx, r, S)
    img = _paint_vessels_and_disc(img, base, yy, xx, side, disc, S)
    img = _paint_lesions(img, les, grade, yy, xx, disc, macula, S)
    return _camera(img, noise, r, S)
