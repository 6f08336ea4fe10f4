"""Downstream multi-label classification study: real data, real + synthetic data, significance vs. geometric aug.

Trains a classifier (ResNet-50 by default, the FDDM-style protocol of docs/PAPER.md §B1, docs/DECISIONS.md §C6) for
every condition, fold and seed, evaluates it on the test split (or on val when a fold has no test CSV), and writes
results.csv, results.json, results.md (shaped like the paper's Table B) and per_label.png into --out. Finished runs are
resumed, not retrained. Label fidelity of each synthetic set (docs/DECISIONS.md §C7): GAN-test scores its validation
copy `val_syn_{fold}.csv` with the baseline classifier (on by default, `--no-gan-test` skips it); GAN-train is the
condition `synthetic-only:[NAME=]DIR`. Example (paper-like study, 5x synthetic sets written by sample_ddp.py for each
fold):

    python classify.py --data-path data/oct_multilabel --folds 0 1 2 3 4 --seeds 0 1 2 --out results_classify \
        --conditions geometric noaug \
        'synthetic:LDM-B=synthetic_oct/LDM-B-GS-fold-{fold}-nstep-250-best_ckpt-size-256-vae-ema-cfg-1.5-seed-0' \
        'synthetic:DiT-S=synthetic_oct/DiT-S-2-GS-fold-{fold}-nstep-250-best_ckpt-size-256-vae-ema-cfg-1.5-seed-0' \
        'synthetic:GeCA-S=synthetic_oct/GeCA-S-GS-fold-{fold}-nstep-250-best_ckpt-size-256-vae-ema-cfg-1.5-seed-0'
CPU demo on the phantom data:
    python classify.py --data-path data_local/oct_phantom --arch tiny --image-size 64 --epochs 5 --num-workers 0
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.contrib.logging import logging_redirect_tqdm

from data.datasets import label_names_for
from data.select import add_dataset_arguments, pick_dataset
from downstream.augment import RESIZE_MODES, AugmentConfig
from downstream.classifier import ARCHS, find_pretrained
from downstream.conditions import BASELINE, SYNTAX, Condition, parse_conditions, synthetic_sets
from downstream.label_fidelity import run_gan_test, without_bulk
from downstream.metrics import METRIC_NAMES, undefined_labels
from downstream.report import label_fidelity_table, summarize, summarize_label_fidelity, table_b, write_results
from downstream.significance import TEST_DESCRIPTIONS, TESTS
from downstream.splits import EVAL_SPLITS, FoldData, load_fold
from downstream.study import StudySetup, run_hash, run_path, run_study
from downstream.training import TrainConfig
from infra.argtypes import int_at_least, non_negative_int, number_at_least, number_in, positive_int, positive_number
from infra.distributed import pick_device
from infra.errors import UserError, run_main
from infra.flags import add_device_flag, add_epochs_flag, add_num_workers_flag, add_tf32_flag, check_flag_values
from infra.logs import create_logger
from infra.precision import set_tf32


def study_labels(args: argparse.Namespace) -> tuple[str, ...]:
    """Label columns: --label-columns (a csv dataset), else --dataset or the path rule, else the 11 OCT labels."""
    if args.label_columns and args.dataset is None:
        return label_names_for("csv", args.label_columns)
    try:
        kind = pick_dataset(args.data_path, args.dataset)
    except ValueError:
        if args.dataset is not None:
            raise
        kind = "oct"
    return label_names_for(kind, args.label_columns)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The protocol settings from the flags (each within its range: the flags' argparse types)."""
    augment = AugmentConfig(
        rotation=args.aug_rotation,
        flip_p=args.aug_flip_p,
        crop_p=args.aug_crop_p,
        crop_scale=args.aug_crop_scale,
        zoom_p=args.aug_zoom_p,
        zoom_range=args.aug_zoom_range,
        jitter=args.aug_jitter,
    )
    return TrainConfig(
        arch=args.arch,
        image_size=args.image_size,
        resize=args.resize,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        lr_factor=args.lr_factor,
        lr_patience=args.lr_patience,
        plateau_after=args.plateau_after,
        min_lr=args.min_lr,
        threshold=args.threshold,
        augment=augment,
    )


