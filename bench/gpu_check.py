"""One prepared GPU check: every figure the GPU claims rest on, in one command, with a report (`make gpu-check`).

    python -m bench.gpu_check                  # one CUDA GPU: five stages, gpu_check/REPORT.md + report.json
    python -m bench.gpu_check --dry            # CPU, tiny sizes: every stage's code path, about a minute
    python -m bench.gpu_check --resume         # keep the finished stages of gpu_check/report.json, run the rest

Stages, in order, each a subprocess with a time cap (`--cap-STAGE` seconds):
  1. pytest: `pytest -m gpu` over the test files that use the marker.
  2. bench: `python -m bench --device cuda` (interleaved ratios; fp32, fp16 and bf16), cheap sections first.
  3. train: `accelerate launch --mixed_precision fp16` running train.py (through `bench.train_probe`) for GeCA-S on
     generated 32x32x4 latents with 11 labels; batch 32 and the largest of 128/96/64/48 that fits, with and without
     `--compile`; steps/s over 30 steps after 10 warm-up steps (train.py's own per-step timing in metrics.csv),
     images/s, peak memory and model FLOP utilisation against the device's dense fp16/bf16 peak.
  4. sample: GeCA-S, DiT-S/2 and LDM-B, 250 steps, CFG 1.5, the largest batch up to 32 that fits: seconds per image
     of the denoising alone and of sample_ddp.py end to end with a random-weight SD-VAE-shaped AutoencoderKL
     (`--vae DIR`).
  5. fp16: 20 training steps from one state in fp16 autocast and in fp32 (losses within `--fp16-rtol`), and GHG
     sampling with the model in fp16 stays finite.

The report is rewritten after every stage (and when a stage starts), so a run killed at any point leaves what it had.
Without a GPU (and without --dry) the command says so in one line and exits 0.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import shlex
import shutil
import signal
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from infra.markdown import format_bytes, markdown_table
from infra.stages import Runner, log_tail

REPO = Path(__file__).resolve().parents[1]
STAGES = ("pytest", "bench", "train", "sample", "fp16")
TITLES = {
    "pytest": "1. pytest -m gpu",
    "bench": "2. python -m bench",
    "train": "3. training burst (train.py, fp16)",
    "sample": "4. sampling throughput (sample_ddp.py)",
    "fp16": "5. fp16 against fp32",
}
# Seconds per stage on one GPU: 460 s in all, so the whole check stays under 8 minutes with the set-up.
GPU_CAPS = {"pytest": 90, "bench": 90, "train": 150, "sample": 90, "fp16": 40}
# The dry run's caps only stop a hung stage; a busy 2-core CPU needs far less.
DRY_CAPS = {stage: 300 for stage in STAGES}
FINISHED = ("ok", "failed")  # statuses `--resume` keeps
NUM_CLASSES = 11

# Dense (no sparsity) fp16/bf16 tensor-core peaks in TFLOP/s from the vendors' datasheets, matched against the
# device name in this order. GeForce parts are listed at their fp32-accumulate rate, which PyTorch uses.
DENSE_PEAKS_TFLOPS: tuple[tuple[str, str, float], ...] = (
    (r"GH200", "GH200", 989.4),
    (r"H200 NVL", "H200 NVL", 835.5),
    (r"H200", "H200 SXM", 989.4),
    (r"H100 NVL", "H100 NVL", 835.5),
    (r"H100 PCIE", "H100 PCIe", 756.5),
    (r"H100", "H100 SXM", 989.4),
    (r"B200", "B200", 2250.0),
    (r"A100", "A100", 312.0),
    (r"L40S", "L40S", 362.1),
    (r"L40", "L40", 181.0),
    (r"L4", "L4", 121.0),
    (r"A30", "A30", 165.0),
    (r"A10", "A10", 125.0),
    (r"RTX A6000", "RTX A6000", 154.8),
    (r"RTX 4090", "GeForce RTX 4090", 165.2),
    (r"RTX 3090", "GeForce RTX 3090", 71.0),
    (r"V100", "V100 (fp16)", 125.0),
    (r"T4", "T4 (fp16)", 65.0),
    (r"MI300X", "Instinct MI300X", 1307.4),
)
# The README's first GPU targets.
TRAIN_TARGET_STEPS_PER_S = 2.0  # GeCA-S, batch 128, one H100-class GPU
SAMPLE_TARGET_S_PER_IMAGE = 0.5  # 250 steps with CFG


def dense_peak_tflops(device_name: str) -> tuple[str, float] | None:
    """(matched label, dense fp16/bf16 TFLOP/s) of a device name, or None when the table does not know it."""
    upper = device_name.upper()
    for pattern, label, tflops in DENSE_PEAKS_TFLOPS:
        if re.search(rf"\b{pattern}\b", upper):
            return label, tflops
    return None


# ----------------------------------------------------------------------------------------------------------------
# Sizes of the two modes
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """What every stage runs, on a GPU or in the CPU dry run."""

    device: str
    image_size: int  # pixels; latents are image_size // 8
    train_model: str
    train_batch: int
    train_batch_candidates: tuple[int, ...]  # largest first; the first that fits is "the largest that fits"
    warmup_steps: int
    timed_steps: int
    num_latents: int
    sample_models: tuple[str, ...]
    sample_steps: int
    sample_batches: tuple[int, ...]
    tiny_vae: bool
    fp16_model: str
    fp16_batch: int
    fp16_steps: int
    ghg_batch: int
    ghg_steps: int
    bench_groups: tuple[tuple[str, ...], ...]
    bench_extra: tuple[str, ...]
    launcher: str  # "accelerate" or "python"
    compile_runs: bool  # stage 3's --compile rows (compiling on a CPU takes minutes: the dry run skips them)


GPU_SIZES = Sizes(
    device="cuda",
    image_size=256,
    train_model="GeCA-S",
    train_batch=32,
    train_batch_candidates=(128, 96, 64, 48),
    warmup_steps=10,
    timed_steps=30,
    num_latents=512,
    sample_models=("GeCA-S", "DiT-S/2", "LDM-B"),
    sample_steps=250,
    sample_batches=(32, 16, 8),  # up to 32: GeCA-S's two 250-step runs must fit the stage's 90 s
    tiny_vae=False,
    fp16_model="GeCA-S",
    fp16_batch=32,
    fp16_steps=20,
    ghg_batch=8,
    ghg_steps=250,
    bench_groups=(("attention", "step", "sampling", "memory"), ("training",)),
    bench_extra=(),
    launcher="accelerate",
    compile_runs=True,
)
# CPU stand-ins: the tiny registry models at 8x8 latents, one model process per stage (each costs seconds of imports).
DRY_SIZES = Sizes(
    device="cpu",
    image_size=64,
    train_model="GeCA-T",
    train_batch=2,
    train_batch_candidates=(2,),
    warmup_steps=2,
    timed_steps=3,
    num_latents=16,
    sample_models=("GeCA-T", "DiT-T/2", "LDM-T"),
    sample_steps=4,
    sample_batches=(2,),
    tiny_vae=True,
    fp16_model="GeCA-T",
    fp16_batch=2,
    fp16_steps=20,
    ghg_batch=2,
    ghg_steps=8,
    bench_groups=(("step",),),
    bench_extra=("--quick",),
    launcher="python",
    compile_runs=False,
)


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class StageReport:
    """One stage's outcome, as report.json stores it and REPORT.md shows it."""

    key: str
    title: str
    cap_s: float
    status: str = "not run"  # not run | running | ok | failed | timed out | error | skipped
    seconds: float = 0.0
    headline: str = ""
    tables: list[dict] = field(default_factory=list)  # {"title", "columns", "rows"}
    notes: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)


