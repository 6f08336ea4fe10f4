"""Write `{out}/STUDY.md` from what the study's stages left in `{out}` (the last stage of `python -m demo --study`).

    python -m demo.study_report --out study_out

The prose is the template `demo/templates/study.md`; this module computes the values: Table A (KID against the real
images and against the domain VAE's reconstructions, LPIPS and GG per dataset), the tests behind each model
comparison, Table B and label fidelity (classify.py's pooled results over folds x seeds), the tests behind each
synthetic-data claim, sample grids, stage times and commands. Figures go to `{out}/report_assets/`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from data.validate import read_fold_csv
from demo.pixels import load_images
from demo.plan import VARIANTS, Variant
from demo.profiles import DEMO_MODELS, Profile
from demo.report import (
    array_grid,
    commands_section,
    human_count,
    image_grid,
    panels,
    parameter_counts,
    timing_section,
    wall_seconds,
)
from demo.study import CLASSIFIED_KIND, KINDS, StudyPlan, build_study_stages
from downstream.significance import paired_test, stars
from infra.atomic_io import atomic_write_text
from infra.errors import run_main
from infra.markdown import markdown_table
from infra.stages import REPO_ROOT
from infra.templates import render

TEMPLATE = Path(__file__).with_name("templates") / "study.md"
ALPHA = 0.05
KIND_TITLES = {"oct": "OCT", "fundus": "Fundus"}
# Table A's metric columns per dataset: (metrics JSON key, header, floor key of the VAE-reconstruction row).
METRICS = (
    ("KID", "KID↓ ×1e3 vs real", "KID_floor"),
    ("KID_recon", "KID↓ ×1e3 vs VAE recon", None),
    ("LPIPS", "LPIPS↑", None),
    ("GG", "GG (>0)", "GG_floor"),
)
# The comparisons behind the paper's image-quality claim: the cellular model against each baseline, and GHG's effect.
CELLULAR = "GeCA-T"
RECON_ROW = "VAE reconstruction (floor)"
GRID_COUNT = 16


# ----------------------------------------------------------------------------------------------------------------
# Image quality (Table A)


@dataclass(frozen=True)
class Difference:
    """A pooled KID difference between two sets over folds.

    Attributes:
        diff: mean over folds of KID(a) - KID(b).
        se: its standard error, sqrt(sum over folds of se_a^2 + se_b^2) / folds.
        z: diff / se.
        p_value: two-sided normal p-value of z.
        folds: folds pooled.
    """

    diff: float
    se: float
    z: float
    p_value: float
    folds: int


def pooled_difference(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> Difference:
    """z-test of the fold-mean difference of two models' KIDs, each fold's KID with its jackknife standard error.

    Args:
        a, b: per fold (KID, standard error) of each model, the same folds in the same order.

    The folds are independent data and each model's KID error is estimated over its own generated images, so the
    per-fold differences have variance se_a^2 + se_b^2 (the real reference images, shared by both, add no
    difference noise) and their mean has the variance of their sum divided by folds^2.
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"need the same nonzero number of folds, got {len(a)} and {len(b)}")
    diffs = [ka - kb for (ka, _), (kb, _) in zip(a, b)]
    variance = sum(sa**2 + sb**2 for (_, sa), (_, sb) in zip(a, b))
    diff, se = float(np.mean(diffs)), math.sqrt(variance) / len(a)
    z = diff / se if se > 0 else math.nan
    p = float(2 * stats.norm.sf(abs(z))) if math.isfinite(z) else math.nan
    return Difference(diff, se, z, p, len(a))


def load_metrics(plan: StudyPlan, kind: str) -> dict[str, list[dict | None]]:
    """{variant label: per fold, evaluate.py's metrics dict (None where the stage has not written it)}."""
    out = {}
    for v in VARIANTS:
        entries = []
        for fold in plan.folds_of(kind):
            path = plan.layout(kind, fold).sample_folder(v, plan.profile) / f"metrics_{fold}.json"
            entries.append(json.loads(path.read_text())["metrics"] if path.is_file() else None)
        out[v.label] = entries
    return out


