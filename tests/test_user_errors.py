"""Every user mistake ends a script with one line, `<prog>: error: <message>` naming the culprit, exit status 2, no
traceback, and nothing half-written (issue 24, docs/DECISIONS.md §C8).

Each case runs the script's real `__main__` block in this process (runpy, with its own sys.argv), so the entry
point's error handling is what is tested; a case lists the fragments its message must contain and the output paths
that must not exist afterwards.
"""

from __future__ import annotations

import runpy
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tests.helpers.phantom_data import make_phantom_oct, make_tiny_vae, write_fold_latents
from tests.helpers.threads import torch_threads

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Case:
    """One bad input: the script (file name or `-m module`), its arguments, the fragments its one-line message must
    contain, and the outputs that must not exist after it."""

    name: str
    script: str
    argv: Callable[[dict], list[str]]
    fragments: Callable[[dict], list[str]]
    absent: Callable[[dict], list[Path]] = field(default=lambda ws: [])
    prepare: Callable[[dict], None] = field(default=lambda ws: None)
    env: Callable[[dict], dict[str, str]] = field(default=lambda ws: {})  # environment of the run


def corrupt_first_training_image(ws: dict, how: str) -> None:
    """Break the image on line 2 of a copy of train_0.csv (its first row), in the way `how` says."""
    frame = pd.read_csv(ws["data"] / "train_0.csv", index_col=0)
    path = ws["data"] / frame["filename"].iloc[0]
    if how == "corrupt":
        path.write_bytes(b"not an image at all")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:60])
    elif how == "tiny":
        Image.new("RGB", (1, 1)).save(path)
    elif how == "float":
        tiff = path.with_suffix(".tif")
        Image.fromarray(np.zeros((32, 32), dtype=np.float32), mode="F").save(tiff)
        frame.loc[frame.index[0], "filename"] = str(Path(frame["filename"].iloc[0]).with_suffix(".tif"))
        frame.to_csv(ws["data"] / "train_0.csv")


def edit_train_csv(ws: dict, edit: str) -> None:
    frame = pd.read_csv(ws["data"] / "train_0.csv", index_col=0)
    if edit == "no-filename":
        frame = frame.drop(columns=["filename"])
    elif edit == "label-2":
        frame.loc[frame.index[1], "AMD"] = 2
    elif edit == "duplicate":
        frame.loc[frame.index[1], "filename"] = frame["filename"].iloc[0]
    frame.to_csv(ws["data"] / "train_0.csv")


def train_argv(ws: dict, *extra: str) -> list[str]:
    return [
        "--model", "DiT-T/2", "--image_space", "--in_channels", "3", "--image-size", "16",
        "--data-path", str(ws["data"]), "--dataset", "oct", "--feature-path", str(ws["data"]),
        "--results-dir", str(ws["out"] / "res"), "--num-classes", "11", "--fold", "0", "--global-batch-size", "4",
        "--num-workers", "0", "--epochs", "1", "--validate_every", "0", "--diffusion-steps", "50", "--load_from", "",
        *extra,
    ]  # fmt: skip


def sample_argv(ws: dict, *extra: str) -> list[str]:
    return [
        "--model", "DiT-T/2", "--image_space", "--image-size", "16", "--num-classes", "11", "--fold", "0",
        "--ckpt", str(ws["ckpt"]), "--data-path", str(ws["data"]), "--dataset", "oct",
        "--sample-dir", str(ws["out"] / "samples"), "--num-sampling-steps", "2", "--device", "cpu", *extra,
    ]  # fmt: skip


def replaced(argv: list[str], flag: str, value: str | None) -> list[str]:
    """`argv` with `flag`'s value set to `value` (None drops a switch)."""
    i = argv.index(flag)
    if value is None:
        return argv[:i] + argv[i + 1 :]
    return [*argv[: i + 1], value, *argv[i + 2 :]]


def latent_train_argv(ws: dict, image_size: str) -> list[str]:
    argv = replaced(replaced(train_argv(ws), "--image_space", None), "--in_channels", "4")
    return replaced(replaced(argv, "--feature-path", str(ws["features"])), "--image-size", image_size)


