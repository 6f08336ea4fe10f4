"""The whole GeCA study on the embedded phantom data, in one command (`make demo`).

    python -m demo --out demo_out            # full demo, about 21 minutes on 2 CPU cores
    python -m demo --out demo_out --quick    # the same stages at the smallest sizes, a few minutes
    python -m demo --study --out study_out   # the study: OCT folds x classifier seeds and fundus (demo/study.py)

Runs the real entry scripts stage by stage (phantom data, a domain VAE, latents under torchrun, training of GeCA-T /
DiT-T/2 / LDM-T on them, validation copy and augmentation set of each, GeCA also without Gene Heredity Guidance,
KID / LPIPS / GG, downstream classification with label fidelity) and writes `{out}/REPORT.md`. Each
stage's output is shown and logged under `{out}/logs/`; finished stages are stamped under `{out}/stamps/`, so a
re-run continues from the first unfinished one. A failing stage stops the demo with its error (exit status 1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

from demo.plan import Layout, build_stages
from demo.profiles import DEMO_MODELS, FOLD, PROFILES
from demo.study import MAX_FOLDS, StudyPlan, build_study_stages
from infra.argtypes import CheckedType, positive_int
from infra.atomic_io import atomic_write_text
from infra.distributed import pick_device
from infra.errors import run_main
from infra.stages import Runner, StageFailed, format_seconds, log_tail


def default_jobs() -> int:
    """Two stages at a time where there are two cores or more (each stage then runs one torch thread)."""
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def study_plan(args: argparse.Namespace, device: str) -> StudyPlan:
    """The study's plan from the flags (--folds, --seeds, --expand-ratio; their ranges checked by the parser)."""
    profile = PROFILES["study-quick" if args.quick else "study"]
    profile = replace(profile, cls_seeds=tuple(range(args.seeds)), expand_ratio=args.expand_ratio)
    return StudyPlan(profile, Path(args.out).resolve(), args.folds, device)


def main(args: argparse.Namespace) -> int:
    """Run (or continue) the demo or the study; returns the process exit status."""
    # --device, else CUDA when available (train.py picks it by itself), else the CPU; CUDA asked for without CUDA
    # stops here instead of in the first stage that uses it.
    device = str(pick_device(device=args.device))
    # `target`: where the stamps, logs, config and report go (a StudyPlan or a Layout: .out, .config, .report).
    if args.study:
        target = plan = study_plan(args, device)
        profile, stages = plan.profile, build_study_stages(plan)
        what = f"GeCA study ({profile.name} profile, {plan.folds} OCT fold(s) x {len(profile.cls_seeds)} seed(s))"
    else:
        profile, target = PROFILES["quick" if args.quick else "full"], Layout(Path(args.out).resolve())
        stages = build_stages(profile, target, device)
        what = f"GeCA demo ({profile.name} profile)"
    jobs = args.jobs if args.jobs is not None else default_jobs()
    threads = args.threads or (1 if jobs > 1 else None)
    env = {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if threads}
    # Idle OpenMP threads spin by default; on a busy machine that slows small operations many times over
    # (docs/PERFORMANCE.md). A value the user set is kept.
    env["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY", "PASSIVE")

    # What the report needs to know about this run, written before any stage.
    config = {
        "profile": profile.as_dict(),
        "models": list(DEMO_MODELS),
        "fold": FOLD,
        "device": device,
        "threads": threads or os.environ.get("OMP_NUM_THREADS") or "default",
        "jobs": jobs,
        "cpu_count": os.cpu_count(),
    }
    if args.study:
        config["study_folds"] = args.folds
    atomic_write_text(target.config, json.dumps(config, indent=1) + "\n")

    runner = Runner(target.out, env, fresh=args.fresh)
    runner.say(
        f"{what}: {len(stages)} stages into {target.out}, device {device}, "
        f"torch threads {config['threads']}, {jobs} stage(s) at a time"
    )
    start = time.time()
    try:
        records = runner.run(stages, jobs=jobs)
    except StageFailed as err:
        runner.say(f"\n!!! {err}\n!!! last lines of {err.log}:")
        for line in log_tail(err.log):
            runner.say(f"    {line}")
        runner.say(
            f"!!! command: {err.stage.shell()}\n!!! Fix the cause and run the demo again: the finished stages are "
            "skipped and it continues with this one."
        )
        return 1

    # Stage times (a skipped stage shows the time of the run that produced it).
    width = max(len(r["name"]) for r in records)
    runner.say(f"\nStage times ({profile.name} profile):")
    for r in records:
        runner.say(f"  {r['name']:<{width}}  {format_seconds(r['seconds']):>12}  {r['status']}")
    total = sum(r["seconds"] for r in records)
    runner.say(f"  {'sum of stage times':<{width}}  {format_seconds(total):>12}")
    runner.say(f"  {'wall time of this run':<{width}}  {format_seconds(time.time() - start):>12}")
    runner.say(f"Report: {target.report}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=str, default="demo_out", help="output folder (data, models, samples, REPORT.md)")
    p.add_argument("--quick", action="store_true", help="the smallest sizes (what the test suite runs)")
    p.add_argument(
        "--threads",
        type=positive_int,
        help="torch CPU threads of every stage (default: 1 when stages run in parallel, else the environment's)",
    )
    p.add_argument(
        "--jobs",
        type=positive_int,
        help="stages run at once when their inputs are ready (default: 2 with two or more cores, else 1)",
    )
    p.add_argument("--device", type=str, help="device of sampling, metrics, classification")
    p.add_argument("--fresh", action="store_true", help="ignore the stamps of an earlier run and redo every stage")
    p.add_argument(
        "--study",
        action="store_true",
        help="the study instead of the demo: OCT folds x classifier seeds and the fundus phantoms (docs/STUDY.md)",
    )
    folds = CheckedType(int, lambda v: 1 <= v <= MAX_FOLDS, f"an integer from 1 to {MAX_FOLDS} (the folds written)")
    p.add_argument("--folds", type=folds, default=3, help=f"--study: OCT folds run, 1 to {MAX_FOLDS} (default 3)")
    p.add_argument("--seeds", type=positive_int, default=3, help="--study: classifier seeds per fold (default 3)")
    p.add_argument(
        "--expand-ratio",
        type=positive_int,
        default=1,
        help="--study: synthetic images per training label (the paper: 5)",
    )
    return p


if __name__ == "__main__":
    sys.exit(run_main("python -m demo", lambda: main(build_parser().parse_args())))
