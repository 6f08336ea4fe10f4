"""The study loop: every (condition, fold, seed) run, each stored as its own small JSON so a rerun resumes.

A run's file name carries a hash of everything that decides its outcome (protocol settings, weight file, label
names, condition, data folders and the bytes of every CSV it reads), so changed settings or data are retrained,
never silently reused. Device and worker count are left out: they do not change what is being measured.

A run of the baseline condition (geometric augmentation) also keeps its selected weights beside its JSON
(`{run}.pt`, written first: the JSON marks the run finished), so that the GAN-test scores of downstream/
label_fidelity.py can be computed for any synthetic set, including one added to the study later, without training
again. A finished baseline run whose weights are missing is trained again when they are needed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from downstream.conditions import BASELINE, Condition
from downstream.metrics import macro_average, per_label_metrics
from downstream.splits import FoldData
from downstream.training import TrainConfig, run_training
from infra.atomic_io import atomic_torch_save, atomic_write_text

RUNS_DIR = "runs"
# Bump when the meaning of a stored run changes, so old run files are not reused.
RUN_FORMAT = 1


def weights_id(weights: Path | None) -> str | None:
    """Identity of a weight file for hashing: its name and size (not its folder, so a moved cache still matches)."""
    return None if weights is None else f"{weights.name}:{weights.stat().st_size}"


def run_hash(
    cfg: TrainConfig,
    weights: Path | None,
    label_names: tuple[str, ...],
    condition: Condition,
    data_path: Path,
    fold_data: FoldData,
) -> str:
    """12 hex digits identifying what one (condition, fold) run learns from; the seed is kept in the file name."""
    payload = {
        "format": RUN_FORMAT,
        "train": asdict(cfg),
        "weights": weights_id(weights),
        "labels": list(label_names),
        "kind": condition.kind,
        "data_path": str(data_path.resolve()),
        "sample_dir": None if condition.sample_dir is None else str(condition.folder(fold_data.fold).resolve()),
        "eval_split": fold_data.eval_split,
        "csv_sha256": fold_data.fingerprint(condition),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def run_path(out_dir: Path, condition: Condition, fold: int, seed: int, key: str) -> Path:
    """`{out}/runs/{condition}_fold{fold}_seed{seed}_{hash}.json` (condition name made file-safe)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", condition.name)
    return out_dir / RUNS_DIR / f"{safe}_fold{fold}_seed{seed}_{key}.json"


def state_path(run_file: Path) -> Path:
    """Where a baseline run keeps its selected classifier weights: beside its JSON, `.pt` instead of `.json`."""
    return run_file.with_suffix(".pt")


def save_state(path: Path, state: dict[str, torch.Tensor], cfg: TrainConfig, label_names: tuple[str, ...]) -> None:
    """Write a run's classifier weights atomically, with what is needed to rebuild the network."""
    atomic_torch_save({"state_dict": state, "arch": cfg.arch, "label_names": list(label_names)}, path)


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """The state dict written by save_state (tensors and plain containers only: weights_only loading)."""
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def finite_or_none(x: float) -> float | None:
    """NaN -> None (strict JSON), anything else -> float."""
    return None if x != x else float(x)


def fmt_metric(x: float | None) -> str:
    """A stored metric for a log line: 4 decimals, "nan" for None."""
    return "nan" if x is None else f"{x:.4f}"


