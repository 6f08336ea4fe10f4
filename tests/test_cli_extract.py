"""extract_features.py: reference flags and layout, identical files from 1 and 2 processes, resumption, early errors.

A tiny random AutoencoderKL stands in for the SD-VAE (`--vae <folder>`); images are 32 px phantoms.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.labels import OCT_LABELS
from extract_features import build_parser, check_args, flip_decision, main, sample_seed, shard_indices
from infra.errors import UserError
from infra.provenance import label_item
from tests.helpers.phantom_data import make_phantom_fundus, make_phantom_oct, make_tiny_vae

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def oct_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_phantom_oct(tmp_path_factory.mktemp("phantom") / "data", num_images=12, folds=2, size=32)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_vae(tmp_path_factory.mktemp("vae") / "tiny")


def _args(data: Path, out: Path, vae: Path, *extra: str) -> list[str]:
    return ["--data-path", str(data), "--features-path", str(out), "--vae", str(vae), "--dataset", "oct",
            "--image-size", "32", "--num-workers", "0", "--global-batch-size", "2", *extra]  # fmt: skip


def _read_all(out: Path, fold: int = 0) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    feats = {int(p.stem): np.load(p) for p in (out / f"features_{fold}").glob("*.npy")}
    labels = {int(p.stem): np.load(p) for p in (out / f"labels_{fold}").glob("*.npy")}
    assert feats.keys() == labels.keys()
    return {i: (feats[i], labels[i]) for i in feats}


@pytest.fixture(scope="module")
def single_run(oct_root: Path, vae_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single") / "features"
    main(build_parser().parse_args(_args(oct_root, out, vae_dir)))
    return out


def test_reference_flags_and_defaults():
    args = build_parser().parse_args(["--data-path", "data/oct_multilabel/"])
    expected = {"features_path": "features", "results_dir": "results", "model": "DiT-XL/2", "image_size": 256,
                "num_classes": 1000, "fold": 0, "epochs": 1400, "global_batch_size": 256, "global_seed": 0,
                "vae": "ema", "num_workers": 4, "log_every": 100, "ckpt_every": 50_000, "dataset": None,
                "label_columns": None, "no_flip": False}  # fmt: skip
    assert {k: getattr(args, k) for k in expected} == expected  # docs/REFERENCE.md §3.1 table, plus the additive flags
    readme = ["--data-path", "data/oct_multilabel/", "--features-path", "store/oct_features/",
              "--global-batch-size", "128", "--fold", "0"]  # fmt: skip
    assert build_parser().parse_args(readme).global_batch_size == 128
    with pytest.raises(SystemExit):
        build_parser().parse_args([])  # --data-path is required
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--data-path", "x", "--model", "GeCA-Z"])


def test_shards_are_disjoint_and_complete():
    shards = [shard_indices(11, r, 3) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(11))
    assert sample_seed(0, 5) == sample_seed(0, 5) != sample_seed(0, 6) != sample_seed(1, 5)


def test_single_process_layout_labels_and_manifest(single_run, oct_root):
    train = pd.read_csv(oct_root / "train_0.csv", index_col=0)
    pairs = _read_all(single_run)
    assert sorted(pairs) == list(range(len(train)))  # global indices 0..N-1, none missing or repeated
    manifest = pd.read_csv(single_run / "manifest_0.csv")
    assert list(manifest.columns) == ["index", "filename", "flip"]
    assert manifest["index"].tolist() == list(range(len(train)))
    for row in manifest.itertuples():
        feat, label = pairs[row.index]
        assert feat.shape == (1, 4, 4, 4) and feat.dtype == np.float32
        assert label.shape == (1, 11) and label.dtype == np.int64
        source = train[train["filename"] == row.filename]
        np.testing.assert_array_equal(label[0], source[list(OCT_LABELS)].to_numpy()[0])
        assert row.flip == int(flip_decision(0, row.index))


def test_flip_and_noise_follow_the_image_index(single_run, oct_root, vae_dir, tmp_path):
    import torch

    from data.datasets import FoldCSVDataset
    from data.transforms import image_transform
    from data.vae import encode_latents, load_vae
    from infra.rng import sample_generators

    ds = FoldCSVDataset(oct_root, "train", 0, transform=image_transform(32))
    vae = load_vae(str(vae_dir))
    flips = pd.read_csv(single_run / "manifest_0.csv")["flip"].to_numpy()
    for i in (0, int(np.argmax(flips))):
        x = ds[i][0][None]
        if flips[i]:
            x = torch.flip(x, dims=[-1])
        z = encode_latents(vae, x, sample_generators([sample_seed(0, i)])).numpy()
        np.testing.assert_allclose(np.load(single_run / f"features_0/{i}.npy"), z, rtol=1e-5, atol=1e-6)
    out = tmp_path / "noflip"
    main(build_parser().parse_args(_args(oct_root, out, vae_dir, "--no-flip")))
    assert pd.read_csv(out / "manifest_0.csv")["flip"].sum() == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_give_the_same_files(single_run, oct_root, vae_dir, tmp_path):
    out = tmp_path / "features"
    # Per-process batch 2 in both runs, so the convolutions see the same batch shapes.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "extract_features.py",
           *_args(oct_root, out, vae_dir)[:-2], "--global-batch-size", "4"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    one, two = _read_all(single_run), _read_all(out)
    assert one.keys() == two.keys()
    for i in one:
        np.testing.assert_array_equal(one[i][1], two[i][1])
        np.testing.assert_allclose(one[i][0], two[i][0], rtol=0, atol=1e-6)
    pd.testing.assert_frame_equal(pd.read_csv(single_run / "manifest_0.csv"), pd.read_csv(out / "manifest_0.csv"))


def test_interrupted_run_resumes(single_run, oct_root, vae_dir, tmp_path):
    out = tmp_path / "features"
    shutil.copytree(single_run, out)
    # Simulate an interruption: two pairs never written, one with its label missing.
    for path in (out / "features_0/1.npy", out / "labels_0/1.npy", out / "features_0/4.npy", out / "labels_0/5.npy"):
        path.unlink()
    kept = {p: p.stat().st_mtime_ns for p in (out / "features_0").glob("*.npy") if p.stem != "5"}
    main(build_parser().parse_args(_args(oct_root, out, vae_dir)))
    assert len(kept) == 3 and {p: p.stat().st_mtime_ns for p in kept} == kept  # complete pairs are not rewritten
    before, after = _read_all(single_run), _read_all(out)
    assert before.keys() == after.keys()
    for i in before:
        np.testing.assert_allclose(before[i][0], after[i][0], rtol=0, atol=1e-6)
        np.testing.assert_array_equal(before[i][1], after[i][1])


def test_latents_of_other_settings_or_other_images_are_not_continued(single_run, oct_root, vae_dir, tmp_path):
    """Pairs already in --features-path are kept only when settings_{fold}.json says they were made with this run's
    settings from the same image and label: another seed, no flip, or a training CSV whose rows changed stop the run
    before anything is written."""
    out = tmp_path / "features"
    shutil.copytree(single_run, out)
    record = json.loads((out / "settings_0.json").read_text())
    train = pd.read_csv(oct_root / "train_0.csv", index_col=0)
    assert record["settings"]["vae"].startswith(f"{vae_dir.resolve() / 'config.json'}:")
    labels = train[list(OCT_LABELS)].to_numpy()
    assert record["items"] == [f"{name} {label_item(y)}" for name, y in zip(train["filename"], labels)]
    (out / "features_0" / "3.npy").unlink()  # one pair to redo
    stamps = {p: p.stat().st_mtime_ns for p in (out / "features_0").glob("*.npy")}
    for flags, changed in ((["--global-seed", "1"], "global_seed 0 -> 1"), (["--no-flip"], "flip True -> False")):
        with pytest.raises(UserError, match=rf"were made with other settings \({changed}\); .*--features-path"):
            main(build_parser().parse_args(_args(oct_root, out, vae_dir, *flags)))
    shuffled = tmp_path / "shuffled"
    shutil.copytree(oct_root, shuffled)
    rows = pd.read_csv(shuffled / "train_0.csv", index_col=0)
    rows.iloc[::-1].reset_index(drop=True).to_csv(shuffled / "train_0.csv")  # the same images in another order
    with pytest.raises(UserError, match=f"output 0 was made for '{train['filename'].iloc[0]} "):
        main(build_parser().parse_args(_args(shuffled, out, vae_dir)))
    assert {p: p.stat().st_mtime_ns for p in (out / "features_0").glob("*.npy")} == stamps  # nothing written
    main(build_parser().parse_args(_args(oct_root, out, vae_dir)))  # the same settings: the missing pair is redone
    assert sorted(_read_all(out)) == list(range(len(train)))


def test_retinamnist_one_hot_labels_without_flip(vae_dir, tmp_path):
    root = make_phantom_fundus(tmp_path / "retina", num_images=12, size=32)
    out = tmp_path / "features"
    args = ["--data-path", str(root), "--features-path", str(out), "--vae", str(vae_dir), "--dataset", "retinamnist",
            "--image-size", "32", "--num-workers", "0", "--global-batch-size", "4", "--num-classes", "5"]  # fmt: skip
    main(build_parser().parse_args(args))
    pairs = _read_all(out)
    manifest = pd.read_csv(out / "manifest_0.csv")
    assert manifest["flip"].sum() == 0 and manifest["filename"][0] == "retinamnist_224.npz:train[0]"
    assert all(label.shape == (1, 5) and label.sum() == 1 for _, label in pairs.values())


def test_bad_input_fails_before_any_work(oct_root, vae_dir, tmp_path, capsys):
    broken = Path(shutil.copytree(oct_root, tmp_path / "data"))
    frame = pd.read_csv(broken / "train_0.csv", index_col=0)
    frame.drop(columns="FLD").to_csv(broken / "train_0.csv")
    out = tmp_path / "features"
    with pytest.raises(ValueError, match=r"train_0\.csv: missing column\(s\) \['FLD'\]"):
        main(build_parser().parse_args(_args(broken, out, vae_dir)))
    assert not out.exists()
    with pytest.raises(ValueError, match="--num-classes 5"):
        main(build_parser().parse_args(_args(oct_root, out, vae_dir, "--num-classes", "5")))
    for flag, value, message in (
        ("--image-size", "30", "argument --image-size: must be a positive multiple of 8, got 30"),
        ("--global-batch-size", "0", "argument --global-batch-size: must be an integer >= 1, got 0"),
        ("--num-workers", "-1", "argument --num-workers: must be an integer >= 0, got -1"),
    ):
        with pytest.raises(SystemExit):
            build_parser().parse_args([*_args(oct_root, out, vae_dir), flag, value])
        assert message in capsys.readouterr().err
    uneven = build_parser().parse_args([*_args(oct_root, out, vae_dir), "--global-batch-size", "4"])
    with pytest.raises(ValueError, match="--global-batch-size 4 must be a multiple of the world size 3"):
        check_args(uneven, 3)
    with pytest.raises(ValueError, match="--vae must be one of"):
        main(build_parser().parse_args([*_args(oct_root, out, vae_dir), "--vae", str(tmp_path / "nothing")]))
    with pytest.raises(ValueError, match="--dataset"):
        main(build_parser().parse_args(["--data-path", str(tmp_path / "plain"), "--vae", str(vae_dir)]))