def checkpoint_with_args(source: Path, target: Path, **changes) -> None:
    """A copy of checkpoint `source` at `target` whose saved flags have `changes` (values argparse would refuse: a
    resumed run takes the flags it is not given from there)."""
    from infra.checkpoint import load_checkpoint, save_checkpoint

    checkpoint = load_checkpoint(source)
    for key, value in changes.items():
        setattr(checkpoint["args"], key, value)
    save_checkpoint(target, checkpoint)


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


CASES = [
    Case(
        "train: corrupt PNG",
        "train.py",
        lambda ws: train_argv(ws),
        lambda ws: ["train_0.csv", "line 2", "not an image"],
        lambda ws: [ws["out"] / "res"],
        lambda ws: corrupt_first_training_image(ws, "corrupt"),
    ),
    Case(
        "train: truncated PNG",
        "train.py",
        lambda ws: train_argv(ws),
        lambda ws: ["train_0.csv", "line 2"],
        lambda ws: [ws["out"] / "res"],
        lambda ws: corrupt_first_training_image(ws, "truncated"),
    ),
    Case(
        "train: 1x1 image",
        "train.py",
        lambda ws: train_argv(ws),
        lambda ws: ["train_0.csv", "line 2", "1 x 1"],
        lambda ws: [ws["out"] / "res"],
        lambda ws: corrupt_first_training_image(ws, "tiny"),
    ),
    Case(
        "train: float image",
        "train.py",
        lambda ws: train_argv(ws),
        lambda ws: ["train_0.csv", "line 2", ".tif"],
        lambda ws: [ws["out"] / "res"],
        lambda ws: corrupt_first_training_image(ws, "float"),
    ),
    Case(
        "train: CSV without filename",
        "train.py",
        lambda ws: train_argv(ws),
        lambda ws: ["train_0.csv", "filename"],
        lambda ws: [ws["out"] / "res"],
        lambda ws: edit_train_csv(ws, "no-filename"),
    ),
    Case(
        "train: label 2",
        "train.py",
        lambda ws: train_argv(ws),
        lambda ws: ["train_0.csv", "AMD"],
        lambda ws: [ws["out"] / "res"],
        lambda ws: edit_train_csv(ws, "label-2"),
    ),
    Case(
        "train: duplicate file names",
        "train.py",
        lambda ws: train_argv(ws),
        lambda ws: ["train_0.csv", "duplicate"],
        lambda ws: [ws["out"] / "res"],
        lambda ws: edit_train_csv(ws, "duplicate"),
    ),
    Case(
        "train: --image-size that does not match the latents",
        "train.py",
        lambda ws: latent_train_argv(ws, "24"),
        lambda ws: ["0.npy", "--image-size"],
        lambda ws: [ws["out"] / "res"],
    ),
    Case(
        "train: negative learning rate",
        "train.py",
        lambda ws: train_argv(ws, "--lr", "-1"),
        lambda ws: ["--lr"],
        lambda ws: [ws["out"] / "res"],
    ),
    Case(
        "train: resume from a file that is not a checkpoint",
        "train.py",
        lambda ws: train_argv(ws, "--resume", str(write_text(ws["out"] / "junk.pt", "hello"))),
        lambda ws: ["junk.pt"],
        lambda ws: [ws["out"] / "res"],
    ),
    Case(
        "train: resume whose checkpoint holds an out-of-range flag",
        "train.py",
        lambda ws: train_argv(ws, "--resume", str(ws["out"] / "bad_lr.pt")),
        lambda ws: ["argument --lr: must be a number in (0, 1], got 5.0"],
        lambda ws: [ws["out"] / "res"],
        lambda ws: checkpoint_with_args(ws["ckpt"], ws["out"] / "bad_lr.pt", lr=5.0),
    ),
    Case(
        "train: results folder that cannot be created",
        "train.py",
        lambda ws: replaced(train_argv(ws), "--results-dir", str(write_text(ws["out"] / "afile", "x") / "res")),
        lambda ws: ["afile"],
    ),
    Case(
        "sample: missing checkpoint",
        "sample_ddp_val.py",
        lambda ws: replaced(sample_argv(ws), "--ckpt", str(ws["out"] / "nothing.pt")),
        lambda ws: ["nothing.pt"],
        lambda ws: [ws["out"] / "samples"],
    ),
    Case(
        "sample: a checkpoint that is not one",
        "sample_ddp_val.py",
        lambda ws: replaced(sample_argv(ws), "--ckpt", str(write_text(ws["out"] / "text.pt", "x"))),
        lambda ws: ["text.pt"],
        lambda ws: [ws["out"] / "samples"],
    ),
    Case(
        "sample: wrong model for the checkpoint",
        "sample_ddp_val.py",
        lambda ws: replaced(sample_argv(ws), "--model", "GeCA-T"),
        lambda ws: ["--model", "GeCA-T", "DiT-T/2"],
        lambda ws: [ws["out"] / "samples"],
    ),
    Case(
        "sample: missing fold",
        "sample_ddp_val.py",
        lambda ws: replaced(sample_argv(ws), "--fold", "7"),
        lambda ws: ["val_7.csv"],
        lambda ws: [ws["out"] / "samples"],
    ),
    Case(
        "extract: VAE folder without config",
        "extract_features.py",
        lambda ws: [
            "--data-path",
            str(ws["data"]),
            "--dataset",
            "oct",
            "--features-path",
            str(ws["out"] / "feats"),
            "--vae",
            str((ws["out"] / "novae").mkdir() or ws["out"] / "novae"),
            "--image-size",
            "32",
            "--fold",
            "0",
            "--num-workers",
            "0",
        ],  # fmt: skip
        lambda ws: ["novae", "config.json"],
        lambda ws: [ws["out"] / "feats" / "features_0"],
    ),
    Case(
        "evaluate: sample folder without its CSV",
        "evaluate.py",
        lambda ws: [
            "--real",
            str(ws["data"]),
            "--gen",
            str((ws["out"] / "gen").mkdir() or ws["out"] / "gen"),
            "--dataset",
            "oct",
            "--image-size",
            "32",
            "--device_list",
            "cpu",
            "--num-workers",
            "0",
        ],  # fmt: skip
        lambda ws: ["val_syn_0.csv"],
        lambda ws: [ws["out"] / "gen" / "metrics_0.json"],
    ),
    Case(
        "classify: unknown condition",
        "classify.py",
        lambda ws: [
            "--data-path",
            str(ws["data"]),
            "--conditions",
            "geometric",
            "magic",
            "--out",
            str(ws["out"] / "c"),
        ],
        lambda ws: ["magic"],
        lambda ws: [ws["out"] / "c" / "runs"],
    ),
    Case(
        "classify: no ImageNet weights for the default ResNet-50",
        "classify.py",
        lambda ws: ["--data-path", str(ws["data"]), "--conditions", "geometric", "--out", str(ws["out"] / "c")],
        lambda ws: ["no ImageNet weights for --arch resnet50", "--pretrained none"],
        lambda ws: [ws["out"] / "c" / "runs"],
        env=lambda ws: {"TORCH_HOME": str(ws["out"] / "torch_home")},  # an empty cache, whatever this machine has
    ),
    Case(
        "classify: synthetic folder without its CSV",
        "classify.py",
        lambda ws: [
            "--data-path",
            str(ws["data"]),
            "--conditions",
            "geometric",
            f"synthetic:S={ws['out'] / 'empty'}",
            "--out",
            str(ws["out"] / "c"),
        ],  # fmt: skip
        lambda ws: ["train_syn_0.csv"],
        lambda ws: [ws["out"] / "c" / "runs"],
    ),
    Case(
        "train_vae: batch larger than the data",
        "train_vae.py",
        lambda ws: [
            "--data-path",
            str(ws["data"]),
            "--dataset",
            "oct",
            "--image-size",
            "32",
            "--out",
            str(ws["out"] / "v"),
            "--batch-size",
            "999",
            "--num-workers",
            "0",
        ],  # fmt: skip
        lambda ws: ["--batch-size 999"],
        lambda ws: [ws["out"] / "v"],
    ),
    Case(
        "make_folds: missing master CSV",
        "-m data.make_folds",
        lambda ws: ["--csv", str(ws["out"] / "none.csv"), "--out", str(ws["out"] / "folds")],
        lambda ws: ["none.csv"],
        lambda ws: [ws["out"] / "folds"],
    ),
    Case(
        "phantoms: fewer images than folds need",
        "-m data.phantoms",
        lambda ws: ["--out", str(ws["out"] / "ph"), "--num-images", "2", "--folds", "5"],
        lambda ws: ["--num-images"],
        lambda ws: [ws["out"] / "ph" / "train_0.csv"],
    ),
    Case(
        "demo: output path is a file",
        "-m demo",
        lambda ws: ["--out", str(write_text(ws["out"] / "afile", "x")), "--quick"],
        lambda ws: ["afile"],
    ),
    Case(
        "demo: zero threads",
        "-m demo",
        lambda ws: ["--out", str(ws["out"] / "d"), "--quick", "--threads", "0"],
        lambda ws: ["--threads"],
        lambda ws: [ws["out"] / "d"],
    ),
    Case(
        "gpu check: negative stage cap",
        "-m bench.gpu_check",
        lambda ws: ["--dry", "--out", str(ws["out"] / "g"), "--cap-train", "-5"],
        lambda ws: ["--cap-train"],
        lambda ws: [ws["out"] / "g"],
    ),
    Case("bench: zero threads", "-m bench", lambda ws: ["--threads", "0", "--quick"], lambda ws: ["--threads"]),
]
if not torch.cuda.is_available():  # on a CUDA machine the request is valid
    CASES.append(
        Case(
            "bench: CUDA requested without CUDA",
            "-m bench",
            lambda ws: ["--device", "cuda", "--quick", "--sections", "step"],
            lambda ws: ["device cuda requested but CUDA is not available"],
        )
    )
    CASES.append(
        Case(
            "demo: CUDA requested without CUDA",
            "-m demo",
            lambda ws: ["--out", str(ws["out"] / "d"), "--quick", "--device", "cuda"],
            lambda ws: ["device cuda requested but CUDA is not available"],
            lambda ws: [ws["out"] / "d"],
        )
    )


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict:
    """Phantoms (32 px), a tiny VAE and a one-step DiT-T/2 image-space checkpoint, copied afresh for every case."""
    base = tmp_path_factory.mktemp("user_errors")
    data = make_phantom_oct(base / "data", num_images=24, folds=2, size=32)
    make_tiny_vae(base / "vae")
    argv = train_argv({"data": data, "out": base}, "--max-steps", "1")
    with torch_threads(1):
        assert run_script("train.py", argv) == 0
    write_fold_latents(data, base / "vae", base / "features", 32)  # 4 x 4 x 4 latents of the training images
    ckpt = base / "last.pt"
    shutil.copy(next((base / "res").glob("*/checkpoints/last.pt")), ckpt)
    shutil.rmtree(base / "res")
    return {"base": base, "data": data, "ckpt": ckpt, "features": base / "features"}


