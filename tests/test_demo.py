"""`make demo`: stage bookkeeping, the label files, the commands it runs, and the quick demo end to end (issue 8)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from demo import report as demo_report
from demo.plan import VARIANTS, Layout, build_stages
from demo.profiles import DEMO_MODELS, FULL, QUICK
from infra.stages import REPO_ROOT, Runner, Stage, StageFailed, log_tail
from tests.helpers.phantom_data import make_phantom_oct, make_tiny_vae, write_fold_latents
from tests.helpers.stages import assert_stage_commands_parse

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


def test_parallel_runner_overlaps_independent_stages_and_keeps_the_bookkeeping(tmp_path):
    # Two stages that each wait until the other has started: they finish only when run at the same time.
    def meet(name: str, other: str) -> Stage:
        code = (
            f"import pathlib, time; d = pathlib.Path({str(tmp_path)!r}); (d / '{name}.on').touch(); "
            f"t = time.time()\nwhile not (d / '{other}.on').exists():\n    assert time.time() - t < 20; "
            f"time.sleep(0.05)\n(d / '{name}.txt').write_text('ok')"
        )
        return Stage(name, f"meet {other}", ("python", "-c", code), outputs=(tmp_path / f"{name}.txt",))

    a, b = meet("a", "b"), meet("b", "a")
    c = write_stage("c", tmp_path / "c.txt", "after both", deps=("a", "b"))
    console = Console()
    records = Runner(tmp_path, console=console).run([a, b, c], jobs=2)
    assert statuses(records) == ["ran", "ran", "ran"] and [r["name"] for r in records] == ["a", "b", "c"]
    assert (tmp_path / "c.txt").read_text() == "after both"
    assert "making c.txt" in (tmp_path / "logs" / "c.log").read_text()
    assert statuses(Runner(tmp_path, console=Console()).run([a, b, c], jobs=2)) == ["skipped"] * 3

    # A failure lets the running stage finish (its work is stamped) and starts nothing new.
    slow = write_stage("slow", tmp_path / "slow.txt", "done")
    bad = Stage("bad", "fail", ("python", "-c", "import sys; sys.exit(4)"))
    later = write_stage("later", tmp_path / "later.txt", "never", deps=("bad",))
    with pytest.raises(StageFailed, match="exit status 4"):
        Runner(tmp_path, console=Console()).run([bad, slow, later], jobs=2)
    assert (tmp_path / "stamps" / "slow.json").is_file() and not (tmp_path / "later.txt").exists()


def test_runner_rejects_a_dependency_on_a_later_stage(tmp_path):
    first = write_stage("first", tmp_path / "1.txt", "x", deps=("second",))
    with pytest.raises(ValueError, match="not earlier stages"):
        Runner(tmp_path, console=Console()).run([first, write_stage("second", tmp_path / "2.txt", "y")], jobs=2)


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
# Stage commands


@pytest.mark.parametrize("profile", [FULL, QUICK], ids=["full", "quick"])
def test_every_stage_command_parses_with_its_script(tmp_path, profile):
    stages = build_stages(profile, Layout(tmp_path), "cpu")
    assert [s.name for s in stages][:2] == ["data", "train-vae"] and stages[-1].name == "report"
    names = {s.name for s in stages}
    assert_stage_commands_parse(stages)
    assert {f"train-{m.replace('/', '-')}" for m in DEMO_MODELS} <= names
    # GeCA is also sampled without Gene Heredity Guidance, into its own folder.
    ablation = [s for s in stages if s.name.startswith("sample-") and "--no-ghg" in s.command]
    assert {s.name for s in ablation} == {"sample-val-GeCA-T-noghg"}  # a validation copy: quality, pixel statistics
    assert "evaluate-GeCA-T-noghg" in names and "classify-GeCA-T-noghg" not in names


# ----------------------------------------------------------------------------------------------------------------
# No unfilled placeholder in the report

# A brace group that starts like a Python name ("{p.sampling_steps}", "{fold}", "{m:.2f}").
_BRACES = re.compile(r"\{[A-Za-z_][^{}\n]*\}")
# Characters that glue a brace group into a file-name template such as labels_{fold}/{i}.npy or val_{fold}.csv.
_PATH_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_/.-")


def unfilled_placeholders(markdown: str) -> list[str]:
    """Brace groups of a Markdown text that look like a format field left unfilled (a string missing its f-prefix).

    The rule: outside fenced code blocks and inline code spans, a `{name...}` group counts unless it is glued to a
    file-name template, i.e. the character before it or after it is a letter, digit, `_`, `/`, `.` or `-` (legitimate
    templates such as `labels_{fold}/{i}.npy` or `val_{fold}.csv`). A leftover field reads as a word of its own:
    "({p.sampling_steps} DDPM steps" or "CFG {p.cfg_scale})".
    """
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S)
    prose = re.sub(r"`[^`\n]*`", "", prose)
    found = []
    for match in _BRACES.finditer(prose):
        before = prose[match.start() - 1] if match.start() > 0 else " "
        after = prose[match.end()] if match.end() < len(prose) else " "
        # A sentence may end right after a field ("CFG {x}."): only ".x" (an extension) counts as glue after it.
        glued_after = after in _PATH_CHARS and not (
            after == "." and not prose[match.end() + 1 : match.end() + 2].strip()
        )
        if before not in _PATH_CHARS and not glued_after:
            found.append(match.group())
    return found


def test_unfilled_placeholders_rule():
    assert unfilled_placeholders("weights ({p.sampling_steps} DDPM steps, CFG {p.cfg_scale}) and KID {x}.") == [
        "{p.sampling_steps}",
        "{p.cfg_scale}",
        "{x}",
    ]
    legit = (
        "labels as labels_0/{i}.npy and val_{fold}.csv; `features_{fold}/` in code\n"
        "```bash\npython classify.py 'synthetic:X=dir-{fold}' {root}/{train,val}_{k}.csv\n```\n"
        "a set {1, 2} and a JSON {} are not fields"
    )
    assert unfilled_placeholders(legit) == []


@pytest.mark.filterwarnings("ignore:No artists with labels")  # no training curves in an empty layout
def test_report_sections_fill_every_field(tmp_path):
    """The report's text-building sections that format profile values leave no field unfilled."""
    lay = Layout(tmp_path)
    lay.assets.mkdir(parents=True)
    models = list(DEMO_MODELS)
    text = demo_report.training_section(lay, QUICK, models, {m: 1000 for m in models})
    assert f"{QUICK.sampling_steps} DDPM steps" in text  # the value, not the field's name
    assert unfilled_placeholders(text) == []