def eval_split_note(folds: dict[int, FoldData]) -> str:
    """Which split the metrics come from, said plainly when val serves both model selection and evaluation."""
    on_val = [f for f, d in folds.items() if d.eval_split == "val"]
    if not on_val:
        return "`test_{fold}.csv` of every fold (model selection on `val_{fold}.csv`)."
    return (
        f"`val_{{fold}}.csv` for fold(s) {on_val} (no `test_{{fold}}.csv`): the val split served BOTH model "
        "selection and evaluation, so these numbers are optimistic."
    )


def undefined_label_warnings(folds: dict[int, FoldData], label_names: tuple[str, ...]) -> list[str]:
    """Warnings for labels of an evaluated split without positives or negatives (their metrics are NaN)."""
    warnings = []
    for fold, data in folds.items():
        missing = undefined_labels(data.evaluation.labels, label_names)
        if missing["no_positives"]:
            warnings.append(
                f"fold {fold} {data.eval_split} split has no positives for {missing['no_positives']}: their Sen, "
                "F1 (sen/spe), AUC and AP (and F1 when nothing is predicted positive) are NaN and left out of the "
                "macro means."
            )
        if missing["no_negatives"]:
            warnings.append(
                f"fold {fold} {data.eval_split} split has no negatives for {missing['no_negatives']}: their Spe, "
                "F1 (sen/spe) and AUC are NaN and left out of the macro means."
            )
    return warnings


@dataclass
class Study:
    """Everything checked before training (`prepare`).

    Attributes:
        conditions: the --conditions, parsed.
        label_names: the label columns.
        cfg: the training protocol.
        weights: the ImageNet weights file, or None (random initialisation).
        folds: every fold's checked data, by fold number.
    """

    conditions: list[Condition]
    label_names: tuple[str, ...]
    cfg: TrainConfig
    weights: Path | None
    folds: dict[int, FoldData]

    @property
    def trained(self) -> list[Condition]:
        """The conditions that train a classifier (gan-test entries are scored only)."""
        return [c for c in self.conditions if c.trains]


@dataclass
class Notes:
    """What the report says about the inputs: the evaluated split, the classifier's initialisation, warnings."""

    split: str
    pretrained: str
    warnings: list[str]


def main(args: argparse.Namespace) -> dict:
    """Run (or resume) the study and write its results.

    Returns:
        {"out", "summary", "runs", "label_fidelity" (rows), "gan_test" (records, with per-image scores)}.
    """
    out_dir = Path(args.out)
    logger = create_logger("classify", out_dir)

    # Validate everything first: a bad fold, CSV or image stops the study before any training.
    try:
        study = prepare(args)
    except (ValueError, FileNotFoundError) as err:
        logger.error(f"error: {err}")  # also in log.txt; the entry point prints the one-line message
        raise UserError(str(err)) from err
    device = pick_device(0, args.device)
    set_tf32(args.tf32)
    conditions = [c.spec() for c in study.conditions]
    logger.info(f"device {device}; labels {list(study.label_names)}; conditions {conditions}")
    notes = log_inputs(args, study, logger)
    if args.dry_run:
        log_plan(args, study, out_dir, logger)
        return {"out": out_dir, "summary": [], "runs": [], "label_fidelity": [], "gan_test": []}

    # Train (or resume) every run, score the synthetic validation copies (GAN-test), then aggregate and test
    # against the geometric baseline.
    records, gan_test_records = run_runs(args, study, out_dir, device, logger)
    return report(args, study, notes, records, gan_test_records, device, out_dir, logger)


# ----------------------------------------------------------------------------------------------------------------
# The steps of main, in order
# ----------------------------------------------------------------------------------------------------------------


