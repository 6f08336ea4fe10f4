"""`python -m bench.gpu_check`: the CPU dry run of the five GPU stages, run as a subprocess, and the no-GPU exit.

The dry run is the check's only test without a GPU, so it never rots: every stage must finish with status ok and
every figure of the report is recomputed here from the files the stages left (train.py's metrics.csv, the sampled
PNGs) or from an independent FLOP count.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
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
