"""classify.py: protocol defaults, a tiny end-to-end study on OCT phantoms, resume, and input errors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, recall_score, roc_auc_score

from classify import build_parser, main
from data.labels import OCT_LABELS
from downstream.classifier import build_classifier
from downstream.conditions import parse_conditions
from downstream.splits import load_fold
from infra.errors import UserError
from synthesis.annotations import write_annotations
from tests.helpers.phantom_data import make_phantom_oct

TINY = ["--dataset", "oct", "--arch", "tiny", "--image-size", "32", "--batch-size", "4", "--num-workers", "0"]


def make_sample_folder(data_path: Path, out: Path, folds: tuple[int, ...] = (0, 1), per_fold: int = 8) -> Path:
    """A sample folder in sample_ddp.py's layout (docs/REFERENCE.md §3.3): gen_samples/{index:06d}.png +
    train_syn_{fold}.csv.

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


def make_val_copy(data_path: Path, out: Path, fold: int) -> Path:
    """A validation copy in sample_ddp_val.py's layout: gen_samples_val/{index:06d}.png + val_syn_{fold}.csv.

    Written by the sampling scripts' own annotation writer; image i is a copy of real validation image i and carries
    its labels (a perfect generator), so the copy holds exactly the real validation split.
    """
    real = pd.read_csv(data_path / f"val_{fold}.csv", index_col=0)
    (out / "gen_samples_val").mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(real["filename"]):
        shutil.copy(data_path / name, out / "gen_samples_val" / f"{i:06d}.png")
    labels = real[list(OCT_LABELS)].to_numpy()
    write_annotations(out, f"val_syn_{fold}.csv", "gen_samples_val", range(len(real)), labels, OCT_LABELS)
    return out


# Tiny CNNs gain nothing from intra-op threads, and on a shared CPU the extra threads only wait.
pytestmark = pytest.mark.one_thread


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 OCT phantoms at 32 px in 2 folds (shared: tests copy it before changing anything)."""
    root = tmp_path_factory.mktemp("oct_phantoms")
    make_phantom_oct(root, num_images=40, folds=2, size=32, seed=0)
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
    with pytest.raises(UserError) as info:
        run([*argv, "--out", str(out)])
    message = str(info.value)
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
    # Impossible protocol values name their flag: refused by the parser, or by main for a Namespace built in code.
    args = build_parser().parse_args([*base, "--out", str(out)])
    args.threshold = 1.5
    with pytest.raises(UserError, match=r"argument --threshold: must be a number in \(0, 1\), got 1.5"):
        main(args)
    assert not (out / "runs").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--threshold", "1.5"], "argument --threshold: must be a number in (0, 1), got 1.5"),
        (["--lr-factor", "1"], "argument --lr-factor: must be a number in (0, 1), got 1.0"),
        (["--aug-crop-scale", "0"], "argument --aug-crop-scale: must be a number in (0, 1], got 0.0"),
        (["--aug-zoom-range", "1"], "argument --aug-zoom-range: must be a number in [0, 1), got 1.0"),
        (["--aug-jitter", "-0.1"], "argument --aug-jitter: must be a number in [0, 1), got -0.1"),
        (["--epochs", "0"], "argument --epochs: must be an integer >= 1, got 0"),
        (["--batch-size", "0"], "argument --batch-size: must be an integer >= 1, got 0"),
        (["--image-size", "4"], "argument --image-size: must be an integer >= 8, got 4"),
        (["--lr", "nan"], "argument --lr: must be a finite number > 0, got nan"),
        (["--momentum", "1"], "argument --momentum: must be a number in [0, 1), got 1.0"),
        (["--weight-decay", "-1"], "argument --weight-decay: must be a finite number >= 0, got -1.0"),
        (["--min-lr=-1e-7"], "argument --min-lr: must be a finite number >= 0, got -1e-07"),
        (["--lr-patience", "-1"], "argument --lr-patience: must be an integer >= 0, got -1"),
        (["--aug-flip-p", "2"], "argument --aug-flip-p: must be a number in [0, 1], got 2.0"),
        (["--aug-rotation", "400"], "argument --aug-rotation: must be a number in [0, 360], got 400.0"),
        (["--seeds", "0", "-1"], "argument --seeds: must be an integer >= 0, got -1"),
    ],
)
def test_out_of_range_flags_are_refused_by_the_parser(extra, message, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--data-path", "d", *extra])
    assert message in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# Label fidelity: GAN-test and GAN-train


def sklearn_macro(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Macro AUC, F1 (sen/spe) and mAP written out with sklearn, labels without positives or negatives skipped."""
    auc, f1ss, ap = [], [], []
    for k in range(labels.shape[1]):
        y, s = labels[:, k], scores[:, k]
        pred = s >= threshold
        if y.any():
            ap.append(average_precision_score(y, s))
        if y.any() and (~y.astype(bool)).any():
            auc.append(roc_auc_score(y, s))
            sen = recall_score(y, pred)
            spe = recall_score(1 - y, ~pred)
            f1ss.append(0.0 if sen + spe == 0 else 2 * sen * spe / (sen + spe))
    return {"AUC": np.mean(auc), "F1 (sen/spe)": np.mean(f1ss), "mAP": np.mean(ap)}