def prepare(args: argparse.Namespace) -> Study:
    """Everything checked before training: flags, conditions, labels, weight file, every fold and synthetic CSV.

    GAN-test scores synthetic validation copies with the baseline classifier, so with `--gan-test` (the default) and
    a `val_syn_{fold}.csv` to score, the `geometric` condition is required (an error says so before any training).
    """
    check_flag_values(build_parser(), args)  # a Namespace built in code did not pass the flags' argparse types
    if not args.folds or not args.seeds:
        raise UserError("--folds and --seeds need at least one value each")
    if len(set(args.folds)) != len(args.folds) or len(set(args.seeds)) != len(args.seeds):
        raise UserError("--folds and --seeds must not repeat values")
    conditions = parse_conditions(args.conditions)
    if not any(c.trains for c in conditions):
        raise UserError(f"--conditions: {[c.spec() for c in conditions]} train nothing; add '{BASELINE}'")
    label_names = study_labels(args)
    cfg = train_config(args)
    data_path = Path(args.data_path)
    folds = {f: load_fold(data_path, f, label_names, conditions, args.eval_split, args.gan_test) for f in args.folds}
    copies = sorted({name for d in folds.values() for name in d.synthetic_val})
    if copies and not any(c.kind == BASELINE for c in conditions):
        raise UserError(
            f"--conditions: GAN-test scores the validation copies (val_syn_{{fold}}.csv) of {copies} with the "
            f"classifier of the '{BASELINE}' condition, which is missing; add '{BASELINE}' to --conditions, or pass "
            "--no-gan-test"
        )
    weights = find_pretrained(args.arch, args.pretrained)  # after the data checks, before any training
    return Study(conditions, label_names, cfg, weights, folds)


def log_inputs(args: argparse.Namespace, study: Study, logger: logging.Logger) -> Notes:
    """Log every fold's sets and GAN-test copies, the evaluated split, the classifier's initialisation and the
    warnings (labels whose metrics are undefined, a missing ImageNet weights file); returns them for the report."""
    for fold, data in study.folds.items():
        syn = {name: len(ds) for name, ds in data.synthetic.items()}
        logger.info(
            f"fold {fold}: {len(data.train)} real train, {len(data.val)} val, {len(data.evaluation)} evaluated "
            f"({data.eval_split} split), synthetic {syn}"
        )
        for name, ds in data.synthetic_val.items():
            logger.info(f"fold {fold}: GAN-test of {name} on {len(ds)} images of {ds.csv_path}")
        for name, reason in data.synthetic_val_missing.items():
            logger.warning(f"WARNING: fold {fold}: GAN-test of {name} is n/a: {reason}")
    split_note = eval_split_note(study.folds)
    if any(d.eval_split == "val" for d in study.folds.values()):
        logger.warning(f"WARNING: evaluated on {split_note}")
    warnings = undefined_label_warnings(study.folds, study.label_names)
    if args.arch == "tiny":
        pretrained_note = "random initialisation (the tiny CNN has no ImageNet weights)."
    elif study.weights is None:
        pretrained_note = "RANDOM INITIALISATION (--pretrained none): not the paper's protocol."
        warnings.insert(0, pretrained_note)
    else:
        pretrained_note = f"ImageNet weights from {study.weights}."
    if pretrained_note not in warnings:
        logger.info(f"classifier {args.arch}: {pretrained_note}")
    for w in warnings:
        logger.warning(f"WARNING: {w}")
    return Notes(split_note, pretrained_note, warnings)


def log_plan(args: argparse.Namespace, study: Study, out_dir: Path, logger: logging.Logger) -> None:
    """--dry-run: list every run (finished or to train) and every GAN-test (images to score, or n/a)."""
    for c in study.trained:
        for fold, data in study.folds.items():
            key = run_hash(study.cfg, study.weights, study.label_names, c, Path(args.data_path), data)
            for seed in args.seeds:
                done = run_path(out_dir, c, fold, seed, key).is_file()
                logger.info(f"plan: {c.name} fold {fold} seed {seed}: {'finished' if done else 'to train'}")
    for name in synthetic_sets(study.conditions) if args.gan_test else []:
        for fold, data in study.folds.items():
            what = f"score {len(data.synthetic_val[name])} images" if name in data.synthetic_val else "n/a"
            logger.info(f"plan: GAN-test {name} fold {fold}: {what}")


