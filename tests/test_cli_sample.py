"""sample_ddp.py / sample_ddp_val.py end to end on CPU with tiny models and a tiny random VAE."""

from __future__ import annotations

import argparse
import json
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
from data.labels import OCT_LABELS
from infra.checkpoint import load_checkpoint, save_checkpoint
from infra.errors import UserError
from infra.provenance import label_item
from models import DiT_models
from tests.helpers.phantom_data import make_phantom_oct, make_tiny_vae
from tests.helpers.sampling_probes import is_fresh_seed, random_weights, record_starts
from tests.helpers.threads import torch_threads

REPO = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 64  # 8 x 8 latents


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
    assert (folder.parent / f"{folder.name}_gen_samples_grid.png").is_file()
    # The reference's evaluate.py reads every PNG below --gen: exactly the generated images, no grid among them.
    import glob

    found = sorted(glob.glob(os.path.join(str(folder), "**/*.png"), recursive=True))
    assert found == sorted(str(folder / f) for f in df["filename"])


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
    with torch_threads(1):
        sample_ddp.main(sample_ddp.parse_args(argv(ws, tmp_path / "one", "GeCA-T", *flags)))
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


def test_images_of_another_run_are_not_continued(ws, tmp_path):
    """A run that finds images in its folder keeps them only when the record beside them says they were made with its
    settings for its labels: a retrained checkpoint of the same name (the same folder) stops before any image is
    written; twice the labels, the first pass the same, keeps the images and adds the rest; a smaller set, or images
    without a record, stop."""
    data = ["--data-path", str(ws["features"])]
    out = tmp_path / "out"
    first = argv(ws, out, "DiT-T/2", *data)
    sample_ddp.main(sample_ddp.parse_args(first))
    folder = folder_of(out)
    before = png_bytes(folder, "gen_samples")
    record = folder / "gen_samples_settings.json"
    made = json.loads(record.read_text())
    assert made["settings"]["ckpt"].startswith(f"{ws['ckpt']['DiT-T/2'].resolve()}:")
    labels = pd.read_csv(folder / "train_syn_0.csv", index_col=0)[list(OCT_LABELS)].to_numpy()
    assert made["items"] == [label_item(y) for y in labels]  # image i's label, as the CSV gives it

    retrained = tmp_path / "retrained" / ws["ckpt"]["DiT-T/2"].name
    model = random_weights(DiT_models["DiT-T/2"](input_size=8, num_classes=11, in_channels=4), seed=2)
    weights = {"model": model.state_dict(), "ema": model.state_dict(), "opt": {}}
    save_checkpoint(retrained, {**weights, "args": argparse.Namespace(model="DiT-T/2")})
    second = argv(ws, out, "DiT-T/2", *data)
    second[second.index("--ckpt") + 1] = str(retrained)
    with pytest.raises(UserError, match=rf"{len(before)} images in .* were made with other settings \(ckpt '"):
        sample_ddp.main(sample_ddp.parse_args(second))
    assert folder_of(out) == folder and png_bytes(folder, "gen_samples") == before

    summary = sample_ddp.main(sample_ddp.parse_args([*first, "--expand_ratio", "2"]))
    assert summary["images"] == len(before)  # only the second pass is sampled
    after = png_bytes(folder, "gen_samples")
    assert len(after) == 2 * len(before) and {k: after[k] for k in before} == before
    with pytest.raises(UserError, match=f"output {len(before)} lies beyond the {len(before)} outputs of this run"):
        sample_ddp.main(sample_ddp.parse_args(first))
    record.unlink()
    with pytest.raises(UserError, match="but no readable .*gen_samples_settings.json"):
        sample_ddp.main(sample_ddp.parse_args([*first, "--expand_ratio", "2"]))


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
        (["--cfg-scale", "0.5"], "argument --cfg-scale: must be a finite number >= 1, got 0.5"),
        (["--cfg-scale", "inf"], "argument --cfg-scale: must be a finite number >= 1, got inf"),
        (["--expand_ratio", "0"], "argument --expand_ratio: must be an integer >= 1, got 0"),
        (["--per-proc-batch-size", "-2"], "argument --per-proc-batch-size: must be an integer >= 1, got -2"),
        (["--ckpt", "missing.pt"], "does not exist"),
    ],
)
def test_bad_flags_are_rejected(ws, tmp_path, change, message, capsys):
    with pytest.raises(SystemExit):
        sample_ddp.parse_args(argv(ws, tmp_path, "GeCA-T", "--data-path", str(ws["features"])) + change)
    assert message in capsys.readouterr().err


