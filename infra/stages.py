"""The project's one stage runner: commands run as subprocesses with their output logged, for `python -m demo`
(stages with dependencies, stamps and resume) and `make gpu-check` (single commands under a time cap).

Demo and study: run the stages as subprocesses, stream their output, log it, stamp finished stages, stop on a failure.

A stage is one command line of a real entry script. Its output goes to the console and to `{out}/logs/{stage}.log`.
When it exits with status 0 and its outputs exist, a JSON stamp `{out}/stamps/{stage}.json` records the command, the
time it took and the run ids of the stages it depends on. A later run skips a stage whose stamp holds the same
command and the current run ids of its dependencies, so an interrupted or failed demo continues where it stopped and
re-running an upstream stage re-runs everything built on it.

Before a stage starts, its stale outputs are removed, except when it continues an interrupted attempt on the same
inputs (a `{stage}.started.json` marker with the same command and dependency run ids) and its script resumes by
itself (the sampling scripts skip written images, classify.py finished runs).
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

REPO_ROOT = Path(__file__).resolve().parents[1]


def atomic_write_text(path: Path, text: str) -> None:
    """infra.atomic_io's, imported when first needed: it imports torch, which the GPU check's interpreter may lack
    (it reports that instead of failing on import)."""
    from infra.atomic_io import atomic_write_text as write

    write(path, text)


def read_json(path: Path) -> dict:
    """A JSON file's object, or {} when it is missing or unreadable (a stage stopped before writing it)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def write_json(path: str | Path, data: dict, indent: int = 2) -> None:
    """Replace `path` atomically with `data` as JSON (a reader never sees half a file)."""
    atomic_write_text(Path(path), json.dumps(data, indent=indent, default=str) + "\n")


TAIL_LINES = 30
# Parallel runs: how often finished stages are looked for, and how often the running ones report their progress.
POLL_S = 0.2
STATUS_EVERY_S = 60.0


@dataclass(frozen=True)
class Stage:
    """One step of the demo.

    Attributes:
        name: file-safe key (stamp and log names).
        description: one line saying what the stage does.
        command: argv run from the repository root; a leading "python" means this interpreter.
        deps: names of the stages whose outputs this one reads.
        outputs: files or folders that must exist after a successful run.
        clears: outputs removed before the stage starts afresh (they may stem from other inputs).
        resumable: the script continues an interrupted attempt by itself; `clears` are then kept when the attempt
            had the same command and inputs.
    """

    name: str
    description: str
    command: tuple[str, ...]
    deps: tuple[str, ...] = ()
    outputs: tuple[Path, ...] = ()
    clears: tuple[Path, ...] = ()
    resumable: bool = False

    def shell(self) -> str:
        """The command as one shell line (what the stamp and the report record)."""
        return shlex.join(self.command)


@dataclass(frozen=True)
class Outcome:
    """How one command of Runner.run_command ended: exit status (None if killed), seconds, whether the time cap
    stopped it, its log."""

    returncode: int | None
    seconds: float
    timed_out: bool
    log: Path


class StageFailed(RuntimeError):
    """A stage exited with an error, or finished without writing its outputs."""

    def __init__(self, stage: Stage, reason: str, log: Path):
        super().__init__(f"stage {stage.name} failed: {reason}")
        self.stage = stage
        self.reason = reason
        self.log = log


def log_tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    """The last `lines` lines of a log as a terminal shows them (of each '\\r'-rewritten progress line, its end)."""
    if not path.is_file():
        return []
    text = path.read_bytes()[-64_000:].decode("utf-8", errors="replace")
    shown = [line.rsplit("\r", 1)[-1].rstrip() for line in text.split("\n")]
    return [line for line in shown if line][-lines:]