# ----------------------------------------------------------------------------------------------------------------
# Image-quality cells: one renderer for REPORT.md (one fold) and STUDY.md's Table A (folds)


def test_metric_cell_over_one_fold_and_over_several():
    kid = {"available": True, "mean_x1e3": 12.34, "se_x1e3": 1.26}
    gg = {"available": True, "value": -0.456}
    assert demo_report.metric_cell([{"KID": kid}], "KID") == "12.3 ± 1.3"  # ± its standard error
    assert (
        demo_report.metric_cell([{"LPIPS": {"available": True, "mean": 0.5, "std": 0.126}}], "LPIPS") == "0.50 ± 0.13"
    )
    assert demo_report.metric_cell([{"GG": gg}], "GG") == "-0.46"
    two = [{"KID": kid}, {"KID": {**kid, "mean_x1e3": 14.34}}]
    assert demo_report.metric_cell(two, "KID") == "13.3 ± 1.4"  # mean ± sample standard deviation over folds
    # NaN (KID as GG): "n/a (NaN)", not "nan ± nan"; a fold without the metric "–"; an unavailable metric "n/a".
    assert demo_report.metric_cell([{"KID": {**kid, "mean_x1e3": math.nan, "se_x1e3": math.nan}}], "KID") == "n/a (NaN)"
    assert demo_report.metric_cell([{"GG": {**gg, "value": math.nan}}], "GG") == "n/a (NaN)"
    assert demo_report.metric_cell([{"KID": kid}, None], "KID") == "–"
    assert demo_report.metric_cell([{"LPIPS": {"available": False, "reason": "no weights"}}], "LPIPS") == "n/a"


