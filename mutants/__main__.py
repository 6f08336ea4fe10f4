"""`make mutants` / `python -m mutants`: apply each edit of mutants/catalogue.py in a temporary copy of the tracked
files, run its `first` tests and then (if they pass) the whole default suite with `-x`, and report which edits the
suite failed to notice. Exit status 1 when any edit survives.

    python -m mutants                 # every edit
    python -m mutants --only cfg-off  # some of them
    python -m mutants --list
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mutants.catalogue import MUTANTS, Mutant

REPO = Path(__file__).resolve().parents[1]


def tracked_files() -> list[str]:
    """The files git tracks or would track (the copy holds nothing else: no venv, no outputs)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    return [name for name in out.decode().split("\0") if name]


def make_copy(dest: Path) -> None:
    for name in tracked_files():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, target)


def apply(mutant: Mutant, root: Path) -> None:
    """Replace `old` by `new` in the copy; `old` must occur exactly once (else the catalogue is stale)."""
    path = root / mutant.path
    text = path.read_text()
    count = text.count(mutant.old)
    if count != 1:
        raise SystemExit(f"mutants: error: {mutant.name}: the code to replace occurs {count} times in {mutant.path}")
    path.write_text(text.replace(mutant.old, mutant.new))


def pytest(root: Path, targets: list[str], timeout: float) -> tuple[bool, str]:
    """Run pytest -x on `targets` in `root`; (passed, last lines of its output)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *targets]
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:.0f} s"
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode == 0, "\n".join(lines[-3:])


def run_one(mutant: Mutant, timeout: float) -> tuple[bool, str, float]:
    """(caught, how, seconds) for one edit, in a fresh copy."""
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="mutant-") as tmp:
        root = Path(tmp)
        make_copy(root)
        apply(mutant, root)
        if mutant.first:
            passed, tail = pytest(root, list(mutant.first), timeout)
            if not passed:
                return True, f"caught by {' '.join(mutant.first)}: {tail.splitlines()[-1]}", time.time() - start
        passed, tail = pytest(root, [], timeout)
        how = "SURVIVED the whole suite" if passed else f"caught by the whole suite: {tail.splitlines()[-1]}"
        return not passed, how, time.time() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mutants", description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", default=None, help="names of the edits to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the edits and exit")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per pytest run")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if args.only is None or m.name in args.only]
    unknown = sorted(set(args.only or []) - {m.name for m in MUTANTS})
    if unknown:
        parser.error(f"unknown edit(s) {unknown}; --list shows them")
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:32} {m.path}: {m.breaks}")
        return 0
    survivors = []
    for i, mutant in enumerate(chosen, 1):
        print(f"[{i}/{len(chosen)}] {mutant.name} ({mutant.path}: {mutant.breaks})", flush=True)
        caught, how, seconds = run_one(mutant, args.timeout)
        print(f"    {'caught' if caught else 'SURVIVED'} in {seconds:.0f} s: {how}", flush=True)
        if not caught:
            survivors.append(mutant.name)
    print(
        f"{len(chosen) - len(survivors)} of {len(chosen)} edits caught"
        + (f"; survived: {survivors}" if survivors else "")
    )
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
