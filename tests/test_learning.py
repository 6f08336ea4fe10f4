"""The method learns, through its real entry points (issue 21): train.py lowers the loss, moves the EMA weights and
its validation KID; the sampling scripts' images follow their labels and guidance; classify.py reads phantom labels.

Tiny and on CPU: DiT-T/2 trained by train.py in image space on 8-pixel phantoms (about 300 optimiser steps, seconds).
Every assertion checks a value that a missing optimiser step, EMA update, label or guidance would change
(`make mutants` breaks the code on purpose and expects this file to notice).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import sample_ddp_val
import train
from data.labels import OCT_LABELS
from data.transforms import to_uint8
from diffusion import create_diffusion
from infra.checkpoint import find_model, load_checkpoint
from models import DiT_models
from synthesis.generate import noise_seed, sample_images
from tests.helpers.phantom_data import make_phantom_oct
from tests.helpers.threads import torch_threads

MODEL = "DiT-T/2"
SIZE = 8  # image-space pixels: a 4 x 4 token grid for DiT-T/2
STEPS = 50  # training diffusion length
SAMPLING_STEPS = 10
EPOCHS = 50  # 6 steps per epoch: 300 optimiser steps


class PooledColours(torch.nn.Module):
    """KID features for 8-pixel images: 2 x 2 average-pooled colours (12 numbers), fast and deterministic."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x.float() / 255.0, 2).flatten(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_phantom_oct(tmp_path_factory.mktemp("learn") / "oct", num_images=96, folds=2, size=32)


