"""Aggregation and output of the study: results.csv, results.json, results.md (shaped like Table B) and a bar chart.

Run-level values are fractions in [0, 1] (CSV, JSON); the Markdown table shows percentages like the paper.
Aggregates are mean and sample standard deviation (ddof = 1) over the folds x seeds runs of a condition.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from downstream.conditions import Condition, table_order
from downstream.metrics import METRIC_NAMES, mean_std
from downstream.significance import TEST_DESCRIPTIONS, paired_test, stars
from infra.atomic_io import atomic_write, atomic_write_text

CHART_METRICS: tuple[str, ...] = ("F1", "mAP")
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
    base_runs = {} if baseline is None else {(r["fold"], r["seed"]): r for r in by_condition[baseline.name]}
    summaries = []
    for c in table_order(conditions):
        runs = by_condition[c.name]
        metrics = {}
        for m in METRIC_NAMES:
            mean, std = mean_std(np.array([_value(r["metrics"][m]) for r in runs]))
            metrics[m] = {"mean": mean, "std": std}
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
            keys = sorted(set(base_runs) & {(r["fold"], r["seed"]) for r in runs})
            mine = {(r["fold"], r["seed"]): r for r in runs}
            outcome = paired_test(
                np.array([_value(mine[k]["metrics"][test_metric]) for k in keys]),
                np.array([_value(base_runs[k]["metrics"][test_metric]) for k in keys]),
                test,
            )
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


def runs_frame(records: list[dict], label_names: tuple[str, ...]) -> pd.DataFrame:
    """One row per (condition, fold, seed): sizes, selection, the six macro metrics, then `{metric}[{label}]`."""
    rows = []
    for r in records:
        row = {k: r[k] for k in ("condition", "fold", "seed", "eval_split", "n_train_real", "n_train_synthetic")}
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


def markdown_table(summaries: list[dict]) -> str:
    """Table B's layout: one row per condition, mean ± std in percent, p-value stars ("-" for the baseline)."""
    header = ["Synthetic data", *(f"{m}{_ARROW}" for m in METRIC_NAMES), "p-value"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summaries:
        cells = [s["display_name"], *(_cell(s["metrics"][m]) for m in METRIC_NAMES), _p_cell(s["test"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_report(summaries: list[dict], meta: dict) -> str:
    """results.md: the table, then how to read it (runs, test, evaluated split, weights, undefined labels)."""
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
    return "\n".join(
        ["# Downstream multi-label classification", "", markdown_table(summaries), "", *(f"- {n}" for n in notes), ""]
    )


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
    out_dir: Path, records: list[dict], summaries: list[dict], label_names: tuple[str, ...], meta: dict
) -> list[Path]:
    """Write results.csv, results.json, results.md and the per-label chart into `out_dir`; returns their paths."""
    paths = [out_dir / name for name in ("results.csv", "results.json", "results.md", CHART_FILE)]
    atomic_write_text(paths[0], runs_frame(records, label_names).to_csv(index=False))
    document = {**meta, "label_names": list(label_names), "summary": summaries, "runs": records}
    atomic_write_text(paths[1], json.dumps(_json_safe(document), indent=1))
    atomic_write_text(paths[2], markdown_report(summaries, meta))
    plot_per_label(paths[3], summaries, label_names)
    return paths
