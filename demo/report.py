"""Write `{out}/REPORT.md` from what the demo's stages left in `{out}` (the last stage of `python -m demo`).

    python -m demo.report --out demo_out

The prose, section by section, is the block template `demo/templates/report.md`; this module computes the values
(tables, figures in `{out}/report_assets/`, the acceptance checks) and holds what demo/study_report.py shares.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import shlex
import shutil
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path

import numpy as np

from data.labels import OCT_LABELS
from data.validate import read_fold_csv
from demo.pixels import load_images, pixel_stats
from demo.plan import RECON_SET, SAMPLER, STUDIED, VARIANTS, Layout, Variant, build_stages
from demo.profiles import FOLD, NUM_CLASSES, PAPER_MODELS, Profile
from downstream.report import REAL_REFERENCE
from infra.atomic_io import atomic_save_png, atomic_write_text
from infra.errors import run_main
from infra.markdown import markdown_table
from infra.naming import model_tag
from infra.plots import Panel, Series, image_grid, plot_image_grids, plot_panels
from infra.stages import Runner, Stage, format_seconds, read_json
from infra.templates import fill_block
from metrics.kid import kid_difference
from training.selection import NOISE_Z

GRID_TILE = 64  # pixels per image in the report's grids (small images are enlarged without smoothing)
# The report's prose: one block per section or sentence, filled with the values computed here.
TEMPLATE = Path(__file__).with_name("templates") / "report.md"

# Acceptance thresholds of the demo (what "the method works at demo size" means, checked in the report).
MIN_BASELINE_AUC = 0.85
MIN_GAN_TEST_AUC = 0.75
MAX_SATURATION_RATIO = 2.0
# The image-quality row of the domain VAE's reconstructions of the real validation images.
RECON_ROW = "VAE reconstruction (floor)"
# Columns of the image-quality table after Method and #Params: (metrics JSON key, header).
QUALITY_COLUMNS = (
    ("KID", "OCT KID↓ (×1e3) vs real"),
    ("KID_recon", "KID↓ (×1e3) vs VAE recon"),
    ("LPIPS", "OCT LPIPS↑"),
    ("GG", "OCT GG (>0)"),
    ("GG_recon", "GG vs VAE recon"),
)
# The reconstruction row's metrics, in the same columns (against the real images; nothing vs itself).
FLOOR_KEYS = {"KID": "KID_floor", "GG": "GG_floor"}
# The report's fixed values: any block may name them without being given them.
FIXED = {"fold": FOLD, "tile": GRID_TILE, "sampler": SAMPLER.upper(), "recon_row": RECON_ROW}


def part(block: str, /, *sources: dict, **values: object) -> str:
    """Block `block` of the report template with `values` filled in, and what else it names from FIXED and
    `sources`."""
    return fill_block(TEMPLATE, block, FIXED, *sources, **values)


# ----------------------------------------------------------------------------------------------------------------
# Shared with the study's report


def human_count(n: int) -> str:
    """Parameter count as the paper writes it: 13.3M, 95.2K."""
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def multiline_command(command: str, width: int = 100) -> str:
    """One flag (with its values) per line, joined by shell continuations; long value lists one value per line."""
    groups: list[list[str]] = []
    for word in shlex.split(command):
        if word.startswith("--") or not groups:
            groups.append([])
        groups[-1].append(shlex.quote(word))
    lines = [" ".join(g) if len(" ".join(g)) <= width else " \\\n        ".join(g) for g in groups]
    return " \\\n    ".join(lines)


def read_metrics(lay: Layout, p: Profile, v: Variant) -> dict | None:
    """evaluate.py's metrics JSON of one synthetic set (None before its evaluate stage has written it)."""
    return read_json(lay.sample_folder(v, p) / f"metrics_{lay.fold}.json") or None