def test_quality_section_table_notes_and_kid_verdict(tmp_path):
    lay = Layout(tmp_path)
    kids = {
        "LDM-T": (20.0, 2.0),
        "DiT-T/2": (21.0, 2.0),
        "GeCA-T": (40.0, 3.0),
        "GeCA-T (no GHG)": (math.nan, math.nan),
    }
    for v in VARIANTS:
        mean, se = kids[v.label]
        kid = {"available": True, "mean": mean / 1e3, "se": se / 1e3, "mean_x1e3": mean, "se_x1e3": se}
        metrics = {
            "KID": kid,
            "KID_recon": kid,
            "KID_floor": {**kid, "mean_x1e3": 99.0},
            "LPIPS": {"available": False, "reason": "no AlexNet weights"},
            "GG": {"available": True, "value": 0.25},
        }
        folder = lay.sample_folder(v, QUICK)
        folder.mkdir(parents=True)
        (folder / "metrics_0.json").write_text(json.dumps({"metrics": metrics, "counts": {"generated": 8}}))
    params = {m: 1000 for m in DEMO_MODELS}
    text = demo_report.quality_section(lay, QUICK, params)
    assert "| GeCA-T (no GHG) | 1.0K | n/a (NaN) | n/a (NaN) | n/a | 0.25 | – |" in text
    assert "| VAE reconstruction (floor) | – | 99.0 ± 2.0 | – | – | – | – |" in text
    assert "- LPIPS unavailable: no AlexNet weights" in text and unfilled_placeholders(text) == []
    # GeCA-T against each baseline: 19 and 20 points apart with a combined standard error of 3.6, so both pairs
    # exceed 2 standard errors; the baselines (1 point apart) do not; the NaN row is left out.
    assert "2 of 3 model differences in KID exceed 2 standard errors" in text
    assert "LDM-T below GeCA-T by 20.0 (> 7.2); DiT-T/2 below GeCA-T by 19.0 (> 7.2)" in text


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
    assert unfilled_placeholders(report) == []

    # Dataset summary, curves, sample grids, both tables and the commands are there.
    assert "| split | images | NOR |" in report and "| train |" in report
    assert "report_assets/training_curves.png" in report
    assert (out / "report_assets" / "samples.png").is_file() and (
        out / "report_assets" / "vae_reconstructions.png"
    ).is_file()
    lay = Layout(out)
    for variant in VARIANTS:
        model, tag = variant.label, variant.tag
        row = re.search(
            rf"^\| {re.escape(model)} \| [\d.]+[KM] \| ([\d.]+) ± ([\d.]+) \| ([\d.]+) ± ([\d.]+) \|",
            report,
            flags=re.M,
        )
        assert row is not None, f"no KID for {model}"
        # The table shows evaluate.py's numbers for this model's folder: KID vs real and vs the VAE reconstructions.
        metrics = json.loads((lay.sample_folder(variant, QUICK) / "metrics_0.json").read_text())["metrics"]
        shown = [float(g) for g in row.groups()]
        expected = [metrics[k][f] for k in ("KID", "KID_recon") for f in ("mean_x1e3", "se_x1e3")]
        assert shown == pytest.approx(expected, abs=0.051), (model, shown, expected)
        if "no GHG" not in model:
            assert re.search(rf"^\| {re.escape(tag)} \| [\d.]+ ± ", report, flags=re.M), f"no classification row {tag}"
        assert re.search(rf"^\| {re.escape(model)} \| [\d.]+ \| [\d.]+ \| [\d.]+ \|", report, flags=re.M), model
    assert "| Baseline (Geometric Aug) |" in report and "## Label fidelity" in report.replace("### Label", "## Label")
    assert "| real-only baseline classifier: test macro AUC |" in report
    assert "python train_vae.py" in report and "torch.distributed.run" in report and "--nproc_per_node 2" in report
    assert "python train.py" in report and "python classify.py" in report and "--no-ghg" in report

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


# ----------------------------------------------------------------------------------------------------------------
# The steps-to-settle curve (python -m demo.settle)


