"""Checks shared by the demo's and the study's stage plans: every command parses with its script's own parser."""

from __future__ import annotations

import importlib

from infra.stages import Stage
from tests.helpers.flags import assert_flags_applied

# The module whose build_parser() reads each stage's command line.
PARSERS = {
    "train_vae.py": "train_vae",
    "extract_features.py": "extract_features",
    "train.py": "train",
    "sample_ddp.py": "sample_ddp",
    "sample_ddp_val.py": "sample_ddp_val",
    "evaluate.py": "evaluate",
    "classify.py": "classify",
    "data.phantoms": "data.phantoms",
    "demo.report": "demo.report",
    "demo.study_report": "demo.study_report",
}


def assert_stage_commands_parse(stages: list[Stage]) -> None:
    """Dependencies name earlier stages, and each command's flags reach its script's namespace value by value
    (torchrun's own options are skipped)."""
    for i, stage in enumerate(stages):
        assert set(stage.deps) <= {s.name for s in stages[:i]}, stage.name  # dependencies run first
        argv = list(stage.command)
        assert argv[0] == "python"
        if argv[1:3] == ["-m", "torch.distributed.run"]:  # torchrun: its options, then the script's command line
            argv = ["python", *argv[next(i for i, a in enumerate(argv) if a.endswith(".py")) :]]
            assert stage.name.endswith("extract") and "--nproc_per_node" in stage.command
        script, rest = (argv[2], argv[3:]) if argv[1] == "-m" else (argv[1], argv[2:])
        module = importlib.import_module(PARSERS[script])
        assert_flags_applied(module.build_parser(), rest)