def metric_cell(entries: Sequence[dict | None], key: str) -> str:
    """One image-quality cell from evaluate.py's metrics of one or more folds: over several folds the mean ± sample
    std of the per-fold values; over one the value (KID: ± its standard error; LPIPS: ± its std over image pairs).
    "–" where a fold lacks the metric, "n/a" where it was unavailable, "n/a (NaN)" where a value is NaN."""
    found = [e.get(key) if e else None for e in entries]
    if any(f is None for f in found):
        return "–"
    if not all(f["available"] for f in found):
        return "n/a"
    kid = key.startswith("KID")
    mean, spread = ("mean_x1e3", "se_x1e3") if kid else {"LPIPS": ("mean", "std")}.get(key, ("value", None))
    values, digits = [f[mean] for f in found], 1 if kid else 2
    if not all(math.isfinite(x) for x in values):
        return "n/a (NaN)"
    if len(values) > 1:
        return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"
    return f"{values[0]:.{digits}f}" + (f" ± {found[0][spread]:.{digits}f}" if spread else "")


def quality_table(headers: Sequence[str], metrics: Sequence[dict], keys: Sequence[str], params: dict) -> str:
    """The image-quality table: per variant its #Params and the metric_cell of each key in each of `metrics` (one
    {variant label: per-fold metrics} per dataset), then the reconstruction row from the first variant with every
    fold's metrics and their floor (each variant's file carries the same floor)."""
    rows = [
        [v.label, human_count(params[v.model]), *(metric_cell(m[v.label], k) for m in metrics for k in keys)]
        for v in VARIANTS
    ]
    floors = [
        next((m[v.label] for v in VARIANTS if all(e and "KID_floor" in e for e in m[v.label])), None) for m in metrics
    ]
    if any(floors):
        cells = [metric_cell(f, FLOOR_KEYS[k]) if f and k in FLOOR_KEYS else "–" for f in floors for k in keys]
        rows.append([RECON_ROW, "–", *cells])
    return markdown_table(["Method", "#Params", *headers], rows)


def demoted(markdown: str) -> str:
    """classify.py's results.md without its title, its sections one level down."""
    return "\n".join(
        "#" + line if line.startswith("## ") else line for line in markdown.splitlines() if not line.startswith("# ")
    )


def sample_figure(lay: Layout, p: Profile, path: Path, real_title: str | None = None, count: int = 16) -> list[str]:
    """Real (titled "real (SPLIT)" by default) | VAE reconstruction | each variant's validation copy, the first
    `count` images of each as titled grids side by side in `path`; returns a line for each variant without them."""
    split = "test" if lay.dataset == "retinamnist" else "val"  # the split evaluate.py and the copies use
    real = read_fold_csv(lay.data / f"{split}_{lay.fold}.csv")
    count = min(count, len(real))
    grids = [(real_title or f"real ({split})", [lay.data / name for name in real["filename"].iloc[:count]])]
    if recon := recon_files(lay)[:count]:
        grids.append(("VAE reconstruction", recon))
    missing = []
    for v in VARIANTS:
        folder = lay.sample_folder(v, p)
        files = [folder / "gen_samples_val" / f"{i:06d}.png" for i in range(count)]
        if all(f.is_file() for f in files):
            grids.append((v.label, files))
        else:
            missing.append(part("no_samples", label=v.label, folder=folder))
    plot_image_grids(path, [(title, image_grid(load_images(files), cols=4, tile=GRID_TILE)) for title, files in grids])
    return missing


def recon_files(lay: Layout) -> list[Path]:
    """The domain VAE's reconstructions of the real images the validation copies copy, in their order."""
    labels = lay.recon_val / f"val_syn_{lay.fold}.csv"
    if labels.is_file():
        return [lay.recon_val / name for name in read_fold_csv(labels)["filename"]]
    return sorted(lay.recon_val.glob("*.png"))  # RetinaMNIST: no labels CSV, files named by their index in the split


