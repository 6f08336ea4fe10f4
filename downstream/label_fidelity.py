"""GAN-test: how well a synthetic set's images show the labels they were generated for (docs/DECISIONS.md §C7).

GAN-test (Shmelkov, Schmid and Alahari, "How good is my GAN?", ECCV 2018) scores generated images with a classifier
trained on real images, against the labels the images were generated for: high when every generated image shows its
labels (a precision-like measure of a conditional generator). Here the classifier is the study's own baseline run
(real training images, geometric augmentation) of the same fold and seed, and the images are the synthetic set's
validation copy, `{sample_dir}/val_syn_{fold}.csv` (one image per real validation label vector, written by
sample_ddp_val.py). The scores are the macro metrics of Table B (downstream/metrics.py), computed exactly as for the
real test split. Its counterpart GAN-train (train on synthetic only, test on real) is a training condition,
`synthetic-only:[NAME=]DIR` (downstream/conditions.py).

Each score is one small JSON in `{out}/runs/gan_test/`, named by set, fold, seed and a hash of the baseline run's
key, the SHA-256 of the baseline's saved weights and the fingerprint of the validation copy (CSV bytes, image sizes
and modification times). A rerun reuses it; a retrained baseline or a regenerated copy is scored again. The JSON
also holds the per-image sigmoid scores, so any other metric can be computed from it later.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch

from downstream.conditions import Condition, fold_folder
from downstream.metrics import macro_average, per_label_metrics
from downstream.splits import FoldData, datasets_fingerprint
from downstream.study import (
    RUNS_DIR,
    StudySetup,
    finite_or_none,
    fmt_metric,
    load_state,
    run_hash,
    run_path,
    state_path,
)
from downstream.training import TrainConfig, predict_with_state
from infra.atomic_io import atomic_write_text
from infra.provenance import file_sha256

GAN_TEST_DIR = "gan_test"
# Bump when the meaning of a stored GAN-test record changes, so old files are not reused.
GAN_TEST_FORMAT = 1
GAN_TEST_KIND = "gan-test"
# Keys of a record that results.json leaves out (they stay in the record's own file).
BULKY_KEYS: tuple[str, ...] = ("scores",)


def gan_test_name(set_name: str) -> str:
    """The `condition` entry of a GAN-test record in results.csv/json: `GAN-test:{set}`."""
    return f"GAN-test:{set_name}"


def gan_test_hash(baseline_key: str, state_file: Path, fold_data: FoldData, set_name: str) -> str:
    """12 hex digits identifying one GAN-test score: the baseline run, its exact weights, and the validation copy."""
    copy = fold_data.synthetic_val[set_name]
    payload = {
        "format": GAN_TEST_FORMAT,
        "baseline": baseline_key,
        "weights_sha256": file_sha256(state_file),
        "sample_dir": str(copy.root.resolve()),
        "val_syn_sha256": datasets_fingerprint([copy]),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def gan_test_path(out_dir: Path, set_name: str, fold: int, seed: int, key: str) -> Path:
    """`{out}/runs/gan_test/{set}_fold{fold}_seed{seed}_{hash}.json` (set name made file-safe)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", set_name)
    return out_dir / RUNS_DIR / GAN_TEST_DIR / f"{safe}_fold{fold}_seed{seed}_{key}.json"


def score_copy(
    cfg: TrainConfig,
    state: dict[str, torch.Tensor],
    fold_data: FoldData,
    set_name: str,
    label_names: tuple[str, ...],
    device: torch.device,
    num_workers: int = 0,
    eval_batch_size: int = 32,
) -> dict:
    """The GAN-test metrics of one synthetic set's validation copy under one baseline classifier.

    Args:
        cfg: the study's protocol settings (architecture, input size, threshold).
        state: the baseline classifier's weights.
        fold_data: the fold; `fold_data.synthetic_val[set_name]` is scored.
        set_name: the synthetic set.
        label_names: the K labels.
        device: compute device.
        num_workers: DataLoader workers.
        eval_batch_size: batch size.

    Returns:
        {"n_eval", "metrics" {name: macro value}, "per_label" {name: {label: value}}, "scores" (N, K) list}: NaN
        (undefined) entries as None.
    """
    labels, scores = predict_with_state(
        cfg, state, fold_data.synthetic_val[set_name], device, num_workers, eval_batch_size
    )  # (N, K) each
    per_label = per_label_metrics(labels, scores, cfg.threshold)
    return {
        "n_eval": len(labels),
        "metrics": {k: finite_or_none(v) for k, v in macro_average(per_label).items()},
        "per_label": {m: dict(zip(label_names, map(finite_or_none, v))) for m, v in per_label.items()},
        "scores": scores.tolist(),
    }