def test_checkpoint_model_mismatch_and_missing_labels(ws, tmp_path, capsys):
    wrong = argv(ws, tmp_path, "GeCA-T", "--data-path", str(ws["features"]))
    wrong[wrong.index("--ckpt") + 1] = str(ws["ckpt"]["DiT-T/2"])
    with pytest.raises(SystemExit):  # the checkpoint saved --model DiT-T/2: refused before anything is built
        sample_ddp.parse_args(wrong)
    assert f"--model GeCA-T contradicts --ckpt {ws['ckpt']['DiT-T/2']}, which was trained with --model DiT-T/2" in (
        capsys.readouterr().err
    )
    bare = tmp_path / "bare.pt"  # weights only: nothing to compare the flags with until the weights are loaded
    save_checkpoint(bare, load_checkpoint(ws["ckpt"]["DiT-T/2"])["ema"])
    wrong[wrong.index("--ckpt") + 1] = str(bare)
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


# ----- Gene Heredity Guidance as an ablation: --ghg (default) / --no-ghg -------------------------------------------


def test_ghg_flag_parses_for_both_sampling_scripts_and_train(ws, tmp_path):
    import train

    for module, data in ((sample_ddp, ws["features"]), (sample_ddp_val, ws["root"])):
        base = argv(ws, tmp_path, "GeCA-T", "--data-path", str(data))
        assert module.parse_args(base).ghg is True  # the reference's behaviour is the default
        assert module.parse_args([*base, "--no-ghg"]).ghg is False
        assert module.parse_args([*base, "--ghg"]).ghg is True
    assert train.build_parser().parse_args([]).ghg is True
    assert train.build_parser().parse_args(["--no-ghg", "--val-mode", "final"]).ghg is False


def test_sample_folder_suffixes_leave_the_reference_name_alone():
    from infra.naming import sample_folder_name

    flags = ("GeCA-S", 0, 250, "ckpts/best_ckpt.pt", 256, "ema", 1.5, 0)
    reference = "GeCA-S-GS-fold-0-nstep-250-best_ckpt-size-256-vae-ema-cfg-1.5-seed-0"  # the reference README example
    assert sample_folder_name(*flags) == sample_folder_name(*flags, sampler="ddpm", ghg=True) == reference
    assert sample_folder_name(*flags, ghg=False) == reference + "-noghg"
    assert sample_folder_name(*flags, sampler="ddim") == reference + "-ddim"
    assert sample_folder_name(*flags, sampler="ddim", ghg=False) == reference + "-ddim-noghg"
    # The suffix follows the flag for every model, so a later command can name the folder from the flags alone.
    assert sample_folder_name("DiT-S/2", *flags[1:], ghg=False).endswith("-seed-0-noghg")


def test_ghg_and_no_ghg_sets_live_side_by_side(ws, tmp_path):
    base = argv(ws, tmp_path, "GeCA-T", "--data-path", str(ws["features"]), "--cfg-scale", "1.0")
    sample_ddp.main(sample_ddp.parse_args(base))
    summary = sample_ddp.main(sample_ddp.parse_args([*base, "--no-ghg"]))
    assert summary["images"] == len(ws["train_labels"])  # a new set, nothing skipped
    name = "GeCA-T-GS-fold-0-nstep-4-GeCA-T-size-64-vae-vae-cfg-1.0-seed-0"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [name, name + "-noghg"]
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        f"{name}-noghg_gen_samples_grid.png",
        f"{name}_gen_samples_grid.png",
    ]
    ghg, fresh = png_bytes(tmp_path / name, "gen_samples"), png_bytes(tmp_path / (name + "-noghg"), "gen_samples")
    assert sorted(ghg) == sorted(fresh) and ghg != fresh
    csv = [(tmp_path / folder / "train_syn_0.csv").read_text() for folder in (name, name + "-noghg")]
    assert csv[0] == csv[1]  # the same label vectors, only the images differ


