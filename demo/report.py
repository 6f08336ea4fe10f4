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
from downstream.report import REAL_REFERENCE
from infra.atomic_io import atomic_save_png, atomic_write, atomic_write_text
from infra.markdown import markdown_table
from infra.naming import model_tag
from infra.plots import Panel, Series, plot_panels
from infra.stages import Stage, format_seconds
from infra.templates import render_block
from training.selection import NOISE_Z

GRID_TILE = 64  # pixels per image in the report's grids (small images are enlarged without smoothing)
# The report's prose: one block per section or sentence, filled with the values computed here.
TEMPLATE = Path(__file__).with_name("templates") / "report.md"


def part(block: str, **values: object) -> str:
    """Block `block` of the report template with `values` (str() of each) filled in."""
    return render_block(TEMPLATE, block, {k: str(v) for k, v in values.items()})


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
    return part(
        "dataset",
        num_images=p.num_images,
        image_size=p.image_size,
        folds=p.folds,
        test_frac=f"{p.test_frac:.0%}",
        fold=FOLD,
        label_table=markdown_table(["split", "images", *OCT_LABELS], rows),
        tile=GRID_TILE,
    )


def vae_section(lay: Layout, p: Profile) -> str:
    path = lay.vae_run / "vae_report.json"
    if not path.is_file():
        return part("vae_missing")
    rep = json.loads(path.read_text())
    if (lay.vae_run / "reconstructions.png").is_file():
        shutil.copyfile(lay.vae_run / "reconstructions.png", lay.assets / "vae_reconstructions.png")
    return part(
        "vae",
        latent=p.image_size // 8,
        fold=FOLD,
        vae_steps=p.vae_steps,
        vae_batch=p.vae_batch,
        psnr=f"{rep['psnr_db']:.2f}",
        psnr_definition=rep["psnr_definition"],
        scaling_factor=f"{rep['scaling_factor']:.4f}",
        latent_std=f"{rep['latent_std']:.3f}",
        params=human_count(rep["params"]),
        steps=rep["steps"],
        seconds=format_seconds(rep["seconds"]),
        train_images=rep["train_images"],
        recon_label=recon_label_sentence(lay),
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
        return part("recon_label_missing")
    return part("recon_label", recon=f"{recon:.3f}", real="n/a" if real is None else f"{real:.3f}")


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
    header = [
        "Model",
        "stands in for",
        "#Params",
        "steps",
        "final train loss",
        "validation KID × 1e3 ± standard error",
        "sampled from: best_ckpt.pt (why)",
    ]
    return part(
        "training",
        epochs=p.epochs,
        baseline_epochs=p.baseline_epochs,
        batch_size=p.batch_size,
        lr=p.lr,
        ema_decay=p.ema_decay,
        validate_every=p.validate_every,
        baseline_validate_every=p.baseline_validate_every,
        val_samples=p.val_samples,
        sampling_steps=p.sampling_steps,
        cfg_scale=p.cfg_scale,
        best_rule=p.best_rule,
        best_rule_words=part("rule_within_noise" if p.best_rule == "within-noise" else "rule_lowest"),
        training_table=markdown_table(header, rows),
        curve_links=part("curve_links", links=links) if links else "",
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
    missing = []
    for v in VARIANTS:
        folder = lay.sample_folder(v, p)
        gen = [folder / "gen_samples_val" / f"{i:06d}.png" for i in range(count)]
        if all(g.is_file() for g in gen):
            grids.append((v.label, image_grid(gen, cols=4)))
        else:
            missing.append(f"- {v.label}: no samples found in {folder}")
    panels(grids, lay.assets / "samples.png")
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
    return part(
        "samples",
        count=count,
        sampling_steps=p.sampling_steps,
        sampler=SAMPLER.upper(),
        cfg_scale=p.cfg_scale,
        tile=GRID_TILE,
        missing="".join(f"{m}\n" for m in missing),
        stats_table=markdown_table(["set", "mean", "std", "saturated %", "saturated / real"], rows),
    )


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
        return part("kid_verdict_few")
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
        return part("kid_verdict_none", pairs=pairs, z=f"{z:g}")
    return part("kid_verdict_some", count=len(exceeding), pairs=pairs, z=f"{z:g}", exceeding="; ".join(exceeding))


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
        kid_note = part(
            "kid_note",
            generated=counts["generated"],
            real_val=counts.get("real_val", "n/a"),
            real_train=counts.get("real_train", "n/a"),
            recon_row=RECON_ROW,
        )
    return part(
        "quality",
        kid_note=kid_note,
        quality_table=markdown_table(["Method", "#Params", *(h for _, h in QUALITY_COLUMNS)], rows),
        kid_verdict=kid_verdict(kids),
        notes="\n".join(f"- {n}" for n in notes),
        paper_table=PAPER_TABLE_A,
    )


def classification_section(lay: Layout) -> str:
    md = lay.classify / "results.md"
    if not md.is_file():
        return part("classification_missing")
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
    return part(
        "classification",
        results="\n".join(body),
        paper_table=markdown_table(PAPER_TABLE_B_HEADER, [list(r) for r in PAPER_TABLE_B_ROWS]),
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
    return part(
        "checks",
        quick_note=part("checks_quick") if quick else "",
        checks_table=markdown_table(["check", "value", "target", "verdict"], rows),
    )


def wall_seconds(stamps: dict[str, dict]) -> float:
    """From the first stamped stage's start to the last one's end (0 without stamps)."""
    ends = [datetime.datetime.fromisoformat(s["finished"]).timestamp() for s in stamps.values()]
    starts = [end - s["seconds"] for end, s in zip(ends, stamps.values())]
    return max(ends) - min(starts) if ends else 0.0


def timing_section(stages: list[Stage], stamps: dict[str, dict], jobs: int, heading: str = "## 8. Stage times") -> str:
    rows, total = [], 0.0
    for i, stage in enumerate(stages, 1):
        stamp = stamps.get(stage.name)
        if stamp is None:
            continue
        total += stamp["seconds"]
        rows.append([str(i), f"`{stage.name}`", format_seconds(stamp["seconds"]), stamp["finished"]])
    ran = {s.name: stamps[s.name] for s in stages if s.name in stamps}
    wall = part("timing_wall", wall=format_seconds(wall_seconds(ran))) if ran else ""
    return part(
        "timing",
        heading=heading,
        table=markdown_table(["#", "stage", "time", "finished"], rows),
        total=format_seconds(total),
        jobs=jobs,
        wall=wall,
    )


def commands_section(stages: list[Stage], heading: str = "## 9. The commands of every stage") -> str:
    commands = [
        part("command", name=stage.name, description=stage.description, command=multiline_command(stage.shell()))
        for stage in stages
    ]
    return part("commands", heading=heading, commands="\n\n".join(commands))


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
    head = part(
        "head",
        profile=p.name,
        written=datetime.datetime.now().isoformat(timespec="seconds"),
        quick_flag=" QUICK=1" if p.name == "quick" else "",
        device=config["device"],
        cpu_count=config["cpu_count"],
        threads=config["threads"],
        jobs=config.get("jobs", 1),
        models=", ".join(models),
    )
    sections = [
        head,
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
