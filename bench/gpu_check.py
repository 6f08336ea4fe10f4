"""One prepared GPU check: every figure the GPU claims rest on, in one command, with a report (`make gpu-check`).

    python -m bench.gpu_check                  # one CUDA GPU: five stages, gpu_check/REPORT.md + report.json
    python -m bench.gpu_check --dry            # CPU, tiny sizes: every stage's code path, about a minute
    python -m bench.gpu_check --resume         # keep the finished stages of gpu_check/report.json, run the rest

Five stages, in order, each in subprocesses under a time cap (`--cap-STAGE` seconds): `pytest -m gpu`, `python -m
bench`, train.py bursts (through `bench.train_probe`), sampling throughput and fp16 against fp32 (`bench.gpu_workers`);
docs/PERFORMANCE.md ("GPU check") says what each runs and measures, and `Sizes` holds their sizes.

The report (bench.gpu_report: report.json, and REPORT.md rendered from it with templates/gpu_report.md) is rewritten
after every stage (and when a stage starts), so a run killed at any point leaves what it had. Without a GPU (and
without --dry) the command says so in one line and exits 0; with Python packages missing it says which and exits 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import shutil
import signal
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from bench import NUM_CLASSES, gpu_report
from bench.gpu_report import FINISHED, STAGES, Report, StageReport
from bench.gpu_workers import write_latents
from infra.argtypes import positive_number
from infra.errors import run_main
from infra.stages import Outcome, Runner, log_tail, read_json

REPO = Path(__file__).resolve().parents[1]
# Seconds per stage on one GPU, at least 25% over what each took on an H200 (docs/PERFORMANCE.md, "GPU check"):
# 530 s in all, so the whole check stays under 10 minutes with the set-up.
GPU_CAPS = {"pytest": 90, "bench": 60, "train": 160, "sample": 130, "fp16": 90}
# The dry run's caps only stop a hung stage; a busy 2-core CPU needs far less.
DRY_CAPS = {stage: 300 for stage in STAGES}


@dataclass(frozen=True)
class Sizes:
    """What every stage runs: one GPU by default, DRY_SIZES for the CPU dry run."""

    device: str = "cuda"
    image_size: int = 256  # pixels; latents are image_size // 8
    train_model: str = "GeCA-S"
    train_batch: int = 32
    train_batch_candidates: tuple[int, ...] = (128, 96, 64, 48)  # largest first: the first that fits is the largest
    warmup_steps: int = 10
    timed_steps: int = 30
    num_latents: int = 512
    sample_models: tuple[str, ...] = ("GeCA-S", "DiT-S/2", "LDM-B")
    sample_steps: int = 250
    sample_batches: tuple[int, ...] = (32, 16, 8)  # GeCA-S's two 250-step runs at 32: 31 s each on an H200
    tiny_vae: bool = False
    fp16_model: str = "GeCA-S"
    fp16_batch: int = 32
    fp16_steps: int = 20
    ghg_batch: int = 8
    ghg_steps: int = 250
    # Stage 2's sections: those no other stage measures (training and sampling speed are stages 3 and 4, measured
    # through train.py and sample_ddp.py; on an H200 bench's own rows gave the same figures).
    bench_sections: tuple[str, ...] = ("attention", "step", "memory")
    bench_extra: tuple[str, ...] = ()
    launcher: str = "accelerate"  # or "python"
    compile_runs: bool = True  # stage 3's --compile rows (compiling on a CPU takes minutes: the dry run skips them)


GPU_SIZES = Sizes()
# CPU stand-ins: the tiny registry models at 8x8 latents, one model process per stage (each costs seconds of
# imports). Grouped: the device, then the sizes of stage 3, of stage 4, and of stages 5 and 2.
DRY_SIZES = replace(
    GPU_SIZES, device="cpu", image_size=64, launcher="python", compile_runs=False,
    train_model="GeCA-T", train_batch=2, train_batch_candidates=(2,), warmup_steps=2, timed_steps=3, num_latents=16,
    sample_models=("GeCA-T", "DiT-T/2", "LDM-T"), sample_steps=4, sample_batches=(2,), tiny_vae=True,
    fp16_model="GeCA-T", fp16_batch=2, ghg_batch=2, ghg_steps=8, bench_sections=("step",), bench_extra=("--quick",),
)  # fmt: skip


class Interrupted(Exception):
    """SIGTERM or SIGINT reached the check: stop the running stage, keep the report."""


@dataclass
class Context:
    args: argparse.Namespace
    sizes: Sizes
    runner: Runner
    work: Path
    report: Report


def tail(path: Path, lines: int = 3) -> str:
    """The last lines of a log as a terminal shows them, joined by " / "."""
    return " / ".join(log_tail(path, lines))


def run_logged(ctx: Context, rep: StageReport, cmd: list[str], name: str, timeout: float) -> Outcome:
    """Run one command of a stage under `timeout`; its command line and log go into the stage's report."""
    rep.commands.append(shlex.join(cmd))
    outcome = ctx.runner.run_command(cmd, name, timeout)
    rep.logs.append(ctx.runner.rel(outcome.log))
    return outcome