def fmt(x: float | None, digits: int = 3) -> str:
    """A number to `digits` significant figures, or 'n/a'."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}g}"


class Report:
    """The whole report; `write()` replaces REPORT.md and report.json atomically."""

    def __init__(self, out: Path, mode: str, sizes: Sizes, caps: dict[str, float]) -> None:
        self.out, self.mode, self.sizes = out, mode, sizes
        self.started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.t0 = time.time()
        self.device: dict = {}
        self.peak: dict = {}
        self.finished: str | None = None
        self.stopped: str | None = None  # why the run ended early (signal, missing packages)
        self.stages = {k: StageReport(k, TITLES[k], caps[k]) for k in STAGES}

    def targets(self) -> list[list[str]]:
        """Rows (target, measured, met) of the README's first GPU targets."""
        dry = self.mode == "dry"
        rows = []
        runs = self.stages["train"].data.get("runs", [])
        at_128 = [r for r in runs if r.get("batch") == 128 and not r.get("compile") and r.get("steps_per_sec")]
        if dry:
            measured, met = "dry mode (tiny CPU sizes; the target is for GeCA-S on a GPU)", "n/a"
        elif at_128:
            sps = at_128[0]["steps_per_sec"]
            on = self.peak.get("label") or self.device.get("name", "?")
            measured, met = f"{sps:.2f} steps/s on {on}", "yes" if sps >= TRAIN_TARGET_STEPS_PER_S else "NO"
        else:
            measured, met = "not measured (see stage 3)", "n/a"
        target = f"GeCA-S training >= {TRAIN_TARGET_STEPS_PER_S:g} steps/s at batch 128 (fp16, one H100-class GPU)"
        rows.append([target, measured, met])
        geca = self.stages["sample"].data.get("models", {}).get("GeCA-S", {})
        e2e = geca.get("end_to_end", {})
        if dry:
            measured, met = "dry mode (tiny CPU sizes; the target is for GeCA-S on a GPU)", "n/a"
        elif e2e.get("seconds") and geca.get("batch"):
            spi = e2e["seconds"] / geca["batch"]
            measured, met = (
                f"{spi:.3f} s/image (VAE decode included)",
                "yes" if spi <= SAMPLE_TARGET_S_PER_IMAGE else "NO",
            )
        else:
            measured, met = "not measured (see stage 4)", "n/a"
        rows.append([f"GeCA-S sampling <= {SAMPLE_TARGET_S_PER_IMAGE:g} s/image, 250 steps, CFG 1.5", measured, met])
        return rows

    def summary_table(self) -> str:
        rows = [[s.title, s.status, f"{s.seconds:.0f} s / {s.cap_s:.0f} s", s.headline] for s in self.stages.values()]
        return markdown_table(["stage", "status", "time / cap", "result"], rows)

    def to_json(self) -> dict:
        return {
            "version": 1,
            "mode": self.mode,
            "started": self.started,
            "finished": self.finished,
            "stopped": self.stopped,
            "complete": all(s.status in FINISHED for s in self.stages.values()),
            "wall_seconds": time.time() - self.t0,
            "device": self.device,
            "peak": self.peak,
            "sizes": asdict(self.sizes),
            "targets": [dict(zip(("target", "measured", "met"), row)) for row in self.targets()],
            "stages": [asdict(s) for s in self.stages.values()],
        }

    def to_markdown(self) -> str:
        d = self.device
        lines = [
            "# GPU check",
            "",
            f"- mode: {'CPU dry run (tiny sizes: code paths only, no GPU figure)' if self.mode == 'dry' else 'GPU'}",
            f"- device: {d.get('name', '?')}"
            + (
                f", {format_bytes(d.get('memory_bytes'))}, compute capability {d.get('capability')}"
                if d.get("cuda")
                else ""
            )
            + f"; torch {d.get('torch', '?')} (CUDA runtime {d.get('cuda_runtime')}), Python {d.get('python', '?')}",
            f"- MFU peak assumed: {self.peak.get('text', 'n/a')}",
            f"- started {self.started}; {'finished ' + self.finished if self.finished else 'not finished'}; "
            f"wall {time.time() - self.t0:.0f} s" + (f"; stopped: {self.stopped}" if self.stopped else ""),
            "- written by `python -m bench.gpu_check` (format: docs/PERFORMANCE.md, 'GPU check'); "
            "report.json holds the same figures",
            "",
            "## Summary",
            "",
            self.summary_table(),
            "",
            "## Targets",
            "",
            markdown_table(["target", "measured", "met"], self.targets()),
            "",
        ]
        for s in self.stages.values():
            lines += [f"## {s.title}", "", f"status: **{s.status}**, {s.seconds:.0f} s of a {s.cap_s:.0f} s cap"]
            if s.headline:
                lines += ["", s.headline]
            for table in s.tables:
                lines += ["", f"**{table['title']}**" if table.get("title") else "", ""]
                if "text" in table:
                    lines.append(table["text"])
                else:
                    lines.append(markdown_table(table["columns"], table["rows"]))
            if s.notes:
                lines += [""] + [f"- {n}" for n in s.notes]
            if s.commands:
                lines += ["", "Commands:", "", "```"] + s.commands + ["```"]
            if s.logs:
                lines += ["", "Logs: " + ", ".join(f"`{p}`" for p in s.logs)]
            lines.append("")
        return "\n".join(lines)

    def write(self) -> None:
        from infra.atomic_io import atomic_write_text  # imports torch: only once there is a report to write

        atomic_write_text(self.out / "report.json", json.dumps(self.to_json(), indent=2, default=str) + "\n")
        atomic_write_text(self.out / "REPORT.md", self.to_markdown())


