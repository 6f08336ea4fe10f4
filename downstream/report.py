"""Aggregation and output of the study: results.csv, results.json, results.md (shaped like Table B) and a bar chart.

Run-level values are fractions in [0, 1] (CSV, JSON); the Markdown tables show percentages like the paper.
Aggregates are mean and sample standard deviation (ddof = 1) over the folds x seeds runs of a condition. When the
study has synthetic sets, a second table ("Label fidelity") gives each set's GAN-test scores (downstream/
label_fidelity.py) next to its GAN-train scores (its `synthetic-only` condition), docs/DECISIONS.md §C7.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from downstream.conditions import BASELINE, Condition, synthetic_sets, table_order
from downstream.metrics import METRIC_NAMES, mean_std
from downstream.significance import TEST_DESCRIPTIONS, paired_test, stars
from infra.atomic_io import atomic_write, atomic_write_text
from infra.markdown import markdown_table

CHART_METRICS: tuple[str, ...] = ("F1", "mAP")
# The columns of the label-fidelity table, for GAN-test and for GAN-train (threshold-free AUC and mAP, and the
# thresholded F1 (sen/spe) of Table B).
FIDELITY_METRICS: tuple[str, ...] = ("AUC", "F1 (sen/spe)", "mAP")
REAL_REFERENCE = "Real images (reference)"
CHART_FILE = "per_label.png"
_ARROW = "\u2191"


def _value(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def _json_safe(obj: object) -> object:
    """NaN/inf -> None and NumPy scalars -> Python, recursively, so the file is strict JSON."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _aggregate(runs: list[dict]) -> dict[str, dict[str, float]]:
    """{metric: {mean, std}} of the runs' macro metrics."""
    return {
        m: dict(zip(("mean", "std"), mean_std(np.array([_value(r["metrics"][m]) for r in runs])))) for m in METRIC_NAMES
    }