def independent_scores(state_file: Path, folder: Path, csv: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and sigmoid scores of the saved baseline classifier on the images of `folder/csv`, preprocessed here."""
    frame = pd.read_csv(folder / csv, index_col=0)
    model = build_classifier("tiny", len(OCT_LABELS))
    model.load_state_dict(torch.load(state_file, weights_only=True)["state_dict"])
    model.eval()
    images = []
    for name in frame["filename"]:
        with Image.open(folder / name) as img:
            pixels = np.asarray(img.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32)
        images.append(torch.from_numpy(pixels / 127.5 - 1.0).permute(2, 0, 1))  # [0, 255] -> [-1, 1], (3, S, S)
    with torch.no_grad():
        scores = torch.sigmoid(model(torch.stack(images))).double().numpy()
    return frame[list(OCT_LABELS)].to_numpy(), scores


def test_label_fidelity_end_to_end(phantoms, tmp_path):
    samples = make_sample_folder(phantoms, tmp_path / "samples", per_fold=6)
    make_val_copy(phantoms, samples, fold=0)  # fold 1 has no validation copy: its GAN-test is n/a
    out = tmp_path / "out"
    argv = [
        "--data-path", str(phantoms), *TINY, "--epochs", "1", "--folds", "0", "1", "--seeds", "0", "--out", str(out),
        "--conditions", "geometric", f"synthetic:SYN={samples}", f"synthetic-only:SYN={samples}",
        "--threshold", "0.49",  # after one epoch the scores sit near 0.5: both kinds of prediction occur
    ]  # fmt: skip
    result = run(argv)

    # GAN-test of fold 0: the saved baseline weights, applied here to the copy, give the stored scores, and the
    # metrics are sklearn's on them against the labels of val_syn_0.csv.
    record = next(r for r in result["gan_test"] if r["fold"] == 0)
    base = next(r for r in result["runs"] if r["condition"] == "geometric" and r["fold"] == 0)
    state_file = out / "runs" / record["baseline_run"].replace(".json", ".pt")
    labels, scores = independent_scores(state_file, samples, "val_syn_0.csv", 32)
    assert record["available"] and record["n_eval"] == len(labels) == 20
    np.testing.assert_allclose(np.asarray(record["scores"]), scores, atol=1e-6)
    expected = sklearn_macro(labels, scores, threshold=0.49)
    assert 0 < expected["F1 (sen/spe)"] < 1  # the thresholded metric is not trivially 0 or 1 here
    for metric, value in expected.items():
        assert record["metrics"][metric] == pytest.approx(value, abs=1e-6), metric
    # The copy holds the real validation images, on which (no test split) the baseline itself was evaluated.
    for metric in ("AUC", "F1 (sen/spe)", "mAP"):
        assert record["metrics"][metric] == pytest.approx(base["metrics"][metric], abs=1e-6)

    # Fold 1 has no val_syn_1.csv: n/a with the reason, and the study went on.
    missing = next(r for r in result["gan_test"] if r["fold"] == 1)
    assert not missing["available"] and "val_syn_1.csv" in missing["reason"]

    # GAN-train: the synthetic-only runs trained on the rows of train_syn_{fold}.csv and nothing else.
    only = [r for r in result["runs"] if r["condition"] == "SYN (synthetic only)"]
    assert len(only) == 2
    for r in only:
        csv = samples / f"train_syn_{r['fold']}.csv"
        assert r["train_csvs"] == [str(csv)]
        assert r["n_train"] == r["n_train_synthetic"] == len(pd.read_csv(csv, index_col=0)) == 6
        assert r["n_train_real"] == 0
    mixed = next(r for r in result["runs"] if r["condition"] == "SYN")
    assert mixed["n_train"] == 20 + 6 and len(mixed["train_csvs"]) == 2

    # The files: a Label fidelity table whose GAN-train cells are the synthetic-only row of Table B.
    md = (out / "results.md").read_text()
    assert "## Label fidelity" in md and "| SYN (synthetic only) |" in md
    header = "| Synthetic set | GAN-test AUC↑ | GAN-test F1 (sen/spe)↑ | GAN-test mAP↑ | GAN-train AUC↑ |"
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip("|").split("|")]

    table_b = cells(next(line for line in lines if line.startswith("| SYN (synthetic only) |")))
    fid = cells(next(line for line in lines[start:] if line.startswith("| SYN |")))
    # Table B: name, Sen, Spe, AUC, F1, F1 (sen/spe), mAP, p; label fidelity: name, 3 GAN-test, 3 GAN-train.
    assert fid[4:] == [table_b[3], table_b[5], table_b[6]]
    assert fid[1] == f"{100 * record['metrics']['AUC']:.2f} ± n/a"  # one available run: no std
    assert "1 of 2 runs n/a" in md
    frame = pd.read_csv(out / "results.csv")
    gan_rows = frame[frame["condition"] == "GAN-test:SYN"]
    assert len(gan_rows) == 1 and gan_rows["kind"].iloc[0] == "gan-test" and gan_rows["eval_split"].iloc[0] == "val_syn"
    assert gan_rows["mAP"].iloc[0] == pytest.approx(record["metrics"]["mAP"])
    document = json.loads((out / "results.json").read_text())
    fidelity = document["label_fidelity"]
    assert [r["name"] for r in fidelity["summary"]] == ["Real images (reference)", "SYN"]
    assert fidelity["summary"][1]["gan_train"]["condition"] == "SYN (synthetic only)"
    assert all("scores" not in r for r in fidelity["gan_test"]) and len(fidelity["gan_test"]) == 2

    # Rerun: the GAN-test score is reused, nothing trains.
    run(argv)
    log = (out / "log.txt").read_text()
    assert log.count("GAN-test SYN fold 0 seed 0: resumed from") == 1 and log.count(": training (key") == 6


def test_gan_test_of_a_set_added_later_reuses_the_baseline(phantoms, tmp_path):
    samples = make_val_copy(phantoms, make_sample_folder(phantoms, tmp_path / "samples", folds=(0,)), fold=0)
    out = tmp_path / "out"
    base = ["--data-path", str(phantoms), *TINY, "--epochs", "1", "--out", str(out)]
    run([*base, "--conditions", "geometric"])
    (state_file,) = (out / "runs").glob("geometric_fold0_seed0_*.pt")

    # A synthetic set added afterwards: the finished baseline is resumed, its saved weights score the copy.
    first = run([*base, "--conditions", "geometric", f"synthetic:SYN={samples}"])
    assert first["gan_test"][0]["available"]
    log = (out / "log.txt").read_text()
    assert log.count("geometric fold 0 seed 0: resumed from") == 1
    assert log.count("geometric fold 0 seed 0: training (key") == 1

    # Without its weights the baseline is trained again (the same run, so the same scores).
    state_file.unlink()
    again = run([*base, "--conditions", "geometric", f"synthetic:SYN={samples}"])
    assert state_file.is_file()
    assert (out / "log.txt").read_text().count("are missing: training again") == 1
    assert again["gan_test"][0]["metrics"] == first["gan_test"][0]["metrics"]


def test_gan_test_needs_the_baseline(phantoms, tmp_path):
    samples = make_val_copy(phantoms, make_sample_folder(phantoms, tmp_path / "samples", folds=(0,)), fold=0)
    argv = ["--data-path", str(phantoms), *TINY, "--epochs", "1", "--conditions", f"synthetic-only:{samples}"]
    _expect_error(argv, tmp_path / "out", "'geometric'", "--no-gan-test", "['samples']")
    # Without GAN-test a synthetic-only study needs no baseline.
    result = run([*argv, "--no-gan-test", "--dry-run", "--out", str(tmp_path / "out")])
    assert result["gan_test"] == []


def test_broken_validation_copy_fails_before_training(phantoms, tmp_path):
    samples = make_val_copy(phantoms, make_sample_folder(phantoms, tmp_path / "samples", folds=(0,)), fold=0)
    (samples / "gen_samples_val" / "000003.png").unlink()
    argv = ["--data-path", str(phantoms), *TINY, "--epochs", "1", "--conditions", "geometric", f"synthetic:{samples}"]
    _expect_error(argv, tmp_path / "out", "val_syn_0.csv", "gen_samples_val/000003.png")


def test_gan_test_condition_scores_a_copy_without_training_on_it(phantoms, tmp_path):
    """`gan-test:NAME=DIR` (e.g. the VAE reconstructions of evaluate.py --recon-vae) trains nothing; the baseline
    classifier scores the copy. The copy here is the real validation split itself, so its GAN-test equals the
    baseline's own metrics on that split, computed independently from the saved weights."""
    copy = make_val_copy(phantoms, tmp_path / "copy", fold=0)
    out = tmp_path / "out"
    argv = ["--data-path", str(phantoms), *TINY, "--epochs", "1", "--out", str(out), "--eval-split", "val"]
    result = run([*argv, "--conditions", "geometric", f"gan-test:REAL={copy}"])
    assert [r["condition"] for r in result["runs"]] == ["geometric"]
    (record,) = result["gan_test"]
    state_file = out / "runs" / record["baseline_run"].replace(".json", ".pt")
    labels, scores = independent_scores(state_file, phantoms, "val_0.csv", 32)
    np.testing.assert_allclose(np.asarray(record["scores"]), scores, atol=1e-6)
    assert record["metrics"]["AUC"] == pytest.approx(result["runs"][0]["metrics"]["AUC"], abs=1e-9)
    row = next(r for r in result["label_fidelity"] if r["name"] == "REAL")
    assert row["gan_test"]["n_runs"] == 1 and row["gan_train"]["condition"] is None
    _expect_error(
        ["--data-path", str(phantoms), *TINY, "--conditions", f"gan-test:{copy}"], tmp_path / "o2", "train nothing"
    )