def run_script(script: str, argv: list[str]) -> int:
    """Run `script` (a file or `-m module`) as `__main__` with `argv`; its exit status."""
    old_argv = sys.argv
    sys.argv = [script.split()[-1], *argv]
    try:
        if script.startswith("-m "):
            runpy.run_module(script[3:], run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(str(REPO / script), run_name="__main__")
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 1
    finally:
        sys.argv = old_argv
    return 0


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_user_mistake_is_one_line(case: Case, pristine: dict, tmp_path: Path, capfd, monkeypatch) -> None:
    ws = {
        "data": tmp_path / "data",
        "out": tmp_path / "out",
        "ckpt": pristine["ckpt"],
        "features": pristine["features"],
    }
    shutil.copytree(pristine["data"], ws["data"])
    ws["out"].mkdir()
    case.prepare(ws)
    for name, value in case.env(ws).items():
        monkeypatch.setenv(name, value)
    status = run_script(case.script, case.argv(ws))
    out, err = capfd.readouterr()
    prog = case.script[3:] if case.script.startswith("-m ") else case.script
    prog = f"python -m {prog}" if case.script.startswith("-m ") else prog
    assert status == 2, (status, out[-2000:], err[-2000:])
    assert "Traceback" not in out + err, err[-3000:]
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and errors[0].startswith(f"{prog}: error: "), err[-2000:]
    for fragment in case.fragments(ws):
        assert fragment in errors[0], (fragment, errors[0])
    for path in case.absent(ws):
        assert not path.exists() or (path.is_dir() and not any(path.iterdir())), f"{path} was left behind"