@pytest.mark.parametrize("cfg_scale", [1.0, 1.5])
def test_no_ghg_starts_every_step_from_a_fresh_seed(cfg_scale):
    from diffusion import create_diffusion
    from synthesis.generate import sample_images

    model = random_weights(DiT_models["GeCA-T"](input_size=8, num_classes=11, in_channels=4), seed=2).eval()
    labels = torch.zeros(2, 11)
    labels[:, 0] = 1
    first = sample_images(model, create_diffusion("5"), labels, [0, 1], (4, 8, 8), cfg_scale=cfg_scale, ghg=False)
    starts, seeds = record_starts(model)
    again = sample_images(model, create_diffusion("5"), labels, [0, 1], (4, 8, 8), cfg_scale=cfg_scale, ghg=False)
    assert torch.equal(first, again)  # deterministic from the per-image seeds
    c = model.out_channels
    # One new seed per denoising step, none before the loop; GeCA.forward grows from it (cfg 1: it draws the seed
    # itself because the loop passes no extras; cfg > 1: forward_with_cfg draws it and hands it over).
    assert len(starts) == len(seeds) == 5
    assert all(is_fresh_seed(s, c) for s in seeds)  # output AND hidden channels reset every step
    assert all(s is None for s in starts) if cfg_scale == 1.0 else all(torch.equal(a, b) for a, b in zip(starts, seeds))
    assert not torch.equal(seeds[1][:, :c, 4, 4], seeds[0][:, :c, 4, 4])  # a new cell each step
    ghg = sample_images(model, create_diffusion("5"), labels, [0, 1], (4, 8, 8), cfg_scale=cfg_scale)
    assert not torch.equal(ghg, first)


# ----- the checkpoint's saved flags: sampling needs only --ckpt ------------------------------------------------------


