"""The gate's two statistical tests, in stages: better than live, and no less safe than the base.

Both read paired differences (one number per sampled prompt and seed) and ask a one-sided
question with a stated confidence:

- improvement (superiority): is the mean of `candidate - live` above `bar`? Pass when the lower
  confidence bound clears it.
- safety (non-inferiority): is the mean of `candidate - base` below `margin`? Pass when the
  upper confidence bound stays under it.

Both use a one-sided Student t bound on the mean difference; the gate feeds the improvement
test the *signs* of the paired reward gains (a sign test: is the candidate's reply preferred
more often than not?), because `attune bench gate` measured it clearly more powerful there
than the t bound on the gains themselves: reward-head score differences are heavy-tailed (one
reply far off the scale swings a mean), and "preferred more often" is what a user feels. The
safety test reads per-reply offensive flags and probabilities minus the base's mean on the
same prompt. A bootstrap is unreliable at n = 8. The README's gate table has the measured
false-accept and accept rates and samples per decision.

Why in stages (group-sequential): a clear case is decided on the first few samples; only a close
one draws more. Each look spends its own share of the false-accept budget (`alphas`, summing to
at most the overall alpha: Bonferroni), so the overall false-accept rate stays under alpha
however early the test stops. A look may also stop early with a "fail" when even a lenient
bound (`futility`) cannot reach the bar: that only refuses more, so it never adds false accepts.

A floor on the standard deviation (`min_sd`) keeps a handful of identical differences (eight
pairs all equal, say) from claiming a zero-width interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Literal

from scipy.stats import t as student_t

Verdict = Literal["pass", "fail", "more"]


@dataclass(frozen=True)
class StagedTest:
    """How one test looks at its samples.

    stages: cumulative sample counts at which it looks (more are drawn only while undecided).
    alphas: the false-accept probability each look may spend (their sum is the test's overall
        false-accept bound).
    futility: at a look before the last, fail early when the one-sided bound at this confidence
        on the other side already excludes passing (0 turns early failing off).
    min_sd: the standard deviation used is at least this.
    """

    stages: tuple[int, ...]
    alphas: tuple[float, ...]
    futility: float = 0.0
    min_sd: float = 0.0

    def __post_init__(self) -> None:
        if not self.stages or list(self.stages) != sorted(set(self.stages)) or self.stages[0] < 2:
            raise ValueError(f"stages must be increasing counts >= 2, not {self.stages}")
        if len(self.alphas) != len(self.stages) or not all(0 < a < 1 for a in self.alphas):
            raise ValueError(f"one alpha in (0, 1) per stage, not {self.alphas}")
        if not 0 <= self.futility < 1:
            raise ValueError(f"futility must be in [0, 1), not {self.futility}")

    @property
    def alpha(self) -> float:
        """The overall false-accept bound."""
        return sum(self.alphas)


@dataclass(frozen=True)
class Look:
    """One look at the differences so far: the estimate, its confidence bounds and the verdict.

    `lower` and `upper` are the one-sided bounds at this look's confidence (1 - its alpha).
    """

    n: int
    mean: float
    lower: float
    upper: float
    verdict: Verdict


def mean_and_spread(diffs: Sequence[float], min_sd: float = 0.0) -> tuple[float, float]:
    """(mean, standard error of the mean) with the standard deviation floored at `min_sd`."""
    n = len(diffs)
    if n < 2:
        raise ValueError("a confidence bound needs at least 2 differences")
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    return mean, max(sd, min_sd) / math.sqrt(n)


@cache
def t_quantile(confidence: float, n: int) -> float:
    """The one-sided Student t critical value for n differences (cached: looks repeat)."""
    return float(student_t.ppf(confidence, n - 1))


def _stage(test: StagedTest, n: int) -> int:
    """Which look n samples make (the last stage not above n)."""
    reached = [i for i, s in enumerate(test.stages) if s <= n]
    if not reached:
        raise ValueError(f"{n} differences: the first look is at {test.stages[0]}")
    return reached[-1]


def superiority(
    diffs: Sequence[float], bar: float, test: StagedTest, reference_variance: float = 0.0
) -> Look:
    """Is mean(diffs) above `bar`? pass: the lower bound clears it; fail: at the last look it
    does not, or earlier when the futility bound is already below it; more: draw the next stage.

    `reference_variance`: the variance of whatever was subtracted to make the differences, when
    it is an estimate shared by all of them (the base's rates from a fixed cache): it adds to
    the squared standard error, since more candidate samples do not shrink it."""
    stage = _stage(test, len(diffs))
    mean, se = mean_and_spread(diffs, test.min_sd)
    se = math.sqrt(se**2 + reference_variance)
    q = t_quantile(1 - test.alphas[stage], len(diffs))
    lower, upper = mean - q * se, mean + q * se
    last = stage == len(test.stages) - 1
    hopeless = bool(test.futility) and mean + t_quantile(test.futility, len(diffs)) * se < bar
    verdict: Verdict = "pass" if lower > bar else "fail" if last or hopeless else "more"
    return Look(len(diffs), mean, lower, upper, verdict)


def non_inferiority(
    diffs: Sequence[float], margin: float, test: StagedTest, reference_variance: float = 0.0
) -> Look:
    """Is mean(diffs) below `margin` (not worse by that much)? The mirror of `superiority`:
    pass when the upper bound stays under the margin."""
    look = superiority([-d for d in diffs], -margin, test, reference_variance)
    return Look(look.n, -look.mean, -look.upper, -look.lower, look.verdict)


def next_count(test: StagedTest, n: int) -> int | None:
    """The sample count of the next look after n samples (None after the last)."""
    later = [s for s in test.stages if s > n]
    return later[0] if later else None