def format_seconds(seconds: float) -> str:
    """'42.0 s' or '3 min 05 s'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest:02d} s"


class Runner:
    """Runs stages in order with stamps under `out`.

    Args:
        out: the demo's output folder (holds stamps/ and logs/).
        env: extra environment variables of every stage.
        fresh: ignore existing stamps and run every stage again.
        console: where stage output and progress lines are written (bytes).
        python: the interpreter that runs a command whose first word is "python".
    """

    def __init__(
        self,
        out: Path,
        env: dict[str, str] | None = None,
        fresh: bool = False,
        console: BinaryIO | None = None,
        python: str = sys.executable,
    ):
        self.out = Path(out).resolve()
        self.python = python
        self.stamp_dir = self.out / "stamps"
        self.log_dir = self.out / "logs"
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.fresh = fresh
        self.console = console if console is not None else sys.stdout.buffer

    def say(self, text: str) -> None:
        self.console.write((text + "\n").encode())
        self.console.flush()

    def stamp_path(self, name: str, suffix: str = "") -> Path:
        return self.stamp_dir / f"{name}{suffix}.json"

    def read_stamp(self, name: str, suffix: str = "") -> dict | None:
        """The stamp of a finished stage (or with suffix ".started", the marker of its last attempt), or None."""
        return read_json(self.stamp_path(name, suffix)) or None

    @staticmethod
    def _same_inputs(record: dict | None, stage: Stage, run_ids: dict[str, str]) -> bool:
        """Whether a stamp or marker was made by this stage's command on the current outputs of its dependencies."""
        if record is None or record.get("command") != stage.shell():
            return False
        return all(record.get("deps", {}).get(d) == run_ids.get(d) for d in stage.deps)

    def is_done(self, stage: Stage, run_ids: dict[str, str]) -> bool:
        """Whether `stage` finished earlier with the same command, on the current outputs of its dependencies."""
        if self.fresh or not self._same_inputs(self.read_stamp(stage.name), stage, run_ids):
            return False
        return all(p.exists() for p in stage.outputs)

    def _clear(self, stage: Stage) -> None:
        for path in stage.clears:
            path = Path(path).resolve()
            if self.out not in path.parents:
                raise ValueError(f"stage {stage.name}: refusing to clear {path}, which is outside {self.out}")
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    def _execute(self, stage: Stage, log_path: Path) -> int:
        """Run the command, copying its output to the console and the log; returns its exit status."""
        argv = [self.python if i == 0 and arg == "python" else arg for i, arg in enumerate(stage.command)]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log:
            log.write(f"$ {stage.shell()}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                while chunk := os.read(proc.stdout.fileno(), 65536):
                    self.console.write(chunk)
                    self.console.flush()
                    log.write(chunk)
                return proc.wait()
            except BaseException:
                stop_process(proc)
                raise
            finally:
                proc.stdout.close()

    def _begin(self, stage: Stage, run_ids: dict[str, str]) -> tuple[dict, bool]:
        """Clear a stage's stale outputs (unless it continues an interrupted attempt) and mark its attempt."""
        self.stamp_path(stage.name).unlink(missing_ok=True)
        attempt = {"command": stage.shell(), "deps": {d: run_ids[d] for d in stage.deps}}
        continues = (
            stage.resumable
            and not self.fresh
            and self._same_inputs(self.read_stamp(stage.name, ".started"), stage, run_ids)
        )
        if not continues:
            self._clear(stage)
        write_json(self.stamp_path(stage.name, ".started"), attempt, indent=1)
        return attempt, continues

    def _end(self, stage: Stage, attempt: dict, status: int, seconds: float, log_path: Path) -> dict:
        """Check a finished stage and stamp it; returns its stamp. Raises StageFailed."""
        if status != 0:
            raise StageFailed(stage, f"exit status {status} after {format_seconds(seconds)}", log_path)
        missing = [str(p) for p in stage.outputs if not p.exists()]
        if missing:
            raise StageFailed(stage, f"it exited normally but did not write {missing}", log_path)
        stamp = {
            "stage": stage.name,
            "description": stage.description,
            **attempt,
            "seconds": seconds,
            "finished": datetime.datetime.now().isoformat(timespec="seconds"),
            "run_id": uuid.uuid4().hex,
            "log": str(log_path),
        }
        write_json(self.stamp_path(stage.name), stamp, indent=1)
        self.stamp_path(stage.name, ".started").unlink()
        return stamp

    def _announce(self, head: str, stage: Stage, continues: bool) -> None:
        self.say(f"\n==> {head}: {stage.description}" + (" (continuing an interrupted attempt)" if continues else ""))
        self.say(f"    $ {stage.shell()}")

    def run(self, stages: Sequence[Stage], jobs: int = 1) -> list[dict]:
        """Run (or skip) every stage; raises StageFailed at the first failure.

        With `jobs` > 1, up to `jobs` stages whose dependencies have finished run at once (each stage's output then
        goes to its log only, and the console shows start, finish and a status line every `STATUS_EVERY_S`); after a
        failure the stages already running finish (their work is kept), no new one starts.

        Returns:
            One record per stage in the order given: name, status ("ran" or "skipped"), seconds (of the run that
            produced it).
        """
        names = [s.name for s in stages]
        for stage in stages:
            unknown = [d for d in stage.deps if d not in names[: names.index(stage.name)]]
            if unknown:
                raise ValueError(f"stage {stage.name} depends on {unknown}, which are not earlier stages")
        if jobs <= 1:
            return self._run_in_order(stages)
        return self._run_parallel(stages, jobs)

    def _run_in_order(self, stages: Sequence[Stage]) -> list[dict]:
        run_ids: dict[str, str] = {}
        records = []
        for i, stage in enumerate(stages, 1):
            head = f"[{i}/{len(stages)}] {stage.name}"
            if self.is_done(stage, run_ids):
                records.append(self._skip(stage, head, run_ids))
                continue
            attempt, continues = self._begin(stage, run_ids)
            log_path = self.log_dir / f"{stage.name}.log"
            self._announce(head, stage, continues)
            start = time.time()
            status = self._execute(stage, log_path)
            stamp = self._end(stage, attempt, status, time.time() - start, log_path)
            run_ids[stage.name] = stamp["run_id"]
            self.say(f"<== {head} finished in {format_seconds(stamp['seconds'])} (log {log_path})")
            records.append({"name": stage.name, "status": "ran", "seconds": stamp["seconds"]})
        return records

    def _skip(self, stage: Stage, head: str, run_ids: dict[str, str]) -> dict:
        stamp = self.read_stamp(stage.name)
        run_ids[stage.name] = stamp["run_id"]
        self.say(f"--- {head}: finished earlier in {format_seconds(stamp['seconds'])}, skipped")
        return {"name": stage.name, "status": "skipped", "seconds": stamp["seconds"]}

    def _run_parallel(self, stages: Sequence[Stage], jobs: int) -> list[dict]:
        run_ids: dict[str, str] = {}
        records: dict[str, dict] = {}
        heads = {s.name: f"[{i}/{len(stages)}] {s.name}" for i, s in enumerate(stages, 1)}
        pending = list(stages)
        running: dict[str, tuple[Stage, subprocess.Popen, BinaryIO, dict, float]] = {}
        failure: StageFailed | None = None
        last_status = time.time()
        try:
            while pending or running:
                # Start every ready stage while a slot is free (in the order given), unless a stage failed.
                for stage in list(pending):
                    if failure is not None or len(running) >= jobs:
                        break
                    if not all(d in run_ids for d in stage.deps):
                        continue
                    pending.remove(stage)
                    if self.is_done(stage, run_ids):
                        records[stage.name] = self._skip(stage, heads[stage.name], run_ids)
                        continue
                    attempt, continues = self._begin(stage, run_ids)
                    self._announce(heads[stage.name], stage, continues)
                    proc, log = self._spawn(stage, self.log_dir / f"{stage.name}.log")
                    running[stage.name] = (stage, proc, log, attempt, time.time())
                if failure is not None and not running:
                    break
                if not running and pending:
                    blocked = ", ".join(s.name for s in pending)
                    raise ValueError(f"stages {blocked} wait for dependencies that never ran")
                time.sleep(POLL_S)
                for name, (stage, proc, log, attempt, start) in list(running.items()):
                    status = proc.poll()
                    if status is None:
                        continue
                    log.close()
                    del running[name]
                    log_path = self.log_dir / f"{name}.log"
                    try:
                        stamp = self._end(stage, attempt, status, time.time() - start, log_path)
                    except StageFailed as err:
                        self.say(f"!!! {heads[name]} failed ({err.reason}); waiting for the running stages")
                        failure = failure or err
                        continue
                    run_ids[name] = stamp["run_id"]
                    records[name] = {"name": name, "status": "ran", "seconds": stamp["seconds"]}
                    self.say(f"<== {heads[name]} finished in {format_seconds(stamp['seconds'])} (log {log_path})")
                if running and time.time() - last_status >= STATUS_EVERY_S:
                    last_status = time.time()
                    for name, (*_, start) in running.items():
                        tail = log_tail(self.log_dir / f"{name}.log", 1)
                        self.say(f"... {name} ({format_seconds(time.time() - start)}): {tail[-1] if tail else ''}")
        except BaseException:
            for _, proc, log, *_ in running.values():
                stop_process(proc)
                log.close()
            raise
        if failure is not None:
            raise failure
        return [records[s.name] for s in stages]

    def _spawn(self, stage: Stage, log_path: Path) -> tuple[subprocess.Popen, BinaryIO]:
        """Start a stage's command with its output going to its log only."""
        argv = [self.python if i == 0 and arg == "python" else arg for i, arg in enumerate(stage.command)]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "wb")
        log.write(f"$ {stage.shell()}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            argv, cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return proc, log

    def run_command(self, argv: Sequence[str], name: str, timeout: float, log_dir: Path | None = None) -> Outcome:
        """Run one command from the repository root with its output in `{log_dir or out/logs}/{name}.log`, stopped
        (with its children) after `timeout` seconds: what the GPU check's stages do, many times each."""
        log = Path(log_dir or self.log_dir) / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        start = time.time()
        with open(log, "wb") as f:
            f.write(f"$ {shlex.join(argv)}\n".encode())
            f.flush()
            proc = subprocess.Popen(
                list(argv), cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
            try:
                rc, timed_out = proc.wait(timeout=max(timeout, 1.0)), False
            except subprocess.TimeoutExpired:
                stop_process(proc)
                rc, timed_out = proc.returncode, True
            except BaseException:
                stop_process(proc)
                raise
        return Outcome(rc, time.time() - start, timed_out, log)

    def rel(self, path: Path) -> str:
        """`path` relative to the output folder when inside it."""
        try:
            return str(Path(path).relative_to(self.out))
        except ValueError:
            return str(path)


def stop_process(proc: subprocess.Popen) -> None:
    """End a child started in its own session together with its children (torchrun's or accelerate's workers):
    TERM to the group, then KILL after 10 s."""
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue
