"""`make demo`: stage bookkeeping, the label files, the commands it runs, and the quick demo end to end (issue 8)."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data.phantoms import make_phantom_dataset
from data.validate import read_fold_csv
from demo import labels as demo_labels
from demo.plan import Layout, build_stages
from demo.profiles import DEMO_MODELS, FULL, QUICK
from demo.runner import REPO_ROOT, Runner, Stage, StageFailed, log_tail

# ----------------------------------------------------------------------------------------------------------------
# Runner: stamps, skipping, invalidation, failures


def write_stage(name: str, target: Path, text: str, deps: tuple[str, ...] = ()) -> Stage:
    """A stage whose command prints a line and writes `text` into `target`."""
    code = f"import pathlib; print('making {target.name}'); pathlib.Path({str(target)!r}).write_text({text!r})"
    return Stage(name, f"write {target.name}", ("python", "-c", code), deps=deps, outputs=(target,))


class Console:
    """Collects what the runner prints."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, chunk: bytes) -> None:
        self.data += chunk

    def flush(self) -> None:
        pass


def run(out: Path, stages: list[Stage], fresh: bool = False) -> tuple[list[dict], str]:
    console = Console()
    records = Runner(out, fresh=fresh, console=console).run(stages)
    return records, console.data.decode()


def statuses(records: list[dict]) -> list[str]:
    return [r["status"] for r in records]


def test_runner_stamps_skip_and_invalidate(tmp_path):
    a = write_stage("a", tmp_path / "a.txt", "one")
    b = write_stage("b", tmp_path / "b.txt", "two", deps=("a",))
    c = write_stage("c", tmp_path / "c.txt", "three")

    records, shown = run(tmp_path, [a, b, c])
    assert statuses(records) == ["ran", "ran", "ran"]
    assert "making a.txt" in shown  # the stage's own output reaches the console...
    assert "making a.txt" in (tmp_path / "logs" / "a.log").read_text()  # ...and its log
    stamp = json.loads((tmp_path / "stamps" / "b.json").read_text())
    assert stamp["command"] == b.shell() and stamp["seconds"] >= 0 and set(stamp["deps"]) == {"a"}

    # A re-run skips everything; a changed command re-runs that stage and the stages built on it, not the others.
    assert statuses(run(tmp_path, [a, b, c])[0]) == ["skipped", "skipped", "skipped"]
    a2 = write_stage("a", tmp_path / "a.txt", "changed")
    assert statuses(run(tmp_path, [a2, b, c])[0]) == ["ran", "ran", "skipped"]
    # A missing output re-runs its stage; --fresh re-runs all.
    (tmp_path / "c.txt").unlink()
    assert statuses(run(tmp_path, [a2, b, c])[0]) == ["skipped", "skipped", "ran"]
    assert statuses(run(tmp_path, [a2, b, c], fresh=True)[0]) == ["ran", "ran", "ran"]


def test_runner_stops_at_a_failed_stage_and_continues_later(tmp_path):
    ok = write_stage("ok", tmp_path / "ok.txt", "fine")
    failing = Stage("bad", "fail", ("python", "-c", "import sys; print('the cause'); sys.exit(3)"), deps=("ok",))
    after = write_stage("after", tmp_path / "after.txt", "never", deps=("bad",))
    with pytest.raises(StageFailed, match="exit status 3") as info:
        run(tmp_path, [ok, failing, after])
    assert "the cause" in log_tail(info.value.log)
    assert not (tmp_path / "stamps" / "bad.json").exists() and not (tmp_path / "after.txt").exists()

    # Fixed, the demo continues with the failed stage; the finished one is skipped.
    fixed = write_stage("bad", tmp_path / "bad.txt", "fixed", deps=("ok",))
    records, _ = run(tmp_path, [ok, fixed, after])
    assert statuses(records) == ["skipped", "ran", "ran"]

    # Exiting normally without writing the promised output is a failure too.
    silent = Stage("silent", "nothing", ("python", "-c", "pass"), outputs=(tmp_path / "missing.txt",))
    with pytest.raises(StageFailed, match="did not write"):
        run(tmp_path, [silent])


def test_runner_continues_an_interrupted_resumable_stage_only_on_the_same_inputs(tmp_path):
    part, ok = tmp_path / "part.txt", tmp_path / "ok"
    code = (
        f"import pathlib, sys; p = pathlib.Path({str(part)!r}); p.write_text((p.read_text() if p.exists() else '') "
        f"+ 'x'); sys.exit(0 if pathlib.Path({str(ok)!r}).exists() else 1)"
    )
    resumable = Stage("r", "append", ("python", "-c", code), ("a",), (part,), clears=(part,), resumable=True)
    a = write_stage("a", tmp_path / "a.txt", "one")
    with pytest.raises(StageFailed):
        run(tmp_path, [a, resumable])
    ok.touch()
    run(tmp_path, [a, resumable])
    assert part.read_text() == "xx"  # the second attempt continued from the first one's output
    # New inputs: the stage starts afresh, its earlier output removed first.
    run(tmp_path, [write_stage("a", tmp_path / "a.txt", "two"), resumable])
    assert part.read_text() == "x"


