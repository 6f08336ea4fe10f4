"""classify.py: protocol defaults, a tiny end-to-end study on OCT phantoms, resume, and input errors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from classify import build_parser, main
from data.labels import OCT_LABELS
from data.phantoms import make_phantom_dataset
from downstream.conditions import parse_conditions
from downstream.splits import load_fold

TINY = ["--dataset", "oct", "--arch", "tiny", "--image-size", "32", "--batch-size", "4", "--num-workers", "0"]


def make_sample_folder(data_path: Path, out: Path, folds: tuple[int, ...] = (0, 1), per_fold: int = 8) -> Path:
    """A sample folder in sample_ddp.py's layout (SPEC 3.3): gen_samples/{index:06d}.png + train_syn_{fold}.csv.

    The "synthetic" images are copies of each fold's first real training images, with their labels.
    """
    (out / "gen_samples").mkdir(parents=True, exist_ok=True)
    index = 0
    for fold in folds:
        rows = []
        for _, real in pd.read_csv(data_path / f"train_{fold}.csv", index_col=0).head(per_fold).iterrows():
            name = f"gen_samples/{index:06d}.png"
            shutil.copy(data_path / real["filename"], out / name)
            rows.append({"client_id": f"syn_{index}", "filename": name, **{k: int(real[k]) for k in OCT_LABELS}})
            rows[-1]["patient_name"] = index
            index += 1
        frame = pd.DataFrame(rows)
        combos = frame[list(OCT_LABELS)].astype(str).agg("".join, axis=1)
        frame["multi_class_label"] = combos.astype("category").cat.codes
        frame.to_csv(out / f"train_syn_{fold}.csv")
    return out


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny CNNs gain nothing from intra-op threads, and on a shared CPU the extra threads only wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 OCT phantoms at 32 px in 2 folds (shared: tests copy it before changing anything)."""
    root = tmp_path_factory.mktemp("oct_phantoms")
    make_phantom_dataset(root, kind="oct", num_images=40, folds=2, size=32, seed=0)
    return root