def read_stamps(out: Path, stages: list[Stage]) -> dict[str, dict]:
    """{stage name: its stamp} of the finished stages."""
    runner = Runner(out)
    return {s.name: stamp for s in stages if (stamp := runner.read_stamp(s.name)) is not None}


def wall_seconds(stamps: dict[str, dict]) -> float:
    """From the first stamped stage's start to the last one's end (0 without stamps)."""
    ends = [datetime.datetime.fromisoformat(s["finished"]).timestamp() for s in stamps.values()]
    starts = [end - s["seconds"] for end, s in zip(ends, stamps.values())]
    return max(ends) - min(starts) if ends else 0.0


def timing_section(stages: list[Stage], stamps: dict[str, dict], jobs: int, heading: str = "## 8. Stage times") -> str:
    """The time of each stamped stage of `stages` (`stamps`: read_stamps of them), their sum and the wall time."""
    rows = [
        [str(i), f"`{s.name}`", format_seconds(stamps[s.name]["seconds"]), stamps[s.name]["finished"]]
        for i, s in enumerate(stages, 1)
        if s.name in stamps
    ]
    return part(
        "timing",
        heading=heading,
        table=markdown_table(["#", "stage", "time", "finished"], rows),
        total=format_seconds(sum(s["seconds"] for s in stamps.values())),
        jobs=jobs,
        wall=part("timing_wall", wall=format_seconds(wall_seconds(stamps))) if stamps else "",
    )


def commands_section(stages: list[Stage], heading: str = "## 9. The commands of every stage") -> str:
    commands = [
        part("command", name=stage.name, description=stage.description, command=multiline_command(stage.shell()))
        for stage in stages
    ]
    return part("commands", heading=heading, commands="\n\n".join(commands))


