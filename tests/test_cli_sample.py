"""sample_ddp.py / sample_ddp_val.py end to end on CPU with tiny models and a tiny random VAE."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import sample_ddp
import sample_ddp_val
from infra.checkpoint import save_checkpoint
from models import DiT_models
from tests.helpers.phantom_data import make_phantom_oct, make_tiny_vae

REPO = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 64  # 8 x 8 latents


def random_weights(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Move every parameter off its (partly zero) initialisation so outputs depend on the weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("sample")
    root = make_phantom_oct(base / "oct_data", num_images=12, folds=2, size=32)
    feats = base / "oct_features"
    (feats / "labels_0").mkdir(parents=True)
    train = pd.read_csv(root / "train_0.csv", index_col=0)
    from data.labels import OCT_LABELS

    for i, row in enumerate(train[list(OCT_LABELS)].to_numpy()):
        np.save(feats / "labels_0" / f"{i}.npy", row[None].astype(np.int64))
    (feats / "features_0").mkdir()
    for i in range(len(train)):
        np.save(feats / "features_0" / f"{i}.npy", np.zeros((1, 4, 8, 8), np.float32))
    ckpts = {}
    for key in ("GeCA-T", "DiT-T/2"):
        model = random_weights(DiT_models[key](input_size=8, num_classes=11, in_channels=4), seed=1)
        path = base / f"{key.replace('/', '-')}.pt"
        save_checkpoint(
            path,
            {"model": model.state_dict(), "ema": model.state_dict(), "opt": {}, "args": argparse.Namespace(model=key)},
        )
        ckpts[key] = path
    return {
        "root": root,
        "features": feats,
        "vae": make_tiny_vae(base / "vae"),
        "ckpt": ckpts,
        "train_labels": train[list(OCT_LABELS)].to_numpy(),
    }


def argv(ws: dict, out: Path, model: str = "GeCA-T", *extra: str) -> list[str]:
    return [
        "--model",
        model,
        "--ckpt",
        str(ws["ckpt"][model]),
        "--vae",
        str(ws["vae"]),
        "--sample-dir",
        str(out),
        "--image-size",
        str(IMAGE_SIZE),
        "--num-classes",
        "11",
        "--num-sampling-steps",
        "4",
        "--per-proc-batch-size",
        "3",
        "--fold",
        "0",
        "--device",
        "cpu",
        *extra,
    ]


def folder_of(out: Path) -> Path:
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    return folder


def png_bytes(folder: Path, sub: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / sub).glob("*.png"))}


def test_augmentation_set_counts_names_and_label_multiset(ws, tmp_path):
    summary = sample_ddp.main(
        sample_ddp.parse_args(argv(ws, tmp_path, "GeCA-T", "--data-path", str(ws["features"]), "--expand_ratio", "2"))
    )
    folder = folder_of(tmp_path)
    assert folder.name == "GeCA-T-GS-fold-0-nstep-4-GeCA-T-size-64-vae-vae-cfg-1.5-seed-0"
    n = 2 * len(ws["train_labels"])
    assert summary["total"] == summary["images"] == n
    assert sorted(png_bytes(folder, "gen_samples")) == [f"{i:06d}.png" for i in range(n)]
    df = pd.read_csv(folder / "train_syn_0.csv", index_col=0)
    assert list(df.columns[:2]) == ["client_id", "filename"] and list(df.columns[-2:]) == [
        "patient_name",
        "multi_class_label",
    ]
    assert df["filename"].tolist() == [f"gen_samples/{i:06d}.png" for i in range(n)]
    from data.labels import OCT_LABELS

    got = Counter(map(tuple, df[list(OCT_LABELS)].to_numpy()))
    want = Counter(map(tuple, np.concatenate([ws["train_labels"]] * 2)))
    assert got == want
    # multi_class_label: LabelEncoder codes of the row strings, i.e. their lexicographic rank.
    strings = [str(r) for r in df[list(OCT_LABELS)].to_numpy()]
    ranks = {s: k for k, s in enumerate(sorted(set(strings)))}
    assert df["multi_class_label"].tolist() == [ranks[s] for s in strings]
    ann = np.load(folder / "gen_samples_annotations.npz.npy")
    np.testing.assert_array_equal(ann, df[list(OCT_LABELS)].to_numpy().astype(np.float32))
    assert (folder / "gen_samples_grid.png").is_file()


def test_validation_copy_keeps_file_order(ws, tmp_path):
    sample_ddp_val.main(sample_ddp_val.parse_args(argv(ws, tmp_path, "DiT-T/2", "--data-path", str(ws["root"]))))
    folder = folder_of(tmp_path)
    df = pd.read_csv(folder / "val_syn_0.csv", index_col=0)
    val = pd.read_csv(ws["root"] / "val_0.csv", index_col=0)
    from data.labels import OCT_LABELS

    np.testing.assert_array_equal(df[list(OCT_LABELS)].to_numpy(), val[list(OCT_LABELS)].to_numpy())
    assert df["filename"].iloc[0] == "gen_samples_val/000000.png"
    assert (folder / "gen_samples_val_annotations.npz.npy").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_and_two_processes_write_identical_images(ws, tmp_path):
    # 12 images in full batches of 2 on every rank, one thread everywhere: equal GEMM shapes and blocking, so equal
    # floating-point rounding (the noise is equal by construction; rounding is what a batch or thread change moves).
    flags = ["--data-path", str(ws["features"]), "--expand_ratio", "2", "--per-proc-batch-size", "2"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sample_ddp.main(sample_ddp.parse_args(argv(ws, tmp_path / "one", "GeCA-T", *flags)))
    finally:
        torch.set_num_threads(threads)
    two = argv(ws, tmp_path / "two", "GeCA-T", *flags)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        str(REPO / "sample_ddp.py"),
        *two,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    a, b = folder_of(tmp_path / "one"), folder_of(tmp_path / "two")
    assert png_bytes(a, "gen_samples") == png_bytes(b, "gen_samples")
    assert (a / "train_syn_0.csv").read_text() == (b / "train_syn_0.csv").read_text()


def test_interrupted_run_resumes_to_the_same_set(ws, tmp_path, monkeypatch):
    ref = tmp_path / "ref"
    sample_ddp.main(sample_ddp.parse_args(argv(ws, ref, "DiT-T/2", "--data-path", str(ws["features"]))))
    import synthesis.generate as gen

    real_save, calls = gen.atomic_save_png, {"n": 0}

    def crash_after_four(path, image):
        if calls["n"] == 4:
            raise KeyboardInterrupt
        calls["n"] += 1
        real_save(path, image)

    run = tmp_path / "run"
    monkeypatch.setattr(gen, "atomic_save_png", crash_after_four)
    with pytest.raises(KeyboardInterrupt):
        sample_ddp.main(sample_ddp.parse_args(argv(ws, run, "DiT-T/2", "--data-path", str(ws["features"]))))
    monkeypatch.undo()
    assert len(png_bytes(folder_of(run), "gen_samples")) == 4
    summary = sample_ddp.main(sample_ddp.parse_args(argv(ws, run, "DiT-T/2", "--data-path", str(ws["features"]))))
    assert summary["images"] == len(ws["train_labels"]) - 4
    assert png_bytes(folder_of(run), "gen_samples") == png_bytes(folder_of(ref), "gen_samples")


def test_ghg_through_the_sampler(ws):
    """Every guided step re-seeds the output channels and inherits the hidden channels of the previous step."""
    from diffusion import create_diffusion
    from synthesis.generate import sample_images

    model = random_weights(DiT_models["GeCA-T"](input_size=8, num_classes=11, in_channels=4), seed=2).eval()
    calls: list[dict] = []
    plain_forward = model.forward

    def spy(x, t, y, extras=None, **kw):
        out, cells = plain_forward(x, t, y, extras=extras, **kw)
        calls.append({"in": extras.clone(), "out": cells.clone()})
        return out, cells

    model.forward = spy
    labels = torch.zeros(2, 11)
    labels[:, 0] = 1
    sample_images(model, create_diffusion("5"), labels, [0, 1], (4, 8, 8), cfg_scale=1.5)
    assert len(calls) == 5
    c = model.out_channels
    for prev, cur in zip(calls, calls[1:]):
        torch.testing.assert_close(cur["in"][:, c:], prev["out"][:, c:], rtol=0, atol=0)  # hidden inherited
    for call in calls:
        outputs = call["in"][:, :c]
        centre = outputs[:, :, 4, 4]
        assert torch.count_nonzero(outputs) == torch.count_nonzero(centre) > 0  # only the fresh seed cell
    assert not torch.equal(calls[1]["in"][:, :c, 4, 4], calls[0]["in"][:, :c, 4, 4])  # a new cell each step


def test_ddim_sampler_carries_cell_state(ws, tmp_path):
    summary = sample_ddp.main(
        sample_ddp.parse_args(
            argv(ws, tmp_path, "GeCA-T", "--data-path", str(ws["features"]), "--sampler", "ddim", "--cfg-scale", "1.0")
        )
    )
    assert summary["images"] == len(ws["train_labels"])
    assert folder_of(tmp_path).name.endswith("-ddim")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--cfg-scale", "0.5"], "--cfg-scale must be >= 1"),
        (["--ckpt", "missing.pt"], "does not exist"),
    ],
)
def test_bad_flags_are_rejected(ws, tmp_path, change, message, capsys):
    with pytest.raises(SystemExit):
        sample_ddp.parse_args(argv(ws, tmp_path, "GeCA-T", "--data-path", str(ws["features"])) + change)
    assert message in capsys.readouterr().err


def test_checkpoint_model_mismatch_and_missing_labels(ws, tmp_path):
    wrong = argv(ws, tmp_path, "GeCA-T", "--data-path", str(ws["features"]))
    wrong[wrong.index("--ckpt") + 1] = str(ws["ckpt"]["DiT-T/2"])
    with pytest.raises(ValueError, match="does not match --model GeCA-T"):
        sample_ddp.main(sample_ddp.parse_args(wrong))
    with pytest.raises(FileNotFoundError, match="labels_3"):
        sample_ddp.main(
            sample_ddp.parse_args(argv(ws, tmp_path, "GeCA-T", "--data-path", str(ws["features"]), "--fold", "3"))
        )


def test_sampling_uses_the_checkpoints_diffusion_length(ws, tmp_path):
    from infra.distributed import DistInfo
    from synthesis.cli import sampling_setup

    model = DiT_models["DiT-T/2"](input_size=8, num_classes=11, in_channels=4)
    ckpt = tmp_path / "short.pt"
    save_checkpoint(
        ckpt,
        {
            "model": model.state_dict(),
            "ema": model.state_dict(),
            "opt": {},
            "args": argparse.Namespace(model="DiT-T/2", diffusion_steps=50),
        },
    )
    flags = argv(ws, tmp_path / "s", "DiT-T/2", "--data-path", str(ws["features"]))
    flags[flags.index("--ckpt") + 1] = str(ckpt)
    dist = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    _, diffusion, _, _, _ = sampling_setup(sample_ddp.parse_args(flags), dist)
    assert max(diffusion.timestep_map) < 50  # respaced from the 50-step training schedule, not 1000
    flags[flags.index("--num-sampling-steps") + 1] = "60"
    with pytest.raises(ValueError, match="exceeds the 50 diffusion steps"):
        sampling_setup(sample_ddp.parse_args(flags), dist)
