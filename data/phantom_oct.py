"""The OCT phantom renderer (docs/DECISIONS.md §C5): label sampling with clinical-like prevalence and co-occurrence,
and a B-scan drawn from a label vector (layered retina, label-specific lesions, speckle).

Used by data/phantoms.py, which writes the dataset; every random draw comes from the seed sequence it is given.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from data.labels import OCT_LABELS
from infra.rng import spawned_generators as _streams

# --------------------------------------------------------------------------------------------------------------------
# OCT labels: prevalence skewed like clinical data (NOR common, CNV/RVO rare) with typical co-occurrences.

_OCT_INDEX = {name: k for k, name in enumerate(OCT_LABELS)}
P_NORMAL = 0.4
# Primary diagnosis of an abnormal scan and its probability.
_PRIMARY = {"AMD": 0.26, "DR": 0.24, "WAMD": 0.16, "MEM": 0.12, "CSC": 0.1, "RVO": 0.07, "CNV": 0.05}
# P(secondary label | primary) for the co-occurrences seen clinically.
_SECONDARY = {
    "AMD": {"PED": 0.25, "FLD": 0.1, "MEM": 0.05},
    "WAMD": {"CNV": 0.35, "FLD": 0.55, "PED": 0.35, "EXU": 0.15},
    "DR": {"FLD": 0.45, "EXU": 0.4, "MEM": 0.1},
    "CSC": {"FLD": 0.3, "PED": 0.3},
    "RVO": {"FLD": 0.6, "EXU": 0.2},
    "MEM": {"FLD": 0.15},
    "CNV": {"FLD": 0.4, "EXU": 0.2},
}


def sample_oct_labels(rng: np.random.Generator) -> np.ndarray:
    """One multi-hot OCT label vector: NOR alone with probability P_NORMAL, else a primary disease plus co-occurring
    findings.

    Returns:
        (11,) int64 in OCT_LABELS order; never all zero, NOR never with another label.
    """
    labels = np.zeros(len(OCT_LABELS), dtype=np.int64)
    if rng.random() < P_NORMAL:
        labels[_OCT_INDEX["NOR"]] = 1
        return labels
    names, probs = list(_PRIMARY), np.array(list(_PRIMARY.values()))
    primary = names[rng.choice(len(names), p=probs / probs.sum())]
    labels[_OCT_INDEX[primary]] = 1
    for name, p in _SECONDARY[primary].items():
        if rng.random() < p:
            labels[_OCT_INDEX[name]] = 1
    return labels


# --------------------------------------------------------------------------------------------------------------------
# OCT drawing. Depth runs down the rows (y), the B-scan across the columns (x). Retinal layers are bands between
# boundary curves; lesions move boundaries (thickening, elevations) or paint shapes on top, then speckle is applied.

# Layers from the vitreous side: name, thickness (fraction of the image height), reflectivity in [0, 1].
_LAYERS = (
    ("RNFL", 0.035, 0.78),
    ("GCL", 0.05, 0.5),
    ("INL", 0.03, 0.24),
    ("OPL", 0.025, 0.52),
    ("ONL", 0.05, 0.17),
    ("ELM", 0.012, 0.32),
    ("ISOS", 0.015, 0.85),
    ("OS", 0.015, 0.3),
    ("RPE", 0.022, 0.96),
    ("CHO", 0.12, 0.55),
)
_L = {name: k for k, (name, _, _) in enumerate(_LAYERS)}
_VITREOUS, _SCLERA = 0.03, 0.14


def _bump(x: np.ndarray, center: float, width: float, power: float = 1.0) -> np.ndarray:
    """A smooth dome of height 1 at `center`, zero beyond +-width: (1 - d^2)^power."""
    d = (x - center) / width
    return np.clip(1.0 - d * d, 0.0, None) ** power


def _ellipses(
    yy: np.ndarray, xx: np.ndarray, cy: np.ndarray, cx: np.ndarray, ry: np.ndarray, rx: np.ndarray
) -> np.ndarray:
    """(H, W) boolean union of axis-aligned ellipses (all arguments of the centres/radii are (n,))."""
    if len(cy) == 0:
        return np.zeros(yy.shape, dtype=bool)
    d = ((yy[None] - cy[:, None, None]) / ry[:, None, None]) ** 2 + (
        (xx[None] - cx[:, None, None]) / rx[:, None, None]
    ) ** 2
    return (d <= 1.0).any(axis=0)


def _oct_anatomy(base: np.random.Generator, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A healthy retina: per-column layer thicknesses and reflectivities, curved and tilted, with a foveal pit.

    Args:
        base: the anatomy stream (also drawn from later for the choroid texture).
        u: (W,) column positions in [0, 1].

    Returns:
        thick (L, W) layer thicknesses in pixels, refl (L, W) reflectivities, anchor (W,) row of ELM's top.
    """
    S = len(u)
    thick = np.array([t for _, t, _ in _LAYERS])[:, None] * S * np.ones((1, S))  # (L, W) pixels
    thick *= base.uniform(0.9, 1.1, size=(len(_LAYERS), 1))
    x0, fovea = base.uniform(0.4, 0.6), base.uniform(0.42, 0.58)
    anchor = S * (
        base.uniform(0.56, 0.62) - base.uniform(0.15, 0.35) * (u - x0) ** 2 + base.uniform(-0.06, 0.06) * (u - 0.5)
    )
    anchor += S * 0.006 * np.sin(2 * np.pi * (base.uniform(0.5, 1.5) * u + base.uniform(0, 1)))
    pit = np.exp(-(((u - fovea) / base.uniform(0.1, 0.14)) ** 2))
    for name in ("RNFL", "GCL", "INL", "OPL"):
        thick[_L[name]] *= 1.0 - 0.8 * pit
    thick[_L["RNFL"]] *= 1.0 + 0.5 * np.clip(u - fovea, 0, None)  # thicker towards the optic nerve side
    thick[_L["ONL"]] *= 1.0 + 0.35 * pit
    refl = np.array([r for _, _, r in _LAYERS])[:, None] * np.ones((1, S))  # (L, W)
    return thick, refl, anchor


