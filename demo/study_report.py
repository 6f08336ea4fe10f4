"""Write `{out}/STUDY.md` from what the study's stages left in `{out}` (the last stage of `python -m demo --study`).

    python -m demo.study_report --out study_out

The prose, the document and its alternative sentences, is the block template `demo/templates/study.md`; this
module computes the values: Table A (KID against the real images and against the domain VAE's reconstructions,
LPIPS and GG per dataset), the tests behind each model comparison, Table B and label fidelity (classify.py's pooled
results over folds x seeds), the tests behind each synthetic-data claim, sample grids, stage times and commands.
Figures go to `{out}/report_assets/`.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import platform
import subprocess
from itertools import product
from pathlib import Path

import numpy as np

from data.validate import read_fold_csv
from demo import report
from demo.plan import VARIANTS, Variant
from demo.profiles import CELLULAR_MODEL, DEMO_MODELS, Profile
from demo.study import CLASSIFIED_KIND, KINDS, StudyPlan, build_study_stages
from downstream.report import paired_values
from downstream.significance import paired_test, stars
from infra.atomic_io import atomic_write_text
from infra.errors import run_main
from infra.markdown import markdown_table
from infra.stages import REPO_ROOT
from infra.templates import fill_block
from metrics.kid import kid_difference

TEMPLATE = Path(__file__).with_name("templates") / "study.md"
ALPHA = 0.05
KIND_TITLES = {"oct": "OCT", "fundus": "Fundus"}
# Table A's metric columns per dataset: (metrics JSON key, header); the first two are the KIDs the claims test.
METRICS = (
    ("KID", "KID↓ ×1e3 vs real"),
    ("KID_recon", "KID↓ ×1e3 vs VAE recon"),
    ("LPIPS", "LPIPS↑"),
    ("GG", "GG (>0)"),
)


# part(block, *sources, **values): a block of the study template, filled (infra.templates.fill_block).
part = functools.partial(fill_block, TEMPLATE)


# ----------------------------------------------------------------------------------------------------------------
# Image quality (Table A)


def load_metrics(plan: StudyPlan, kind: str) -> dict[str, list[dict | None]]:
    """{variant label: per fold, evaluate.py's metrics dict (None where the stage has not written it)}."""
    layouts = [plan.layout(kind, fold) for fold in plan.folds_of(kind)]
    return {
        v.label: [(report.read_metrics(lay, plan.profile, v) or {}).get("metrics") for lay in layouts] for v in VARIANTS
    }


def quality_claims(metrics: dict[str, dict]) -> tuple[str, str]:
    """GeCA-T (with GHG) against every other row on each dataset and each KID reference, by the pooled z-test of
    metrics.kid.kid_difference (the comparisons behind the paper's image-quality claim): (table of the tests, one
    sentence counting what they show)."""
    cellular = Variant(CELLULAR_MODEL)
    rows, per_dataset = [], []
    for kind in KINDS:
        tests = []
        for (key, title), b in product(METRICS[:2], [v for v in VARIANTS if v != cellular]):
            ea, eb = metrics[kind][cellular.label], metrics[kind][b.label]
            if not all(e and e.get(key, {}).get("available") for e in ea + eb):
                continue
            d = kid_difference(*([(e[key]["mean_x1e3"], e[key]["se_x1e3"]) for e in es] for es in (ea, eb)))
            verdict = "not significant"
            if d.p_value < ALPHA:
                verdict = f"{cellular.label} lower (better)" if d.diff < 0 else f"{cellular.label} higher (worse)"
            cells = [KIND_TITLES[kind], title, f"{cellular.label} − {b.label}", f"{d.diff:+.1f} ± {d.se:.1f}"]
            rows.append([*cells, f"{d.z:+.2f}", f"{d.p_value:.2g}", str(d.folds), verdict])
            tests.append(d)
        low = sum(d.p_value < ALPHA and d.diff < 0 for d in tests)
        high = sum(d.p_value < ALPHA and d.diff > 0 for d in tests)
        counts = dict(low=low, high=high, other=len(tests) - low - high, tests=len(tests))
        per_dataset.append(part("quality_dataset", dataset=KIND_TITLES[kind], **counts))
    table = markdown_table(["dataset", "KID", "difference", "×1e3 ± SE", "z", "p", "folds", "at 0.05"], rows)
    return table, part("quality_sentence", model=CELLULAR_MODEL, per_dataset="; ".join(per_dataset))


# ----------------------------------------------------------------------------------------------------------------
# Classification (Table B)


def paired_row(results: dict, a: str, b: str, metric: str = "mAP") -> dict:
    """The paired t-test of condition `a` against `b` over the (fold, seed) pairs both have (classify.py's test)."""
    x, y = paired_values(*([r for r in results["runs"] if r["condition"] == c] for c in (a, b)), metric)
    gain = float(np.mean(x - y)) if len(x) else math.nan
    return {"a": a, "b": b, "gain": gain, "wins": int(np.sum(x > y)), "test": paired_test(x, y, "ttest")}


def classification_claims(results: dict) -> tuple[str, str, str]:
    """(table of the tests, sentence on synthetic data vs the baseline, sentence on GeCA's data vs the baselines')."""
    synthetic = [s["name"] for s in results["summary"] if s["kind"] == "synthetic"]
    tests = [paired_row(results, name, "geometric") for name in [*synthetic, "noaug"]]
    cellular = next((n for n in synthetic if n.startswith(CELLULAR_MODEL)), None)
    versus = [paired_row(results, cellular, n) for n in synthetic if cellular and n != cellular]
    rows = []
    for r in tests + versus:
        t = r["test"]
        p = f"{t.p_value:.2g}" if math.isfinite(t.p_value) else f"n/a ({t.note})"
        rows.append(
            [f"{r['a']} vs {r['b']}", f"{100 * r['gain']:+.2f}", f"{r['wins']} / {t.n_pairs}", p, stars(t.p_value)]
        )
    table = markdown_table(["real + synthetic (or no augmentation) vs", "mAP gain (points)", "runs up", "p", ""], rows)
    up = [r["a"] for r in tests[:-1] if r["test"].p_value < ALPHA and r["gain"] > 0]
    down = [r["a"] for r in tests[:-1] if r["test"].p_value < ALPHA and r["gain"] < 0]
    gains = part(
        "gains_sentence",
        pairs=tests[0]["test"].n_pairs,
        alpha=ALPHA,
        up_count=len(up),
        models=len(synthetic),
        up_names=part("gains_up_names", names=", ".join(up)) if up else "",
        down=part("gains_down", names=", ".join(down)) if down else "",
    )
    groups: dict[str, list[str]] = {"group_better": [], "group_worse": [], "group_level": []}
    for r in versus:
        group = "group_level" if r["test"].p_value >= ALPHA else "group_better" if r["gain"] > 0 else "group_worse"
        groups[group].append(r["b"])
    named = "; ".join(part(group, names=", ".join(names)) for group, names in groups.items() if names)
    ranking = (
        part("ranking_sentence", model=CELLULAR_MODEL, groups=named)
        if versus
        else part("ranking_none", model=CELLULAR_MODEL)
    )
    return table, gains, ranking


# ----------------------------------------------------------------------------------------------------------------
# Run description


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
    profile = Profile.from_dict(config["profile"])
    plan = StudyPlan(profile, out, config["study_folds"], config["device"])
    stages = build_study_stages(plan)
    stamps = report.read_stamps(out, stages)
    (out / "report_assets").mkdir(parents=True, exist_ok=True)
    params = report.parameter_counts(DEMO_MODELS, profile.image_size)
    metrics = {kind: load_metrics(plan, kind) for kind in KINDS}
    headers = [f"{KIND_TITLES[kind]} {title}" for kind in KINDS for _, title in METRICS]
    quality_tests_table, quality_sentence = quality_claims(metrics)
    classify_dir = plan.layout(CLASSIFIED_KIND, 0).classify
    claims_table, gains_sentence, ranking_sentence = classification_claims(
        json.loads((classify_dir / "results.json").read_text())
    )
    for kind in KINDS:  # the figures section 3 of the template shows
        report.sample_figure(plan.layout(kind, 0), profile, out / "report_assets" / f"samples_{kind}.png")
    values = {
        "written": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": f"{platform.machine()}, {config['cpu_count']} CPU core(s), device {config['device']}",
        "wall": f"{report.wall_seconds(stamps) / 60:.1f} min",
        "profile": profile.name,
        "fold_list": ", ".join(map(str, plan.folds_of(CLASSIFIED_KIND))),
        "recon_row": report.RECON_ROW,
        "seeds": len(profile.cls_seeds),
        "pairs": plan.folds * len(profile.cls_seeds),
        "latent": profile.image_size // 8,
        "val_count": len(read_fold_csv(plan.layout(CLASSIFIED_KIND, 0).data / "val_0.csv")),
        "fundus_test_count": len(read_fold_csv(plan.layout("fundus", 0).data / "test_0.csv")),
        "table_a": report.quality_table(headers, [metrics[k] for k in KINDS], [k for k, _ in METRICS], params),
        "quality_tests": quality_tests_table,
        "quality_sentence": quality_sentence,
        "table_b": report.demoted((classify_dir / "results.md").read_text()),
        "classification_tests": claims_table,
        "gains_sentence": gains_sentence,
        "ranking_sentence": ranking_sentence,
        "timing": report.timing_section(stages, stamps, config["jobs"], heading="## 5. Stage times"),
        "commands": report.commands_section(stages, heading="## 6. The commands of every stage"),
    }
    atomic_write_text(plan.report, part("study", config, profile.as_dict(), **values) + "\n")
    print(f"wrote {plan.report}")
    return plan.report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m demo.study_report", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=str, default="study_out", help="the study's output folder")
    return p


if __name__ == "__main__":
    run_main("python -m demo.study_report", lambda: main(build_parser().parse_args()))