class PooledPixels(torch.nn.Module):
    """Stand-in KID feature network for the training run's validation: uint8 images -> pooled colour features."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x.float() / 255.0, 4).flatten(1)


@pytest.fixture(scope="module")
def pixel_ckpt(ws, tmp_path_factory) -> Path:
    """best_ckpt.pt of a DiT-T/2 that train.py trained on 16 px images (--image_space --in_channels 3, T = 1000).

    DiT-T/2 keeps the default 250 sampling steps affordable on a CPU (a few seconds for one batch).
    """
    import metrics.inception
    import train

    results = tmp_path_factory.mktemp("pixel_run")
    flags = ["--model", "DiT-T/2", "--data-path", str(ws["root"]), "--results-dir", str(results), "--image_space"]
    flags += ["--in_channels", "3", "--image-size", "16", "--num-classes", "11", "--fold", "0", "--epochs", "1"]
    flags += ["--global-batch-size", "4", "--num-workers", "0", "--validate_every", "1", "--val-mode", "final"]
    flags += ["--num-sampling-steps", "2", "--val_samples", "4", "--load_from", "", "--lr", "1e-3"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(metrics.inception, "load_inception", lambda weights=None, device="cpu": PooledPixels())
        exp = train.main(train.build_parser().parse_args(flags))
    return exp / "checkpoints" / "best_ckpt.pt"


def test_sampling_needs_only_the_checkpoint(ws, pixel_ckpt, tmp_path, capsys):
    """Model, size, channels, classes, pixel space, diffusion length and VAE all come from the checkpoint."""
    short = ["--ckpt", str(pixel_ckpt), "--sample-dir", str(tmp_path / "short"), "--fold", "0"]
    name = "DiT-T-2-GS-fold-0-nstep-250-best_ckpt-size-16-vae-ema-cfg-1.5-seed-0"
    taken = (
        "from the checkpoint: --model DiT-T/2, --image-size 16, --in_channels 3, --num-classes 11, --image_space, "
        "--diffusion-steps 1000, --vae ema"
    )
    # The case: the validation copy, without repeating --in_channels 3 (or anything else).
    summary = sample_ddp_val.main(sample_ddp_val.parse_args([*short, "--data-path", str(ws["root"])]))
    assert taken in capsys.readouterr().out
    val = tmp_path / "short" / name / "gen_samples_val"
    assert (
        summary["images"] == summary["total"] == len(pd.read_csv(ws["root"] / "val_0.csv")) == len(list(val.iterdir()))
    )
    from PIL import Image

    assert Image.open(val / "000000.png").size == (16, 16)
    # The same run with the shape flags spelled out, as before this change: the same images.
    full = [*short, "--data-path", str(ws["root"]), "--model", "DiT-T/2", "--image-size", "16", "--image_space"]
    full += ["--num-classes", "11", "--in_channels", "3"]
    full[full.index("--sample-dir") + 1] = str(tmp_path / "full")
    sample_ddp_val.main(sample_ddp_val.parse_args(full))
    assert "from the checkpoint: --diffusion-steps 1000, --vae ema" in capsys.readouterr().out
    assert png_bytes(tmp_path / "short" / name, "gen_samples_val") == png_bytes(
        tmp_path / "full" / name, "gen_samples_val"
    )
    # The augmentation set: sample_ddp.py has no --in_channels flag, the checkpoint's 3 channels still apply.
    summary = sample_ddp.main(sample_ddp.parse_args([*short, "--data-path", str(ws["features"])]))
    assert taken in capsys.readouterr().out
    assert summary["images"] == len(ws["train_labels"]) and (tmp_path / "short" / name / "train_syn_0.csv").is_file()


@pytest.mark.parametrize(
    ("script", "flags", "trained"),
    [
        ("sample_ddp_val", ["--in_channels", "4"], "--in_channels 3"),
        ("sample_ddp", ["--image-size=32"], "--image-size 16"),
        ("sample_ddp", ["--model", "GeCA-T"], "--model DiT-T/2"),
        ("sample_ddp", ["--num-classes", "5"], "--num-classes 11"),
    ],
)
def test_a_contradicting_flag_stops_with_one_line(ws, pixel_ckpt, tmp_path, capsys, script, flags, trained):
    module = {"sample_ddp": sample_ddp, "sample_ddp_val": sample_ddp_val}[script]
    argv = ["--ckpt", str(pixel_ckpt), "--data-path", str(ws["root"]), "--sample-dir", str(tmp_path), *flags]
    with pytest.raises(SystemExit) as stop:
        module.parse_args(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    given = " ".join(flags).replace("=", " ")
    want = f"{given} contradicts --ckpt {pixel_ckpt}, which was trained with {trained}; drop the flag to use the "
    assert err[0].startswith("usage:") and err[-1].endswith("error: " + want + "checkpoint's setting")
    assert not any("size mismatch" in line or "state_dict" in line for line in err)
    assert list(tmp_path.iterdir()) == []  # nothing was written


def test_a_bare_state_dict_samples_with_flags(ws, tmp_path):
    """Weights alone (no "ema", no saved flags), as reference weights come: the flags decide, as before."""
    bare = tmp_path / "weights.pt"
    save_checkpoint(bare, load_checkpoint(ws["ckpt"]["DiT-T/2"])["ema"])
    flags = argv(ws, tmp_path / "bare", "DiT-T/2", "--data-path", str(ws["features"]))
    flags[flags.index("--ckpt") + 1] = str(bare)
    args = sample_ddp.parse_args(flags)
    assert args.checkpoint_settings == [] and args.model == "DiT-T/2"
    sample_ddp.main(args)
    sample_ddp.main(sample_ddp.parse_args(argv(ws, tmp_path / "full", "DiT-T/2", "--data-path", str(ws["features"]))))
    assert png_bytes(folder_of(tmp_path / "bare"), "gen_samples") == png_bytes(
        folder_of(tmp_path / "full"), "gen_samples"
    )
