"""The gate's statistical tests by hand, and their error rates on simulated data."""

from __future__ import annotations

import random

import pytest

from online_rl.release_tests import (
    StagedTest,
    mean_and_spread,
    next_count,
    non_inferiority,
    superiority,
    t_quantile,
)

ONE_LOOK = StagedTest((4,), (0.05,))


def test_mean_and_standard_error_by_hand() -> None:
    # mean 2.5; sd = sqrt((2.25 + 0.25 + 0.25 + 2.25) / 3) = 1.2910; se = sd / 2
    mean, se = mean_and_spread([1, 2, 3, 4])
    assert mean == 2.5
    assert se == pytest.approx(0.645497, abs=1e-6)
    assert t_quantile(0.95, 4) == pytest.approx(2.353363, abs=1e-6)  # t(0.95; 3 df)


def test_superiority_passes_only_when_the_lower_bound_clears_the_bar() -> None:
    look = superiority([1, 2, 3, 4], 0.0, ONE_LOOK)
    # lower = 2.5 - 2.353363 * 0.645497 = 0.980911
    assert look.lower == pytest.approx(0.980911, abs=1e-5)
    assert look.verdict == "pass"
    assert superiority([1, 2, 3, 4], 1.0, ONE_LOOK).verdict == "fail"  # last look: fails


def test_an_early_look_spends_its_own_alpha_and_asks_for_more_when_undecided() -> None:
    staged = StagedTest((4, 8), (0.025, 0.025))
    # t(0.975; 3) = 3.182446: lower = 2.5 - 3.182446 * 0.645497 = 0.445740
    assert superiority([1, 2, 3, 4], 0.0, staged).verdict == "pass"
    undecided = superiority([1, 2, 3, 4], 0.5, staged)
    assert undecided.lower == pytest.approx(0.445740, abs=1e-5)
    assert undecided.verdict == "more"
    assert next_count(staged, 4) == 8 and next_count(staged, 8) is None


def test_futility_fails_a_hopeless_candidate_early_and_only_when_asked_to() -> None:
    worse = [-1, -2, -3, -4]
    assert superiority(worse, 0.0, StagedTest((4, 8), (0.025, 0.025))).verdict == "more"
    # upper at 0.8: -2.5 + t(0.8; 3) 0.978472 * 0.645497 = -1.868 < 0
    assert superiority(worse, 0.0, StagedTest((4, 8), (0.025, 0.025), 0.8)).verdict == "fail"


def test_non_inferiority_passes_while_the_upper_bound_stays_under_the_margin() -> None:
    diffs = [0.0, 0.1, -0.1, 0.0]
    look = non_inferiority(diffs, 0.2, ONE_LOOK)
    # mean 0, se = sqrt(0.02 / 3) / 2 = 0.040825; upper = 2.353363 * 0.040825 = 0.096076
    assert look.upper == pytest.approx(0.096076, abs=1e-5)
    assert look.lower == pytest.approx(-0.096076, abs=1e-5)
    assert look.verdict == "pass"
    assert non_inferiority(diffs, 0.05, ONE_LOOK).verdict == "fail"


def test_the_sd_floor_keeps_identical_differences_from_claiming_certainty() -> None:
    same = [0.5] * 8
    assert superiority(same, 0.2, StagedTest((8,), (0.05,))).verdict == "pass"
    # floored: se = 0.5 / sqrt(8) = 0.176777; lower = 0.5 - 1.894579 * 0.176777 = 0.165083
    floored = superiority(same, 0.2, StagedTest((8,), (0.05,), min_sd=0.5))
    assert floored.lower == pytest.approx(0.165083, abs=1e-5)
    assert floored.verdict == "fail"


@pytest.mark.parametrize(
    "stages, alphas, futility",
    [
        ((1,), (0.05,), 0.0),
        ((8, 4), (0.02, 0.02), 0.0),
        ((4,), (0.05, 0.01), 0.0),
        ((4,), (0.05,), 1.0),
    ],
)
def test_a_malformed_design_is_refused(stages, alphas, futility) -> None:
    with pytest.raises(ValueError):
        StagedTest(stages, alphas, futility)


def test_too_few_differences_for_the_first_look_is_an_error() -> None:
    with pytest.raises(ValueError):
        superiority([1.0, 2.0], 0.0, StagedTest((4,), (0.05,)))


def staged_accept_rate(true_gain: float, trials: int = 1500) -> float:
    """How often the staged test accepts normal differences with this true mean (sd 1)."""
    test = StagedTest((8, 16, 32), (0.01, 0.015, 0.025), 0.8)
    rng = random.Random(0)
    accepted = 0
    for _ in range(trials):
        diffs = [rng.gauss(true_gain, 1.0) for _ in range(8)]
        while (look := superiority(diffs, 0.0, test)).verdict == "more":
            diffs += [
                rng.gauss(true_gain, 1.0) for _ in range(next_count(test, len(diffs)) - len(diffs))
            ]
        accepted += look.verdict == "pass"
    return accepted / trials


def test_the_staged_test_keeps_its_false_accepts_under_alpha_and_finds_a_real_gain() -> None:
    assert staged_accept_rate(0.0) <= 0.05 + 0.015  # alpha 0.05 overall, plus sampling slack
    assert staged_accept_rate(0.8) >= 0.9


def test_the_variance_of_a_shared_reference_widens_the_bound() -> None:
    diffs = [0.0, 0.1, -0.1, 0.0]
    # se^2 = 0.040825^2 + 0.0025 = 0.0041667; upper = 2.353363 * 0.064550 = 0.151909
    look = non_inferiority(diffs, 0.2, ONE_LOOK, reference_variance=0.0025)
    assert look.upper == pytest.approx(0.151909, abs=1e-5) and look.verdict == "pass"
    assert non_inferiority(diffs, 0.15, ONE_LOOK, reference_variance=0.0025).verdict == "fail"
    assert non_inferiority(diffs, 0.15, ONE_LOOK).verdict == "pass"  # without it: 0.096