def run_one(
    condition: Condition,
    fold_data: FoldData,
    seed: int,
    cfg: TrainConfig,
    label_names: tuple[str, ...],
    weights: Path | None,
    device: torch.device,
    num_workers: int,
    eval_batch_size: int,
    logger: logging.Logger,
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Train and evaluate one run.

    Returns:
        Its record (macro and per-label metrics, history, sizes, the training CSVs) and the selected weights.
    """
    fold = fold_data.fold
    desc = f"[{condition.name} fold {fold} seed {seed}]"
    train_sets = fold_data.train_sets(condition)
    start = time.time()
    outcome = run_training(
        cfg,
        train_sets,
        condition.augment,
        fold_data.val,
        fold_data.evaluation,
        seed,
        device,
        weights,
        num_workers,
        eval_batch_size,
        logger,
        desc,
    )
    per_label = per_label_metrics(outcome.labels, outcome.scores, cfg.threshold)
    macro = macro_average(per_label)
    return {
        "condition": condition.name,
        "display_name": condition.display_name,
        "kind": condition.kind,
        "sample_dir": None if condition.sample_dir is None else str(condition.folder(fold)),
        "fold": fold,
        "seed": seed,
        "eval_split": fold_data.eval_split,
        "n_train_real": len(fold_data.train) if condition.uses_real else 0,
        "n_train_synthetic": len(fold_data.synthetic[condition.name]) if condition.uses_synthetic else 0,
        "n_train": outcome.n_train,
        "train_csvs": [str(ds.csv_path) for ds in train_sets],
        "n_val": len(fold_data.val),
        "n_eval": len(fold_data.evaluation),
        "best_epoch": outcome.best_epoch,
        "epochs_run": len(outcome.history),
        "best_val_mAP": finite_or_none(outcome.best_val_map),
        "seconds": round(time.time() - start, 2),
        "metrics": {k: finite_or_none(v) for k, v in macro.items()},
        "per_label": {m: dict(zip(label_names, map(finite_or_none, v))) for m, v in per_label.items()},
        "history": [{k: finite_or_none(v) if k == "val_mAP" else v for k, v in h.items()} for h in outcome.history],
    }, outcome.state


@dataclass(frozen=True)
class StudySetup:
    """What every run of one classify.py study shares (run_study and run_gan_test take it whole).

    Attributes:
        folds: the study's folds (real splits, synthetic sets and validation copies loaded).
        seeds: training seeds per fold.
        cfg: protocol settings.
        label_names: the K labels.
        weights: the ImageNet weight file (part of every run's key), or None.
        data_path: the real dataset root (part of every run's key).
        out_dir: the study's output folder.
        device: compute device.
        logger: progress lines.
        num_workers: DataLoader workers.
        eval_batch_size: evaluation batch size.
        resume: reuse finished runs and stored scores.
    """

    folds: dict[int, FoldData]
    seeds: list[int]
    cfg: TrainConfig
    label_names: tuple[str, ...]
    weights: Path | None
    data_path: Path
    out_dir: Path
    device: torch.device
    logger: logging.Logger
    num_workers: int = 0
    eval_batch_size: int = 32
    resume: bool = True


def run_study(setup: StudySetup, conditions: list[Condition], baseline_weights_needed: bool = False) -> list[dict]:
    """Every (condition, fold, seed) run, loading finished ones from `{out}/runs/` instead of retraining them.

    Args:
        setup: what the runs share.
        conditions: the conditions that train.
        baseline_weights_needed: a finished baseline run counts as finished only when its weights file is there
            too (GAN-test reads it); otherwise it is trained again.

    Returns:
        The run records in (condition, fold, seed) order; each also carries its "config_hash".
    """
    folds, seeds, cfg, label_names, weights = setup.folds, setup.seeds, setup.cfg, setup.label_names, setup.weights
    data_path, out_dir, logger = setup.data_path, setup.out_dir, setup.logger
    records = []
    total = len(conditions) * len(folds) * len(seeds)
    done = 0
    for condition in conditions:
        for fold, fold_data in folds.items():
            key = run_hash(cfg, weights, label_names, condition, data_path, fold_data)
            for seed in seeds:
                done += 1
                path = run_path(out_dir, condition, fold, seed, key)
                is_baseline = condition.kind == BASELINE
                tag = f"run {done}/{total} {condition.name} fold {fold} seed {seed}"
                if setup.resume and path.is_file():
                    if is_baseline and baseline_weights_needed and not state_path(path).is_file():
                        logger.info(
                            f"{tag}: finished, but its weights (needed for GAN-test) are missing: training again"
                        )
                    else:
                        logger.info(f"{tag}: resumed from {path}")
                        records.append(json.loads(path.read_text()))
                        continue
                logger.info(f"{tag}: training (key {key})")
                record, state = run_one(
                    condition,
                    fold_data,
                    seed,
                    cfg,
                    label_names,
                    weights,
                    setup.device,
                    setup.num_workers,
                    setup.eval_batch_size,
                    logger,
                )
                record["config_hash"] = key
                if is_baseline:
                    save_state(state_path(path), state, cfg, label_names)
                atomic_write_text(path, json.dumps(record, indent=1))
                m = record["metrics"]
                logger.info(
                    f"{tag}: best epoch {record['best_epoch']}, {fold_data.eval_split} mAP {fmt_metric(m['mAP'])}, "
                    f"F1 {fmt_metric(m['F1'])} ({record['seconds']:.1f} s) -> {path}"
                )
                records.append(record)
    return records