def run_gan_test(
    setup: StudySetup, sets: dict[str, str], baseline: Condition | None, baseline_records: list[dict]
) -> list[dict]:
    """GAN-test of every synthetic set, fold and seed, reusing stored scores (the baseline runs must be finished).

    Args:
        setup: what the study's runs share (folds with their validation copies loaded, seeds, settings, paths).
        sets: {set NAME: sample folder (may contain `{fold}`)}.
        baseline: the baseline condition (None only when no fold has a validation copy to score).
        baseline_records: the baseline's run records (one per fold and seed).

    Returns:
        One record per (set, fold, seed), in that order: `available` False with a `reason` when the fold has no
        validation copy, else the metrics (as run records: `metrics`, `per_label`) and the baseline run's sizes.
    """
    cfg, label_names, out_dir, logger = setup.cfg, setup.label_names, setup.out_dir, setup.logger
    by_run = {(r["fold"], r["seed"]): r for r in baseline_records}
    records = []
    for set_name, sample_dir in sets.items():
        for fold, fold_data in setup.folds.items():
            for seed in setup.seeds:
                record = {
                    "condition": gan_test_name(set_name),
                    "display_name": set_name,
                    "kind": GAN_TEST_KIND,
                    "set": set_name,
                    "sample_dir": str(fold_folder(sample_dir, fold)),
                    "fold": fold,
                    "seed": seed,
                    "eval_split": "val_syn",
                }
                tag = f"GAN-test {set_name} fold {fold} seed {seed}"
                if set_name not in fold_data.synthetic_val:
                    reason = fold_data.synthetic_val_missing[set_name]
                    logger.info(f"{tag}: n/a: {reason}")
                    records.append({**record, "available": False, "reason": reason})
                    continue
                assert baseline is not None, "classify.prepare requires the baseline when a copy is to be scored"
                base_key = run_hash(cfg, setup.weights, label_names, baseline, setup.data_path, fold_data)
                base_file = run_path(out_dir, baseline, fold, seed, base_key)
                state_file = state_path(base_file)
                key = gan_test_hash(base_key, state_file, fold_data, set_name)
                path = gan_test_path(out_dir, set_name, fold, seed, key)
                if setup.resume and path.is_file():
                    logger.info(f"{tag}: resumed from {path}")
                    records.append(json.loads(path.read_text()))
                    continue
                base = by_run[(fold, seed)]
                scored = score_copy(
                    cfg,
                    load_state(state_file),
                    fold_data,
                    set_name,
                    label_names,
                    setup.device,
                    setup.num_workers,
                    setup.eval_batch_size,
                )
                record.update(
                    available=True,
                    reason=None,
                    baseline_run=base_file.name,
                    n_train_real=base["n_train_real"],
                    n_train_synthetic=base["n_train_synthetic"],
                    best_epoch=base["best_epoch"],
                    epochs_run=base["epochs_run"],
                    best_val_mAP=base["best_val_mAP"],
                    config_hash=key,
                    **scored,
                )
                atomic_write_text(path, json.dumps(record, indent=1))
                m = record["metrics"]
                logger.info(
                    f"{tag}: {record['n_eval']} images, AUC {fmt_metric(m['AUC'])}, "
                    f"F1 (sen/spe) {fmt_metric(m['F1 (sen/spe)'])}, mAP {fmt_metric(m['mAP'])} -> {path}"
                )
                records.append(record)
    return records


def without_bulk(record: dict) -> dict:
    """A GAN-test record without its per-image scores (for results.json)."""
    return {k: v for k, v in record.items() if k not in BULKY_KEYS}
