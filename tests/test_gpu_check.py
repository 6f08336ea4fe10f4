"""`python -m bench.gpu_check`: the CPU dry run of the five GPU stages, run as a subprocess, and the no-GPU exit.

The dry run is the check's only test without a GPU, so it never rots: every stage must finish with status ok and
every figure of the report is recomputed here from the files the stages left (train.py's metrics.csv, the sampled
PNGs) or from an independent FLOP count. The GPU-only paths (accelerate launch, --compile rows, out of memory, MFU,
the targets, the GPU-mode REPORT.md) run in-process against scripted stage commands at GPU sizes.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from diffusion import create_diffusion
from models import DiT_models

REPO = Path(__file__).resolve().parents[1]
STAGES = ["pytest", "bench", "train", "sample", "fp16"]
H200_PEAK_TFLOPS = 989.4  # NVIDIA H200 SXM datasheet, dense bf16/fp16 (1979 with sparsity)


def run_check(*args: str, timeout: float = 600, **env_extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", **env_extra}
    return subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def dry(tmp_path_factory) -> dict:
    """One dry run (about a minute on a busy 2-core CPU), its report and its kept scratch folder."""
    base = tmp_path_factory.mktemp("gpu_check")
    out, work = base / "out", base / "work"
    proc = run_check("--dry", "--out", str(out), "--work", str(work), "--device-name", "NVIDIA H200")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    return {
        "out": out,
        "work": work,
        "stdout": proc.stdout,
        "report": report,
        "stages": {s["key"]: s for s in report["stages"]},
    }


def test_every_stage_ran_ok_and_is_reported(dry):
    report = dry["report"]
    assert [s["key"] for s in report["stages"]] == STAGES
    assert report["mode"] == "dry" and report["complete"] and report["finished"]
    assert {k: s["status"] for k, s in dry["stages"].items()} == dict.fromkeys(STAGES, "ok")
    markdown = (dry["out"] / "REPORT.md").read_text()
    assert "## Summary" in markdown and "## Targets" in markdown
    for stage in report["stages"]:
        assert f"## {stage['title']}" in markdown
        assert stage["title"] in dry["stdout"]  # the summary table printed at the end
        for log in stage["logs"]:
            assert (dry["out"] / log).is_file()
    assert "| stage | status | time / cap | result |" in dry["stdout"]
    assert report["peak"]["tflops"] == pytest.approx(H200_PEAK_TFLOPS)
    assert [t["met"] for t in report["targets"]] == ["n/a", "n/a"]  # tiny CPU sizes never claim a GPU target


def test_pytest_and_bench_stages(dry):
    pt = dry["stages"]["pytest"]["data"]
    assert pt["failed"] == 0 and pt["passed"] == 0 and pt["skipped"] >= 1  # CUDA hidden: every gpu test skips
    tables = dry["stages"]["bench"]["data"]["tables"]
    assert len(tables) == 1 and "| benchmark" in tables[0]


def test_training_figures_match_train_logs_and_an_independent_flop_count(dry):
    (run,) = dry["stages"]["train"]["data"]["runs"]
    sizes = dry["report"]["sizes"]
    assert run["status"] == "ok" and run["batch"] == 2 and not run["compile"]
    # Steps/s from train.py's metrics.csv, rows after the warm-up: each row is one step at its logged rate.
    with open(Path(run["experiment"]) / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["loss"]]
    timed = [float(r["steps_per_sec"]) for r in rows if int(r["step"]) > sizes["warmup_steps"]]
    assert len(timed) == sizes["timed_steps"]
    steps_per_sec = len(timed) / sum(1 / r for r in timed)
    assert run["steps_per_sec"] == pytest.approx(steps_per_sec, rel=1e-9)
    assert run["images_per_sec"] == pytest.approx(steps_per_sec * 2, rel=1e-9)
    # FLOPs of one fwd+bwd of GeCA-T on one 8x8 latent, counted here, times the batch.
    model = DiT_models["GeCA-T"](input_size=8, num_classes=11, in_channels=4).train()
    x, t, y = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.zeros(1, 11)
    with FlopCounterMode(display=False) as counter:
        create_diffusion("").training_losses(model, x, t, {"y": y})["loss"].mean().backward()
    assert run["flops_per_step"] == 2 * counter.get_total_flops() > 0
    assert run["mfu"] == pytest.approx(run["flops_per_step"] * steps_per_sec / (H200_PEAK_TFLOPS * 1e12), rel=1e-9)
    assert run["peak_bytes"] > 0


def test_sampling_stage_wrote_one_batch_per_model(dry):
    models = dry["stages"]["sample"]["data"]["models"]
    assert list(models) == ["GeCA-T", "DiT-T/2", "LDM-T"]
    for key, m in models.items():
        assert m["status"] == "ok" and m["batch"] == 2
        assert m["denoise"]["seconds"] > 0 and m["end_to_end"]["seconds"] > 0
        # sample_ddp.py really wrote the batch: two PNGs and the annotation CSV with two rows.
        (folder,) = [
            p for p in (dry["work"] / "sample" / "samples" / f"{key.replace('/', '-')}-2").iterdir() if p.is_dir()
        ]
        assert len(list((folder / "gen_samples").glob("*.png"))) == 2
        with open(folder / "train_syn_0.csv", newline="") as f:
            assert len(list(csv.DictReader(f))) == 2


def test_fp16_stage_gaps_recomputed(dry):
    data = dry["stages"]["fp16"]["data"]
    l32, l16 = data["losses_fp32"], data["losses_fp16"]
    assert len(l32) == len(l16) == 20
    gaps = [abs(a - b) / abs(b) for a, b in zip(l16, l32)]
    assert data["relative_gaps"] == pytest.approx(gaps, rel=1e-12)
    assert max(gaps) <= data["rtol"] == 1e-2
    assert data["ghg"]["fp16"]["first_non_finite_step"] is None


def test_without_a_gpu_one_line_and_exit_0(tmp_path):
    out = tmp_path / "out"
    proc = run_check("--out", str(out), timeout=300, CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0]
    assert not out.exists()  # nothing written where there is nothing to measure


# ----------------------------------------------------------------------------------------------------------------
# The GPU-only paths without a GPU: the stages at GPU sizes against scripted commands, and the report they render
# ----------------------------------------------------------------------------------------------------------------

GIB = 2**30


def _flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


class ScriptedRunner:
    """Runner.run_command's stand-in: writes what each stage's command would leave, from GPU-like figures.

    `oom`: train.py batches that run out of memory; `timeout`: (batch, compiled) bursts stopped at the cap;
    `rate`: steps/s of a burst from (batch, compiled).
    """

    def __init__(self, out: Path, oom=(), timeout=(), rate=None) -> None:
        from infra.stages import Runner

        self.runner = Runner(out, python="python")
        self.out, self.python, self.rel = self.runner.out, "python", self.runner.rel
        self.oom, self.timeout = set(oom), set(timeout)
        self.rate = rate or (lambda batch, compiled: (3.0 if compiled else 2.5) * 128 / batch)
        self.commands: list[list[str]] = []

    def run_command(self, cmd, name, timeout, log_dir=None):
        from infra.stages import Outcome

        cmd = list(cmd)
        self.commands.append(cmd)
        log = self.out / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"$ {' '.join(cmd)}\nlast line of {name}\n")
        rc, timed_out = 0, False
        if "pytest" in cmd:
            xml = Path(next(a for a in cmd if a.startswith("--junitxml=")).split("=", 1)[1])
            cases = '<testcase classname="tests.a" name="test_flex" time="1.5"/><testcase classname="b" name="c"/>'
            xml.write_text(f"<testsuites><testsuite>{cases}</testsuite></testsuites>")
        elif "--output" in cmd:
            Path(_flag(cmd, "--output")).write_text(
                "# GeCA benchmarks\n| benchmark | variant |\n|---|---|\n| a | b |\n"
            )
        elif "--probe-json" in cmd:
            rc, timed_out = self._train(cmd)
        elif "sample" in cmd:  # the workers' one argument after the command: their settings as JSON
            Path(json.loads(cmd[-1])["json"]).write_text(json.dumps(SAMPLE_JSON))
        elif "fp16" in cmd:
            Path(json.loads(cmd[-1])["json"]).write_text(json.dumps(FP16_JSON))
        return Outcome(None if timed_out else rc, 1.0, timed_out, log)

    def _train(self, cmd: list[str]) -> tuple[int, bool]:
        batch, compiled = int(_flag(cmd, "--global-batch-size")), "--compile" in cmd
        if (batch, compiled) in self.timeout:
            return 0, True
        if batch in self.oom:
            probe = {"oom": True, "error": "OutOfMemoryError: CUDA out of memory"}
            Path(_flag(cmd, "--probe-json")).write_text(json.dumps(probe))
            return 3, False
        metrics = Path(_flag(cmd, "--results-dir")) / "000-GeCA-S" / "metrics.csv"
        metrics.parent.mkdir(parents=True)
        rows = [f"{step},1.0,{self.rate(batch, compiled)}" for step in range(1, 41)]
        metrics.write_text("\n".join(["step,loss,steps_per_sec", *rows]) + "\n")
        probe = {"oom": False, "error": None, "peak_bytes": 40 * GIB, "peak_reserved_bytes": 42 * GIB}
        probe.update(memory_kind="cuda allocated", flops_per_step=int(0.53e12) * batch)
        Path(_flag(cmd, "--probe-json")).write_text(json.dumps(probe))
        return 0, False


SAMPLE_JSON = {
    "models": {
        key: {
            "tried": [[32, "out of memory"], [16, "fits"]],
            "status": "ok",
            "batch": 16,
            "denoise": {"seconds": seconds, "images": 16, "peak_bytes": 6 * GIB},
            "command": f"python sample_ddp.py --model {key}",
            "end_to_end": {"seconds": seconds * 1.6, "wall_seconds": seconds * 2, "images": 16},
        }
        for key, seconds in (("GeCA-S", 4.0), ("DiT-S/2", 2.0), ("LDM-B", 3.0))
    },
    "steps": 250,
    "cfg_scale": 1.5,
    "image_size": 256,
    "vae": {"folder": "vae", "tiny": False, "parameters": 83653863},
}
FP16_JSON = {
    "model": "GeCA-S",
    "batch": 32,
    "steps": 20,
    "rtol": 0.01,
    "losses_fp32": [1.0 - 0.01 * k for k in range(20)],
    "losses_fp16": [(1.0 - 0.01 * k) * (1 + 1e-4) for k in range(20)],
    "scaler_skipped_steps": 1,
    "ghg": {
        "batch": 8,
        "steps": 250,
        "cfg_scale": 1.5,
        "redrawn": 16,
        "fp32": {"first_non_finite_step": None, "max_abs_sample": 3.2, "max_abs_cells": 20.0},
        "fp16": {"first_non_finite_step": None, "max_abs_sample": 3.2, "max_abs_cells": 20.1},
        "fp16_vs_fp32_max_abs_diff_rel": 1e-3,
    },
}
H200_FACTS = {"name": "NVIDIA H200", "cuda": True, "memory_bytes": 150_106_849_280, "capability": "9.0"}
H200_FACTS.update(torch="2.9.0", cuda_runtime="12.8", python="3.11.7", missing_packages=[])


def gpu_context(tmp_path: Path, runner: ScriptedRunner, stages=STAGES):
    """A GPU-mode run of `stages` (GPU sizes and caps, an H200's facts) against the scripted runner."""
    import argparse

    from bench import gpu_check

    args = gpu_check.build_parser().parse_args(["--out", str(tmp_path / "out"), "--stages", *stages])
    report = gpu_check.open_report(args, gpu_check.GPU_SIZES, H200_FACTS)
    assert isinstance(args, argparse.Namespace) and report.mode == "gpu"
    work = tmp_path / "work"
    work.mkdir()
    return gpu_check.Context(args, gpu_check.GPU_SIZES, runner, work, report)


def test_gpu_mode_report_from_scripted_stages(tmp_path, capsys):
    from bench import gpu_check
    from bench.gpu_report import render_report

    ctx = gpu_context(tmp_path, ScriptedRunner(tmp_path / "out"))
    assert gpu_check.run_stages(ctx) == 0
    report = json.loads((ctx.report.out / "report.json").read_text())
    stages = {s["key"]: s for s in report["stages"]}
    assert {k: s["status"] for k, s in stages.items()} == dict.fromkeys(STAGES, "ok") and report["complete"]
    # Stage 3: batch 128 fits, then 32, then 128 with --compile through accelerate launch; MFU on the H200's peak.
    runs = stages["train"]["data"]["runs"]
    assert [(r["batch"], r["compile"], r["status"]) for r in runs] == [
        (128, False, "ok"),
        (32, False, "ok"),
        (128, True, "ok"),
    ]
    assert runs[0]["steps_per_sec"] == pytest.approx(2.5) and runs[0]["images_per_sec"] == pytest.approx(320)
    assert runs[0]["mfu"] == pytest.approx(0.53e12 * 128 * 2.5 / (H200_PEAK_TFLOPS * 1e12))
    train_commands = [c for c in ctx.runner.commands if "--probe-json" in c]
    assert all(c[1:4] == ["-m", "accelerate.commands.launch", "--num_processes"] for c in train_commands)
    assert ["--compile" in c for c in train_commands] == [False, False, True]
    assert all("--mixed-precision" not in c and _flag(c, "--mixed_precision") == "fp16" for c in train_commands)
    assert (
        stages["train"]["headline"] == "largest batch that fits: 128; batch 128: 2.5 steps/s, 320 images/s, MFU 17.1%"
    )
    # Targets: both measured on the GPU and met.
    assert [(t["measured"], t["met"]) for t in report["targets"]] == [
        ("2.50 steps/s on H200 SXM", "yes"),
        ("0.400 s/image (VAE decode included)", "yes"),
    ]
    assert stages["sample"]["notes"][:3] == [f"{k}: batch 32 out of memory" for k in ("GeCA-S", "DiT-S/2", "LDM-B")]
    # REPORT.md is report.json rendered: the template's prose and every value, no dry-run note.
    markdown = (ctx.report.out / "REPORT.md").read_text()
    assert markdown == render_report(report)
    assert "- device: NVIDIA H200, 139.80 GiB, compute capability 9.0; torch 2.9.0 (CUDA runtime 12.8)" in markdown
    assert "- mode: GPU\n" in markdown and "H200 SXM dense fp16/bf16 tensor peak 989.4 TFLOP/s" in markdown
    assert "| 128 | yes | ok | 3 | 384 | 40.00 GiB | 67.8 | 204 | 20.6% |" in markdown
    assert "(blocks 128/256/512/512, 2 layers, 83,653,863 parameters) saved to a folder" in markdown
    assert "- steps/s: train.py's own per-step timing (metrics.csv, --log-every 1) over steps 11-40, after 10 " in (
        markdown
    )
    assert "dry run" not in markdown and "$" not in markdown
    for stage in report["stages"]:
        assert f"## {stage['title']}\n\nstatus: **ok**, 0 s of a {stage['cap_s']:.0f} s cap\n\n" in markdown
    assert "| 1. pytest -m gpu | ok |" in capsys.readouterr().out


def test_train_stage_out_of_memory_and_the_cap(tmp_path):
    from bench import gpu_check

    runner = ScriptedRunner(tmp_path / "out", oom={128, 96}, timeout={(64, True)})
    ctx = gpu_context(tmp_path, runner, stages=["train"])
    rep = ctx.report.stages["train"]
    gpu_check.stage_train(ctx, rep, time.time() + 150)
    runs = [(r["batch"], r["compile"], r["status"]) for r in rep.data["runs"]]
    assert runs == [
        (128, False, "out of memory"),
        (96, False, "out of memory"),
        (64, False, "ok"),
        (32, False, "ok"),
        (64, True, "timed out"),
    ]
    assert rep.data["largest_batch"] == 64 and rep.status == "timed out"
    assert rep.headline.startswith("largest batch that fits: 64; batch 64: 5 steps/s")
    assert "batch 64 --compile: timed out" in rep.notes
    targets = json.loads((ctx.report.out / "report.json").read_text())["targets"]
    assert targets[0]["measured"] == "not measured (see stage 3)"  # batch 128 ran out of memory


def test_train_notes_give_a_failed_burst_its_error_and_a_capped_one_none():
    from bench import gpu_check
    from bench.gpu_report import StageReport, describe_train

    rep = StageReport("train", "3. training burst", 160)
    failed = {"batch": 128, "compile": False, "status": "failed", "error": "RuntimeError: boom"}
    rep.data["runs"] = [failed, {"batch": 32, "compile": True, "status": "timed out"}]
    describe_train(rep, gpu_check.GPU_SIZES, None, "n/a")
    assert rep.notes[-2:] == ["batch 128: failed: RuntimeError: boom", "batch 32 --compile: timed out"]
    assert rep.headline == "largest batch not found (see the notes)"


@pytest.mark.parametrize("denoise_seconds, met", [(31.0, "NO"), (9.6, "n/a")])
def test_sampling_target_when_the_end_to_end_run_did_not_fit(tmp_path, denoise_seconds, met):
    """Denoising alone slower than the target decides it (decoding only adds time); faster, nothing is decided."""
    ctx = gpu_context(tmp_path, ScriptedRunner(tmp_path / "out"), stages=["sample"])
    geca = {"batch": 32, "denoise": {"seconds": denoise_seconds}, "end_to_end": {"skipped": "26 s left"}}
    ctx.report.stages["sample"].data["models"] = {"GeCA-S": geca}
    target = ctx.report.targets()[1]
    assert target["met"] == met
    per_image = f"{denoise_seconds / 32:.3f}"
    expected = f"over {per_image} s/image: denoising alone takes that" if met == "NO" else "not measured (see stage 4)"
    assert target["measured"].startswith(expected)


def test_resume_keeps_finished_stages_and_missing_packages_exit_2(tmp_path, monkeypatch):
    from bench import gpu_check, gpu_workers

    out = tmp_path / "out"
    ctx = gpu_context(tmp_path, ScriptedRunner(out), stages=["pytest"])
    gpu_check.run_stages(ctx)
    args = gpu_check.build_parser().parse_args(["--out", str(out), "--resume"])
    kept = gpu_check.open_report(args, gpu_check.GPU_SIZES, H200_FACTS).stages
    assert kept["pytest"].status == "ok" and kept["pytest"].data["passed"] == 2 and kept["bench"].status == "not run"

    facts = {**gpu_workers.device_facts(query_cuda=False), "missing_packages": ["timm", "diffusers"]}
    monkeypatch.setattr(gpu_workers, "device_facts", lambda query_cuda: facts)
    args = gpu_check.build_parser().parse_args(["--dry", "--out", str(out), "--work", str(tmp_path / "w")])
    assert gpu_check.main(args) == 2
    report = json.loads((out / "report.json").read_text())
    assert report["stopped"] == "missing Python packages: timm, diffusers" and not report["complete"]
    assert "; stopped: missing Python packages: timm, diffusers" in (out / "REPORT.md").read_text()


def test_sigterm_leaves_a_partial_report(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "bench.gpu_check", "--dry", "--stages", "pytest", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and '"status": "running"' not in _read(out / "report.json"):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted by SIGTERM" in stderr
    report = json.loads((out / "report.json").read_text())
    assert report["stopped"] == "interrupted by SIGTERM" and report["stages"][0]["status"] == "interrupted"
    assert "; stopped: interrupted by SIGTERM" in (out / "REPORT.md").read_text()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def test_stages_whose_worker_wrote_nothing(tmp_path):
    from bench import gpu_check
    from bench.gpu_report import render_stage

    class Silent(ScriptedRunner):
        def run_command(self, cmd, name, timeout, log_dir=None):
            outcome = super().run_command(["true"], name, timeout)
            return type(outcome)(1, 1.0, False, outcome.log)  # exit 1, no JSON left

    ctx = gpu_context(tmp_path, Silent(tmp_path / "out"), stages=["bench", "sample", "fp16"])
    ctx.runner.out.mkdir(parents=True, exist_ok=True)
    (ctx.runner.out / "bench.md").write_text("| an earlier run's table |\n")
    for key in ("bench", "sample", "fp16"):
        rep = ctx.report.stages[key]
        getattr(gpu_check, f"stage_{key}")(ctx, rep, time.time() + 60)
        exit_note = "bench exit" if key == "bench" else "worker exit"
        assert rep.status == "failed" and rep.notes[-1] == f"{exit_note} 1; $ true / last line of {key}"
        assert render_stage(asdict(rep)).startswith(f"## {rep.title}\n\nstatus: **failed**")
    assert "VAE: not built (see the log)" in ctx.report.stages["sample"].notes
    assert ctx.report.stages["fp16"].headline == "no losses; GHG fp16 not run"
    assert ctx.report.stages["bench"].tables == [] and ctx.report.stages["bench"].headline == "0 rows, 0 out of memory"
