"""Aggregation, significance pairing and the three result files, on fabricated run records."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from downstream.conditions import parse_conditions
from downstream.metrics import METRIC_NAMES
from downstream.report import markdown_report, summarize, write_results

LABELS = ("A", "B")


def _record(condition: str, fold: int, seed: int, value: float) -> dict:
    metrics = {m: value for m in METRIC_NAMES}
    per_label = {m: {"A": value, "B": None} for m in METRIC_NAMES}  # B undefined (NaN) in every run
    return {
        "condition": condition,
        "fold": fold,
        "seed": seed,
        "eval_split": "test",
        "n_train_real": 10,
        "n_train_synthetic": 0,
        "n_eval": 5,
        "best_epoch": 1,
        "epochs_run": 2,
        "best_val_mAP": value,
        "config_hash": "abc",
        "metrics": metrics,
        "per_label": per_label,
    }


BASE = {(0, 0): 0.60, (0, 1): 0.62, (1, 0): 0.58, (1, 1): 0.61}
SYN = {(0, 0): 0.66, (0, 1): 0.65, (1, 0): 0.63, (1, 1): 0.67}


def _records() -> list[dict]:
    # Synthetic runs listed in a different order than the baseline: pairing must go by (fold, seed).
    out = [_record("geometric", f, s, v) for (f, s), v in BASE.items()]
    out += [_record("S", f, s, v) for (f, s), v in reversed(SYN.items())]
    out += [_record("noaug", 0, 0, 0.5)]
    return out


META = {
    "n_folds": 2,
    "n_seeds": 2,
    "test": {"name": "ttest", "metric": "mAP"},
    "arch": "tiny",
    "eval_split_note": "test",
    "pretrained_note": "random init",
    "warnings": ["a warning"],
}


def test_summary_pairs_runs_and_matches_scipy():
    conditions = parse_conditions(["synthetic:S=dir", "noaug", "geometric"])
    summary = summarize(_records(), conditions, LABELS, "ttest", "mAP")
    assert [s["name"] for s in summary] == ["geometric", "noaug", "S"]
    keys = sorted(BASE)
    ref = stats.ttest_rel([SYN[k] for k in keys], [BASE[k] for k in keys])
    syn = summary[2]
    assert syn["test"]["p_value"] == pytest.approx(ref.pvalue, rel=1e-12)
    assert syn["test"]["n_pairs"] == 4
    assert syn["metrics"]["mAP"]["mean"] == pytest.approx(np.mean(list(SYN.values())))
    assert syn["metrics"]["mAP"]["std"] == pytest.approx(np.std(list(SYN.values()), ddof=1))
    assert math.isnan(syn["per_label"]["F1"]["B"]["mean"])
    assert summary[0]["test"]["stars"] == "-"
    # One noaug run pairs with one baseline run: fewer than 2 pairs -> NaN with a note.
    assert math.isnan(summary[1]["test"]["p_value"]) and "at least 2" in summary[1]["test"]["note"]


def test_no_baseline_is_reported():
    summary = summarize(_records(), parse_conditions(["synthetic:S=dir", "noaug"]), LABELS)
    assert all(s["test"]["stars"] == "n/a" and "baseline" in s["test"]["note"] for s in summary)


def test_markdown_has_table_b_shape():
    summary = summarize(_records(), parse_conditions(["geometric", "synthetic:S=dir"]), LABELS)
    text = markdown_report(summary, META)
    header = "| Synthetic data | Sen↑ | Spe↑ | AUC↑ | F1↑ | F1 (sen/spe)↑ | mAP↑ | p-value |"
    assert header in text
    base_row = next(line for line in text.splitlines() if line.startswith("| Baseline (Geometric Aug)"))
    assert base_row.endswith("| - |") and "60.25 ± 1.71" in base_row
    assert "ddof = 1" in text and "a warning" in text


def test_written_files(tmp_path):
    records = _records()
    summary = summarize(records, parse_conditions(["geometric", "noaug", "synthetic:S=dir"]), LABELS)
    paths = write_results(tmp_path, records, summary, LABELS, META)
    assert [p.name for p in paths] == ["results.csv", "results.json", "results.md", "per_label.png"]

    def no_nan(token: str) -> None:
        raise AssertionError(f"non-standard JSON constant {token}")

    document = json.loads(paths[1].read_text(), parse_constant=no_nan)
    assert document["summary"][2]["per_label"]["mAP"]["B"]["mean"] is None
    csv_header = paths[0].read_text().splitlines()[0].split(",")
    assert {"condition", "fold", "seed", *METRIC_NAMES, "mAP[A]"} <= set(csv_header)
    assert paths[3].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