def test_settle_curve_trains_one_run_through_the_steps_and_measures_each(tmp_path, monkeypatch):
    import csv as csv_module

    import numpy as np
    import torch
    from PIL import Image

    from demo import settle

    root = make_phantom_oct(tmp_path / "oct", num_images=16, folds=2, size=32)
    vae = make_tiny_vae(tmp_path / "vae")
    feats = write_fold_latents(root, vae, tmp_path / "features", 32)
    monkeypatch.chdir(tmp_path)  # relative paths, from outside the repository (train.py runs from its root)
    argv = ["--data-path", "oct", "--features", "features", "--vae", "vae", "--model", "DiT-T/2", "--steps", "2", "4"]
    argv += ["--out", "settle_out", "--image-size", "32", "--batch-size", "4", "--num-samples", "3"]
    csv = settle.main(settle.parse_args([*argv, "--sampling-steps", "2"]))
    assert feats.is_dir() and csv == tmp_path / "settle_out" / "settle.csv"

    rows = [line.split(",") for line in csv.read_text().splitlines()]
    assert rows[0] == ["step", "ghg", "mean", "std", "saturated"]
    assert [r[:2] for r in rows[1:]] == [["2", "1"], ["2", "0"], ["4", "1"], ["4", "0"], ["real", ""]]
    # DiT has no cell state: sampling with and without Gene Heredity Guidance is the same.
    assert rows[1][2:] == rows[2][2:] and rows[3][2:] == rows[4][2:]
    # The real row, computed here from the first three validation images (32 px: no crop).
    names = [r["filename"] for r in csv_module.DictReader((root / "val_0.csv").read_text().splitlines())][:3]
    real = np.stack([np.asarray(Image.open(root / name).convert("RGB")) for name in names])
    expected = [f"{real.mean():.2f}", f"{real.std():.2f}", f"{np.isin(real, (0, 255)).mean():.4f}"]
    assert rows[-1][2:] == expected
    # One training run, continued with --resume to step 4, and the figures.
    runs = list(Path("settle_out/run").iterdir())
    assert len(runs) == 1 and torch.load(runs[0] / "checkpoints" / "last.pt", weights_only=False)["train_steps"] == 4
    assert all(Path("settle_out", f).is_file() for f in ("settle.png", "samples_2.png", "samples_4.png"))


@pytest.mark.slow
def test_full_demo_passes_every_acceptance_check(tmp_path):
    """`make demo` (the full profile, about 25 minutes on 2 cores): every check of REPORT.md section 7 passes."""
    out = tmp_path / "demo_out"
    done = subprocess.run(
        [sys.executable, "-m", "demo", "--out", str(out)],
        cwd=REPO_ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    section = (out / "REPORT.md").read_text().split("## 7.")[1].split("\n## ")[0]
    rows = re.findall(r"^\| (.+?) \| ([^|]+) \| ([^|]+) \| ([^|]+) \|$", section, flags=re.M)
    verdicts = [r for r in rows if r[0] != "check"]
    assert len(verdicts) >= 8, section
    assert [v for v in verdicts if v[3].strip() != "pass"] == [], section


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads process states from /proc")
def test_run_command_stops_a_command_and_its_children_at_the_cap(tmp_path):
    """The GPU check's use of the runner: a command past its time cap is stopped with the children it started."""
    pid_file = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time; "
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(pid_file)!r}, 'w').write(str(c.pid)); print('started', flush=True); time.sleep(60)"
    )
    runner = Runner(tmp_path, console=Console())
    outcome = runner.run_command([sys.executable, "-c", code], "capped", timeout=3)
    assert outcome.timed_out and outcome.returncode != 0 and outcome.seconds < 30
    assert "started" in outcome.log.read_text()
    child = Path(f"/proc/{int(pid_file.read_text())}/status")
    time.sleep(0.5)
    # Gone, or a zombie waiting for a parent that does not reap (PID 1 of some containers): not running either way.
    assert not child.exists() or "State:\tZ" in child.read_text()
    done = runner.run_command([sys.executable, "-c", "print('ok')"], "quick", timeout=30)
    assert (done.returncode, done.timed_out) == (0, False) and done.log == tmp_path / "logs" / "quick.log"
