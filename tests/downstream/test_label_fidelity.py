"""GAN-test pieces: scoring a validation copy with given weights, and the key that decides when a score is reused."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import average_precision_score

from data.labels import OCT_LABELS
from downstream.classifier import build_classifier
from downstream.conditions import parse_conditions
from downstream.label_fidelity import gan_test_hash, gan_test_path, score_copy
from downstream.splits import load_fold
from downstream.training import TrainConfig


def test_score_copy_against_the_copy_labels(phantom_root, sample_folder, tmp_path):
    folder = sample_folder(tmp_path / "S", fold=0, val_copy=True)
    fold = load_fold(phantom_root, 0, OCT_LABELS, parse_conditions([f"synthetic:S={folder}"]))
    torch.manual_seed(0)
    state = build_classifier("tiny", len(OCT_LABELS)).state_dict()
    cfg = TrainConfig(arch="tiny", image_size=16)
    scored = score_copy(cfg, state, fold, "S", OCT_LABELS, torch.device("cpu"))
    scores = np.asarray(scored["scores"])
    assert scored["n_eval"] == 3 and scores.shape == (3, len(OCT_LABELS))
    # AP per label from the labels of val_syn_0.csv as written (labels without positives are undefined).
    labels = pd.read_csv(folder / "val_syn_0.csv", index_col=0)[list(OCT_LABELS)].to_numpy()
    aps = [average_precision_score(labels[:, k], scores[:, k]) for k in range(len(OCT_LABELS)) if labels[:, k].any()]
    assert scored["metrics"]["mAP"] == pytest.approx(np.mean(aps), abs=1e-12)
    for k, name in enumerate(OCT_LABELS):
        assert (scored["per_label"]["mAP"][name] is None) == (not labels[:, k].any())


def test_gan_test_key_follows_weights_and_copy(phantom_root, sample_folder, tmp_path):
    folder = sample_folder(tmp_path / "S", fold=0, val_copy=True)
    conditions = parse_conditions([f"synthetic:S={folder}"])
    weights = tmp_path / "base.pt"
    weights.write_bytes(b"weights one")

    def key() -> str:
        return gan_test_hash("basekey", weights, load_fold(phantom_root, 0, OCT_LABELS, conditions), "S")

    first = key()
    assert key() == first  # same baseline, weights and copy: the stored score is reused
    assert gan_test_hash("otherkey", weights, load_fold(phantom_root, 0, OCT_LABELS, conditions), "S") != first
    weights.write_bytes(b"weights two")  # a retrained baseline
    second = key()
    assert second != first
    image = folder / "gen_samples_val" / "000001.png"  # a regenerated image under the same name
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert key() != second
    assert gan_test_path(tmp_path, "GeCA S/x", 0, 1, "abc").relative_to(tmp_path).as_posix() == (
        "runs/gan_test/GeCA-S-x_fold0_seed1_abc.json"
    )