def run_runs(
    args: argparse.Namespace, study: Study, out_dir: Path, device: torch.device, logger: logging.Logger
) -> tuple[list[dict], list[dict]]:
    """Train (or resume) every (condition, fold, seed) run, then GAN-test each synthetic set's validation copies with
    the baseline classifiers; returns (run records, GAN-test records)."""
    sets = synthetic_sets(study.conditions)
    baseline = next((c for c in study.conditions if c.kind == BASELINE), None)
    gan_test = args.gan_test and bool(sets)
    with logging_redirect_tqdm(loggers=[logger]):
        setup = StudySetup(
            study.folds,
            args.seeds,
            study.cfg,
            study.label_names,
            study.weights,
            Path(args.data_path),
            out_dir,
            device,
            logger,
            num_workers=args.num_workers,
            eval_batch_size=args.eval_batch_size,
            resume=args.resume,
        )
        needed = gan_test and any(d.synthetic_val for d in study.folds.values())
        records = run_study(setup, study.trained, baseline_weights_needed=needed)
        gan_test_records = []
        if gan_test:
            base_runs = [r for r in records if baseline is not None and r["condition"] == baseline.name]
            gan_test_records = run_gan_test(setup, sets, baseline, base_runs)
    return records, gan_test_records


def report(
    args: argparse.Namespace,
    study: Study,
    notes: Notes,
    records: list[dict],
    gan_test_records: list[dict],
    device: torch.device,
    out_dir: Path,
    logger: logging.Logger,
) -> dict:
    """Aggregate over folds x seeds, test against the baseline, write results.{csv,json,md} and per_label.png, and
    log the tables; returns main's result."""
    summaries = summarize(records, study.trained, study.label_names, args.test, args.test_metric)
    fidelity = summarize_label_fidelity(
        summaries, gan_test_records, study.conditions, "" if args.gan_test else "not computed (--no-gan-test)"
    )
    meta = {
        "arch": args.arch,
        "pretrained": study.weights is not None,
        "pretrained_source": None if study.weights is None else str(study.weights),
        "pretrained_note": notes.pretrained,
        "eval_split": {str(f): d.eval_split for f, d in study.folds.items()},
        "eval_split_note": notes.split,
        "test": {"name": args.test, "description": TEST_DESCRIPTIONS[args.test], "metric": args.test_metric},
        "aggregate": "mean and sample standard deviation (ddof = 1) over folds x seeds",
        "n_folds": len(study.folds),
        "n_seeds": len(args.seeds),
        "folds": list(study.folds),
        "seeds": list(args.seeds),
        "conditions": [c.spec() for c in study.conditions],
        "gan_test": args.gan_test,
        "device": str(device),
        "train_config": asdict(study.cfg),
        "args": dict(vars(args)),
        "warnings": notes.warnings,
    }
    paths = write_results(
        out_dir, records, summaries, study.label_names, meta, fidelity, [without_bulk(r) for r in gan_test_records]
    )
    logger.info("results (percent, mean ± std over runs):\n" + table_b(summaries))
    if fidelity:
        logger.info("label fidelity (percent, mean ± std over runs):\n" + label_fidelity_table(fidelity))
    logger.info(f"wrote {', '.join(str(p) for p in paths)}")
    return {
        "out": out_dir,
        "summary": summaries,
        "runs": records,
        "label_fidelity": fidelity,
        "gan_test": gan_test_records,
    }


# ----------------------------------------------------------------------------------------------------------------
# Flags
# ----------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The study's flags: data and conditions, the classifier protocol (FDDM-style), its augmentation, the test."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_study_flags(p)
    add_protocol_flags(p)
    add_run_flags(p)
    return p


def add_study_flags(p: argparse.ArgumentParser) -> None:
    """What is compared: data, folds, seeds, conditions, output folder."""
    p.add_argument("--data-path", type=str, required=True, help="real dataset root with {train,val,test}_{fold}.csv")
    add_dataset_arguments(p)
    p.add_argument("--folds", type=non_negative_int, nargs="+", default=[0], help="folds to run")
    p.add_argument("--seeds", type=non_negative_int, nargs="+", default=[0], help="training seeds per fold")
    p.add_argument(
        "--conditions",
        type=str,
        nargs="+",
        default=["geometric", "noaug"],
        help=f"training conditions: {SYNTAX}; DIR holds train_syn_{{fold}}.csv (and val_syn_{{fold}}.csv for "
        "GAN-test) and may contain '{fold}'; synthetic-only trains on the synthetic set alone (GAN-train)",
    )
    p.add_argument("--out", type=str, default="results_classify", help="output folder (results, runs/, log.txt)")