def test_runner_never_clears_outside_its_folder(tmp_path):
    outside = tmp_path / "keep.txt"
    outside.write_text("precious")
    stage = Stage("s", "clear", ("python", "-c", "pass"), clears=(outside,))
    with pytest.raises(ValueError, match="outside"):
        run(tmp_path / "out", [stage])
    assert outside.read_text() == "precious"


def test_log_tail_shows_the_final_state_of_progress_lines(tmp_path):
    log = tmp_path / "x.log"
    log.write_bytes(b"start\n 10%\r 50%\r100% done\nTraceback: boom\n")
    assert log_tail(log) == ["start", "100% done", "Traceback: boom"]


# ----------------------------------------------------------------------------------------------------------------
# Label files and commands


def test_label_files_follow_the_extract_features_layout(tmp_path):
    root = tmp_path / "oct_phantom"
    make_phantom_dataset(root, kind="oct", num_images=16, folds=2, size=16, seed=0)
    features = tmp_path / "features"
    (features / "labels_0").mkdir(parents=True)
    np.save(features / "labels_0" / "999.npy", np.zeros((1, 11), dtype=np.int64))  # stale, from a larger set
    args = demo_labels.build_parser().parse_args(
        ["--data-path", str(root), "--dataset", "oct", "--features-path", str(features), "--fold", "0"]
    )
    label_dir = demo_labels.main(args)

    train = read_fold_csv(root / "train_0.csv")
    files = sorted(label_dir.glob("*.npy"), key=lambda f: int(f.stem))
    assert [f.name for f in files] == [f"{i}.npy" for i in range(len(train))]
    first = np.load(files[0])
    assert first.shape == (1, 11) and first.dtype == np.int64
    from data.labels import OCT_LABELS

    assert (np.stack([np.load(f)[0] for f in files]) == train[list(OCT_LABELS)].to_numpy()).all()


PARSERS = {
    "train.py": "train",
    "sample_ddp.py": "sample_ddp",
    "sample_ddp_val.py": "sample_ddp_val",
    "evaluate.py": "evaluate",
    "classify.py": "classify",
    "data.phantoms": "data.phantoms",
    "demo.labels": "demo.labels",
    "demo.report": "demo.report",
}


@pytest.mark.parametrize("profile", [FULL, QUICK], ids=["full", "quick"])
def test_every_stage_command_parses_with_its_script(tmp_path, profile):
    stages = build_stages(profile, Layout(tmp_path), "cpu")
    assert [s.name for s in stages][:2] == ["data", "labels"] and stages[-1].name == "report"
    names = {s.name for s in stages}
    for i, stage in enumerate(stages):
        assert set(stage.deps) <= {s.name for s in stages[:i]}, stage.name  # dependencies run first
        argv = list(stage.command)
        assert argv[0] == "python"
        script, rest = (argv[2], argv[3:]) if argv[1] == "-m" else (argv[1], argv[2:])
        module = importlib.import_module(PARSERS[script])
        assert module.build_parser().parse_args(rest) is not None, stage.name
    assert {f"train-{m.replace('/', '-')}" for m in DEMO_MODELS} <= names


# ----------------------------------------------------------------------------------------------------------------
# The quick demo, end to end


def test_quick_demo_runs_end_to_end_and_resumes(tmp_path):
    out = tmp_path / "demo_out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    first = subprocess.run(
        [sys.executable, "-m", "demo", "--out", str(out), "--quick"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    report = (out / "REPORT.md").read_text()

    # Dataset summary, curves, sample grids, both tables and the commands are there.
    assert "| split | images | NOR |" in report and "| train |" in report
    assert "report_assets/training_curves.png" in report
    for model in DEMO_MODELS:
        tag = model.replace("/", "-")
        assert (out / "report_assets" / f"samples_{tag}.png").is_file()
        row = re.search(rf"^\| {re.escape(model)} \| [\d.]+[KM] \| ([\d.]+) ± ([\d.]+) \|", report, flags=re.M)
        assert row is not None, f"no KID for {model}"
        assert float(row.group(1)) > 0  # a real number from evaluate.py
        assert re.search(rf"^\| {re.escape(tag)} \| [\d.]+ ± ", report, flags=re.M), f"no classification row {tag}"
    assert "| Baseline (Geometric Aug) |" in report
    assert "python train.py" in report and "python classify.py" in report and "extract_features.py" in report

    # A second run finds every stage finished and does nothing else.
    second = subprocess.run(
        [sys.executable, "-m", "demo", "--out", str(out), "--quick"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 0, second.stdout[-3000:]
    assert second.stdout.count("skipped") == 2 * len(build_stages(QUICK, Layout(out), "cpu"))
    assert "==>" not in second.stdout