# ----------------------------------------------------------------------------------------------------------------
# Capped subprocesses
# ----------------------------------------------------------------------------------------------------------------


class Interrupted(Exception):
    """SIGTERM or SIGINT reached the check: stop the running stage, keep the report."""


def tail(path: Path, lines: int = 3) -> str:
    """The last lines of a log as a terminal shows them, joined by " / "."""
    return " / ".join(log_tail(path, lines))


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# ----------------------------------------------------------------------------------------------------------------
# The stages
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Context:
    args: argparse.Namespace
    sizes: Sizes
    runner: Runner
    work: Path
    report: Report

    @property
    def py(self) -> str:
        return self.runner.python


def gpu_test_files() -> list[str]:
    """Test files that use the `gpu` marker (the rest would only be collected to be deselected)."""
    files = sorted(p for p in (REPO / "tests").rglob("test_*.py") if "mark.gpu" in p.read_text(errors="replace"))
    return [str(p.relative_to(REPO)) for p in files] or ["tests"]


def stage_pytest(ctx: Context, rep: StageReport) -> None:
    xml = ctx.work / "pytest.xml"
    cmd = [ctx.py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", f"--junitxml={xml}"]
    cmd += gpu_test_files()
    rep.commands.append(shlex.join(cmd))
    outcome = ctx.runner.run_command(cmd, "pytest", rep.cap_s)
    rep.logs.append(ctx.runner.rel(outcome.log))
    rows, counts = [], {"passed": 0, "failed": 0, "skipped": 0}
    if xml.is_file():
        for case in ET.parse(xml).getroot().iter("testcase"):
            kinds = {child.tag: child for child in case}
            bad = kinds.get("failure", kinds.get("error"))
            outcome_name = "failed" if bad is not None else "skipped" if "skipped" in kinds else "passed"
            counts[outcome_name] += 1
            detail = bad if bad is not None else kinds.get("skipped")
            message = (detail.get("message") or "").splitlines()[0][:160] if detail is not None else ""
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            rows.append([name, outcome_name, f"{float(case.get('time', 0)):.2f}", message])
    rep.tables.append({"title": "gpu-marked tests", "columns": ["test", "outcome", "s", "message"], "rows": rows})
    rep.data.update(counts, returncode=outcome.returncode)
    rep.headline = f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"
    if outcome.timed_out:
        rep.status = "timed out"
    elif outcome.returncode != 0 or (ctx.sizes.device == "cuda" and counts["passed"] == 0):
        rep.status = "failed"
        rep.notes.append(f"pytest exit status {outcome.returncode}; {tail(outcome.log)}")
    else:
        rep.status = "ok"
    if ctx.sizes.device == "cpu":
        rep.notes.append("dry run: CUDA is hidden, so every gpu test is collected and skipped")


def stage_bench(ctx: Context, rep: StageReport, deadline: float) -> None:
    statuses = []
    for i, sections in enumerate(ctx.sizes.bench_groups, 1):
        left = deadline - time.time()
        if left < 5:
            statuses.append("skipped")
            rep.notes.append(f"sections {' '.join(sections)}: skipped, the stage cap was reached")
            continue
        table_file = ctx.runner.out / f"bench_{i}.md"
        cmd = [ctx.py, "-m", "bench", "--device", ctx.sizes.device, "--sections", *sections]
        cmd += ["--output", str(table_file), *ctx.sizes.bench_extra]
        rep.commands.append(shlex.join(cmd))
        outcome = ctx.runner.run_command(cmd, f"bench_{i}", left)
        rep.logs.append(ctx.runner.rel(outcome.log))
        if outcome.timed_out:
            statuses.append("timed out")
            rep.notes.append(f"sections {' '.join(sections)}: stopped at the cap after {outcome.seconds:.0f} s")
        elif outcome.returncode != 0 or not table_file.is_file():
            statuses.append("failed")
            rep.notes.append(f"sections {' '.join(sections)}: exit {outcome.returncode}; {tail(outcome.log)}")
        else:
            statuses.append("ok")
            text = table_file.read_text()
            # The bench header lines start with '# ' (markdown headings here): show them as plain lines.
            header = [line[2:] for line in text.splitlines() if line.startswith("# ")]
            table = [line for line in text.splitlines() if not line.startswith("# ")]
            shown = "\n".join([*(f"- {line}" for line in header), "", *table])
            rep.tables.append({"title": f"sections: {' '.join(sections)} ({outcome.seconds:.0f} s)", "text": shown})
            rep.data.setdefault("tables", []).append(text)
    rows = sum(t["text"].count("\n| ") for t in rep.tables if "text" in t)
    ooms = sum(t["text"].count("out of memory") for t in rep.tables if "text" in t)
    rep.headline = f"{statuses.count('ok')} of {len(statuses)} bench runs ok; {rows} rows, {ooms} out of memory"
    rep.status = "ok" if all(s == "ok" for s in statuses) else next(s for s in statuses if s != "ok")
    if rep.status == "skipped":
        rep.status = "timed out"


def make_latents(folder: Path, count: int, side: int, seed: int = 0) -> Path:
    """Generated latents in extract_features.py's layout: features_0/{i}.npy (1, 4, s, s), labels_0/{i}.npy (1, K)."""
    rng = np.random.default_rng(seed)
    (folder / "features_0").mkdir(parents=True, exist_ok=True)
    (folder / "labels_0").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        np.save(folder / "features_0" / f"{i}.npy", rng.standard_normal((1, 4, side, side)).astype(np.float32))
        np.save(folder / "labels_0" / f"{i}.npy", (rng.random((1, NUM_CLASSES)) < 0.3).astype(np.int64))
    return folder


def timed_rate(metrics_csv: Path, warmup: int, timed: int) -> tuple[float | None, int]:
    """Steps/s over steps warmup+1 .. warmup+timed from train.py's metrics.csv, and how many steps it covers.

    Each loss row gives the steps since the previous row and their rate, so the time of a row is
    (step - previous step) / steps_per_sec; the rate is the steps over the summed time.
    """
    if not metrics_csv.is_file():
        return None, 0
    with open(metrics_csv, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("loss") and r.get("steps_per_sec")]
    previous, steps, seconds = 0, 0, 0.0
    for r in rows:
        step, rate = int(r["step"]), float(r["steps_per_sec"])
        if previous >= warmup and step <= warmup + timed and rate > 0:
            steps += step - previous
            seconds += (step - previous) / rate
        previous = step
    return (steps / seconds if seconds > 0 else None), steps


def train_command(ctx: Context, latents: Path, results: Path, batch: int, compiled: bool, probe: Path) -> list[str]:
    """The paper's launch shape (accelerate, fp16, train.py flags) with the probe in train.py's place."""
    s = ctx.sizes
    if s.launcher == "accelerate":
        launch = [ctx.py, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1"]
        launch += ["--mixed_precision", "fp16", "--dynamo_backend", "no", "-m", "bench.train_probe"]
    else:
        launch = [ctx.py, "-m", "bench.train_probe"]
    flags = ["--model", s.train_model, "--feature-path", str(latents), "--data-path", str(latents)]
    flags += ["--results-dir", str(results), "--image-size", str(s.image_size), "--num-classes", str(NUM_CLASSES)]
    flags += ["--global-batch-size", str(batch), "--epochs", "1000000", "--fold", "0", "--validate_every", "0"]
    flags += ["--max-steps", str(s.warmup_steps + s.timed_steps), "--log-every", "1", "--num-workers", "0"]
    flags += ["--cache", "--load_from", "", "--global-seed", "0"]
    if s.launcher != "accelerate":
        flags += ["--mixed-precision", "fp16"]
    if compiled:
        flags.append("--compile")
    return [*launch, "--probe-json", str(probe), "--", *flags]


def train_run(ctx: Context, rep: StageReport, latents: Path, batch: int, compiled: bool, timeout: float) -> dict:
    """One train.py burst; returns its row data (status, steps/s, images/s, memory, FLOPs, MFU)."""
    name = f"train_b{batch}{'_compile' if compiled else ''}"
    results, probe = ctx.work / name, ctx.work / f"{name}.json"
    cmd = train_command(ctx, latents, results, batch, compiled, probe)
    rep.commands.append(shlex.join(cmd))
    outcome = ctx.runner.run_command(cmd, name, timeout)
    rep.logs.append(ctx.runner.rel(outcome.log))
    info = read_json(probe)
    run: dict = {"batch": batch, "compile": compiled, "seconds": outcome.seconds, "log": ctx.runner.rel(outcome.log)}
    metrics = sorted(results.glob("*/metrics.csv"))
    if metrics:
        run["experiment"] = str(metrics[0].parent)
    sps, covered = timed_rate(metrics[0], ctx.sizes.warmup_steps, ctx.sizes.timed_steps) if metrics else (None, 0)
    if outcome.timed_out:
        run["status"] = "timed out"
    elif info.get("oom"):
        run["status"] = "out of memory"
    elif outcome.returncode != 0:
        run["status"] = "failed"
        run["error"] = info.get("error") or tail(outcome.log)
    elif sps is None or covered < ctx.sizes.timed_steps:
        run["status"] = "failed"
        run["error"] = f"metrics.csv covers {covered} of the {ctx.sizes.timed_steps} timed steps"
    else:
        run["status"] = "ok"
    memory = info.get("memory", {})
    run.update(
        steps_per_sec=sps,
        images_per_sec=sps * batch if sps else None,
        timed_steps=covered,
        peak_bytes=memory.get("peak_bytes"),
        peak_reserved_bytes=memory.get("peak_reserved_bytes"),
        memory_kind=memory.get("kind"),
        flops_per_step=info.get("flops_per_step"),
    )
    peak = ctx.report.peak.get("tflops")
    if sps and run["flops_per_step"]:
        run["achieved_tflops"] = run["flops_per_step"] * sps / 1e12
        run["mfu"] = run["achieved_tflops"] / peak if peak else None
    return run


def stage_train(ctx: Context, rep: StageReport, deadline: float) -> None:
    s = ctx.sizes
    latents = make_latents(ctx.work / "latents", s.num_latents, s.image_size // 8)
    runs: list[dict] = []
    rep.data["runs"] = runs

    def budget() -> float:
        return deadline - time.time()

    def record(run: dict) -> None:
        runs.append(run)
        ctx.report.write()

    # 1. The largest batch that fits (largest first), without --compile: the paper's configuration.
    largest = None
    for batch in s.train_batch_candidates:
        if budget() < 5:
            break
        run = train_run(ctx, rep, latents, batch, False, budget())
        record(run)
        if run["status"] != "out of memory":
            largest = batch if run["status"] == "ok" else None
            break
    # 2. Batch 32, then both batches with --compile (the first steps compile; they fall in the warm-up).
    plan = [(s.train_batch, False)]
    if s.compile_runs:
        plan += [(largest, True), (s.train_batch, True)]
    done = {(r["batch"], r["compile"]) for r in runs}
    for batch, compiled in plan:
        if batch is None or (batch, compiled) in done:
            continue
        if budget() < 5:
            runs.append({"batch": batch, "compile": compiled, "status": "skipped: stage cap reached"})
            continue
        record(train_run(ctx, rep, latents, batch, compiled, budget()))
        done.add((batch, compiled))

    rows = []
    for r in runs:
        rows.append(
            [
                r["batch"],
                "yes" if r["compile"] else "no",
                r["status"],
                fmt(r.get("steps_per_sec")),
                fmt(r.get("images_per_sec")),
                format_bytes(r.get("peak_bytes")),
                fmt(r["flops_per_step"] / 1e12) if r.get("flops_per_step") else "n/a",
                fmt(r.get("achieved_tflops")),
                f"{fmt(100 * r['mfu'])}%" if r.get("mfu") else "n/a",
            ]
        )
    cols = ["batch", "--compile", "status", "steps/s", "images/s", "peak memory", "TFLOP/step", "TFLOP/s", "MFU"]
    rep.tables.append(
        {"title": f"{s.train_model}, {s.image_size // 8}x{s.image_size // 8}x4 latents", "columns": cols, "rows": rows}
    )
    rep.notes += [
        f"steps/s: train.py's own per-step timing (metrics.csv, --log-every 1) over steps {s.warmup_steps + 1}-"
        f"{s.warmup_steps + s.timed_steps}, after {s.warmup_steps} warm-up steps (compilation falls in those); "
        "images/s = steps/s x global batch",
        "peak memory: the training process's peak CUDA allocation (torch.cuda.max_memory_allocated; on CPU peak RSS)",
        "FLOPs: torch.utils.flop_counter.FlopCounterMode over one forward + backward of the diffusion loss at batch 1, "
        "times the batch (matrix products, convolutions and attention; AdamW and elementwise work not counted); "
        f"MFU = FLOPs/step x steps/s / peak, peak: {ctx.report.peak.get('text', 'n/a')}",
        f"data: {s.num_latents} generated N(0, 1) latents and multi-hot labels in extract_features.py's layout, "
        "read with --cache --num-workers 0 (train.py rebuilds its loader every epoch, which would time worker "
        "start-up)",
        "launch: train.py runs unchanged as __main__ inside bench.train_probe, which adds the peak memory and FLOP "
        "count after it returns",
    ]
    if not s.compile_runs:
        rep.notes.append("dry run: no --compile rows (compiling on a CPU takes minutes; on a GPU they run)")
    failed = [r for r in runs if r["status"] not in ("ok", "out of memory")]
    ok = [r for r in runs if r["status"] == "ok"]
    for r in failed:
        rep.notes.append(
            f"batch {r['batch']}{' --compile' if r['compile'] else ''}: {r['status']}: {r.get('error', '')}"
        )
    if largest:
        rep.headline = f"largest batch that fits: {largest}"
    elif runs and all(r["status"] == "out of memory" for r in runs):
        rep.headline = "no batch fitted"
    else:
        rep.headline = "largest batch not found (see the notes)"
    best = max((r for r in ok if not r["compile"]), key=lambda r: r["batch"], default=None)
    if best:
        rep.headline += f"; batch {best['batch']}: {fmt(best['steps_per_sec'])} steps/s, "
        rep.headline += f"{fmt(best['images_per_sec'])} images/s"
        rep.headline += f", MFU {fmt(100 * best['mfu'])}%" if best.get("mfu") else ""
    rep.data["largest_batch"] = largest
    if any(r["status"] == "timed out" or r["status"].startswith("skipped") for r in runs):
        rep.status = "timed out"
    else:
        rep.status = "ok" if ok and not failed else "failed"


def stage_sample(ctx: Context, rep: StageReport) -> None:
    s = ctx.sizes
    out_json = ctx.work / "sample.json"
    cmd = [ctx.py, "-m", "bench.gpu_workers", "sample", "--json", str(out_json), "--work", str(ctx.work / "sample")]
    cmd += ["--device", s.device, "--models", *s.sample_models, "--batches", *map(str, s.sample_batches)]
    cmd += ["--image-size", str(s.image_size), "--steps", str(s.sample_steps), "--cfg-scale", "1.5"]
    # The worker stops starting end-to-end runs that would not finish 10 s before the cap (an absolute time: its own
    # imports count against the cap too).
    cmd += ["--deadline-at", f"{time.time() + rep.cap_s - 10:.1f}"] + (["--tiny-vae"] if s.tiny_vae else [])
    rep.commands.append(shlex.join(cmd))
    outcome = ctx.runner.run_command(cmd, "sample", rep.cap_s)
    rep.logs.append(ctx.runner.rel(outcome.log))
    data = read_json(out_json)
    rep.data.update(data)
    rows = []
    for key, m in data.get("models", {}).items():
        den, e2e = m.get("denoise", {}), m.get("end_to_end", {})
        batch = m.get("batch")
        d_spi = den["seconds"] / batch if den.get("seconds") else None
        e_spi = e2e["seconds"] / batch if e2e.get("seconds") else None
        rows.append(
            [
                key,
                batch or "none fits",
                fmt(1 / d_spi) if d_spi else "n/a",
                fmt(d_spi),
                fmt(1 / e_spi) if e_spi else e2e.get("skipped", "n/a"),
                fmt(e_spi),
                fmt(e2e.get("wall_seconds")),
                format_bytes(den.get("peak_bytes")),
            ]
        )
        for b, what in m.get("tried", []):
            if what != "fits":
                rep.notes.append(f"{key}: batch {b} {what}")
        if m.get("command"):
            rep.commands.append(m["command"])
    cols = [
        "model",
        "batch",
        "images/s (no VAE)",
        "s/image (no VAE)",
        "images/s (sample_ddp.py, VAE)",
        "s/image (sample_ddp.py, VAE)",
        "wall s incl. load",
        "peak memory (denoising)",
    ]
    title = f"{s.sample_steps} steps, CFG 1.5, {s.image_size}x{s.image_size} images"
    rep.tables.append({"title": title, "columns": cols, "rows": rows})
    vae = data.get("vae", {})
    rep.notes += [
        "largest batch that fits: the first of "
        f"{', '.join(map(str, s.sample_batches))} whose guided model call and VAE decoding run without running out "
        "of memory (one respaced step)",
        "no VAE: synthesis.generate.sample_images (what sample_ddp.py calls) with vae=None, one batch, device "
        "synchronised; VAE: sample_ddp.main end to end in the worker, its own timer (denoising, decoding, PNG "
        "writes; model and VAE loading are in 'wall s incl. load'); peak memory: the CUDA allocation peak of the "
        "denoising run, model and VAE weights included",
        f"random weights (throughput does not depend on them); VAE: AutoencoderKL shaped like SD-VAE "
        f"({'tiny 8-channel blocks' if vae.get('tiny') else 'blocks 128/256/512/512, 2 layers'}, "
        f"{vae.get('parameters', '?'):,} parameters) saved to a folder and passed as --vae DIR"
        if isinstance(vae.get("parameters"), int)
        else "VAE: not built (see the log)",
    ]
    models = data.get("models", {})
    skipped = [k for k, m in models.items() if "skipped" in m.get("end_to_end", {})]
    unfit = [k for k, m in models.items() if "batch" not in m]
    complete = len(models) == len(s.sample_models) and all(
        m.get("end_to_end", {}).get("seconds") for m in models.values()
    )
    geca = next((k for k in data.get("models", {}) if k.startswith("GeCA")), None)
    if geca and data["models"][geca].get("denoise"):
        g = data["models"][geca]
        parts = [f"{geca}: {g['denoise']['seconds'] / g['batch']:.3g} s/image denoising"]
        if g.get("end_to_end", {}).get("seconds"):
            parts.append(f"{g['end_to_end']['seconds'] / g['batch']:.3g} s/image with VAE")
        rep.headline = ", ".join(parts) + f" (batch {g['batch']})"
    if outcome.timed_out:
        rep.status = "timed out"
    elif outcome.returncode != 0:
        rep.status = "failed"
        rep.notes.append(f"worker exit {outcome.returncode}; {tail(outcome.log)}")
    elif unfit:
        rep.status = "failed"
        rep.notes.append(f"no batch fits for {', '.join(unfit)}")
    elif skipped:
        rep.status = "timed out"
        rep.notes.append(f"end-to-end runs skipped to stay within the cap: {', '.join(skipped)}")
    else:
        rep.status = "ok" if complete else "failed"


def stage_fp16(ctx: Context, rep: StageReport) -> None:
    s = ctx.sizes
    out_json = ctx.work / "fp16.json"
    cmd = [ctx.py, "-m", "bench.gpu_workers", "fp16", "--json", str(out_json), "--device", s.device]
    cmd += ["--model", s.fp16_model, "--image-size", str(s.image_size), "--batch", str(s.fp16_batch)]
    cmd += ["--steps", str(s.fp16_steps), "--rtol", str(ctx.args.fp16_rtol), "--ghg-batch", str(s.ghg_batch)]
    cmd += ["--ghg-steps", str(s.ghg_steps), "--cfg-scale", "1.5"]
    rep.commands.append(shlex.join(cmd))
    outcome = ctx.runner.run_command(cmd, "fp16", rep.cap_s)
    rep.logs.append(ctx.runner.rel(outcome.log))
    data = read_json(out_json)
    rep.data.update(data)
    l32, l16 = data.get("losses_fp32", []), data.get("losses_fp16", [])
    rel = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(l16, l32)]
    rep.data["relative_gaps"] = rel
    rows = [[k + 1, f"{b:.6f}", f"{a:.6f}", f"{r:.2e}"] for k, (a, b, r) in enumerate(zip(l16, l32, rel))]
    rep.tables.append(
        {
            "title": f"{s.fp16_model}, batch {s.fp16_batch}: loss per step from the same state",
            "columns": ["step", "fp32 loss", "fp16 loss", "|fp16 - fp32| / fp32"],
            "rows": rows,
        }
    )
    tol = ctx.args.fp16_rtol
    finite = all(math.isfinite(v) for v in l16 + l32)
    losses_ok = len(rel) == s.fp16_steps and finite and max(rel, default=math.inf) <= tol
    ghg = data.get("ghg", {})
    g16 = ghg.get("fp16", {})
    ghg_ok = bool(g16) and g16.get("first_non_finite_step") is None
    if ghg:
        rep.tables.append(
            {
                "title": f"GHG sampling, {ghg.get('steps')} steps, CFG {ghg.get('cfg_scale')}, "
                f"batch {ghg.get('batch')}",
                "columns": ["model call", "first non-finite step", "max |sample|", "max |cell state|"],
                "rows": [
                    [
                        name,
                        ghg[name].get("first_non_finite_step")
                        if ghg[name].get("first_non_finite_step") is not None
                        else "none",
                        fmt(ghg[name].get("max_abs_sample")),
                        fmt(ghg[name].get("max_abs_cells")),
                    ]
                    for name in ("fp32", "fp16")
                    if name in ghg
                ],
            }
        )
    rep.notes += [
        f"tolerance: |loss_fp16 - loss_fp32| <= {tol:g} x |loss_fp32| at each of the {s.fp16_steps} steps; fp32 with "
        "TF32 off; fp16 = autocast + gradient scaler (accelerate's fp16); both copies see the same batches, "
        "timesteps and random draws",
        f"gradient-scaler skipped steps (fp16 overflow): {data.get('scaler_skipped_steps', 'n/a')}",
        "GHG: guided sampling with the cell state carried between timesteps, model call under fp16 autocast as "
        "sample_ddp.py --mixed-precision fp16 does; the adaLN-Zero tensors (all zero at init, which would make any "
        f"precision finite) redrawn from N(0, 0.02^2) ({ghg.get('redrawn', '?')} tensors); the fp32 row is "
        "sample_ddp.py's default float32 call (TF32 on); final fp16 vs fp32 sample max |diff| / max |fp32| = "
        f"{fmt(ghg.get('fp16_vs_fp32_max_abs_diff_rel'))}",
    ]
    rep.headline = (
        f"max relative loss gap {max(rel):.2e} over {len(rel)} steps (tolerance {tol:g}); " if rel else "no losses; "
    ) + f"GHG fp16 {'finite' if ghg_ok else 'NOT finite' if g16 else 'not run'}"
    if outcome.timed_out:
        rep.status = "timed out"
    elif outcome.returncode != 0:
        rep.status = "failed"
        rep.notes.append(f"worker exit {outcome.returncode}; {tail(outcome.log)}")
    else:
        rep.status = "ok" if losses_ok and ghg_ok else "failed"


# ----------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------


def probe_device(runner: Runner, work: Path, dry: bool) -> dict:
    """Device facts (see bench.gpu_workers.device_facts): from a child process, or in this one for the dry run."""
    if dry:
        from bench.gpu_workers import device_facts

        return device_facts(query_cuda=False)
    out = work / "device.json"
    cmd = [runner.python, "-m", "bench.gpu_workers", "device", "--json", str(out)]
    outcome = runner.run_command(cmd, "device", 120, log_dir=work)  # nothing lands in --out on a machine without a GPU
    facts = read_json(out)
    if not facts:
        raise RuntimeError(f"the device probe failed (exit {outcome.returncode}): {tail(outcome.log, 5)}")
    return facts


def main(args: argparse.Namespace) -> int:
    """Run the stages; returns 0 when every stage is ok (or there is no GPU and --dry is not given)."""
    sizes = DRY_SIZES if args.dry else GPU_SIZES
    if args.launcher:
        sizes = Sizes(**{**asdict(sizes), "launcher": args.launcher})
    caps = {k: (getattr(args, f"cap_{k}") or (DRY_CAPS if args.dry else GPU_CAPS)[k]) for k in STAGES}
    out = Path(args.out).resolve()  # the stages run from the repository root
    keep_work = args.keep_work or args.work is not None
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    # The dry run hides CUDA from every stage, so even on a GPU machine it runs the CPU code paths.
    runner = Runner(out, {"CUDA_VISIBLE_DEVICES": ""} if args.dry else {}, python=args.python)

    def on_signal(signum: int, _frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    report: Report | None = None
    try:
        facts = probe_device(runner, work, args.dry)
        if not args.dry and not facts.get("cuda"):
            print(
                f"gpu-check: no CUDA GPU visible to torch {facts.get('torch', '(not installed)')}; nothing measured "
                "(python -m bench.gpu_check --dry runs the CPU dry mode)"
            )
            return 0
        report = Report(out, "dry" if args.dry else "gpu", sizes, caps)
        report.device = facts
        if not args.resume:  # logs and tables of an earlier run would sit beside this run's as if they were its own
            shutil.rmtree(out / "logs", ignore_errors=True)
            for old_table in out.glob("bench_*.md"):
                old_table.unlink()
        previous = read_json(out / "report.json") if args.resume else {}
        for old in previous.get("stages", []):
            if old.get("status") in FINISHED and old.get("key") in report.stages:
                report.stages[old["key"]] = StageReport(**old)
        name = args.device_name or facts.get("name", "")
        if args.peak_tflops:
            report.peak = {"tflops": args.peak_tflops, "text": f"{args.peak_tflops:g} TFLOP/s (--peak-tflops)"}
        elif (found := dense_peak_tflops(name)) is not None:
            label, tflops = found
            report.peak = {
                "tflops": tflops,
                "label": label,
                "text": f"{label} dense fp16/bf16 tensor peak {tflops:g} TFLOP/s (datasheet, for '{name}')",
            }
        else:
            report.peak = {"tflops": None, "text": f"unknown for '{name}': MFU not computed (give --peak-tflops)"}
        missing = facts.get("missing_packages", [])
        if missing:
            report.stopped = f"missing Python packages: {', '.join(missing)}"
            report.write()
            print(
                f"gpu-check: missing Python packages {', '.join(missing)} for {facts.get('executable')}; "
                "see docs/PERFORMANCE.md ('GPU check') for carrying them as wheels",
                file=sys.stderr,
            )
            return 2
        ctx = Context(args, sizes, runner, work, report)
        print(f"gpu-check ({report.mode}): {facts.get('name')}; MFU peak: {report.peak['text']}", flush=True)
        print(f"report: {out / 'REPORT.md'} (rewritten after every stage); scratch: {work}", flush=True)
        stage_fns: dict[str, Callable[[StageReport, float], None]] = {
            "pytest": lambda rep, _d: stage_pytest(ctx, rep),
            "bench": lambda rep, d: stage_bench(ctx, rep, d),
            "train": lambda rep, d: stage_train(ctx, rep, d),
            "sample": lambda rep, _d: stage_sample(ctx, rep),
            "fp16": lambda rep, _d: stage_fp16(ctx, rep),
        }
        for i, key in enumerate(STAGES, 1):
            rep = report.stages[key]
            if key not in args.stages:
                continue
            if rep.status in FINISHED:
                print(f"[{i}/{len(STAGES)}] {rep.title}: kept from the previous report ({rep.status})", flush=True)
                continue
            print(f"[{i}/{len(STAGES)}] {rep.title} (cap {rep.cap_s:.0f} s) ...", flush=True)
            rep.status, start = "running", time.time()
            report.write()
            try:
                stage_fns[key](rep, start + rep.cap_s)
            except Interrupted:
                rep.status = "interrupted"
                raise
            except Exception as err:  # one broken stage must not lose the others' figures
                rep.status = "error"
                rep.notes.append(f"{type(err).__name__}: {err}")
            finally:
                rep.seconds = time.time() - start
                report.write()
            print(f"      {rep.status} in {rep.seconds:.0f} s: {rep.headline}", flush=True)
        report.finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
        report.write()
        print("\n" + report.summary_table() + "\n")
        print(markdown_table(["target", "measured", "met"], report.targets()))
        print(f"\nwall {time.time() - report.t0:.0f} s; report: {out / 'REPORT.md'}, {out / 'report.json'}")
        return 0 if all(report.stages[k].status == "ok" for k in args.stages) else 1
    except Interrupted as err:
        if report is not None:
            report.stopped = f"interrupted by {err}"
            report.write()
        print(f"gpu-check: interrupted by {err}; partial report in {out}", file=sys.stderr)
        return 130
    finally:
        if not keep_work:
            shutil.rmtree(work, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="gpu_check", help="report folder (REPORT.md, report.json, logs/, bench_*.md)")
    p.add_argument("--dry", action="store_true", help="CPU dry run at tiny sizes (CUDA hidden): code paths only")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="stages to run (in order)")
    p.add_argument("--resume", action="store_true", help="keep the finished stages of OUT/report.json")
    p.add_argument("--work", default=None, help="scratch folder (kept); default: a temporary folder, removed")
    p.add_argument("--keep-work", action="store_true", help="keep the temporary scratch folder")
    p.add_argument("--python", default=sys.executable, help="interpreter of every stage (default: this one)")
    p.add_argument(
        "--launcher",
        choices=["accelerate", "python"],
        default=None,
        help="stage 3 launch: accelerate launch --mixed_precision fp16 (GPU default) or python with "
        "--mixed-precision fp16 (dry-run default)",
    )
    for stage in STAGES:
        p.add_argument(
            f"--cap-{stage}",
            type=float,
            default=None,
            help=f"seconds for stage {stage} (GPU default {GPU_CAPS[stage]}, dry {DRY_CAPS[stage]})",
        )
    p.add_argument("--fp16-rtol", type=float, default=1e-2, help="stage 5: allowed relative loss gap per step")
    p.add_argument("--device-name", default=None, help="device name for the MFU peak lookup (default: the device's)")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense fp16/bf16 peak for MFU, overriding the table")
    return p


if __name__ == "__main__":
    sys.exit(main(build_parser().parse_args()))