def metric_cell(entries: list[dict | None], key: str) -> str:
    """One Table A cell: over several folds mean ± sample std of the per-fold values; over one fold the value (KID:
    ± its standard error; LPIPS: ± its std over image pairs)."""
    found = [e.get(key) if e else None for e in entries]
    if any(f is None for f in found):
        return "–"
    if not all(f["available"] for f in found):
        return "n/a"
    if key.startswith("KID"):
        values = [f["mean_x1e3"] for f in found]
        spread = [f["se_x1e3"] for f in found]
    elif key == "LPIPS":
        values, spread = [f["mean"] for f in found], [f["std"] for f in found]
    else:
        values, spread = [f["value"] for f in found], None
    digits = 1 if key.startswith("KID") else 2
    if not all(math.isfinite(x) for x in values):
        return "n/a (NaN)"
    if len(values) > 1:
        return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"
    return f"{values[0]:.{digits}f}" + (f" ± {spread[0]:.{digits}f}" if spread else "")


def table_a(plan: StudyPlan, metrics: dict[str, dict], params: dict[str, int]) -> str:
    header = ["Method", "#Params"]
    for kind in KINDS:
        header += [f"{KIND_TITLES[kind]} {title}" for _, title, _ in METRICS]
    rows = []
    for v in VARIANTS:
        row = [v.label, human_count(params[v.model])]
        for kind in KINDS:
            row += [metric_cell(metrics[kind][v.label], key) for key, _, _ in METRICS]
        rows.append(row)
    floor = [RECON_ROW, "–"]
    for kind in KINDS:
        # Every variant's metrics file carries the same floor; the first model's is shown.
        first = metrics[kind][VARIANTS[0].label]
        floor += [metric_cell(first, floor_key) if floor_key else "–" for _, _, floor_key in METRICS]
    rows.append(floor)
    return markdown_table(header, rows)


def comparison_pairs() -> list[tuple[Variant, Variant]]:
    """(a, b) pairs the image-quality claims rest on: GeCA-T (GHG) against every other row."""
    cellular = next(v for v in VARIANTS if v.model == CELLULAR and v.ghg)
    return [(cellular, v) for v in VARIANTS if v != cellular]


def quality_tests(plan: StudyPlan, metrics: dict[str, dict]) -> list[dict]:
    """Every comparison of comparison_pairs on each dataset and each KID reference, with its pooled z-test."""
    rows = []
    for kind in KINDS:
        for key, title, _ in METRICS[:2]:
            for a, b in comparison_pairs():
                ea, eb = metrics[kind][a.label], metrics[kind][b.label]
                usable = all(e and e.get(key, {}).get("available") for e in ea + eb)
                if not usable:
                    continue
                d = pooled_difference(
                    [(e[key]["mean_x1e3"], e[key]["se_x1e3"]) for e in ea],
                    [(e[key]["mean_x1e3"], e[key]["se_x1e3"]) for e in eb],
                )
                rows.append({"kind": kind, "metric": title, "a": a.label, "b": b.label, "test": d})
    return rows


def quality_claims(tests: list[dict]) -> tuple[str, str]:
    """(table of the tests, one sentence counting what they show about GeCA-T's image quality)."""
    rows = []
    for t in tests:
        d = t["test"]
        verdict = "not significant"
        if d.p_value < ALPHA:
            verdict = f"{t['a']} lower (better)" if d.diff < 0 else f"{t['a']} higher (worse)"
        rows.append(
            [
                KIND_TITLES[t["kind"]],
                t["metric"],
                f"{t['a']} − {t['b']}",
                f"{d.diff:+.1f} ± {d.se:.1f}",
                f"{d.z:+.2f}",
                f"{d.p_value:.2g}",
                str(d.folds),
                verdict,
            ]
        )
    table = markdown_table(["dataset", "KID", "difference", "×1e3 ± SE", "z", "p", "folds", "at 0.05"], rows)
    parts = []
    for kind in KINDS:
        mine = [t for t in tests if t["kind"] == kind]
        low = sum(t["test"].p_value < ALPHA and t["test"].diff < 0 for t in mine)
        high = sum(t["test"].p_value < ALPHA and t["test"].diff > 0 for t in mine)
        parts.append(
            f"{KIND_TITLES[kind]}: significantly lower in {low}, significantly higher in {high}, not significant in "
            f"{len(mine) - low - high} of {len(mine)}"
        )
    sentence = f"{CELLULAR}'s KID against the other rows, by dataset: " + "; ".join(parts) + "."
    return table, sentence


# ----------------------------------------------------------------------------------------------------------------
# Classification (Table B)