def run_worker(ctx: Context, rep: StageReport, command: str, settings: dict) -> Outcome:
    """`python -m bench.gpu_workers COMMAND SETTINGS_JSON` under the stage's cap, writing WORK/COMMAND.json; the JSON
    it left goes into the stage's data."""
    out_json = ctx.work / f"{command}.json"
    cmd = [ctx.runner.python, "-m", "bench.gpu_workers", command, json.dumps({"json": str(out_json), **settings})]
    outcome = run_logged(ctx, rep, cmd, command, rep.cap_s)
    rep.data.update(read_json(out_json))
    return outcome


def settle(rep: StageReport, outcome: Outcome, checks=(), exit_note: str = "worker exit") -> None:
    """A stage's status: timed out at the cap; failed on an exit status other than 0 (the log's tail in the notes);
    else the (status, note) of the first of `checks` (failed, status, note) that failed, or ok."""
    if outcome.timed_out:
        rep.status = "timed out"
    elif outcome.returncode != 0:
        rep.status = "failed"
        rep.notes.append(f"{exit_note} {outcome.returncode}; {tail(outcome.log)}")
    else:
        rep.status, note = next(((status, note) for failed, status, note in checks if failed), ("ok", None))
        rep.notes += [note] if note else []


# The stages: each runs its commands under the stage's cap and records their data and its status.


def junit_rows(xml: Path) -> tuple[list[list], dict[str, int]]:
    """(test, outcome, seconds, message) rows of a JUnit XML file and the count of each outcome."""
    rows, counts = [], {"passed": 0, "failed": 0, "skipped": 0}
    for case in ET.parse(xml).getroot().iter("testcase") if xml.is_file() else ():
        kinds = {child.tag: child for child in case}
        bad = kinds.get("failure", kinds.get("error"))
        outcome = "failed" if bad is not None else "skipped" if "skipped" in kinds else "passed"
        counts[outcome] += 1
        detail = bad if bad is not None else kinds.get("skipped")
        message = (detail.get("message") or "").splitlines()[0][:160] if detail is not None else ""
        name, seconds = f"{case.get('classname', '')}::{case.get('name', '')}", f"{float(case.get('time', 0)):.2f}"
        rows.append([name, outcome, seconds, message])
    return rows, counts