def train_args(data: Path, results: Path, *extra: str) -> list[str]:
    return [
        "--model", MODEL, "--image_space", "--in_channels", "3", "--image-size", str(SIZE),
        "--data-path", str(data), "--feature-path", str(data), "--results-dir", str(results),
        "--num-classes", "11", "--fold", "0", "--global-batch-size", "8", "--num-workers", "0",
        "--diffusion-steps", str(STEPS), "--lr", "2e-3", "--ema-decay", "0.9", "--log-every", "5",
        "--val-mode", "final", "--num-sampling-steps", str(SAMPLING_STEPS), "--val_samples", "40",
        "--load_from", "", "--global-seed", "0", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> dict:
    """One train.py run (validated after the first and the last epoch) and a one-step run of the same set-up."""
    import metrics.inception

    patch = pytest.MonkeyPatch()
    patch.setattr(metrics.inception, "load_inception", lambda weights=None, device="cpu": PooledColours())
    with torch_threads(1):
        try:
            base = tmp_path_factory.mktemp("runs")
            exp = train.main(
                train.build_parser().parse_args(
                    train_args(data, base / "full", "--epochs", str(EPOCHS), "--validate_every", str(EPOCHS - 1))
                )
            )
            one = train.main(
                train.build_parser().parse_args(
                    train_args(data, base / "one", "--epochs", "1", "--validate_every", "0", "--max-steps", "1")
                )
            )
        finally:
            patch.undo()
    return {"exp": exp, "one_step": one, "data": data}


def metric_rows(exp: Path) -> list[dict]:
    return list(csv.DictReader((exp / "metrics.csv").read_text().splitlines()))


def flat(state: dict) -> torch.Tensor:
    return torch.cat([v.flatten().float() for _, v in sorted(state.items())])


def test_training_lowers_the_loss(trained):
    losses = [float(r["loss"]) for r in metric_rows(trained["exp"]) if r["loss"]]
    assert len(losses) >= 40
    first, last = np.mean(losses[:8]), np.mean(losses[-8:])
    assert last < 0.6 * first, (first, last)


def test_ema_weights_move_and_track_the_network(trained):
    """After 300 steps the EMA weights are far from where one step left them, and near the online network."""
    final = load_checkpoint(trained["exp"] / "checkpoints" / "last.pt")
    early = load_checkpoint(trained["one_step"] / "checkpoints" / "last.pt")
    ema, model, ema_early = flat(final["ema"]), flat(final["model"]), flat(early["ema"])
    moved = (ema - ema_early).norm()
    assert moved > 5 * (ema - model).norm(), (float(moved), float((ema - model).norm()))


def test_validation_kid_falls_below_its_value_after_the_first_epoch(trained):
    rows = [r for r in metric_rows(trained["exp"]) if r["kid_mean"]]
    assert [int(r["step"]) for r in rows] == [6, 6 * EPOCHS]
    (k0, s0), (k1, s1) = ((float(r["kid_mean"]), float(r["kid_se"])) for r in rows)
    assert k1 + 3 * math.hypot(s0, s1) < k0, (k0, s0, k1, s1)


# ---------------------------------------------------------------------------------------------------------------
# Sampling: the images carry their labels and their guidance


def sample_val(trained: dict, out: Path, *extra: str) -> Path:
    argv = [
        "--model", MODEL, "--image_space", "--image-size", str(SIZE), "--num-classes", "11", "--fold", "0",
        "--ckpt", str(trained["exp"] / "checkpoints" / "last.pt"), "--data-path", str(trained["data"]),
        "--sample-dir", str(out), "--num-sampling-steps", str(SAMPLING_STEPS), "--per-proc-batch-size", "16",
        "--global-seed", "0", "--device", "cpu", *extra,
    ]  # fmt: skip
    sample_ddp_val.main(sample_ddp_val.parse_args(argv))
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    return folder


def load_uint8(folder: Path, frame: pd.DataFrame) -> torch.Tensor:
    return torch.stack(
        [torch.from_numpy(np.asarray(Image.open(folder / f).convert("RGB"))).permute(2, 0, 1) for f in frame.filename]
    )


def ema_model(trained: dict) -> torch.nn.Module:
    model = DiT_models[MODEL](input_size=SIZE, num_classes=11, in_channels=3)
    model.load_state_dict(find_model(str(trained["exp"] / "checkpoints" / "last.pt")))
    return model.eval()


@pytest.mark.one_thread  # like the sampling script's own run
@pytest.mark.parametrize("cfg_scale", ["1.5", "1.0"])
def test_sampled_images_regenerate_from_the_csv_labels(trained, tmp_path, cfg_scale):
    """The validation copy's PNGs are what the EMA network gives for the labels its CSV lists, at the requested
    guidance, regenerated here image by image from their seeds."""
    folder = sample_val(trained, tmp_path, "--cfg-scale", cfg_scale)
    frame = pd.read_csv(folder / "val_syn_0.csv", index_col=0)
    written = load_uint8(folder, frame)
    labels = torch.as_tensor(frame[list(OCT_LABELS)].to_numpy(), dtype=torch.float32)
    again = sample_images(
        ema_model(trained),
        create_diffusion(str(SAMPLING_STEPS), diffusion_steps=STEPS),
        labels,
        [noise_seed(0, i) for i in range(len(labels))],
        (3, SIZE, SIZE),
        cfg_scale=float(cfg_scale),
    )
    assert (again.int() - written.int()).abs().max() <= 1  # rounding of a different batch layout at most


def test_images_depend_on_their_labels_and_on_guidance(trained):
    """Same seeds, different label vectors: different images; the same labels guided and unguided differ too."""
    model, diffusion = ema_model(trained), create_diffusion(str(SAMPLING_STEPS), diffusion_steps=STEPS)
    seeds = [noise_seed(0, i) for i in range(16)]
    healthy = torch.zeros(16, 11)
    healthy[:, OCT_LABELS.index("NOR")] = 1
    sick = torch.zeros(16, 11)
    sick[:, [OCT_LABELS.index("WAMD"), OCT_LABELS.index("FLD"), OCT_LABELS.index("PED")]] = 1

    def draw(labels: torch.Tensor, cfg: float) -> torch.Tensor:
        return sample_images(model, diffusion, labels, seeds, (3, SIZE, SIZE), cfg_scale=cfg).float()

    a, b = draw(healthy, 1.5), draw(sick, 1.5)
    assert (a - b).abs().mean() > 2.0  # grey levels
    assert (draw(healthy, 4.0) - a).abs().mean() > 1.0


def test_samples_show_their_labels_better_than_chance(trained, tmp_path):
    """A linear probe fitted on the real 8-pixel training images reads the labels of a validation copy of several
    label vectors above chance (macro AUC over the labels present)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from data.select import build_dataset
    from data.transforms import image_transform

    ds = build_dataset("oct", str(trained["data"]), "train", 0, image_transform(SIZE))
    x = torch.stack([to_uint8(ds[i][0][None])[0] for i in range(len(ds))]).flatten(1).float().numpy() / 255
    y = np.stack([np.asarray(ds[i][1]).reshape(-1) for i in range(len(ds))])
    folder = sample_val(trained, tmp_path, "--cfg-scale", "4.0", "--expand_ratio", "3")
    frame = pd.read_csv(folder / "val_syn_0.csv", index_col=0)
    xs = load_uint8(folder, frame).flatten(1).float().numpy() / 255
    ys = frame[list(OCT_LABELS)].to_numpy()
    aucs = []
    for k in range(11):
        if 3 <= y[:, k].sum() <= len(y) - 3 and 0 < ys[:, k].sum() < len(ys):
            probe = LogisticRegression(C=1.0, max_iter=2000).fit(x, y[:, k])
            aucs.append(roc_auc_score(ys[:, k], probe.predict_proba(xs)[:, 1]))
    assert len(aucs) >= 4 and np.mean(aucs) > 0.6, aucs


# ---------------------------------------------------------------------------------------------------------------
# Downstream classification


def test_classifier_reads_phantom_labels_well_above_chance(tmp_path):
    """classify.py's tiny CNN on 240 training phantoms at 64 px (30 epochs, about 10 s) reaches a test macro AUC
    well above chance; measured 0.77 (a network that does not learn stays near 0.5)."""
    import classify

    data = make_phantom_oct(tmp_path / "oct", num_images=320, folds=2, size=64, test_frac=0.25)
    argv = [
        "--data-path", str(data), "--dataset", "oct", "--arch", "tiny", "--image-size", "64", "--batch-size", "32",
        "--num-workers", "0", "--epochs", "30", "--lr", "0.05", "--seeds", "0", "--conditions", "noaug",
        "--out", str(tmp_path / "out"), "--device", "cpu",
    ]  # fmt: skip
    with torch_threads(1):
        result = classify.main(classify.build_parser().parse_args(argv))
    (run,) = result["runs"]
    assert run["eval_split"] == "test"
    assert run["metrics"]["AUC"] > 0.70, run["metrics"]