def demoted(markdown: str) -> str:
    """classify.py's results.md without its title, its sections one level down."""
    return "\n".join(
        "#" + line if line.startswith("## ") else line for line in markdown.splitlines() if not line.startswith("# ")
    )


def run_values(results: dict, condition: str, metric: str = "mAP") -> dict[tuple[int, int], float]:
    """{(fold, seed): metric} of one condition's runs in classify.py's results.json."""
    return {(r["fold"], r["seed"]): r["metrics"][metric] for r in results["runs"] if r["condition"] == condition}


def paired_row(results: dict, a: str, b: str, metric: str = "mAP") -> dict:
    """The paired t-test of condition `a` against `b` over the (fold, seed) pairs both have (classify.py's test)."""
    va, vb = run_values(results, a, metric), run_values(results, b, metric)
    keys = sorted(va.keys() & vb.keys())
    x, y = np.array([va[k] for k in keys]), np.array([vb[k] for k in keys])
    t = paired_test(x, y, "ttest")
    gain = float(np.mean(x - y)) if keys else math.nan
    wins = int(np.sum(x > y))
    return {"a": a, "b": b, "gain": gain, "wins": wins, "test": t}


def classification_claims(results: dict) -> tuple[str, str, str]:
    """(table of the tests, sentence on synthetic data vs the baseline, sentence on GeCA's data vs the baselines')."""
    baseline = "geometric"
    synthetic = [s["name"] for s in results["summary"] if s["kind"] == "synthetic"]
    tests = [paired_row(results, name, baseline) for name in synthetic]
    tests.append(paired_row(results, "noaug", baseline))
    cellular = next((n for n in synthetic if n.startswith(CELLULAR)), None)
    versus = [paired_row(results, cellular, n) for n in synthetic if cellular and n != cellular]
    rows = []
    for r in tests + versus:
        t = r["test"]
        rows.append(
            [
                f"{r['a']} vs {r['b']}",
                f"{100 * r['gain']:+.2f}",
                f"{r['wins']} / {t.n_pairs}",
                f"{t.p_value:.2g}" if math.isfinite(t.p_value) else f"n/a ({t.note})",
                stars(t.p_value),
            ]
        )
    table = markdown_table(["real + synthetic (or no augmentation) vs", "mAP gain (points)", "runs up", "p", ""], rows)
    up = [r["a"] for r in tests[:-1] if r["test"].p_value < ALPHA and r["gain"] > 0]
    down = [r["a"] for r in tests[:-1] if r["test"].p_value < ALPHA and r["gain"] < 0]
    n_pairs = tests[0]["test"].n_pairs if tests else 0
    gains = (
        f"Adding a synthetic set to the real training images raised test mAP significantly (paired t-test over "
        f"{n_pairs} (fold, seed) runs, p < {ALPHA}) for {len(up)} of {len(synthetic)} models"
        + (f" ({', '.join(up)})" if up else "")
        + (f" and lowered it significantly for {', '.join(down)}" if down else "")
        + "."
    )
    groups = {"significantly better than": [], "significantly worse than": [], "not significantly different from": []}
    for r in versus:
        significant = r["test"].p_value < ALPHA
        key = "not significantly different from"
        if significant:
            key = "significantly better than" if r["gain"] > 0 else "significantly worse than"
        groups[key].append(r["b"])
    ranking = (
        f"{CELLULAR}'s synthetic set against each baseline model's (same pairing): "
        + "; ".join(f"{key} {', '.join(names)}" for key, names in groups.items() if names)
        + "."
        if versus
        else f"No synthetic set of {CELLULAR} was classified."
    )
    return table, gains, ranking


# ----------------------------------------------------------------------------------------------------------------
# Figures, run description