@pytest.fixture(scope="module")
def samples(phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sample_folder(phantoms, tmp_path_factory.mktemp("samples"))


def run(argv: list[str]) -> dict:
    return main(build_parser().parse_args(argv))


def test_defaults_follow_the_protocol():
    args = build_parser().parse_args(["--data-path", "d"])
    assert (args.arch, args.image_size, args.epochs, args.batch_size) == ("resnet50", 448, 80, 8)
    assert (args.lr, args.momentum, args.weight_decay, args.threshold) == (1e-3, 0.9, 1e-4, 0.5)
    assert (args.lr_factor, args.lr_patience, args.plateau_after, args.min_lr) == (0.5, 5, 5, 1e-7)
    assert (args.test, args.test_metric, args.pretrained, args.resume) == ("ttest", "mAP", "auto", True)
    assert args.conditions == ["geometric", "noaug"] and args.folds == [0] and args.seeds == [0]


def test_study_end_to_end_and_resume(phantoms, samples, tmp_path):
    out = tmp_path / "out"
    argv = [
        "--data-path", str(phantoms), *TINY, "--epochs", "2", "--folds", "0", "1", "--seeds", "0",
        "--conditions", "geometric", f"synthetic:SYN={samples}", "--out", str(out),
    ]  # fmt: skip
    first = run(argv)
    assert len(first["runs"]) == 4
    md = (out / "results.md").read_text()
    assert "| Synthetic data | Sen↑ | Spe↑ | AUC↑ | F1↑ | F1 (sen/spe)↑ | mAP↑ | p-value |" in md
    assert "| Baseline (Geometric Aug) |" in md and "| SYN |" in md
    assert "val split served BOTH model selection and evaluation" in md
    frame = pd.read_csv(out / "results.csv")
    assert len(frame) == 4 and set(frame["condition"]) == {"geometric", "SYN"}
    assert {"Sen", "Spe", "AUC", "F1", "F1 (sen/spe)", "mAP", "mAP[NOR]"} <= set(frame.columns)
    syn_rows = frame[frame["condition"] == "SYN"]
    assert (syn_rows["n_train_synthetic"] == 8).all() and (syn_rows["n_train_real"] == 20).all()
    document = json.loads((out / "results.json").read_text())
    assert document["pretrained"] is False and document["eval_split"] == {"0": "val", "1": "val"}
    assert document["summary"][1]["test"]["n_pairs"] == 2
    assert set(document["runs"][0]["per_label"]["mAP"]) == set(OCT_LABELS)
    assert (out / "per_label.png").stat().st_size > 0

    # Rerun: every run is resumed from its JSON (same files, untouched), nothing is trained.
    run_files = sorted((out / "runs").glob("*.json"))
    mtimes = [p.stat().st_mtime_ns for p in run_files]
    second = run(argv)
    assert [p.stat().st_mtime_ns for p in run_files] == mtimes
    assert second["runs"] == first["runs"]
    log = (out / "log.txt").read_text()
    assert log.count(": resumed from") == 4 and log.count(": training (key") == 4

    # A changed setting is a different run: it trains instead of reusing the stored result.
    run([*argv[:-5], "--conditions", "geometric", "--folds", "0", "--lr", "0.01", "--out", str(out)])
    assert len(list((out / "runs").glob("geometric_fold0_*.json"))) == 2

    # A regenerated synthetic image (same CSV, new file) is new data: the synthetic run trains again.
    image = samples / pd.read_csv(samples / "train_syn_0.csv")["filename"].iloc[0]
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    run([*argv[:-5], "--conditions", f"synthetic:SYN={samples}", "--folds", "0", "--out", str(out)])
    assert len(list((out / "runs").glob("SYN_fold0_*.json"))) == 2


def test_runs_are_reproducible_and_stop_on_min_lr(phantoms, tmp_path):
    argv = ["--data-path", str(phantoms), *TINY, "--epochs", "3", "--conditions", "noaug", "--min-lr", "1"]
    a = run([*argv, "--out", str(tmp_path / "a")])["runs"][0]
    b = run([*argv, "--out", str(tmp_path / "b")])["runs"][0]
    assert a["metrics"] == b["metrics"] and a["config_hash"] == b["config_hash"]
    assert a["epochs_run"] == 1  # lr 1e-3 < --min-lr 1: stop after the first epoch


def test_eval_split_and_fold_placeholder(phantoms, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(phantoms, data)
    shutil.copy(data / "val_0.csv", data / "test_0.csv")
    make_sample_folder(data, tmp_path / "S-fold-0", folds=(0,))
    make_sample_folder(data, tmp_path / "S-fold-1", folds=(1,))
    conditions = parse_conditions([f"synthetic:S={tmp_path}/S-fold-{{fold}}"])
    fold0 = load_fold(data, 0, OCT_LABELS, conditions)
    fold1 = load_fold(data, 1, OCT_LABELS, conditions)
    assert (fold0.eval_split, fold1.eval_split) == ("test", "val")
    assert fold1.synthetic["S"].csv_path == tmp_path / "S-fold-1" / "train_syn_1.csv"


def _expect_error(argv: list[str], out: Path, *fragments: str) -> None:
    with pytest.raises(SystemExit) as info:
        run([*argv, "--out", str(out)])
    message = str(info.value.code)
    for fragment in fragments:
        assert fragment in message, message
    assert not (out / "runs").exists()  # nothing was trained


def test_errors_before_training(phantoms, samples, tmp_path):
    base = ["--data-path", str(phantoms), *TINY, "--epochs", "1", "--folds", "0", "1"]
    out = tmp_path / "out"

    # Synthetic label columns differ: name the CSV, the missing and the extra columns.
    wrong = tmp_path / "wrong"
    shutil.copytree(samples, wrong)
    frame = pd.read_csv(wrong / "train_syn_1.csv", index_col=0).rename(columns={"RVO": "XYZ"})
    frame.to_csv(wrong / "train_syn_1.csv")
    _expect_error([*base, "--conditions", "geometric", f"synthetic:{wrong}"], out,
                  "train_syn_1.csv", "missing ['RVO']", "extra ['XYZ']")  # fmt: skip

    # Missing synthetic image: name the CSV and the first missing rows.
    holes = tmp_path / "holes"
    shutil.copytree(samples, holes)
    (holes / "gen_samples" / "000002.png").unlink()
    _expect_error([*base, "--conditions", f"synthetic:{holes}"], out, "train_syn_0.csv", "gen_samples/000002.png")

    # A fold that does not exist: name the file.
    _expect_error([*base[:-2], "0", "5", "--conditions", "geometric"], out, "train_5.csv")
    # No test split although --eval-split test asks for it.
    _expect_error([*base, "--eval-split", "test"], out, "test_0.csv")
    # Unknown condition syntax.
    _expect_error([*base, "--conditions", "geometric", "synthetic"], out, "--conditions", "synthetic:NAME=DIR")
    # Impossible protocol values name their flag.
    _expect_error([*base, "--threshold", "1.5"], out, "--threshold")
