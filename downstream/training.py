"""One training run of the classifier and its evaluation (the FDDM-style protocol of docs/PAPER.md §B1 by default).

BCE-with-logits, SGD with momentum and weight decay, a plateau schedule on validation mAP that starts once the
epoch number exceeds `plateau_after`, early stop when the learning rate falls below `min_lr`, and the weights of
the epoch with the best validation mAP kept for the final evaluation.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from tqdm import tqdm

from data.datasets import FoldCSVDataset
from downstream.augment import AugmentConfig, classifier_transform
from downstream.classifier import build_classifier
from downstream.metrics import average_precision_per_label, nan_mean
from downstream.splits import TransformedDataset
from infra.seeding import seed_everything


@dataclass(frozen=True)
class TrainConfig:
    """Every setting that changes what a run learns (they all enter the run's config hash).

    Attributes:
        arch: classifier architecture ("resnet50", "resnet18", "tiny").
        image_size: network input side in pixels.
        resize: "resize" (bicubic to a square) or "center_crop" (ADM crop).
        epochs: maximum number of epochs.
        batch_size: training batch size.
        lr: initial SGD learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        lr_factor: the plateau schedule multiplies the learning rate by this.
        lr_patience: epochs without validation-mAP improvement before the learning rate drops.
        plateau_after: the schedule only steps once the (1-based) epoch number exceeds this.
        min_lr: training stops once the learning rate falls below this.
        threshold: sigmoid score at or above which a label is predicted positive.
        augment: geometric augmentation parameters (used by every condition but `noaug`).
    """

    arch: str = "resnet50"
    image_size: int = 448
    resize: str = "resize"
    epochs: int = 80
    batch_size: int = 8
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_factor: float = 0.5
    lr_patience: int = 5
    plateau_after: int = 5
    min_lr: float = 1e-7
    threshold: float = 0.5
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class RunOutcome:
    """What a run produced.

    Attributes:
        labels: (N, K) 0/1 labels of the evaluated split.
        scores: (N, K) sigmoid scores of the selected model on it.
        history: one dict per epoch: epoch, train_loss, val_mAP, lr.
        best_epoch: the (1-based) epoch whose weights were evaluated.
        best_val_map: its validation mAP.
        state: those weights (CPU state dict), e.g. to score other images later (GAN-test).
        n_train: number of training images (rows of every training set).
    """

    labels: np.ndarray
    scores: np.ndarray
    history: list[dict]
    best_epoch: int
    best_val_map: float
    state: dict[str, torch.Tensor]
    n_train: int


def _seed_worker(worker_id: int) -> None:
    """DataLoader workers: torch is already seeded from the loader's generator; align Python and NumPy with it."""
    seed_everything(torch.initial_seed() % 2**32)


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid scores of a model on every batch of a loader.

    Returns:
        (labels (N, K) int64, scores (N, K) float64).
    """
    model.eval()
    labels, scores = [], []
    for images, targets in loader:
        scores.append(torch.sigmoid(model(images.to(device))).double().cpu())
        labels.append(targets.long())
    return torch.cat(labels).numpy(), torch.cat(scores).numpy()


def _train_loader(
    cfg: TrainConfig, train_sets: list[FoldCSVDataset], augment: bool, seed: int, num_workers: int, pin: bool
) -> DataLoader:
    """The shuffled training loader over the concatenated training sets (its shuffles seeded by `seed`)."""
    train_tf = classifier_transform(cfg.image_size, cfg.augment if augment else None, cfg.resize)
    train_ds = ConcatDataset([TransformedDataset(ds, train_tf) for ds in train_sets])
    return DataLoader(
        train_ds,
        batch_size=cfg.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        num_workers=num_workers,
        worker_init_fn=_seed_worker,
        pin_memory=pin,
        persistent_workers=num_workers > 0,
        # Batch norm cannot train on a last batch of one image when the final feature maps are 1x1 (small inputs).
        drop_last=len(train_ds) % cfg.batch_size == 1,
    )


def _eval_loader(cfg: TrainConfig, ds: Dataset, eval_batch_size: int, num_workers: int, pin: bool) -> DataLoader:
    """An in-order loader over `ds` with the evaluation transform (no augmentation)."""
    return DataLoader(
        TransformedDataset(ds, classifier_transform(cfg.image_size, None, cfg.resize)),
        eval_batch_size,
        num_workers=num_workers,
        pin_memory=pin,
        persistent_workers=num_workers > 0,
    )


def _train_epoch(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    pin: bool,
    desc: str,
) -> float:
    """One pass over the training loader; returns the mean training loss per image."""
    model.train()
    total, count = 0.0, 0
    for images, targets in tqdm(loader, desc=desc, leave=False):
        images, targets = images.to(device, non_blocking=pin), targets.to(device, non_blocking=pin)
        loss = criterion(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(images)
        count += len(images)
    return total / max(count, 1)


def _fit(
    cfg: TrainConfig,
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    device: torch.device,
    pin: bool,
    logger: logging.Logger | None,
    desc: str,
) -> tuple[list[dict], dict[str, torch.Tensor], int, float]:
    """Train epoch by epoch with the plateau schedule and early stop, keeping the best validation-mAP weights.

    Returns:
        (history, best weights (CPU state dict), best epoch (1-based), its validation mAP or -inf when every
        epoch's mAP was NaN).
    """
    criterion = nn.BCEWithLogitsLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=cfg.lr_factor, patience=cfg.lr_patience
    )
    history: list[dict] = []
    best_state, best_epoch, best_map = None, 0, -math.inf
    for epoch in tqdm(range(1, cfg.epochs + 1), desc=f"{desc} epochs", leave=False):
        train_loss = _train_epoch(model, train_loader, criterion, optimizer, device, pin, f"{desc} epoch {epoch}")
        val_labels, val_scores = predict(model, val_loader, device)
        val_map = nan_mean(average_precision_per_label(val_labels, val_scores))
        lr = optimizer.param_groups[0]["lr"]
        history.append({"epoch": epoch, "train_loss": train_loss, "val_mAP": val_map, "lr": lr})
        if logger is not None:
            logger.info(
                f"{desc} epoch {epoch}/{cfg.epochs}: train loss {train_loss:.4f}, val mAP {val_map:.4f}, lr {lr:.2e}"
            )
        score = -math.inf if math.isnan(val_map) else val_map
        if best_state is None or score > best_map:
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            best_epoch, best_map = epoch, score
        if epoch > cfg.plateau_after:
            scheduler.step(score)
        if optimizer.param_groups[0]["lr"] < cfg.min_lr:
            if logger is not None:
                logger.info(f"{desc} stop after epoch {epoch}: lr {optimizer.param_groups[0]['lr']:.2e} < {cfg.min_lr}")
            break
    return history, best_state, best_epoch, best_map


def run_training(
    cfg: TrainConfig,
    train_sets: list[FoldCSVDataset],
    augment: bool,
    val: FoldCSVDataset,
    evaluation: FoldCSVDataset,
    seed: int,
    device: torch.device,
    weights: Path | None = None,
    num_workers: int = 0,
    eval_batch_size: int = 32,
    logger: logging.Logger | None = None,
    desc: str = "",
) -> RunOutcome:
    """Train one classifier and evaluate the validation-selected weights.

    Args:
        cfg: protocol settings.
        train_sets: the (PIL image, label) datasets trained on (real, then synthetic), concatenated.
        augment: apply the geometric augmentation to training images.
        val: model-selection split.
        evaluation: the split the outcome's scores are computed on (may be `val` itself).
        seed: seeds the initialisation, the shuffles and the augmentation.
        device: compute device.
        weights: ImageNet weight file for the trunk, or None.
        num_workers: DataLoader workers.
        eval_batch_size: batch size of validation and evaluation passes.
        logger: per-epoch log lines go here when given.
        desc: prefix of progress bars and log lines.

    Returns:
        The run outcome.
    """
    seed_everything(seed)
    num_classes = train_sets[0].labels.shape[1]
    model = build_classifier(cfg.arch, num_classes, weights).to(device)
    pin = device.type == "cuda"
    train_loader = _train_loader(cfg, train_sets, augment, seed, num_workers, pin)
    val_loader = _eval_loader(cfg, val, eval_batch_size, num_workers, pin)
    history, best_state, best_epoch, best_map = _fit(cfg, model, train_loader, val_loader, device, pin, logger, desc)

    model.load_state_dict(best_state)
    if evaluation is val:
        labels, scores = predict(model, val_loader, device)
    else:
        labels, scores = predict(model, _eval_loader(cfg, evaluation, eval_batch_size, num_workers, pin), device)
    best_val_map = best_map if best_map > -math.inf else float("nan")
    return RunOutcome(labels, scores, history, best_epoch, best_val_map, best_state, len(train_loader.dataset))


def predict_with_state(
    cfg: TrainConfig,
    state: dict[str, torch.Tensor],
    dataset: FoldCSVDataset,
    device: torch.device,
    num_workers: int = 0,
    eval_batch_size: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid scores of a trained classifier (its state dict) on a dataset, with the evaluation transform.

    Args:
        cfg: the protocol settings the classifier was trained under (architecture, input size, resize mode).
        state: the classifier's state dict.
        dataset: (PIL image, label) dataset with a `labels` (N, K) array.
        device: compute device.
        num_workers: DataLoader workers.
        eval_batch_size: batch size.

    Returns:
        (labels (N, K) int64, scores (N, K) float64).
    """
    model = build_classifier(cfg.arch, dataset.labels.shape[1])
    model.load_state_dict(state)
    loader = DataLoader(
        TransformedDataset(dataset, classifier_transform(cfg.image_size, None, cfg.resize)),
        eval_batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    return predict(model.to(device), loader, device)