def sample_grids(plan: StudyPlan, kind: str) -> str:
    """Real | VAE reconstruction | every model's validation copy of the kind's first fold, as one figure."""
    lay = plan.layout(kind, 0)
    split = "test" if lay.dataset == "retinamnist" else "val"  # the split evaluate.py and the copies use
    real = read_fold_csv(lay.data / f"{split}_0.csv")
    count = min(GRID_COUNT, len(real))
    grids = [(f"real ({split})", image_grid([lay.data / f for f in real["filename"].iloc[:count]], cols=4))]
    recon_csv = lay.recon_val / "val_syn_0.csv"
    if recon_csv.is_file():
        recon = [lay.recon_val / n for n in read_fold_csv(recon_csv)["filename"].iloc[:count]]
    else:  # RetinaMNIST: no labels CSV, the files are named by their index in the split
        recon = sorted(lay.recon_val.glob("*.png"))[:count]
    if recon:
        grids.append(("VAE reconstruction", array_grid(load_images(recon), cols=4)))
    for v in VARIANTS:
        files = [lay.sample_folder(v, plan.profile) / "gen_samples_val" / f"{i:06d}.png" for i in range(count)]
        if all(f.is_file() for f in files):
            grids.append((v.label, image_grid(files, cols=4)))
    path = plan.out / "report_assets" / f"samples_{kind}.png"
    panels(grids, path)
    return f"![{KIND_TITLES[kind]} samples](report_assets/{path.name})"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def main(args: argparse.Namespace) -> Path:
    """Write STUDY.md and its figures; returns the report's path."""
    out = Path(args.out).resolve()
    config = json.loads((out / "study_config.json").read_text())
    profile = Profile(**{**config["profile"], "cls_seeds": tuple(config["profile"]["cls_seeds"])})
    plan = StudyPlan(profile, out, config["study_folds"], config["device"])
    stages = build_study_stages(plan)
    stamps = {}
    for stage in stages:
        path = out / "stamps" / f"{stage.name}.json"
        if path.is_file():
            stamps[stage.name] = json.loads(path.read_text())
    (out / "report_assets").mkdir(parents=True, exist_ok=True)
    params = parameter_counts(list(DEMO_MODELS), profile.image_size)
    metrics = {kind: load_metrics(plan, kind) for kind in KINDS}
    quality_table, quality_sentence = quality_claims(quality_tests(plan, metrics))

    classify_dir = plan.layout(CLASSIFIED_KIND, 0).classify
    results = json.loads((classify_dir / "results.json").read_text())
    claims_table, gains_sentence, ranking_sentence = classification_claims(results)
    seconds = wall_seconds(stamps)
    first = plan.layout(CLASSIFIED_KIND, 0)
    values = {
        "written": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": f"{platform.machine()}, {config['cpu_count']} CPU core(s), device {config['device']}",
        "threads": str(config["threads"]),
        "jobs": str(config.get("jobs", 1)),
        "wall": f"{seconds / 60:.1f} min",
        "profile": profile.name,
        "fold_list": ", ".join(map(str, plan.folds_of(CLASSIFIED_KIND))),
        "recon_row": RECON_ROW,
        "seeds": str(len(profile.cls_seeds)),
        "pairs": str(plan.folds * len(profile.cls_seeds)),
        "expand_ratio": str(profile.expand_ratio),
        "num_images": str(profile.num_images),
        "image_size": str(profile.image_size),
        "latent": str(profile.image_size // 8),
        "vae_steps": str(profile.vae_steps),
        "geca_epochs": str(profile.epochs),
        "baseline_epochs": str(profile.baseline_epochs),
        "val_count": str(len(read_fold_csv(first.data / "val_0.csv"))),
        "fundus_test_count": str(len(read_fold_csv(plan.layout("fundus", 0).data / "test_0.csv"))),
        "cls_epochs": str(profile.cls_epochs),
        "sampling_steps": str(profile.sampling_steps),
        "cfg_scale": str(profile.cfg_scale),
        "table_a": table_a(plan, metrics, params),
        "quality_tests": quality_table,
        "quality_sentence": quality_sentence,
        "table_b": demoted((classify_dir / "results.md").read_text()),
        "classification_tests": claims_table,
        "gains_sentence": gains_sentence,
        "ranking_sentence": ranking_sentence,
        "grids": "\n\n".join(f"**{KIND_TITLES[k]}**\n\n{sample_grids(plan, k)}" for k in KINDS),
        "timing": timing_section(stages, stamps, config.get("jobs", 1), heading="## 5. Stage times"),
        "commands": commands_section(stages, heading="## 6. The commands of every stage"),
    }
    atomic_write_text(plan.report, render(TEMPLATE, values))
    print(f"wrote {plan.report}")
    return plan.report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m demo.study_report", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=str, default="study_out", help="the study's output folder")
    return p


if __name__ == "__main__":
    run_main("python -m demo.study_report", lambda: main(build_parser().parse_args()))
