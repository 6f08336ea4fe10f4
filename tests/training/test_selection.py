"""`--best-rule` (training/selection.py): the reference's lowest-KID rule and the within-noise rule, online and over a
whole history."""

from __future__ import annotations

import pytest

from training.selection import NOISE_Z, Validation, choose, decide, within_noise


def history(values: list[tuple[float, float]]) -> list[Validation]:
    """Validations at steps 100, 200, ... with (KID, standard error)."""
    return [Validation(100 * (i + 1), kid, se) for i, (kid, se) in enumerate(values)]


# The DiT-T/2 run of the issue that found the problem: KIDs x 1e3, each with a standard error of about 15.
NOISY_RUN = history([(646.2, 15), (355.8, 15), (390.4, 15), (387.6, 15), (399.6, 15), (361.0, 15), (359.9, 15)])


def test_lowest_rule_takes_the_minimum_however_small_the_margin():
    chosen, reason = choose(NOISY_RUN, "lowest")
    assert chosen.step == 200
    assert "lowest" in reason


def test_within_noise_rule_takes_the_latest_validation_that_noise_cannot_tell_from_the_lowest():
    chosen, reason = choose(NOISY_RUN, "within-noise")
    assert chosen.step == 700  # 359.9 - 355.8 = 4.1 < 2 * hypot(15, 15) = 42.4
    assert "step 200" in reason and "within noise" in reason


def test_within_noise_rule_keeps_an_earlier_validation_that_is_better_by_more_than_the_noise():
    run = history([(600.0, 5.0), (300.0, 5.0), (330.0, 5.0), (340.0, 5.0)])  # later ones 30-40 above, noise 14.1
    assert choose(run, "within-noise")[0].step == 200
    assert choose(run, "lowest")[0].step == 200


def test_noise_threshold_boundary():
    lowest = Validation(1, 0.100, 0.003)
    margin = NOISE_Z * (0.003**2 + 0.004**2) ** 0.5
    assert within_noise(Validation(2, 0.100 + margin - 1e-12, 0.004), lowest)
    assert not within_noise(Validation(2, 0.100 + margin + 1e-9, 0.004), lowest)


def test_online_decisions_equal_the_whole_history_choice():
    """Folding `decide` validation by validation (what train.py does) picks what `choose` picks afterwards, also
    when a new lowest arrives after validations within noise of an older one."""
    run = history([(500, 10), (400, 10), (410, 10), (350, 10), (360, 10), (420, 10), (365, 12)])
    lowest, chosen = None, None
    for v in run:
        d = decide("within-noise", lowest, v)
        lowest = d.lowest
        chosen = v if d.chosen else chosen
    assert chosen == choose(run, "within-noise")[0]
    assert chosen.step == 700 and lowest.step == 400


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="--best-rule"):
        decide("median", None, Validation(1, 0.1, 0.01))
