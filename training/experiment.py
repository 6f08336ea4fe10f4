"""The experiment folder and its records: log.txt, metrics.csv and loss_curve.png.

Until every input is checked there is no folder (a run that fails its checks leaves none behind): the console logger
keeps its records, which `open_experiment` replays into log.txt once the folder exists.
"""

from __future__ import annotations

import csv
import logging
import logging.handlers
from pathlib import Path

from infra.atomic_io import atomic_write_text, remove_stale_temps
from infra.distributed import all_gather_objects
from infra.logs import create_logger
from infra.naming import experiment_dir
from infra.plots import Panel, Series, plot_panels

METRIC_FIELDS = ("step", "epoch", "loss", "steps_per_sec", "images_per_sec", "kid_mean", "kid_std", "kid_se")


def console_logger(rank: int) -> tuple[logging.Logger, logging.handlers.BufferingHandler]:
    """train.py's logger before the folder exists: console only, every record also kept for log.txt."""
    logger = create_logger("train", None, rank)
    early_records = logging.handlers.BufferingHandler(capacity=100_000)
    logger.addHandler(early_records)
    return logger, early_records


def open_experiment(
    results_dir: str, model: str, fold: int, resume_path: Path | None, accelerator, early_records: list
) -> tuple[Path, logging.Logger]:
    """Create (rank 0) the experiment folder, or reuse a resumed checkpoint's, and log into its log.txt from now on.

    The folder is cleared of the temporary files of writes a killed run left behind; the console records made
    before it existed are replayed into log.txt.

    Args:
        results_dir: `--results-dir`, parent of a new `{NNN}-{model}-{fold}` folder.
        model: `--model`.
        fold: `--fold`.
        resume_path: the checkpoint a resumed run continues from (its folder is reused), or None.
        accelerator: the run's Accelerator (ranks).
        early_records: the records the console logger kept.

    Returns:
        The experiment folder and the logger that writes into its log.txt (rank 0).
    """
    if resume_path is not None:
        exp_dir = resume_path.parent.parent
    else:
        exp_dir = experiment_dir(results_dir, model, fold) if accelerator.is_main_process else None
        exp_dir = all_gather_objects(exp_dir)[0] if accelerator.num_processes > 1 else exp_dir
    stale = []
    if accelerator.is_main_process:
        (exp_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        (exp_dir / "samples").mkdir(exist_ok=True)
        stale = remove_stale_temps(exp_dir)
    accelerator.wait_for_everyone()
    logger = create_logger("train", exp_dir if accelerator.is_main_process else None, accelerator.process_index)
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            for record in early_records:
                handler.handle(record)
    logger.info(
        f"Experiment directory {exp_dir}; device {accelerator.device}, {accelerator.num_processes} process(es), "
        f"mixed precision {accelerator.mixed_precision}"
    )
    if stale:
        logger.info(f"Removed {len(stale)} temporary file(s) of interrupted writes: {[str(p) for p in stale[:5]]}")
    return exp_dir, logger


def append_metrics(path: Path, row: dict) -> None:
    """Append one row to metrics.csv (header written on first use). A resumed run's file was rewritten with the
    current header by `truncate_metrics`, also when it was written before a column was added."""
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in METRIC_FIELDS})


def truncate_metrics(path: Path, last_step: int, drop_kid_at_last_step: bool = False) -> None:
    """Drop rows logged after the checkpoint a run resumes from, so the curve has no duplicate steps.

    A last line that a killed run left half written is dropped too. With `drop_kid_at_last_step`, so is the KID row
    at `last_step`: the checkpoint preceded that validation, which the resumed run redoes.
    """
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]
    kept = []
    for row in csv.DictReader(lines):
        try:
            step = int(row["step"])
        except (TypeError, ValueError):
            continue
        if step > last_step or (drop_kid_at_last_step and step == last_step and row.get("kid_mean")):
            continue
        kept.append(row)
    out = [",".join(METRIC_FIELDS)] + [",".join(r.get(k, "") or "" for k in METRIC_FIELDS) for r in kept]
    atomic_write_text(path, "\n".join(out) + "\n")


def plot_curves(metrics_csv: Path, out_png: Path) -> None:
    """Loss (and KID, when measured) against optimiser step, from metrics.csv."""
    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    loss = [(int(r["step"]), float(r["loss"])) for r in rows if r["loss"]]
    kid = [(int(r["step"]), float(r["kid_mean"]) * 1e3) for r in rows if r["kid_mean"]]
    panels = [Panel("training loss", "optimiser step", "train loss (MSE + VB)", [Series(loss)])]
    if kid:
        panels.append(Panel("validation KID", "optimiser step", "KID x 1e3", [Series(kid, fmt="o-")]))
    plot_panels(out_png, panels)