def paired_values(runs: list[dict], baseline_runs: list[dict], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The macro `metric` of `runs` and of `baseline_runs` over the (fold, seed) pairs both have, pair by pair."""
    mine, base = ({(r["fold"], r["seed"]): r for r in rs} for rs in (runs, baseline_runs))
    keys = sorted(mine.keys() & base.keys())
    x, y = (np.array([_value(rs[k]["metrics"][metric]) for k in keys]) for rs in (mine, base))
    return x, y


def summarize(
    records: list[dict],
    conditions: list[Condition],
    label_names: tuple[str, ...],
    test: str = "ttest",
    test_metric: str = "mAP",
) -> list[dict]:
    """Per-condition aggregates and the paired test against the geometric baseline, in Table B's row order.

    Args:
        records: run records (see downstream.study.run_one).
        conditions: the study's conditions.
        label_names: the K labels.
        test: "ttest" or "wilcoxon".
        test_metric: the macro metric the test compares run by run.

    Returns:
        One dict per condition: name, display_name, kind, n_runs, metrics {m: {mean, std}}, per_label
        {m: {label: {mean, std}}}, and test {p_value, stars, statistic, n_pairs, note} (stars "-" for the baseline).
    """
    by_condition = {c.name: [r for r in records if r["condition"] == c.name] for c in conditions}
    baseline = next((c for c in conditions if c.kind == "geometric"), None)
    summaries = []
    for c in table_order(conditions):
        runs = by_condition[c.name]
        metrics = _aggregate(runs)
        per_label = {}
        for m in METRIC_NAMES:
            per_label[m] = {}
            for label in label_names:
                mean, std = mean_std(np.array([_value(r["per_label"][m][label]) for r in runs]))
                per_label[m][label] = {"mean": mean, "std": std}
        if baseline is None:
            result = {"p_value": float("nan"), "stars": "n/a", "statistic": float("nan"), "n_pairs": 0}
            result["note"] = "no 'geometric' baseline condition in this study"
        elif c is baseline:
            result = {"p_value": None, "stars": "-", "statistic": None, "n_pairs": None, "note": "baseline"}
        else:
            outcome = paired_test(*paired_values(runs, by_condition[baseline.name], test_metric), test)
            result = {
                "p_value": outcome.p_value,
                "stars": stars(outcome.p_value),
                "statistic": outcome.statistic,
                "n_pairs": outcome.n_pairs,
                "note": outcome.note,
            }
        summaries.append(
            {
                "name": c.name,
                "display_name": c.display_name,
                "kind": c.kind,
                "sample_dir": c.sample_dir,
                "n_runs": len(runs),
                "metrics": metrics,
                "per_label": per_label,
                "test": result,
            }
        )
    return summaries


def summarize_label_fidelity(
    summaries: list[dict], gan_test_records: list[dict], conditions: list[Condition], gan_test_note: str = ""
) -> list[dict]:
    """The label-fidelity rows: the real-data reference, then one row per synthetic set.

    Args:
        summaries: the per-condition summaries (see summarize); GAN-train is a `synthetic-only` condition's.
        gan_test_records: GAN-test records (see downstream.label_fidelity.run_gan_test); `available` False ones
            carry the reason.
        conditions: the study's conditions.
        gan_test_note: why GAN-test was not computed at all (e.g. "--no-gan-test"), or "".

    Returns:
        Dicts {name, sample_dir, reference, gan_test, gan_train}; each score is {n_runs, metrics {m: {mean, std}},
        note} and GAN-train also names its `condition`. The reference row holds the baseline's scores on the real
        evaluated split in both places (train on real, test on real). Empty without synthetic sets.
    """
    sets = synthetic_sets(conditions)
    if not sets:
        return []
    by_name = {s["name"]: s for s in summaries}
    rows = []
    base = next((c for c in conditions if c.kind == BASELINE), None)
    if base is not None:
        ref = by_name[base.name]
        score = {"n_runs": ref["n_runs"], "metrics": ref["metrics"], "note": ""}
        rows.append(
            {
                "name": REAL_REFERENCE,
                "sample_dir": None,
                "reference": True,
                "gan_test": score,
                "gan_train": {**score, "condition": base.name},
            }
        )
    for set_name, sample_dir in sets.items():
        mine = [r for r in gan_test_records if r["set"] == set_name]
        available = [r for r in mine if r["available"]]
        reasons = sorted({r["reason"] for r in mine if not r["available"]})
        if not mine:
            note = gan_test_note
        elif reasons:
            note = f"{len(mine) - len(available)} of {len(mine)} runs n/a: " + "; ".join(reasons)
        else:
            note = ""
        gan_test = {"n_runs": len(available), "metrics": _aggregate(available), "note": note}
        only = next((c for c in conditions if c.kind == "synthetic-only" and c.set_name == set_name), None)
        if only is None:
            nan = {m: {"mean": float("nan"), "std": float("nan")} for m in METRIC_NAMES}
            gan_train = {
                "condition": None,
                "n_runs": 0,
                "metrics": nan,
                "note": f"no synthetic-only:{set_name}=DIR condition in this study",
            }
        else:
            s = by_name[only.name]
            gan_train = {"condition": only.name, "n_runs": s["n_runs"], "metrics": s["metrics"], "note": ""}
        rows.append(
            {
                "name": set_name,
                "sample_dir": sample_dir,
                "reference": False,
                "gan_test": gan_test,
                "gan_train": gan_train,
            }
        )
    return rows


def label_fidelity_table(rows: list[dict]) -> str:
    """One row per synthetic set (and the real reference): GAN-test and GAN-train mean ± std in percent."""
    header = [
        "Synthetic set",
        *(f"GAN-test {m}{_ARROW}" for m in FIDELITY_METRICS),
        *(f"GAN-train {m}{_ARROW}" for m in FIDELITY_METRICS),
    ]
    cells = [
        [
            row["name"],
            *(_cell(row[score]["metrics"][m]) for score in ("gan_test", "gan_train") for m in FIDELITY_METRICS),
        ]
        for row in rows
    ]
    return markdown_table(header, cells)


def label_fidelity_section(rows: list[dict], meta: dict) -> list[str]:
    """The "Label fidelity" section of results.md: the table and how to read it."""
    notes = [
        "GAN-test (Shmelkov, Schmid and Alahari, ECCV 2018): the baseline classifier (real training images, "
        "geometric augmentation, same fold and seed) scores each set's synthetic validation copy "
        "(`val_syn_<fold>.csv`, one image per real validation label vector) against the labels the images were "
        "generated for. High when the generated images show their labels (precision-like).",
        "GAN-train, the Classification Accuracy Score (Ravuri and Vinyals, NeurIPS 2019): a classifier trained on "
        "the synthetic set alone (`train_syn_<fold>.csv`, condition `synthetic-only:NAME=DIR`; model selection on "
        "the real validation split) is evaluated on the real evaluated split, like every condition (its row in the "
        "table above). High when the set covers the real label structure (recall/diversity-like).",
        f"{REAL_REFERENCE}: the baseline on the real evaluated split, what both scores would reach if the synthetic "
        "images were as informative as real ones.",
        "Mean ± sample standard deviation (ddof = 1) over folds x seeds, in percent; macro over labels as in the "
        f"main table; sigmoid threshold {meta.get('train_config', {}).get('threshold', 0.5)} for F1 (sen/spe).",
    ]
    for row in rows:
        for label, score in (("GAN-test", row["gan_test"]), ("GAN-train", row["gan_train"])):
            if score["note"]:
                notes.append(f"{row['name']}: {label} {score['note']}")
    return ["## Label fidelity", "", label_fidelity_table(rows), "", *(f"- {n}" for n in notes), ""]


def runs_frame(records: list[dict], label_names: tuple[str, ...]) -> pd.DataFrame:
    """One row per (condition, fold, seed): kind, sizes, selection, the six macro metrics, then `{metric}[{label}]`.

    GAN-test records appear with condition `GAN-test:{set}`, kind `gan-test` and eval_split `val_syn`.
    """
    rows = []
    for r in records:
        row = {"condition": r["condition"], "kind": r.get("kind")}
        row.update({k: r[k] for k in ("fold", "seed", "eval_split", "n_train_real", "n_train_synthetic")})
        row.update({k: r[k] for k in ("n_eval", "best_epoch", "epochs_run", "best_val_mAP", "config_hash")})
        row.update({m: _value(r["metrics"][m]) for m in METRIC_NAMES})
        row.update({f"{m}[{lab}]": _value(r["per_label"][m][lab]) for m in METRIC_NAMES for lab in label_names})
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(stat: dict) -> str:
    mean, std = stat["mean"], stat["std"]
    if math.isnan(mean):
        return "n/a"
    return f"{100 * mean:.2f} ± " + ("n/a" if math.isnan(std) else f"{100 * std:.2f}")


def _p_cell(result: dict) -> str:
    if result["stars"] == "-":
        return "-"
    p = result["p_value"]
    return result["stars"] if math.isnan(p) else f"{result['stars']} (p = {p:.2g})"


def table_b(summaries: list[dict]) -> str:
    """Table B's layout: one row per condition, mean ± std in percent, p-value stars ("-" for the baseline)."""
    header = ["Synthetic data", *(f"{m}{_ARROW}" for m in METRIC_NAMES), "p-value"]
    rows = [[s["display_name"], *(_cell(s["metrics"][m]) for m in METRIC_NAMES), _p_cell(s["test"])] for s in summaries]
    return markdown_table(header, rows)


def markdown_report(summaries: list[dict], meta: dict, fidelity: list[dict] | None = None) -> str:
    """results.md: Table B and how to read it, then the label-fidelity section when `fidelity` has rows."""
    test = meta["test"]
    notes = [
        f"Mean ± sample standard deviation (ddof = 1) over {meta['n_folds']} fold(s) x {meta['n_seeds']} seed(s) "
        "per condition, in percent; metrics are computed per label, then averaged over labels without weights.",
        f"p-value: {TEST_DESCRIPTIONS[test['name']]} of each condition's per-run {test['metric']} against "
        "Baseline (Geometric Aug), runs paired by (fold, seed); * p < 0.05, ** p < 0.01, *** p < 0.001, "
        "**** p < 0.0001, ns otherwise; n/a when it cannot be computed.",
        f"Evaluated split: {meta['eval_split_note']}",
        f"Classifier: {meta['arch']}, {meta['pretrained_note']}",
    ]
    for s in summaries:
        if s["test"]["note"] not in ("", "baseline"):
            notes.append(f"{s['display_name']}: p-value n/a: {s['test']['note']}")
    notes += meta.get("warnings", [])
    lines = ["# Downstream multi-label classification", "", table_b(summaries), "", *(f"- {n}" for n in notes)]
    if fidelity:
        lines += ["", *label_fidelity_section(fidelity, meta)]
    return "\n".join([*lines, ""])


def plot_per_label(path: Path, summaries: list[dict], label_names: tuple[str, ...]) -> None:
    """Grouped bars of the per-label F1 and AP (mean over runs, std as error bars), one bar per condition."""
    # A bare Figure renders through the Agg canvas without touching pyplot's global backend.
    fig = Figure(figsize=(max(6.0, 0.9 * len(label_names) + 2), 7))
    axes = fig.subplots(len(CHART_METRICS), 1, squeeze=False)
    width = 0.8 / max(len(summaries), 1)
    x = np.arange(len(label_names))
    for ax, metric in zip(axes[:, 0], CHART_METRICS):
        for i, s in enumerate(summaries):
            stats = s["per_label"][metric]
            means = [100 * stats[lab]["mean"] for lab in label_names]
            stds = [0.0 if math.isnan(stats[lab]["std"]) else 100 * stats[lab]["std"] for lab in label_names]
            ax.bar(x + (i - (len(summaries) - 1) / 2) * width, means, width, yerr=stds, label=s["display_name"])
        ax.set_xticks(x, label_names)
        ax.set_ylabel(f"{'AP' if metric == 'mAP' else metric} (%)")
        ax.set_ylim(0, 100)
    axes[0, 0].legend(fontsize="small", ncol=2)
    axes[0, 0].set_title("Per-label results (mean ± std over runs)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def write_results(
    out_dir: Path,
    records: list[dict],
    summaries: list[dict],
    label_names: tuple[str, ...],
    meta: dict,
    fidelity: list[dict] | None = None,
    gan_test_records: list[dict] | None = None,
) -> list[Path]:
    """Write results.csv, results.json, results.md and the per-label chart into `out_dir`; returns their paths.

    Args:
        out_dir: output folder.
        records: the training runs.
        summaries: their per-condition summaries (see summarize).
        label_names: the K labels.
        meta: study settings and notes (results.json's top-level keys).
        fidelity: label-fidelity rows (see summarize_label_fidelity), or None.
        gan_test_records: GAN-test records (per-image scores left out), or None; the available ones also become
            rows of results.csv.

    results.json holds meta, "label_names", "summary", "runs" and, with label fidelity, "label_fidelity":
    {"summary": rows, "gan_test": records}.
    """
    paths = [out_dir / name for name in ("results.csv", "results.json", "results.md", CHART_FILE)]
    gan_test_records = gan_test_records or []
    scored = [r for r in gan_test_records if r["available"]]
    atomic_write_text(paths[0], runs_frame(records + scored, label_names).to_csv(index=False))
    document = {**meta, "label_names": list(label_names), "summary": summaries, "runs": records}
    if fidelity:
        document["label_fidelity"] = {"summary": fidelity, "gan_test": gan_test_records}
    atomic_write_text(paths[1], json.dumps(_json_safe(document), indent=1))
    atomic_write_text(paths[2], markdown_report(summaries, meta, fidelity))
    plot_per_label(paths[3], summaries, label_names)
    return paths