def _oct_layer_lesions(
    thick: np.ndarray, refl: np.ndarray, on: dict[str, bool], lesion: dict[str, np.random.Generator], u: np.ndarray
) -> None:
    """Lesions that change the thickness or reflectivity of whole layers (DR, RVO, wet AMD, CNV), in place.

    Args:
        thick: (L, W) layer thicknesses in pixels, modified.
        refl: (L, W) layer reflectivities, modified.
        on: which labels are present.
        lesion: each label's stream.
        u: (W,) column positions in [0, 1].
    """
    S = len(u)
    if on["DR"]:  # diabetic retinopathy: slightly thickened inner retina
        thick[_L["GCL"] : _L["OPL"] + 1] *= lesion["DR"].uniform(1.2, 1.35)
    if on["RVO"]:  # vein occlusion: diffuse, sectoral oedema (thick, hyporeflective inner retina)
        r = lesion["RVO"]
        side = 1 / (1 + np.exp(-(u - r.uniform(0.3, 0.7)) / 0.04))
        sector = side if r.random() < 0.5 else 1 - side
        for name in ("GCL", "INL", "OPL", "ONL"):
            thick[_L[name]] *= 1 + r.uniform(0.7, 1.0) * sector
            refl[_L[name]] *= 1 - 0.45 * sector
    if on["WAMD"]:  # wet AMD: thick, fragmented RPE and disrupted outer retina
        r = lesion["WAMD"]
        c, w = r.uniform(0.35, 0.65), r.uniform(0.15, 0.25)
        region = _bump(u, c, w, 0.5)
        thick[_L["RPE"]] *= 1 + 1.6 * region
        thick[_L["OS"] : _L["RPE"]] *= 1 + 0.8 * region
        gaps = np.repeat(r.random(-(-S // 4)) < 0.45, 4)[:S]  # ceil: any size, multiples of 4 unchanged
        refl[_L["RPE"]] = np.where(gaps & (region > 0.2), 0.35, refl[_L["RPE"]])
        refl[_L["ISOS"]] *= 1 - 0.7 * region
    if on["CNV"]:  # choroidal neovascularisation thickens the outer retina around the lesion
        thick[_L["OS"]] *= 1 + 0.8 * _bump(u, 0.5, 0.25)


def _oct_boundaries(
    thick: np.ndarray,
    anchor: np.ndarray,
    on: dict[str, bool],
    lesion: dict[str, np.random.Generator],
    u: np.ndarray,
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray, float]]]:
    """Layer boundary curves, raised over the sub-retinal lesions (drusen, PED, CSC) that lift them.

    Args:
        thick: (L, W) layer thicknesses in pixels.
        anchor: (W,) row of ELM's top.
        on: which labels are present.
        lesion: each label's stream.
        u: (W,) column positions in [0, 1].

    Returns:
        bounds (L+1, W): B[j] is the top of layer j, B[L] the bottom of the choroid; and the bands painted over the
        layers where a lift left a gap, as (top (W,), bottom (W,), value).
    """
    S = len(u)
    # ELM's top follows the anchor.
    bounds = np.concatenate([np.zeros((1, S)), np.cumsum(thick, axis=0)])
    bounds += anchor - bounds[_L["ELM"]]
    fills: list[tuple[np.ndarray, np.ndarray, float]] = []

    def lift(boundary: int, height: np.ndarray, value: float) -> None:
        """Raise everything above `boundary` by `height` (pixels, (W,)) and fill the gap left below it."""
        fills.append((bounds[boundary] - height, bounds[boundary].copy(), value))
        bounds[: boundary + 1] -= height

    bruch = _L["RPE"] + 1
    if on["AMD"]:  # drusen: small mounds under the RPE filled with medium-bright material
        r = lesion["AMD"]
        n = r.integers(3, 7)
        mounds = sum(
            r.uniform(0.02, 0.04) * S * _bump(u, r.uniform(0.2, 0.8), r.uniform(0.03, 0.05), 0.7) for _ in range(n)
        )
        lift(bruch, mounds, 0.45)
    if on["PED"]:  # pigment-epithelium detachment: one dome raising the RPE over a dark space
        r = lesion["PED"]
        lift(bruch, r.uniform(0.06, 0.1) * S * _bump(u, r.uniform(0.35, 0.65), r.uniform(0.07, 0.11), 0.6), 0.08)
    if on["CSC"]:  # central serous chorioretinopathy: neurosensory retina lifted off the RPE by dark fluid
        r = lesion["CSC"]
        lift(_L["RPE"], r.uniform(0.05, 0.08) * S * _bump(u, r.uniform(0.4, 0.6), r.uniform(0.12, 0.18), 0.5), 0.03)
    return bounds, fills


def _oct_render_layers(
    bounds: np.ndarray,
    refl: np.ndarray,
    fills: list[tuple[np.ndarray, np.ndarray, float]],
    base: np.random.Generator,
    yy: np.ndarray,
) -> np.ndarray:
    """Paint the layers (index 0 the vitreous, 1..L the layers, L+1 the sclera), the choroid texture and the fills.

    Args:
        bounds: (L+1, W) layer boundaries.
        refl: (L, W) layer reflectivities.
        fills: bands painted over the layers, as returned by `_oct_boundaries`.
        base: the anatomy stream (its draws continue those of `_oct_anatomy`).
        yy: (H, W) row of each pixel centre.

    Returns:
        (H, W) float image.
    """
    S = yy.shape[1]
    layer_index = (yy[None] >= bounds[:, None, :]).sum(axis=0)  # (H, W) in 0..L+1
    values = np.concatenate([np.full((1, S), _VITREOUS), refl, np.full((1, S), _SCLERA)])  # (L+2, W)
    img = np.take_along_axis(values, layer_index, axis=0)
    choroid = layer_index == _L["CHO"] + 1
    texture = gaussian_filter(base.standard_normal((S, S)), sigma=max(S / 40, 0.6))
    img = np.where(choroid, img * (1 + 1.2 * texture), img)
    for top, bottom, value in fills:
        img = np.where((yy >= top[None]) & (yy < bottom[None]), value, img)
    return img


def _oct_paint_lesions(
    img: np.ndarray,
    bounds: np.ndarray,
    on: dict[str, bool],
    lesion: dict[str, np.random.Generator],
    u: np.ndarray,
    yy: np.ndarray,
    xx: np.ndarray,
) -> np.ndarray:
    """Lesions painted on top of the rendered layers (fluid, foci, exudates, CNV, subretinal material, membrane).

    Args:
        img: (H, W) rendered layers.
        bounds: (L+1, W) layer boundaries.
        on: which labels are present.
        lesion: each label's stream (DR and wet AMD continue the draws of `_oct_layer_lesions`).
        u: (W,) column positions in [0, 1].
        yy: (H, W) row of each pixel centre.
        xx: (H, W) column of each pixel centre.

    Returns:
        (H, W) float image.
    """
    S = len(u)
    inner_mid = 0.5 * (bounds[_L["INL"]] + bounds[_L["OPL"] + 1])  # (W,) middle of INL..OPL
    if on["FLD"]:  # intraretinal fluid: dark cystoid pockets in the inner/outer nuclear layers
        r = lesion["FLD"]
        n = r.integers(2, 5)
        cx = r.uniform(0.3, 0.7, n) * S
        col = np.clip(cx.astype(int), 0, S - 1)
        cy = 0.5 * (bounds[_L["INL"], col] + bounds[_L["ELM"], col])
        ry, rx = r.uniform(0.025, 0.045, n) * S, r.uniform(0.04, 0.08, n) * S
        img = np.where(_ellipses(yy, xx, cy, cx, np.maximum(ry, 0.8), np.maximum(rx, 1.0)), 0.02, img)
    if on["DR"]:  # small hyperreflective foci in the inner retina
        r = lesion["DR"]
        n = r.integers(4, 8)
        cx = r.uniform(0.15, 0.85, n) * S
        cy = inner_mid[np.clip(cx.astype(int), 0, S - 1)] + r.uniform(-0.01, 0.01, n) * S
        rad = np.full(n, max(0.012 * S, 0.7))
        img = np.where(_ellipses(yy, xx, cy, cx, rad, rad), 0.97, img)
    if on["EXU"]:  # hard exudates: larger bright deposits in the outer plexiform layer, shadowing below
        r = lesion["EXU"]
        n = r.integers(3, 7)
        cx = r.uniform(0.25, 0.75, n) * S
        col = np.clip(cx.astype(int), 0, S - 1)
        cy = bounds[_L["OPL"] + 1, col]
        rad = np.maximum(r.uniform(0.02, 0.03, n) * S, 1.0)
        dots = _ellipses(yy, xx, cy, cx, rad, rad)
        shadow = (np.abs(xx[None] - cx[:, None, None]) < rad[:, None, None]) & (yy[None] > cy[:, None, None])
        img = np.where(shadow.any(axis=0), img * 0.55, img)
        img = np.where(dots, 1.0, img)
    if on["CNV"]:  # fibrovascular lesion: irregular bright mass above the RPE casting a shadow
        r = lesion["CNV"]
        cx, w = r.uniform(0.4, 0.6) * S, r.uniform(0.06, 0.1) * S
        rpe_top = bounds[_L["RPE"]][None, :]
        h = r.uniform(0.04, 0.07) * S * (1 + 0.3 * gaussian_filter(r.standard_normal(S), 1.5))[None, :]
        mass = (
            (np.abs(xx - cx) < w)
            & (yy < rpe_top + 0.02 * S)
            & (yy > rpe_top - h * np.sqrt(np.clip(1 - ((xx - cx) / w) ** 2, 0, None)))
        )
        below = (np.abs(xx - cx) < w) & (yy > rpe_top + 0.02 * S)
        img = np.where(below, img * 0.45, img)
        img = np.where(mass, 0.82, img)
    if on["WAMD"]:  # subretinal hyperreflective material over the damaged RPE
        r = lesion["WAMD"]
        cx = r.uniform(0.4, 0.6, 2) * S
        col = np.clip(cx.astype(int), 0, S - 1)
        cy = bounds[_L["OS"], col]
        img = np.where(_ellipses(yy, xx, cy, cx, np.full(2, 0.025 * S), r.uniform(0.05, 0.09, 2) * S), 0.7, img)
    if on["MEM"]:  # epiretinal membrane: bright wrinkled line just above the retinal surface
        r = lesion["MEM"]
        start, stop = sorted(r.uniform(0.05, 0.95, 2))
        stop = max(stop, start + 0.45)
        gap = S * (r.uniform(0.012, 0.02) + 0.005 * np.sin(2 * np.pi * r.uniform(3, 6) * u + r.uniform(0, 6.3)))
        line = bounds[0] - gap
        inside = (u >= start) & (u <= stop)
        band = (yy >= line[None] - max(0.012 * S, 0.6)) & (yy < line[None] + max(0.012 * S, 0.6)) & inside[None]
        img = np.where(band, 0.98, img)
    return img


def _oct_acquire(img: np.ndarray, surface: np.ndarray, speckle: np.random.Generator, yy: np.ndarray) -> np.ndarray:
    """The scanner: slight blur, depth attenuation, multiplicative speckle, additive noise, log-like compression.

    Args:
        img: (H, W) float image of the scene.
        surface: (W,) row of the retinal surface; the signal attenuates with depth below it.
        speckle: the speckle stream.
        yy: (H, W) row of each pixel centre.

    Returns:
        (H, W) uint8 image.
    """
    S = img.shape[0]
    img = gaussian_filter(img, sigma=max(S / 200, 0.4))
    img *= np.exp(-0.6 * np.clip(yy - surface[None], 0, None) / S)
    grain = gaussian_filter(speckle.gamma(5.0, 1 / 5.0, size=(S, S)), sigma=max(S / 200, 0.45))
    img = img * grain / grain.mean() + speckle.normal(0.0, 0.012, size=(S, S))
    img = np.clip(img, 0.0, 1.0) ** 0.8
    return (img * 255.0 + 0.5).astype(np.uint8)


def draw_oct(labels: np.ndarray, size: int, seed: np.random.SeedSequence) -> np.ndarray:
    """One OCT-like B-scan.

    The seed is split into independent streams for the anatomy, the speckle and each label, so switching one label
    on changes only that label's structure. The steps draw from the anatomy stream in a fixed order (anatomy, then
    the choroid texture of the rendering), so their order is part of the image.

    Args:
        labels: (11,) 0/1 in OCT_LABELS order.
        size: image side S in pixels.
        seed: the image's seed sequence.

    Returns:
        (S, S, 3) uint8 grey image.
    """
    base, speckle, *per_label = _streams(seed, 2 + len(OCT_LABELS))
    lesion = dict(zip(OCT_LABELS, per_label))
    on = {name: bool(labels[k]) for k, name in enumerate(OCT_LABELS)}
    u = (np.arange(size) + 0.5) / size  # (W,) column position in [0, 1]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5  # (H, W) pixel centres

    thick, refl, anchor = _oct_anatomy(base, u)
    _oct_layer_lesions(thick, refl, on, lesion, u)
    bounds, fills = _oct_boundaries(thick, anchor, on, lesion, u)
    img = _oct_render_layers(bounds, refl, fills, base, yy)
    img = _oct_paint_lesions(img, bounds, on, lesion, u, yy, xx)
    grey = _oct_acquire(img, bounds[0], speckle, yy)
    return np.repeat(grey[:, :, None], 3, axis=2)