def add_protocol_flags(p: argparse.ArgumentParser) -> None:
    """The classifier, its input, optimiser, schedule, decision threshold and geometric augmentation."""
    unit = number_in(0.0, 1.0)  # strictly between 0 and 1
    probability = number_in(0.0, 1.0, "low high")
    p.add_argument("--arch", type=str, choices=ARCHS, default="resnet50", help="classifier (tiny: CPU tests/demos)")
    p.add_argument(
        "--pretrained",
        type=str,
        default="auto",
        help="ImageNet weights: 'auto' (torchvision cache $TORCH_HOME/hub/checkpoints/{arch}-*.pth; a missing file "
        "stops the run), 'none' (random init, not the paper's protocol) or a .pth file; never downloaded",
    )
    p.add_argument("--image-size", type=int_at_least(8), default=448, help="network input side in pixels")
    p.add_argument("--resize", type=str, choices=RESIZE_MODES, default="resize", help="how images reach that size")
    add_epochs_flag(p, default=80)
    p.add_argument("--batch-size", type=positive_int, default=8, help="training batch size")
    p.add_argument(
        "--eval-batch-size", type=positive_int, default=32, help="batch size of validation/evaluation passes"
    )
    p.add_argument("--lr", type=positive_number(), default=1e-3, help="initial SGD learning rate")
    p.add_argument("--momentum", type=number_in(0.0, 1.0, "low"), default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=number_at_least(0.0), default=1e-4, help="SGD weight decay")
    p.add_argument("--lr-factor", type=unit, default=0.5, help="plateau schedule: learning-rate multiplier")
    p.add_argument(
        "--lr-patience",
        type=non_negative_int,
        default=5,
        help="plateau schedule: epochs without val-mAP gain tolerated (ReduceLROnPlateau patience)",
    )
    p.add_argument(
        "--plateau-after", type=non_negative_int, default=5, help="the schedule steps only once epoch > this"
    )
    p.add_argument(
        "--min-lr", type=number_at_least(0.0), default=1e-7, help="stop training once the learning rate is below this"
    )
    p.add_argument("--threshold", type=unit, default=0.5, help="sigmoid score >= threshold predicts a label")
    p.add_argument(
        "--aug-rotation",
        type=number_in(0.0, 360.0, "low high"),
        default=360.0,
        help="geometric aug: rotation in [0, this] degrees",
    )
    p.add_argument("--aug-flip-p", type=probability, default=0.5, help="geometric aug: horizontal-flip probability")
    p.add_argument("--aug-crop-p", type=probability, default=0.4, help="geometric aug: random-crop probability")
    p.add_argument(
        "--aug-crop-scale",
        type=number_in(0.0, 1.0, "high"),
        default=0.7,
        help="geometric aug: smallest crop area fraction",
    )
    p.add_argument("--aug-zoom-p", type=probability, default=0.5, help="geometric aug: zoom probability")
    p.add_argument(
        "--aug-zoom-range", type=number_in(0.0, 1.0, "low"), default=0.2, help="geometric aug: zoom factor in 1 +- this"
    )
    p.add_argument(
        "--aug-jitter",
        type=number_in(0.0, 1.0, "low"),
        default=0.3,
        help="geometric aug: brightness/contrast/colour 1 +- this",
    )


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """The evaluated split, the paired test, workers, device, resuming, GAN-test, dry run and TF32."""
    p.add_argument(
        "--eval-split", type=str, choices=EVAL_SPLITS, default="auto", help="auto: test_{fold}.csv if present, else val"
    )
    p.add_argument("--test", type=str, choices=TESTS, default="ttest", help="paired test against geometric aug")
    p.add_argument(
        "--test-metric",
        type=str,
        choices=METRIC_NAMES,
        default="mAP",
        help="per-run macro metric the paired test compares (mAP: threshold-free, the model-selection metric)",
    )
    add_num_workers_flag(p)
    add_device_flag(p)
    p.add_argument(
        "--resume", action=argparse.BooleanOptionalAction, default=True, help="reuse finished runs from --out/runs"
    )
    p.add_argument(
        "--gan-test",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="score each synthetic set's DIR/val_syn_{fold}.csv with the geometric baseline classifier of the same "
        "fold and seed (GAN-test; needs the geometric condition; n/a for a fold without that CSV)",
    )
    p.add_argument("--dry-run", action="store_true", help="validate the data, list the runs to do, train nothing")
    add_tf32_flag(p)


if __name__ == "__main__":
    run_main("classify.py", lambda: main(build_parser().parse_args()))
