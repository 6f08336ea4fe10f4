"""The TF32 switch: one helper, and the same `--tf32/--no-tf32` flag (default on) on every entry script."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infra.precision import set_tf32, set_tf32_state, tf32_state

REPO = Path(__file__).resolve().parents[2]
# Each entry script with the arguments its parser requires.
SCRIPTS = {
    "extract_features": ["--data-path", "d"],
    "train": [],
    "sample_ddp": ["--data-path", "d"],
    "sample_ddp_val": ["--data-path", "d"],
    "evaluate": ["--real", "r", "--gen", "g"],
    "classify": ["--data-path", "d"],
    "train_vae": ["--data-path", "d"],
}


@pytest.mark.parametrize("enabled", [True, False])
def test_set_tf32_sets_both_switches(enabled):
    # Readable on CPU-only builds too: they are plain process-wide settings there.
    set_tf32(not enabled)
    set_tf32(enabled)
    assert torch.backends.cuda.matmul.allow_tf32 is enabled
    assert torch.backends.cudnn.allow_tf32 is enabled
    assert tf32_state() == (enabled, enabled)


def test_state_round_trip():
    set_tf32_state((True, False))
    assert tf32_state() == (True, False)
    set_tf32_state((False, True))
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, True)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_script_takes_the_flag_default_on(script):
    parser = importlib.import_module(script).build_parser()
    required = SCRIPTS[script]
    assert parser.parse_args(required).tf32 is True  # the reference's setting
    assert parser.parse_args([*required, "--no-tf32"]).tf32 is False
    assert parser.parse_args([*required, "--tf32"]).tf32 is True


def test_importing_the_scripts_leaves_tf32_alone():
    # Importing must change nothing (the reference switched TF32 on when extract_features.py was imported). A fresh
    # interpreter, so the modules really are imported here, with both switches off beforehand.
    code = (
        "import torch\n"
        "torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False\n"
        f"for name in {sorted(SCRIPTS)!r}:\n"
        "    __import__(name)\n"
        "print(torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["False", "False"]
