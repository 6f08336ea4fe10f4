"""train_vae.py: a tiny domain autoencoder on 32 px phantoms, its outputs, scaling factor, PSNR, exact resume, errors.

Every reported number is recomputed here from the saved folder by an independent loop over the images.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from data.transforms import image_transform
from data.vae import encode_latents, load_vae
from infra.checkpoint import load_checkpoint
from tests.helpers.phantom_data import make_phantom_oct
from train_vae import (
    LATENT_STREAM,
    build_autoencoder,
    build_parser,
    main,
    psnr_uint8,
    step_batch,
    stream_seed,
)

STEPS = 4


def _argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--data-path", str(data), "--dataset", "oct", "--image-size", "32", "--out", str(out),
            "--steps", str(STEPS), "--batch-size", "4", "--block-out-channels", "8", "16", "16", "16",
            "--norm-num-groups", "4", "--num-workers", "0", "--log-every", "1", "--ckpt-every", "2",
            *extra]  # fmt: skip


def _images(root: Path, split: str) -> torch.Tensor:
    """The split's images in file order as (N, 3, 32, 32) in [-1, 1], read without the script's datasets."""
    frame = pd.read_csv(root / f"{split}_0.csv")
    tf = image_transform(32)
    return torch.stack([tf(Image.open(root / name).convert("RGB")) for name in frame["filename"]])


@pytest.fixture(scope="module")
def oct_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 16 images, 2 folds: 8 training images = 2 batches of 4, so 4 steps cross an epoch boundary.
    return make_phantom_oct(tmp_path_factory.mktemp("phantom") / "data", num_images=16, folds=2, size=32)


@pytest.fixture(scope="module")
def run(oct_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("vae_run") / "out"
    report = main(build_parser().parse_args(_argv(oct_root, out)))
    return out, report


def test_defaults_and_the_default_size():
    args = build_parser().parse_args(["--data-path", "d"])
    assert (args.block_out_channels, args.norm_num_groups, args.lr, args.kl_weight) == (
        [16, 32, 64, 64],
        16,
        2e-3,
        1e-6,
    )
    assert (args.image_size, args.batch_size, args.fold, args.out) == (256, 16, 0, "results_vae")
    vae = build_autoencoder(args.block_out_channels, args.norm_num_groups, 64)
    # Regression snapshot of diffusers 0.42's AutoencoderKL at these widths (docs/DECISIONS.md §C7 quotes 0.98 M).
    assert sum(p.numel() for p in vae.parameters()) == 978_103
    x = torch.zeros(1, 3, 64, 64)
    assert vae.encode(x).latent_dist.mean.shape == (1, 4, 8, 8)  # downsampling 8, 4 latent channels


def test_step_batches_are_epoch_permutations():
    batches = [step_batch(s, 10, 3, 0) for s in range(6)]  # 3 batches per epoch, one image dropped
    for epoch in (batches[:3], batches[3:]):
        seen = [i for b in epoch for i in b]
        assert len(seen) == len(set(seen)) == 9 and set(seen) <= set(range(10))
    assert batches[:3] != batches[3:]  # a fresh permutation per epoch
    assert step_batch(4, 10, 3, 0) == batches[4]  # a pure function of the step (exact resume)


def test_psnr_closed_form():
    real = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    fake = real.clone()
    fake[0] += 1  # MSE 1 -> 20 log10(255)
    fake[1, :, :2] = 10  # MSE 50 over half the pixels -> 10 log10(255^2 / 50)
    torch.testing.assert_close(
        psnr_uint8(real, fake), torch.tensor([20 * math.log10(255), 10 * math.log10(255**2 / 50)], dtype=torch.float64)
    )


def test_outputs_and_the_folder_loads(run):
    out, report = run
    for name in ("checkpoints/last.pt", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
                 "reconstructions.png", "vae_report.json", "metrics.csv", "log.txt"):  # fmt: skip
        assert (out / name).is_file(), name
    assert json.loads((out / "vae_report.json").read_text()) == report
    vae = load_vae(str(out / "vae"))
    assert vae.config.scaling_factor == report["scaling_factor"]
    assert tuple(vae.config.block_out_channels) == (8, 16, 16, 16) and vae.config.latent_channels == 4
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["step"] == STEPS
    for key, value in vae.state_dict().items():
        assert torch.equal(value, ckpt["model"][key]), key
    assert report["params"] == sum(p.numel() for p in vae.parameters())
    assert report["steps"] == STEPS and report["latent_shape"] == [4, 4, 4]
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["step"].tolist() == list(range(1, STEPS + 1)) and np.isfinite(metrics["loss"]).all()
    # Two rows (real over reconstruction) of 8 validation images, 2-pixel padding.
    assert Image.open(out / "reconstructions.png").size == (8 * 32 + 9 * 2, 2 * 32 + 3 * 2)


@torch.no_grad()
def test_scaling_factor_gives_unit_variance_training_latents(run, oct_root):
    out, report = run
    vae = load_vae(str(out / "vae"))
    x = _images(oct_root, "train")
    # Independent: each image alone, its noise from its own stream, moments in float64 by numpy.
    samples = []
    for i in range(len(x)):
        post = vae.encode(x[i : i + 1]).latent_dist
        eps = torch.randn(post.mean.shape, generator=torch.Generator().manual_seed(stream_seed(0, LATENT_STREAM, i)))
        samples.append((post.mean + post.std * eps).numpy().astype(np.float64))
    std = np.concatenate(samples).std()
    assert report["scaling_factor"] == pytest.approx(1 / std, rel=1e-5)
    assert report["latent_std"] == pytest.approx(std, rel=1e-5)
    # What the scripts then see: encode_latents with the same noise has unit standard deviation.
    gens = [torch.Generator().manual_seed(stream_seed(0, LATENT_STREAM, i)) for i in range(len(x))]
    z = encode_latents(vae, x, gens).double()
    assert z.std(unbiased=False).item() == pytest.approx(1.0, rel=1e-5)


@torch.no_grad()
def test_psnr_matches_an_independent_computation(run, oct_root):
    out, report = run
    vae = load_vae(str(out / "vae"))
    x = _images(oct_root, "val")
    recon = torch.cat([vae.decode(vae.encode(x[i : i + 4]).latent_dist.mean).sample for i in range(0, len(x), 4)])

    def u8(t: torch.Tensor) -> np.ndarray:
        return np.clip(127.5 * t.numpy() + 128, 0, 255).astype(np.uint8).astype(np.float64)

    mse = ((u8(x) - u8(recon)) ** 2).reshape(len(x), -1).mean(1)
    assert report["psnr_db"] == pytest.approx(np.mean(10 * np.log10(255.0**2 / mse)), abs=1e-2)
    assert report["val_images"] == len(x) == 8


def test_resume_is_exact(run, oct_root, tmp_path):
    full, full_report = run
    torch.manual_seed(123)  # the global stream must not matter
    main(build_parser().parse_args(_argv(oct_root, tmp_path / "out", "--steps", "2")))
    assert load_checkpoint(tmp_path / "out" / "checkpoints" / "last.pt")["step"] == 2
    report = main(build_parser().parse_args(_argv(oct_root, tmp_path / "out")))  # continues to step 4
    a = load_checkpoint(full / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "out" / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == STEPS and a["history"] == b["history"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key, state in a["opt"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["opt"]["state"][key][name]), (key, name)
    assert report["scaling_factor"] == full_report["scaling_factor"] and report["psnr_db"] == full_report["psnr_db"]


def test_a_checkpoint_continues_only_its_own_run(run, oct_root, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(run[0] / "checkpoints", out / "checkpoints")
    with pytest.raises(ValueError, match="--lr"):
        main(build_parser().parse_args(_argv(oct_root, out, "--lr", "1e-3")))
    with pytest.raises(ValueError, match="--block-out-channels"):
        main(build_parser().parse_args(_argv(oct_root, out, "--block-out-channels", "8", "8", "16", "16")))
    with pytest.raises(ValueError, match="beyond --steps 2"):
        main(build_parser().parse_args(_argv(oct_root, out, "--steps", "2")))
    assert not (out / "vae").exists()


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--block-out-channels", "8", "16", "16"], "--block-out-channels"),
        (["--norm-num-groups", "3"], "--norm-num-groups"),
        (["--batch-size", "9"], "--batch-size"),
        (["--fold", "5"], "val_5.csv|train_5.csv"),
    ],
)
def test_bad_flags_fail_before_anything_is_written(oct_root, tmp_path, extra, flag):
    out = tmp_path / "out"
    with pytest.raises((ValueError, FileNotFoundError), match=flag):
        main(build_parser().parse_args(_argv(oct_root, out, *extra)))
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--steps", "0"], "argument --steps: must be an integer >= 1, got 0"),
        (["--batch-size", "0"], "argument --batch-size: must be an integer >= 1, got 0"),
        (["--lr", "0"], "argument --lr: must be a finite number > 0, got 0.0"),
        (["--kl-weight", "-1"], "argument --kl-weight: must be a finite number >= 0, got -1.0"),
        (["--norm-num-groups", "0"], "argument --norm-num-groups: must be an integer >= 1, got 0"),
        (["--threads", "0"], "argument --threads: must be an integer >= 1, got 0"),
        (["--ckpt-every", "0"], "argument --ckpt-every: must be an integer >= 1, got 0"),
    ],
)
def test_out_of_range_flags_are_refused_by_the_parser(extra, message, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--data-path", "d", *extra])
    assert message in capsys.readouterr().err


def test_a_namespace_built_in_code_is_range_checked_too(oct_root, tmp_path):
    args = build_parser().parse_args(_argv(oct_root, tmp_path / "out"))
    args.steps = 0
    with pytest.raises(ValueError, match="argument --steps: must be an integer >= 1, got 0"):
        main(args)
    assert not (tmp_path / "out").exists()


def test_image_size_must_be_a_multiple_of_8(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--data-path", "d", "--image-size", "36"])
    assert "--image-size" in capsys.readouterr().err


def test_extract_features_uses_the_trained_scale(run, oct_root, tmp_path):
    from extract_features import build_parser as extract_parser
    from extract_features import main as extract_main
    from extract_features import sample_seed

    out, report = run
    feats = tmp_path / "features"
    extract_main(extract_parser().parse_args([
        "--data-path", str(oct_root), "--dataset", "oct", "--features-path", str(feats), "--vae", str(out / "vae"),
        "--image-size", "32", "--num-workers", "0", "--global-batch-size", "4", "--no-flip"]))  # fmt: skip
    vae = load_vae(str(out / "vae"))
    x = _images(oct_root, "train")
    for i in (0, 5):
        with torch.no_grad():
            post = vae.encode(x[i : i + 1]).latent_dist
        eps = torch.randn(post.mean.shape, generator=torch.Generator().manual_seed(sample_seed(0, i)))
        expected = ((post.mean + post.std * eps) * report["scaling_factor"]).numpy()
        np.testing.assert_allclose(np.load(feats / "features_0" / f"{i}.npy"), expected, rtol=1e-4, atol=1e-5)