def stage_pytest(ctx: Context, rep: StageReport, _deadline: float) -> None:
    """`pytest -m gpu` over the test files that use the marker (the rest would only be collected to be deselected)."""
    xml = ctx.work / "pytest.xml"
    marked = sorted(p for p in (REPO / "tests").rglob("test_*.py") if "mark.gpu" in p.read_text(errors="replace"))
    cmd = [ctx.runner.python, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", f"--junitxml={xml}"]
    cmd += [str(p.relative_to(REPO)) for p in marked] or ["tests"]
    outcome = run_logged(ctx, rep, cmd, "pytest", rep.cap_s)
    rows, counts = junit_rows(xml)
    rep.tables.append({"title": "gpu-marked tests", "columns": ["test", "outcome", "s", "message"], "rows": rows})
    rep.data.update(counts, returncode=outcome.returncode)
    rep.headline = f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"
    none_passed = ctx.sizes.device == "cuda" and counts["passed"] == 0
    settle(rep, outcome, [(none_passed, "failed", f"pytest exit status 0; {tail(outcome.log)}")], "pytest exit status")
    rep.notes += gpu_report.bullets("pytest_dry") if ctx.sizes.device == "cpu" else []


def stage_bench(ctx: Context, rep: StageReport, _deadline: float) -> None:
    """`python -m bench` over the sections of `Sizes.bench_sections`, its table shown in the report."""
    table_file, sections = ctx.runner.out / "bench.md", " ".join(ctx.sizes.bench_sections)
    table_file.unlink(missing_ok=True)  # a failed run must not show an earlier run's table
    cmd = [ctx.runner.python, "-m", "bench", "--device", ctx.sizes.device, "--sections", *ctx.sizes.bench_sections]
    outcome = run_logged(ctx, rep, [*cmd, "--output", str(table_file), *ctx.sizes.bench_extra], "bench", rep.cap_s)
    text = table_file.read_text() if table_file.is_file() else ""
    if text:
        # The bench header lines start with '# ' (markdown headings here): show them as plain lines.
        header = [f"- {line[2:]}" for line in text.splitlines() if line.startswith("# ")]
        shown = "\n".join([*header, "", *(line for line in text.splitlines() if not line.startswith("# "))])
        rep.tables.append({"title": f"sections: {sections} ({outcome.seconds:.0f} s)", "text": shown})
        rep.data["tables"] = [text]
    rows = max(sum(line.startswith("| ") for line in text.splitlines()) - 1, 0)  # the column names' line is one
    rep.headline = f"{rows} rows, {text.count('out of memory')} out of memory"
    settle(rep, outcome, [(not text, "failed", "bench wrote no table")], "bench exit")


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
    s, py = ctx.sizes, ctx.runner.python
    if s.launcher == "accelerate":
        launch = [py, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1"]
        launch += ["--mixed_precision", "fp16", "--dynamo_backend", "no", "-m", "bench.train_probe"]
    else:
        launch = [py, "-m", "bench.train_probe"]
    flags = ["--model", s.train_model, "--feature-path", str(latents), "--data-path", str(latents)]
    flags += ["--results-dir", str(results), "--image-size", str(s.image_size), "--num-classes", str(NUM_CLASSES)]
    flags += ["--global-batch-size", str(batch), "--epochs", "1000000", "--fold", "0", "--validate_every", "0"]
    flags += ["--max-steps", str(s.warmup_steps + s.timed_steps), "--log-every", "1", "--num-workers", "0"]
    flags += ["--cache", "--load_from", "", "--global-seed", "0"]
    flags += ["--mixed-precision", "fp16"] if s.launcher != "accelerate" else []
    return [*launch, "--probe-json", str(probe), "--", *flags, *(["--compile"] if compiled else [])]


def train_run(ctx: Context, rep: StageReport, latents: Path, batch: int, compiled: bool, timeout: float) -> dict:
    """One train.py burst; returns its row data (status, steps/s, images/s, memory, FLOPs, MFU)."""
    name = f"train_b{batch}{'_compile' if compiled else ''}"
    results, probe = ctx.work / name, ctx.work / f"{name}.json"
    outcome = run_logged(ctx, rep, train_command(ctx, latents, results, batch, compiled, probe), name, timeout)
    info = read_json(probe)
    run: dict = {"batch": batch, "compile": compiled, "seconds": outcome.seconds, "log": ctx.runner.rel(outcome.log)}
    if metrics := min(results.glob("*/metrics.csv"), default=None):
        run["experiment"] = str(metrics.parent)
    sps, covered = timed_rate(metrics, ctx.sizes.warmup_steps, ctx.sizes.timed_steps) if metrics else (None, 0)
    if outcome.timed_out or info.get("oom"):
        run["status"] = "timed out" if outcome.timed_out else "out of memory"
    elif outcome.returncode != 0:
        run.update(status="failed", error=info.get("error") or tail(outcome.log))
    elif sps is None or covered < ctx.sizes.timed_steps:
        run.update(status="failed", error=f"metrics.csv covers {covered} of the {ctx.sizes.timed_steps} timed steps")
    else:
        run["status"] = "ok"
    run.update(steps_per_sec=sps, images_per_sec=sps * batch if sps else None, timed_steps=covered)
    run.update({k: info.get(k) for k in ("peak_bytes", "peak_reserved_bytes", "memory_kind", "flops_per_step")})
    if sps and run["flops_per_step"]:
        run["achieved_tflops"] = run["flops_per_step"] * sps / 1e12
        peak = ctx.report.peak.get("tflops")
        run["mfu"] = run["achieved_tflops"] / peak if peak else None
    return run


def stage_train(ctx: Context, rep: StageReport, deadline: float) -> None:
    """train.py bursts, the report rewritten after each: first the largest batch that fits (largest first, without
    --compile: the paper's configuration), then batch 32, then the largest with --compile (compiling falls in the
    warm-up)."""
    s = ctx.sizes
    latents = write_latents(ctx.work / "latents", s.num_latents, s.image_size // 8)
    runs = rep.data["runs"] = []
    largest = None
    for batch in s.train_batch_candidates:
        if deadline - time.time() < 5:
            break
        runs.append(train_run(ctx, rep, latents, batch, False, deadline - time.time()))
        ctx.report.write()
        if runs[-1]["status"] != "out of memory":
            largest = batch if runs[-1]["status"] == "ok" else None
            break
    compile_runs = [(largest, True)] if s.compile_runs else []
    for batch, compiled in [(s.train_batch, False), *compile_runs]:
        if batch is None or (batch, compiled) in {(r["batch"], r["compile"]) for r in runs}:
            continue
        if deadline - time.time() < 5:
            runs.append({"batch": batch, "compile": compiled, "status": "skipped: stage cap reached"})
            continue
        runs.append(train_run(ctx, rep, latents, batch, compiled, deadline - time.time()))
        ctx.report.write()
    gpu_report.describe_train(rep, s, largest, ctx.report.peak.get("text", "n/a"))
    rep.data["largest_batch"] = largest
    statuses = [r["status"] for r in runs]
    good = "ok" in statuses and all(st in ("ok", "out of memory") for st in statuses)
    cut = any(st == "timed out" or st.startswith("skipped") for st in statuses)
    rep.status = "timed out" if cut else "ok" if good else "failed"


def stage_sample(ctx: Context, rep: StageReport, _deadline: float) -> None:
    """The sampling worker: per model the largest batch that fits, denoising alone, then sample_ddp.py end to end."""
    s = ctx.sizes
    settings = dict(work=str(ctx.work / "sample"), device=s.device, models=s.sample_models, batches=s.sample_batches)
    settings.update(image_size=s.image_size, steps=s.sample_steps, cfg_scale=1.5, tiny_vae=s.tiny_vae)
    # The worker stops starting end-to-end runs that would not finish 10 s before the cap (an absolute time: its own
    # imports count against the cap too).
    settings["deadline_at"] = time.time() + rep.cap_s - 10
    outcome = run_worker(ctx, rep, "sample", settings)
    gpu_report.describe_sample(rep, s)
    models = rep.data.get("models", {})
    skipped = [k for k, m in models.items() if "skipped" in m.get("end_to_end", {})]
    unfit = [k for k, m in models.items() if "batch" not in m]
    measured = [k for k, m in models.items() if m.get("end_to_end", {}).get("seconds")]
    checks = [(unfit, "failed", f"no batch fits for {', '.join(unfit)}")]
    checks += [(skipped, "timed out", f"end-to-end runs skipped to stay within the cap: {', '.join(skipped)}")]
    settle(rep, outcome, [*checks, (len(measured) < len(s.sample_models), "failed", None)])


def stage_fp16(ctx: Context, rep: StageReport, _deadline: float) -> None:
    """The fp16 worker: the same training steps in fp16 and fp32 (losses within --fp16-rtol), GHG sampling in fp16."""
    s, tol = ctx.sizes, ctx.args.fp16_rtol
    settings = dict(device=s.device, model=s.fp16_model, image_size=s.image_size, batch=s.fp16_batch)
    settings.update(steps=s.fp16_steps, rtol=tol, ghg_batch=s.ghg_batch, ghg_steps=s.ghg_steps, cfg_scale=1.5)
    outcome = run_worker(ctx, rep, "fp16", settings)
    l32, l16 = rep.data.get("losses_fp32", []), rep.data.get("losses_fp16", [])
    rel = rep.data["relative_gaps"] = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(l16, l32)]
    finite = all(math.isfinite(v) for v in l16 + l32)
    losses_ok = len(rel) == s.fp16_steps and finite and max(rel, default=math.inf) <= tol
    g16 = rep.data.get("ghg", {}).get("fp16", {})
    ghg_ok = bool(g16) and g16.get("first_non_finite_step") is None
    gpu_report.describe_fp16(rep, s, tol, ghg_ok)
    settle(rep, outcome, [(not (losses_ok and ghg_ok), "failed", None)])


STAGE_FUNCTIONS = {"pytest": stage_pytest, "bench": stage_bench, "train": stage_train, "sample": stage_sample}
STAGE_FUNCTIONS["fp16"] = stage_fp16


def probe_device(runner: Runner, work: Path, dry: bool) -> dict:
    """Device facts (see bench.gpu_workers.device_facts): from a child process, or in this one for the dry run."""
    if dry:
        from bench.gpu_workers import device_facts

        return device_facts(query_cuda=False)
    cmd = [runner.python, "-m", "bench.gpu_workers", "device", json.dumps({"json": str(work / "device.json")})]
    outcome = runner.run_command(cmd, "device", 120, log_dir=work)  # nothing lands in --out on a machine without a GPU
    if not (facts := read_json(work / "device.json")):
        raise RuntimeError(f"the device probe failed (exit {outcome.returncode}): {tail(outcome.log, 5)}")
    return facts


def open_report(args: argparse.Namespace, sizes: Sizes, facts: dict) -> Report:
    """The run's report: this device, its MFU peak, and with --resume the finished stages of OUT/report.json."""
    caps = {k: (getattr(args, f"cap_{k}") or (DRY_CAPS if args.dry else GPU_CAPS)[k]) for k in STAGES}
    report = Report(Path(args.out).resolve(), "dry" if args.dry else "gpu", sizes, caps)
    report.device = facts
    if not args.resume:  # logs and tables of an earlier run would sit beside this run's as if they were its own
        shutil.rmtree(report.out / "logs", ignore_errors=True)
        (report.out / "bench.md").unlink(missing_ok=True)
    for old in read_json(report.out / "report.json").get("stages", []) if args.resume else []:
        if old.get("status") in FINISHED and old.get("key") in report.stages:
            report.stages[old["key"]] = StageReport(**old)
    report.peak = gpu_report.peak_assumed(args.device_name or facts.get("name", ""), args.peak_tflops)
    return report


def run_stage(ctx: Context, number: int, rep: StageReport) -> None:
    """One stage under its cap, the report rewritten when it starts and when it ends."""
    print(f"[{number}/{len(STAGES)}] {rep.title} (cap {rep.cap_s:.0f} s) ...", flush=True)
    rep.status, start = "running", time.time()
    ctx.report.write()
    try:
        STAGE_FUNCTIONS[rep.key](ctx, rep, start + rep.cap_s)
    except Interrupted:
        rep.status = "interrupted"
        raise
    except Exception as err:  # one broken stage must not lose the others' figures
        rep.status = "error"
        rep.notes.append(f"{type(err).__name__}: {err}")
    finally:
        rep.seconds = time.time() - start
        ctx.report.write()
    print(f"      {rep.status} in {rep.seconds:.0f} s: {rep.headline}", flush=True)


def run_stages(ctx: Context) -> int:
    """The chosen stages in order (those --resume kept are not run again), then the summary; returns 0 when every
    chosen stage is ok."""
    report, out = ctx.report, ctx.report.out
    print(f"gpu-check ({report.mode}): {report.device.get('name')}; MFU peak: {report.peak['text']}", flush=True)
    print(f"report: {out / 'REPORT.md'} (rewritten after every stage); scratch: {ctx.work}", flush=True)
    for number, key in enumerate(STAGES, 1):
        rep = report.stages[key]
        if key in ctx.args.stages and rep.status in FINISHED:
            print(f"[{number}/{len(STAGES)}] {rep.title}: kept from the previous report ({rep.status})", flush=True)
        elif key in ctx.args.stages:
            run_stage(ctx, number, rep)
    report.finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
    report.write()
    summary = report.to_json()
    print(f"\n{gpu_report.summary_table(summary)}\n\n{gpu_report.targets_table(summary)}")
    print(f"\nwall {time.time() - report.t0:.0f} s; report: {out / 'REPORT.md'}, {out / 'report.json'}")
    return 0 if all(report.stages[k].status == "ok" for k in ctx.args.stages) else 1


def on_signal(signum: int, _frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def main(args: argparse.Namespace) -> int:
    """Run the stages; returns 0 when every stage is ok (or there is no GPU and --dry is not given)."""
    sizes = replace(DRY_SIZES if args.dry else GPU_SIZES, **({"launcher": args.launcher} if args.launcher else {}))
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    # The dry run hides CUDA from every stage, so even on a GPU machine it runs the CPU code paths.
    runner = Runner(Path(args.out).resolve(), {"CUDA_VISIBLE_DEVICES": ""} if args.dry else {}, python=args.python)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    report: Report | None = None
    try:
        facts = probe_device(runner, work, args.dry)
        if not args.dry and not facts.get("cuda"):
            version = facts.get("torch", "(not installed)")
            dry = "python -m bench.gpu_check --dry runs the CPU dry mode"
            print(f"gpu-check: no CUDA GPU visible to torch {version}; nothing measured ({dry})")
            return 0
        report = open_report(args, sizes, facts)
        if missing := ", ".join(facts.get("missing_packages", [])):
            report.stopped = f"missing Python packages: {missing}"
            report.write()
            hint = "see docs/PERFORMANCE.md ('GPU check') for carrying them as wheels"
            print(
                f"gpu-check: missing Python packages {missing} for {facts.get('executable')}; {hint}", file=sys.stderr
            )
            return 2
        return run_stages(Context(args, sizes, runner, work, report))
    except Interrupted as err:
        if report is not None:
            report.stopped = f"interrupted by {err}"
            report.write()
        print(f"gpu-check: interrupted by {err}; partial report in {runner.out}", file=sys.stderr)
        return 130
    finally:
        if not (args.keep_work or args.work is not None):
            shutil.rmtree(work, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="gpu_check", help="report folder (REPORT.md, report.json, logs/, bench.md)")
    p.add_argument("--dry", action="store_true", help="CPU dry run at tiny sizes (CUDA hidden): code paths only")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="stages to run (in order)")
    p.add_argument("--resume", action="store_true", help="keep the finished stages of OUT/report.json")
    p.add_argument("--work", help="scratch folder (kept); default: a temporary folder, removed")
    p.add_argument("--keep-work", action="store_true", help="keep the temporary scratch folder")
    p.add_argument("--python", default=sys.executable, help="interpreter of every stage (default: this one)")
    launch = "accelerate launch --mixed_precision fp16 (GPU default) or python with --mixed-precision fp16"
    p.add_argument("--launcher", choices=["accelerate", "python"], help=f"stage 3 launch: {launch} (dry-run default)")
    for stage in STAGES:
        caps = f"GPU default {GPU_CAPS[stage]}, dry {DRY_CAPS[stage]}"
        p.add_argument(f"--cap-{stage}", type=positive_number(), help=f"seconds for stage {stage} ({caps})")
    p.add_argument(
        "--fp16-rtol", type=positive_number(), default=1e-2, help="stage 5: allowed relative loss gap per step"
    )
    p.add_argument("--device-name", help="device name for the MFU peak lookup (default: the device's)")
    p.add_argument("--peak-tflops", type=positive_number(), help="dense fp16/bf16 peak for MFU, overriding the table")
    return p


if __name__ == "__main__":
    sys.exit(run_main("python -m bench.gpu_check", lambda: main(build_parser().parse_args())))
