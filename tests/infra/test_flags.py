"""infra.argtypes and infra.flags: range checks as argparse types, one definition per shared flag, and the re-check of
values that did not come from the command line."""

from __future__ import annotations

import argparse
import importlib
import math
import re

import pytest

from data.select import add_dataset_arguments
from infra import flags
from infra.argtypes import (
    CheckedType,
    image_size_flag,
    int_at_least,
    non_negative_int,
    number_at_least,
    number_in,
    positive_int,
    positive_number,
)
from infra.errors import UserError

SCRIPTS = ("train", "train_vae", "evaluate", "classify", "extract_features", "sample_ddp", "sample_ddp_val")


@pytest.mark.parametrize(
    ("kind", "good", "bad", "message"),
    [
        (positive_int, {"1": 1, "7": 7}, ["0", "-3"], "must be an integer >= 1"),
        (non_negative_int, {"0": 0, "12": 12}, ["-1"], "must be an integer >= 0"),
        (int_at_least(21, "why"), {"21": 21}, ["20"], "must be an integer >= 21, got 20: why"),
        (number_at_least(1.0), {"1": 1.0, "7.5": 7.5}, ["0.99", "nan", "inf"], "must be a finite number >= 1"),
        (number_at_least(0.0), {"0": 0.0, "1e-6": 1e-6}, ["-1e-9", "nan"], "must be a finite number >= 0"),
        (positive_number(), {"1e-3": 1e-3, "5": 5.0}, ["0", "-1", "nan", "inf"], "must be a finite number > 0"),
        (number_in(0.0, 1.0, "high"), {"1": 1.0, "1e-4": 1e-4}, ["0", "1.5", "nan", "1e39"], "in (0, 1]"),
        (number_in(0.0, 1.0, "low"), {"0": 0.0, "0.9999": 0.9999}, ["1", "-0.1", "nan"], "in [0, 1)"),
        (number_in(0.0, 1.0), {"0.5": 0.5}, ["0", "1"], "in (0, 1)"),
        (number_in(0.0, 1.0, "low high"), {"0": 0.0, "1": 1.0}, ["1.01"], "in [0, 1]"),
        (image_size_flag, {"8": 8, "256": 256}, ["0", "-8", "60", "4"], "must be a positive multiple of 8"),
    ],
)
def test_checked_types_accept_and_refuse(kind, good, bad, message):
    for text, value in good.items():
        assert kind(text) == value and type(kind(text)) is type(value)
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)) as err:
            kind(text)
        assert ", got " in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(argparse.ArgumentTypeError, match=f"invalid {kind.kind.__name__} value: 'abc'"):
        kind("abc")


def test_an_out_of_range_flag_is_one_argparse_line_naming_it(capsys):
    p = argparse.ArgumentParser(prog="script.py")
    p.add_argument("--lr", type=number_in(0.0, 1.0, "high", "the reason"), default=1e-4)
    with pytest.raises(SystemExit) as stop:
        p.parse_args(["--lr", "2"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "script.py: error: argument --lr: must be a number in (0, 1], got 2.0: the reason"
    )
    assert p.parse_args([]).lr == 1e-4  # a default is not passed through the type


def test_check_flag_values_rechecks_what_did_not_come_from_the_command_line():
    p = argparse.ArgumentParser()
    flags.add_num_workers_flag(p, underscore_alias=True)
    p.add_argument("--max-steps", type=positive_int, default=None)
    p.add_argument("--widths", type=positive_int, nargs="+", default=[1, 2])
    p.add_argument("--free", type=int, default=-5)  # a plain type: not checked
    args = p.parse_args([])
    flags.check_flag_values(p, args)  # defaults are fine; None is skipped
    args.num_workers = -1
    with pytest.raises(UserError, match=r"^argument --num-workers/--num_workers: must be an integer >= 0, got -1$"):
        flags.check_flag_values(p, args)
    args.num_workers, args.widths = 0, [3, 0]
    with pytest.raises(UserError, match="argument --widths: must be an integer >= 1, got 0"):
        flags.check_flag_values(p, args)
    args.widths, args.max_steps = [3], math.nan
    with pytest.raises(UserError, match="argument --max-steps: invalid int value"):
        flags.check_flag_values(p, args)


def shared_helps() -> dict[str, str]:
    """The help text of every flag the builders define, from a parser built with all of them."""
    p = argparse.ArgumentParser()
    for name in dir(flags):
        builder = getattr(flags, name)
        if not name.startswith("add_") or not callable(builder):
            continue
        if name == "add_model_flag":
            builder(p, ["DiT-XL/2"])
        elif name in ("add_num_classes_flag", "add_epochs_flag", "add_log_every_flag", "add_ckpt_every_flag"):
            builder(p, default=1)
        else:
            builder(p)
    add_dataset_arguments(p)
    return {s: a.help for a in p._actions for s in a.option_strings if s.startswith("--")}


def test_a_shared_flag_has_one_help_text_in_every_script():
    helps = shared_helps()
    # classify.py's --image-size is its classifier's input side (any size >= 8), not the VAE-scripts' flag.
    own = {("classify", "--image-size")}
    seen = set()
    for script in SCRIPTS:
        for action in importlib.import_module(script).build_parser()._actions:
            for option in action.option_strings:
                if option in helps and (script, option) not in own:
                    assert action.help in (helps[option], flags.IGNORED_HELP), (script, option, action.help)
                    assert isinstance(action.type, (CheckedType, type(None))) or action.type in (str, int)
                    seen.add(option)
    assert {"--vae", "--image-size", "--model", "--num-classes", "--cfg-scale", "--dataset"} <= seen
