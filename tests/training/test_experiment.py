"""The run's metrics.csv (training/experiment.py): truncation on resume and rows across a new column."""

from __future__ import annotations

import csv

from training.experiment import METRIC_FIELDS, append_metrics, truncate_metrics


def test_truncate_metrics_drops_later_rows_a_torn_line_and_a_redone_validation(tmp_path):
    path = tmp_path / "metrics.csv"
    header = ",".join(METRIC_FIELDS)
    rows = ["1,0,0.5,1,4,,,", "2,0,0.4,1,4,,,", "2,0,,,,0.1,0.01,0.002", "3,1,0.3,1,4,,,", "4,1,0.2"]
    path.write_text("\n".join([header, *rows]))  # the last line was cut by a kill: no newline
    truncate_metrics(path, 3)
    assert path.read_text().splitlines()[1:] == rows[:4]
    truncate_metrics(path, 2, drop_kid_at_last_step=True)
    assert path.read_text().splitlines()[1:] == rows[:2]


def test_metrics_of_a_run_resumed_across_a_new_column_keep_their_rows(tmp_path):
    """A metrics.csv written before kid_se existed gets the current header when a resumed run truncates it, and the
    next row lands in the right column."""
    path = tmp_path / "metrics.csv"
    path.write_text("step,epoch,loss,steps_per_sec,images_per_sec,kid_mean,kid_std\n2,0,,,,0.1,0.01\n")
    truncate_metrics(path, 2)
    append_metrics(path, {"step": 4, "epoch": 1, "kid_mean": "0.05", "kid_std": "0.02", "kid_se": "0.004"})
    rows = list(csv.DictReader(path.read_text().splitlines()))
    assert tuple(rows[0]) == METRIC_FIELDS
    assert [(r["step"], r["kid_mean"], r["kid_se"]) for r in rows] == [("2", "0.1", ""), ("4", "0.05", "0.004")]
