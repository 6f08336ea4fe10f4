"""Which validation's weights become `best_ckpt.pt` (`--best-rule`).

- `lowest` (the reference's rule, docs/REFERENCE.md §3.2): the validation with the lowest KID so far.
- `within-noise` (docs/DECISIONS.md §C9): the latest validation whose KID is within NOISE_Z combined standard
  errors of the lowest, that is, not measurably worse than it. Among checkpoints the validation cannot tell apart,
  the one trained longest is kept; an earlier one wins only when it is better by more than the noise.

Both rules are applied online, one validation at a time, and give what they would give on the whole history:
the lowest KID only changes at a validation that is then chosen, and every later validation is compared with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

BEST_RULES: tuple[str, ...] = ("lowest", "within-noise")
# Two standard errors of the difference: a KID that is higher by less than this is within noise of the lowest.
NOISE_Z = 2.0


@dataclass(frozen=True)
class Validation:
    """One validation's result: optimiser step, KID and its standard error (metrics.kid.kid_standard_error)."""

    step: int
    kid: float
    se: float

    def as_dict(self) -> dict:
        return {"step": self.step, "kid_mean": self.kid, "kid_se": self.se}


def within_noise(candidate: Validation, lowest: Validation, z: float = NOISE_Z) -> bool:
    """Whether `candidate`'s KID exceeds `lowest`'s by at most z standard errors of their difference."""
    return candidate.kid - lowest.kid <= z * math.hypot(candidate.se, lowest.se)


@dataclass(frozen=True)
class Decision:
    """The outcome of one validation: the lowest KID so far, whether this validation's weights are the new
    `best_ckpt.pt`, and why (one sentence for the log and best_ckpt.json)."""

    lowest: Validation
    chosen: bool
    reason: str


def decide(rule: str, lowest: Validation | None, new: Validation, z: float = NOISE_Z) -> Decision:
    """Apply `rule` to the validation `new`, given the lowest-KID validation before it (None at the first).

    Args:
        rule: one of BEST_RULES.
        lowest: the lowest-KID validation so far, or None.
        new: this validation.
        z: the noise threshold of `within-noise`, in standard errors of the difference.

    Returns:
        The decision.
    """
    if rule not in BEST_RULES:
        raise ValueError(f"--best-rule must be one of {BEST_RULES}, got {rule!r}")
    if lowest is None or new.kid < lowest.kid:
        return Decision(new, True, f"lowest validation KID so far ({new.kid * 1e3:.2f} x 1e-3)")
    if rule == "within-noise" and within_noise(new, lowest, z):
        margin = z * math.hypot(new.se, lowest.se)
        return Decision(
            lowest,
            True,
            f"latest validation within noise of the lowest KID: {new.kid * 1e3:.2f} vs {lowest.kid * 1e3:.2f} "
            f"x 1e-3 at step {lowest.step}, difference {(new.kid - lowest.kid) * 1e3:.2f} <= {z:g} standard "
            f"errors ({margin * 1e3:.2f})",
        )
    return Decision(lowest, False, "")


def choose(history: list[Validation], rule: str, z: float = NOISE_Z) -> tuple[Validation, str]:
    """The validation `rule` selects from a whole history, and why (the online rule folded over it)."""
    if not history:
        raise ValueError("no validation to choose from")
    lowest, chosen, reason = None, None, ""
    for new in history:
        decision = decide(rule, lowest, new, z)
        lowest = decision.lowest
        if decision.chosen:
            chosen, reason = new, decision.reason
    return chosen, reason
