"""Aggregation, significance pairing and the three result files, on fabricated run records."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from downstream.conditions import parse_conditions
from downstream.metrics import METRIC_NAMES
from downstream.report import markdown_report, summarize, summarize_label_fidelity, write_results

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


GAN_TEST = {(0, 0): 0.80, (0, 1): 0.84, (1, 0): 0.78}  # fold 1 seed 1: no validation copy


def _gan_test_records() -> list[dict]:
    out = []
    for (fold, seed), value in GAN_TEST.items():
        record = _record("GAN-test:S", fold, seed, value)
        record.update(kind="gan-test", set="S", available=True, reason=None, eval_split="val_syn")
        out.append(record)
    out.append({"condition": "GAN-test:S", "set": "S", "fold": 1, "seed": 1, "available": False, "reason": "no copy"})
    return out


def test_label_fidelity_rows():
    conditions = parse_conditions(["geometric", "synthetic:S=dir", "synthetic-only:S=dir", "synthetic:T=other"])
    records = _records() + [_record("S (synthetic only)", f, s, v - 0.2) for (f, s), v in SYN.items()]
    summary = summarize(records, conditions, LABELS)
    rows = summarize_label_fidelity(summary, _gan_test_records(), conditions)
    assert [r["name"] for r in rows] == ["Real images (reference)", "S", "T"]
    reference, s_row, t_row = rows
    # The reference holds the baseline's own scores in both places.
    assert reference["gan_test"]["metrics"]["mAP"]["mean"] == pytest.approx(np.mean(list(BASE.values())))
    assert reference["gan_train"]["metrics"] == reference["gan_test"]["metrics"]
    # GAN-test: mean and sample std over the available runs only, the missing one named in the note.
    values = list(GAN_TEST.values())
    assert s_row["gan_test"]["n_runs"] == 3
    assert s_row["gan_test"]["metrics"]["AUC"]["mean"] == pytest.approx(np.mean(values))
    assert s_row["gan_test"]["metrics"]["AUC"]["std"] == pytest.approx(np.std(values, ddof=1))
    assert s_row["gan_test"]["note"] == "1 of 4 runs n/a: no copy"
    # GAN-train: the synthetic-only condition's own summary.
    only = [v - 0.2 for v in SYN.values()]
    assert s_row["gan_train"]["condition"] == "S (synthetic only)"
    assert s_row["gan_train"]["metrics"]["mAP"]["mean"] == pytest.approx(np.mean(only))
    # A set without copies or synthetic-only condition: n/a with notes.
    assert math.isnan(t_row["gan_test"]["metrics"]["mAP"]["mean"]) and t_row["gan_test"]["n_runs"] == 0
    assert "synthetic-only:T=DIR" in t_row["gan_train"]["note"]
    assert summarize_label_fidelity(summary, [], parse_conditions(["geometric", "noaug"])) == []

    text = markdown_report(summary, META, rows)
    fidelity_lines = text.split("## Label fidelity")[1].splitlines()
    s_line = next(line for line in fidelity_lines if line.startswith("| S |"))
    cells = [c.strip() for c in s_line.strip("|").split("|")]
    assert cells[1] == f"{100 * np.mean(values):.2f} ± {100 * np.std(values, ddof=1):.2f}"
    assert cells[6] == f"{100 * np.mean(only):.2f} ± {100 * np.std(only, ddof=1):.2f}"
    t_line = next(line for line in fidelity_lines if line.startswith("| T |"))
    assert t_line.count("n/a") == 6 and "S: GAN-test 1 of 4 runs n/a: no copy" in text


def test_written_files_carry_label_fidelity(tmp_path):
    conditions = parse_conditions(["geometric", "synthetic:S=dir"])
    records = _records()
    summary = summarize(records, conditions, LABELS)
    gan_test = _gan_test_records()
    rows = summarize_label_fidelity(summary, gan_test, conditions)
    paths = write_results(tmp_path, records, summary, LABELS, META, rows, gan_test)
    frame = pd.read_csv(paths[0])
    gan_rows = frame[frame["condition"] == "GAN-test:S"]
    assert len(gan_rows) == 3 and set(gan_rows["kind"]) == {"gan-test"}  # the unavailable run has no row
    assert sorted(gan_rows["mAP"]) == pytest.approx(sorted(GAN_TEST.values()))
    document = json.loads(paths[1].read_text())
    assert [r["name"] for r in document["label_fidelity"]["summary"]] == ["Real images (reference)", "S"]
    assert len(document["label_fidelity"]["gan_test"]) == 4
    assert "summary" in document and "runs" in document  # the keys readers already use stay