def parameter_counts(models: Sequence[str], image_size: int) -> dict[str, int]:
    """Parameters of each model as the demo builds it (4-channel latents of side image_size / 8, 11 labels)."""
    from models import DiT_models

    nets = {m: DiT_models[m](input_size=image_size // 8, num_classes=NUM_CLASSES, in_channels=4) for m in models}
    return {m: sum(t.numel() for t in net.parameters()) for m, net in nets.items()}


# ----------------------------------------------------------------------------------------------------------------
# The demo's sections


def dataset_section(lay: Layout, p: Profile) -> str:
    splits = [s for s in ("train", "val", "test") if (lay.data / f"{s}_{FOLD}.csv").is_file()]
    frames = {s: read_fold_csv(lay.data / f"{s}_{FOLD}.csv") for s in splits}
    rows = [[s, str(len(f)), *(str(int(f[name].sum())) for name in OCT_LABELS)] for s, f in frames.items()]
    real = [lay.data / name for name in frames["train"]["filename"].iloc[:32]]
    atomic_save_png(lay.assets / "real_train.png", image_grid(load_images(real), cols=8, tile=GRID_TILE))
    return part(
        "dataset",
        p.as_dict(),
        test_frac=f"{p.test_frac:.0%}",
        label_table=markdown_table(["split", "images", *OCT_LABELS], rows),
    )


def vae_section(lay: Layout, p: Profile, results: dict) -> str:
    rep = read_json(lay.vae_run / "vae_report.json")
    if not rep:
        return part("vae_missing")
    if (lay.vae_run / "reconstructions.png").is_file():
        shutil.copyfile(lay.vae_run / "reconstructions.png", lay.assets / "vae_reconstructions.png")
    recon, real = (gan_test_auc(results, name) for name in (RECON_SET, REAL_REFERENCE))
    recon_label = part("recon_label_missing")
    if recon is not None:
        recon_label = part("recon_label", recon=f"{recon:.3f}", real="n/a" if real is None else f"{real:.3f}")
    return part(
        "vae",
        p.as_dict(),
        rep,  # psnr_definition, steps, train_images as train_vae.py wrote them
        latent=p.image_size // 8,
        psnr=f"{rep['psnr_db']:.2f}",
        scaling_factor=f"{rep['scaling_factor']:.4f}",
        latent_std=f"{rep['latent_std']:.3f}",
        params=human_count(rep["params"]),
        seconds=format_seconds(rep["seconds"]),
        recon_label=recon_label,
    )


def training_section(lay: Layout, p: Profile, models: list[str], params: dict[str, int]) -> str:
    """The training table and curves of `models` from train.py's metrics.csv, loss_curve.png and best_ckpt.json."""
    rows, loss, kid = [], [], []
    for model in models:
        exp, csv_path = lay.experiment(model), lay.experiment(model) / "metrics.csv"
        metrics = list(csv.DictReader(csv_path.read_text().splitlines())) if csv_path.is_file() else []
        if (exp / "loss_curve.png").is_file():
            shutil.copyfile(exp / "loss_curve.png", lay.assets / f"loss_{model_tag(model)}.png")
        losses = [(int(r["step"]), float(r["loss"])) for r in metrics if r.get("loss")]
        kids = [
            (int(r["step"]), 1e3 * float(r["kid_mean"]), 1e3 * float(r.get("kid_se") or "nan"))
            for r in metrics
            if r.get("kid_mean")
        ]
        loss.append(Series(losses, model))
        kid.append(Series([(s, k) for s, k, _ in kids], model, "o-"))
        # Which validation's weights best_ckpt.pt holds, and why.
        record = read_json(exp / "checkpoints" / "best_ckpt.json")
        steps = str(max((int(r["step"]) for r in metrics), default=0))
        last = f"{losses[-1][1]:.4f} (step {losses[-1][0]})" if losses else "n/a"
        kid_cells = ", ".join(f"{k:.1f} ± {e:.1f} (step {s})" for s, k, e in kids) or "n/a"
        why = f"step {record['step']}: {record['reason']}" if record else "n/a"
        rows.append([model, PAPER_MODELS[model], human_count(params[model]), steps, last, kid_cells, why])
    plot_panels(
        lay.assets / "training_curves.png",
        [
            Panel("training loss", "optimiser step", "train loss (MSE + VB)", loss),
            Panel("validation KID (selects best_ckpt.pt)", "optimiser step", "KID × 1e3", kid),
        ],
        figsize=(10, 3.6),
    )
    curves = [f"loss_{model_tag(m)}.png" for m in models]
    links = ", ".join(f"[{m}](report_assets/{c})" for m, c in zip(models, curves) if (lay.assets / c).is_file())
    header = ["Model", "stands in for", "#Params", "steps", "final train loss"]
    header += ["validation KID × 1e3 ± standard error", "sampled from: best_ckpt.pt (why)"]
    return part(
        "training",
        p.as_dict(),
        best_rule_words=part("rule_within_noise" if p.best_rule == "within-noise" else "rule_lowest"),
        training_table=markdown_table(header, rows),
        curve_links=part("curve_links", links=links) if links else "",
    )


def samples_section(lay: Layout, p: Profile) -> tuple[str, dict[str, dict[str, float]]]:
    """The sample figure and the pixel statistics of every image of the real validation images, their VAE
    reconstructions and each validation copy; returns the section and the statistics."""
    val = read_fold_csv(lay.data / f"val_{FOLD}.csv")
    sets = {"real (validation)": [lay.data / name for name in val["filename"]], "VAE reconstruction": recon_files(lay)}
    for v in VARIANTS:
        sets[v.label] = sorted((lay.sample_folder(v, p) / "gen_samples_val").glob("*.png"))
    stats = {name: pixel_stats(load_images(files)) for name, files in sets.items() if files}
    missing = sample_figure(lay, p, lay.assets / "samples.png", "real (validation)")
    real_sat = stats["real (validation)"]["saturated"]
    rows = [
        [name, f"{s['mean']:.1f}", f"{s['std']:.1f}", f"{100 * s['saturated']:.2f}"]
        + [f"{s['saturated'] / real_sat:.2f}" if real_sat > 0 else "n/a"]
        for name, s in stats.items()
    ]
    section = part(
        "samples",
        p.as_dict(),
        count=min(16, len(val)),
        missing="".join(f"{m}\n" for m in missing),
        stats_table=markdown_table(["set", "mean", "std", "saturated %", "saturated / real"], rows),
    )
    return section, stats


def kid_verdict(kids: dict[str, dict], z: float = NOISE_Z) -> str:
    """One sentence: which pairs of models differ in KID vs the VAE reconstructions by more than `z` standard
    errors of the difference (metrics.kid.kid_difference of one fold), computed from the numbers."""
    names = [n for n, e in kids.items() if e.get("available") and math.isfinite(e.get("se", math.nan))]
    if len(names) < 2:
        return part("kid_verdict_few")
    exceeding = []
    for a, b in combinations(names, 2):
        d = kid_difference([(kids[a]["mean_x1e3"], kids[a]["se_x1e3"])], [(kids[b]["mean_x1e3"], kids[b]["se_x1e3"])])
        if abs(d.diff) > z * d.se:
            low, high = (a, b) if d.diff < 0 else (b, a)
            exceeding.append(f"{low} below {high} by {abs(d.diff):.1f} (> {z * d.se:.1f})")
    pairs = len(names) * (len(names) - 1) // 2
    if not exceeding:
        return part("kid_verdict_none", pairs=pairs, z=f"{z:g}")
    return part("kid_verdict_some", count=len(exceeding), pairs=pairs, z=f"{z:g}", exceeding="; ".join(exceeding))


def quality_section(lay: Layout, p: Profile, params: dict[str, int]) -> str:
    reports = {v.label: read_metrics(lay, p, v) for v in VARIANTS}
    metrics = {label: [r["metrics"] if r else None] for label, r in reports.items()}
    notes = []
    for label, r in reports.items():
        for key, entry in ((key, r["metrics"].get(key)) for key, _ in QUALITY_COLUMNS) if r else ():
            if entry and not entry["available"]:
                notes.append(part("note_unavailable", key=key, reason=entry["reason"]))
            elif entry and key.startswith("GG") and not math.isfinite(entry["value"]):
                notes.append(part("note_gg_nan"))
        if r is None:
            notes.append(part("note_no_metrics", label=label))
    counts = [r["counts"] for r in reports.values() if r]  # the last set's image counts, "n/a" where absent
    kid_note = part("kid_note", counts[-1], {"real_val": "n/a", "real_train": "n/a"}) if counts else ""
    kids = {label: r["metrics"]["KID_recon"] for label, r in reports.items() if r and "KID_recon" in r["metrics"]}
    return part(
        "quality",
        kid_note=kid_note,
        quality_table=quality_table(
            [h for _, h in QUALITY_COLUMNS], [metrics], [k for k, _ in QUALITY_COLUMNS], params
        ),
        kid_verdict=kid_verdict(kids),
        notes="\n".join(dict.fromkeys(notes)),  # each note once
    )


def classification_section(lay: Layout) -> str:
    md = lay.classify / "results.md"
    if not md.is_file():
        return part("classification_missing")
    body = demoted(md.read_text()).split("\n")  # results.md's sections become subsections here
    chart = lay.classify / "per_label.png"
    if chart.is_file():
        shutil.copyfile(chart, lay.assets / "classification_per_label.png")
        # The chart belongs to the main table, before any subsection (label fidelity).
        at = next((i for i, line in enumerate(body) if line.startswith("### ")), len(body))
        body[at:at] = ["", "![per-label F1 and AP](report_assets/classification_per_label.png)", ""]
    return part("classification", results="\n".join(body))


def label_fidelity(results: dict) -> dict[str, dict]:
    """classify.py's label-fidelity rows by name (the real reference, each synthetic set, the reconstructions)."""
    return {row["name"]: row for row in results.get("label_fidelity", {}).get("summary", [])}


def gan_test_auc(results: dict, name: str) -> float | None:
    """The GAN-test macro AUC of label-fidelity row `name` (None when absent)."""
    return macro_auc((label_fidelity(results).get(name) or {}).get("gan_test"))


def macro_auc(entry: dict | None) -> float | None:
    """Mean macro AUC (0-1) of a results.json summary entry or label-fidelity score, None when absent or NaN."""
    auc = (entry or {}).get("metrics", {}).get("AUC", {}).get("mean")
    return float(auc) if auc is not None and math.isfinite(auc) else None


def checks_section(results: dict, stats: dict[str, dict[str, float]], quick: bool = False) -> str:
    """The demo's acceptance checks, computed from the outputs: does the method work at demo size?"""
    rows = []

    def check(what: str, value: float | None, ok: bool, target: str) -> None:
        verdict = "n/a" if value is None else ("pass" if ok else "**FAIL**")
        rows.append([what, "n/a" if value is None else f"{value:.3f}", target, verdict])

    summary = {row["name"]: row for row in results.get("summary", [])}
    baseline = macro_auc(summary.get("geometric"))
    what = "real-only baseline classifier: test macro AUC"
    check(what, baseline, (baseline or 0) >= MIN_BASELINE_AUC, f">= {MIN_BASELINE_AUC}")
    real_sat = stats.get("real (validation)", {}).get("saturated")
    for v in VARIANTS:
        if v in STUDIED or v.tag in label_fidelity(results):
            auc = gan_test_auc(results, v.tag)
            what = f"{v.label}: label fidelity (GAN-test macro AUC of the validation copy)"
            check(what, auc, (auc or 0) >= MIN_GAN_TEST_AUC, f">= {MIN_GAN_TEST_AUC}")
        sat = stats.get(v.label, {}).get("saturated")
        ratio = None if sat is None or not real_sat else sat / real_sat
        what = f"{v.label}: saturated pixels / real images' fraction"
        check(what, ratio, (ratio or 0) <= MAX_SATURATION_RATIO, f"<= {MAX_SATURATION_RATIO}")
    return part(
        "checks",
        quick_note=part("checks_quick") if quick else "",
        checks_table=markdown_table(["check", "value", "target", "verdict"], rows),
    )


def main(args: argparse.Namespace) -> Path:
    """Write REPORT.md and its figures; returns the report's path."""
    lay = Layout(Path(args.out).resolve())
    config = json.loads(lay.config.read_text())
    p = Profile.from_dict(config["profile"])
    models = config["models"]
    stages = build_stages(p, lay, config["device"])
    lay.assets.mkdir(parents=True, exist_ok=True)
    params = parameter_counts(models, p.image_size)
    results = read_json(lay.classify / "results.json")
    written = datetime.datetime.now().isoformat(timespec="seconds")
    quick_flag = " QUICK=1" if p.name == "quick" else ""
    head = part("head", config, profile=p.name, written=written, quick_flag=quick_flag, models=", ".join(models))
    samples, stats = samples_section(lay, p)
    sections = [
        head,
        dataset_section(lay, p),
        vae_section(lay, p, results),
        training_section(lay, p, models, params),
        samples,
        quality_section(lay, p, params),
        classification_section(lay),
        checks_section(results, stats, quick=p.name == "quick"),
        timing_section(stages, read_stamps(lay.out, stages), config["jobs"]),
        commands_section(stages),
    ]
    atomic_write_text(lay.report, "\n\n".join(sections) + "\n")
    print(f"wrote {lay.report}")
    return lay.report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m demo.report", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=str, default="demo_out", help="the demo's output folder")
    return p


if __name__ == "__main__":
    run_main("python -m demo.report", lambda: main(build_parser().parse_args()))
