"""argparse value types that check a flag's range where it is parsed (shared by the entry scripts).

A `CheckedType` converts the flag's text and rejects a value out of range with `argparse.ArgumentTypeError`, so a
bad value ends the script like every argparse mistake: one line `script.py: error: argument --flag: must be ...,
got ...: <why the bound exists>`, exit status 2. Only checks that depend on the flag alone live here; checks across
flags (a batch divisible by the processes, sampling steps within the diffusion's length) stay in the scripts.

`infra.flags.check_flag_values` runs the same types again on values that did not come from the command line (a
resumed run's flags taken from its checkpoint, a Namespace built in code).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any


class CheckedType:
    """An argparse `type`: `kind(text)`, then `ok(value)` or an ArgumentTypeError naming the requirement.

    Args:
        kind: the conversion, `int` or `float`.
        ok: whether a converted value is acceptable (NaN fails every comparison, so it is rejected by range checks).
        requirement: what an acceptable value is, completing "must be ...".
        reason: why the bound exists, appended to the message; empty when the requirement says it all.
    """

    def __init__(self, kind: type, ok: Callable[[Any], bool], requirement: str, reason: str = "") -> None:
        self.kind, self.ok, self.requirement, self.reason = kind, ok, requirement, reason
        self.__name__ = kind.__name__  # argparse names the type by it in its own messages

    def __call__(self, text: Any) -> Any:
        try:
            value = self.kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"invalid {self.kind.__name__} value: {text!r}") from None
        if not self.ok(value):
            why = f": {self.reason}" if self.reason else ""
            raise argparse.ArgumentTypeError(f"must be {self.requirement}, got {value}{why}")
        return value

    def __repr__(self) -> str:
        return f"CheckedType({self.kind.__name__}, {self.requirement})"


def int_at_least(low: int, reason: str = "") -> CheckedType:
    """An integer >= `low`."""
    return CheckedType(int, lambda v: v >= low, f"an integer >= {low}", reason)


def number_at_least(low: float, reason: str = "") -> CheckedType:
    """A finite number >= `low` (NaN and infinity are refused)."""
    return CheckedType(float, lambda v: math.isfinite(v) and v >= low, f"a finite number >= {low:g}", reason)


def positive_number(reason: str = "") -> CheckedType:
    """A finite number > 0."""
    return CheckedType(float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0", reason)


def number_in(low: float, high: float, closed: str = "", reason: str = "") -> CheckedType:
    """A number between `low` and `high`; `closed` holds "low" and/or "high" for the ends that belong to the range.

    The requirement is written as an interval, e.g. "a number in (0, 1]".
    """
    with_low, with_high = "low" in closed, "high" in closed

    def ok(v: float) -> bool:
        return (low <= v if with_low else low < v) and (v <= high if with_high else v < high)

    interval = f"{'[' if with_low else '('}{low:g}, {high:g}{']' if with_high else ')'}"
    return CheckedType(float, ok, f"a number in {interval}", reason)


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)

# `--image-size` of the latent-diffusion scripts: the VAE downsamples by 8 (the reference's 128/256/512 among them).
image_size_flag = CheckedType(
    int,
    lambda v: v >= 8 and v % 8 == 0,
    "a positive multiple of 8",
    "the VAE downsamples by 8 (latent side = size / 8), and every script takes the same sizes",
)
