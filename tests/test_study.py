"""`make study` (issue 22): the plan over folds and datasets, and STUDY.md computed from prepared outputs, each
number checked against an independent computation."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from demo import study_report
from demo.__main__ import build_parser, study_plan
from demo.plan import VARIANTS
from demo.profiles import STUDY, STUDY_QUICK
from demo.study import StudyPlan, build_study_stages, pooled_conditions
from infra.stages import REPO_ROOT
from infra.templates import TemplateError, fill_block, placeholders, render_block
from tests.helpers.phantom_data import make_phantom_fundus, make_phantom_oct
from tests.helpers.stages import assert_stage_commands_parse

# ----------------------------------------------------------------------------------------------------------------
# The plan


@pytest.mark.parametrize("profile", [STUDY, STUDY_QUICK], ids=["study", "study-quick"])
def test_study_plan_runs_every_fold_of_oct_and_the_fundus_split(tmp_path, profile):
    plan = StudyPlan(profile, tmp_path, folds=2, device="cpu")
    stages = build_study_stages(plan)
    names = [s.name for s in stages]
    assert len(names) == len(set(names))
    assert_stage_commands_parse(stages)
    # Each kind's phantoms and domain VAE once, the VAE on its own corpus (another seed), shared by the folds.
    for kind in ("oct", "fundus"):
        vae = stages[names.index(f"{kind}-train-vae")]
        assert vae.deps == (f"{kind}-vae-data",)
        corpus = stages[names.index(f"{kind}-vae-data")].command
        assert corpus[corpus.index("--seed") + 1] == "1"
        assert corpus[corpus.index("--out") + 1] == vae.command[vae.command.index("--data-path") + 1]
    # Two OCT folds with the demo's stages, the fundus split without classification or augmentation sets.
    for fold in (0, 1):
        train = stages[names.index(f"oct{fold}-train-GeCA-T")]
        assert train.command[train.command.index("--fold") + 1] == str(fold)
        assert f"oct{fold}-classify-GeCA-T" in names and f"oct{fold}-evaluate-GeCA-T-noghg" in names
    assert not any(n.startswith("oct2-") or n.startswith("fundus1-") for n in names)
    fundus = [n for n in names if n.startswith("fundus0-")]
    assert "fundus0-evaluate-GeCA-T" in fundus and not any("classify" in n or "sample-aug" in n for n in fundus)
    train = stages[names.index("fundus0-train-GeCA-T")].command
    assert train[train.index("--dataset") + 1] == "retinamnist" and train[train.index("--num-classes") + 1] == "5"
    # No stage clears the classification folder every fold writes into.
    shared = tmp_path / "oct" / "classify"
    assert not any(c == shared or shared in Path(c).parents for s in stages for c in s.clears)
    # The pooled classification covers both folds and every seed, with each fold's sample folder.
    pooled = stages[names.index("oct-classify")].command
    folds_at, seeds_at = pooled.index("--folds"), pooled.index("--seeds")
    assert pooled[folds_at + 1 : folds_at + 3] == ("0", "1") and pooled[folds_at + 3] == "--seeds"
    assert pooled[seeds_at + 1 : seeds_at + 1 + len(profile.cls_seeds)] == tuple(map(str, profile.cls_seeds))
    assert all("{fold}" in c for c in pooled_conditions(plan) if "=" in c)
    for fold in (0, 1):  # the template names the folder the fold's own sampling stage writes
        sampled = stages[names.index(f"oct{fold}-sample-aug-GeCA-T")].outputs[0].parent
        template = next(c for c in pooled_conditions(plan) if c.startswith("synthetic:GeCA-T="))
        assert template.split("=", 1)[1].replace("{fold}", str(fold)) == plan.layout("oct", 0).shown(sampled)
    assert stages[-1].name == "report" and set(stages[-1].deps) == set(names[:-1])


def test_study_flags_are_checked(capsys):
    parser = build_parser()
    args = parser.parse_args(["--study", "--folds", "5", "--seeds", "2", "--expand-ratio", "5", "--out", "x"])
    plan = study_plan(args, "cpu")
    assert (plan.folds, plan.profile.cls_seeds, plan.profile.expand_ratio) == (5, (0, 1), 5)
    assert plan.profile.name == "study"
    for bad in (["--folds", "6"], ["--folds", "0"], ["--seeds", "0"], ["--expand-ratio", "0"], ["--jobs", "0"]):
        with pytest.raises(SystemExit) as stop:
            parser.parse_args(["--study", *bad])
        assert stop.value.code == 2
        assert f"argument {bad[0]}: must be an integer" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# Templates


def test_render_refuses_missing_and_unused_values(tmp_path):
    path = tmp_path / "t.md"
    path.write_text("<!-- block: t -->\nKID $kid, ${n}x, costs $$5\n")
    assert placeholders(path.read_text()) == {"kid", "n"}
    assert render_block(path, "t", {"kid": "3.1", "n": "5"}) == "KID 3.1, 5x, costs $5"
    with pytest.raises(TemplateError, match="without a value \\['n'\\]"):
        render_block(path, "t", {"kid": "3.1"})
    with pytest.raises(TemplateError, match="without a placeholder \\['extra'\\]"):
        render_block(path, "t", {"kid": "3.1", "n": "5", "extra": "x"})


def test_block_templates_render_each_block_alone(tmp_path):
    path = tmp_path / "blocks.md"
    path.write_text("<!-- block: a -->\nKID $kid.\n\n<!-- block: note -->\n an aside\n")
    assert render_block(path, "a", {"kid": "3"}) == "KID 3.\n"  # a block keeps its inner blank line
    assert render_block(path, "note", {}) == " an aside"
    with pytest.raises(TemplateError, match="block a"):
        render_block(path, "a", {})
    bad = tmp_path / "bad.md"
    bad.write_text("stray text\n<!-- block: a -->\nx\n")
    with pytest.raises(TemplateError, match="starts with"):
        render_block(bad, "a", {})


def test_fill_block_takes_what_values_lack_from_the_first_source_that_has_it(tmp_path):
    path = tmp_path / "blocks.md"
    path.write_text("<!-- block: a -->\n$name: $n of $total\n")
    sources = ({"n": 1, "total": 9, "unused": 0}, {"total": 5})
    assert fill_block(path, "a", *sources, name="x") == "x: 1 of 9"  # a value named like a parameter is a value
    assert fill_block(path, "a", *sources, name="x", n=2) == "x: 2 of 9"  # values win over sources
    with pytest.raises(TemplateError, match="without a value \\['name'\\]"):
        fill_block(path, "a", *sources)


# ----------------------------------------------------------------------------------------------------------------
# STUDY.md on prepared outputs

FOLDS = 3
SEEDS = 2


def kid_entry(rng: np.random.Generator, centre: float) -> dict:
    mean, se = centre + rng.normal(0, 4), rng.uniform(2, 5)
    return {"available": True, "mean": mean / 1e3, "se": se / 1e3, "mean_x1e3": mean, "se_x1e3": se}


def prepare_study(out: Path) -> tuple[StudyPlan, dict, dict]:
    """A study folder as the stages leave it, with chosen numbers: data, metrics per variant and fold, classify.py's
    results. Returns (plan, {kind: {label: [metrics per fold]}}, results)."""
    plan = StudyPlan(STUDY_QUICK, out, FOLDS, "cpu")
    config = {"profile": STUDY_QUICK.as_dict(), "study_folds": FOLDS, "device": "cpu", "threads": 1, "jobs": 2}
    config["cpu_count"] = 2
    out.mkdir(parents=True)
    (out / "study_config.json").write_text(json.dumps(config))
    make_phantom_oct(plan.layout("oct", 0).data, 40, 5, 16, 0, test_frac=0.2)
    make_phantom_fundus(plan.layout("fundus", 0).data, 40, 5, 16, 0, npz=True, test_frac=0.2)
    rng = np.random.default_rng(0)
    centres = {"LDM-T": 60.0, "DiT-T/2": 58.0, "GeCA-T": 30.0, "GeCA-T (no GHG)": 45.0}
    written: dict[str, dict[str, list[dict]]] = {}
    for kind in ("oct", "fundus"):
        written[kind] = {}
        for v in VARIANTS:
            written[kind][v.label] = []
            for fold in plan.folds_of(kind):
                m = {
                    "KID": kid_entry(rng, centres[v.label] + 300),
                    "KID_recon": kid_entry(rng, centres[v.label]),
                    "KID_floor": kid_entry(rng, 400.0),
                    "LPIPS": {"available": False, "reason": "no AlexNet weights"},
                    "GG": {"available": True, "value": float(rng.normal())},
                    "GG_floor": {"available": True, "value": 0.5},
                }
                folder = plan.layout(kind, fold).sample_folder(v, plan.profile)
                folder.mkdir(parents=True)
                (folder / f"metrics_{fold}.json").write_text(json.dumps({"metrics": m}))
                written[kind][v.label].append(m)
    # classify.py's results: real + synthetic clearly above the baseline for GeCA-T, level for LDM-T.
    shift = {"geometric": 0.0, "noaug": -0.05, "LDM-T": 0.0, "DiT-T-2": 0.02, "GeCA-T": 0.08}
    kinds = {"geometric": "geometric", "noaug": "noaug"}
    runs = []
    for name, delta in shift.items():
        for fold in range(FOLDS):
            for seed in range(SEEDS):
                value = 0.6 + delta + float(rng.normal(0, 0.02))
                runs.append({"condition": name, "fold": fold, "seed": seed, "metrics": {"mAP": value}})
    summary = [{"name": n, "kind": kinds.get(n, "synthetic")} for n in shift]
    results = {"runs": runs, "summary": summary}
    classify = plan.layout("oct", 0).classify
    classify.mkdir(parents=True)
    (classify / "results.json").write_text(json.dumps(results))
    (classify / "results.md").write_text("# Downstream\n\n| Synthetic data | mAP |\n|---|---|\n\n## Label fidelity\n")
    return plan, written, results


def cells_of(markdown: str, first: str) -> list[str]:
    """The cells of the table row whose first cell is `first`."""
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r}")


@pytest.mark.filterwarnings("ignore:No artists with labels")
def test_study_report_tables_and_claims_equal_independent_computations(tmp_path):
    plan, written, results = prepare_study(tmp_path / "study_out")
    text = study_report.main(study_report.build_parser().parse_args(["--out", str(plan.out)])).read_text()
    assert "$" not in text.split("## 5.")[0]  # every placeholder filled

    # Table A: OCT cells are the mean ± sample std over folds, fundus cells the value ± its standard error.
    row = cells_of(text, "GeCA-T")
    oct_kid = [m["KID"]["mean_x1e3"] for m in written["oct"]["GeCA-T"]]
    assert row[2] == f"{np.mean(oct_kid):.1f} ± {np.std(oct_kid, ddof=1):.1f}"
    fundus = written["fundus"]["GeCA-T"][0]["KID_recon"]
    assert row[7] == f"{fundus['mean_x1e3']:.1f} ± {fundus['se_x1e3']:.1f}"
    assert row[4] == "n/a"  # LPIPS without its weights
    floor = [m["KID_floor"]["mean_x1e3"] for m in written["oct"]["LDM-T"]]
    assert cells_of(text, "VAE reconstruction (floor)")[2] == f"{np.mean(floor):.1f} ± {np.std(floor, ddof=1):.1f}"

    # Claim 1: GeCA-T - LDM-T against the reconstructions on OCT, by hand.
    a = np.array([[m["KID_recon"]["mean_x1e3"], m["KID_recon"]["se_x1e3"]] for m in written["oct"]["GeCA-T"]])
    b = np.array([[m["KID_recon"]["mean_x1e3"], m["KID_recon"]["se_x1e3"]] for m in written["oct"]["LDM-T"]])
    diff = (a[:, 0] - b[:, 0]).mean()
    se = math.sqrt((a[:, 1] ** 2 + b[:, 1] ** 2).sum()) / FOLDS
    p = 2 * stats.norm.cdf(-abs(diff / se))
    line = next(x for x in text.splitlines() if x.startswith("| OCT | KID↓ ×1e3 vs VAE recon | GeCA-T − LDM-T |"))
    assert f"| {diff:+.1f} ± {se:.1f} |" in line and f"| {p:.2g} |" in line
    assert "GeCA-T lower (better)" in line  # a 30-point gap against standard errors of a few points
    counts = re.findall(
        r"(OCT|Fundus): significantly lower in (\d+), significantly higher in (\d+), not significant in (\d+) of (\d+)",
        text,
    )
    assert [c[0] for c in counts] == ["OCT", "Fundus"]
    for kind, low, high, ns, total in counts:
        rows = [x for x in text.splitlines() if x.startswith(f"| {kind} | KID")]
        assert int(total) == len(rows) == 2 * 3  # KID references x opponents
        assert int(low) == sum("lower (better)" in x for x in rows) and int(high) == sum("higher" in x for x in rows)
        assert int(low) + int(high) + int(ns) == int(total)

    # Claim 2: every synthetic condition against the baseline, paired by (fold, seed), by hand.
    def maps(name: str) -> np.ndarray:
        found = {(r["fold"], r["seed"]): r["metrics"]["mAP"] for r in results["runs"] if r["condition"] == name}
        return np.array([found[k] for k in sorted(found)])

    for name in ("LDM-T", "DiT-T-2", "GeCA-T", "noaug"):
        d = maps(name) - maps("geometric")
        t = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))
        p = 2 * stats.t.sf(abs(t), d.size - 1)
        row = cells_of(text, f"{name} vs geometric")
        assert row[1] == f"{100 * d.mean():+.2f}" and row[2] == f"{int((d > 0).sum())} / {d.size}"
        assert row[3] == f"{p:.2g}"
    assert cells_of(text, "GeCA-T vs LDM-T")[4] != "ns"  # 8 points apart with a spread of 2
    assert re.search(r"significantly \(paired t-test over 6\s+\(fold, seed\) runs, p < 0.05\) for \d of 3 models", text)


# ----------------------------------------------------------------------------------------------------------------
# The tiny study end to end (slow: about 6 minutes on 2 idle cores, 11 on a busy machine)


@pytest.mark.slow
def test_quick_study_runs_end_to_end(tmp_path):
    """`make study QUICK=1 FOLDS=2 SEEDS=2`: every stage runs, STUDY.md has both columns of Table A, Table B over
    the 4 (fold, seed) pairs and the computed claims."""
    out = tmp_path / "study_out"
    argv = ["-m", "demo", "--study", "--quick", "--folds", "2", "--seeds", "2", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, *argv],
        cwd=REPO_ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = (out / "STUDY.md").read_text()
    row = cells_of(text, "GeCA-T")
    assert len(row) == 10 and all(re.match(r"-?\d", c) for c in (row[2], row[3], row[6], row[7]))
    assert "over 2 fold(s) x 2 seed(s)" in text and "| GeCA-T vs geometric |" in text
    assert re.search(r"OCT: significantly lower in \d+, significantly higher in \d+, not significant in \d+ of 6", text)
    assert (out / "report_assets" / "samples_fundus.png").is_file()
