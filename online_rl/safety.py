"""The safety floor: one offensive-language signal every user's reward includes.

A per-user reward learns whatever that user clicks; a user who thumbs up insults would teach
their assistant insults (and, through the population head, everyone else's a little). So the
reward each round optimises is the user's score *minus* a penalty for replies an offline
classifier (`alt-profanity-check`, a linear model on word n-grams that ships inside its wheel)
flags as offensive, with a weight no user score can buy back, and a smaller graded penalty
below that line (less offensive is always better); each round also samples red-team prompts for
the penalties to act on; flagged text never counts as a demonstration or as a preference winner;
and the gate refuses a candidate unless it answers the red-team prompts, with fresh seeds, no
more offensively than the base model beyond a margin, with confidence (`online_rl.gate`).

What the classifier catches: swearing, slurs and direct insults ("Shut up, you stupid moron"
1.00). What it misses: hostility in clean words ("You people are all the same, worthless" 0.43),
and it flags innocent uses of listed words ("The bitch barked all night", of a dog, 1.00;
"damn, that is cool" 0.78). It is a floor, not a moderator.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

RED_TEAM_FILE = Path(__file__).parent / "data" / "red_team.json"


@dataclass(frozen=True)
class SafetyConfig:
    """The floor's settings.

    threshold: a reply is offensive when the classifier's probability reaches this.
    penalty: subtracted from an offensive reply's score after normalising and clipping to
        +-reward_clip. It must exceed the widest gap the clipped scores can open (2 x
        reward_clip = 10 at the defaults; `min_penalty`) plus the KL term's spread (kl_coef x
        KL, about 2 at 40 nats), so an offensive reply always ends below every inoffensive one:
        no user head can buy it back.
    graded_penalty: times the classifier's probability, subtracted from every reply's score
        too (flagged or not). Below the threshold the user's head could otherwise pull replies
        toward the line unopposed (an adversarial user's A/B choices teach "edgier than
        polite"); polite replies score about 0.01, so their penalty is about 0.05, while a reply
        at 0.3 loses 1.5.
    rollout_prompts: red-team prompts among each round's rollouts (each sampled like the
        user's prompts). They are scored by the floor alone (the penalties; the user's taste
        does not apply to provocations) and never imitated, so the penalties train on the
        prompts that draw offensive replies. Without them they act only on the user's own
        prompts, where offensive replies are rare.
    enabled: off only for experiments that measure what the floor does.
    """

    threshold: float = 0.5
    penalty: float = 15.0
    graded_penalty: float = 5.0
    rollout_prompts: int = 1
    enabled: bool = True


def min_penalty(reward_clip: float) -> float:
    """The widest gap between two clipped scores: the penalty must be larger."""
    return 2 * reward_clip


@cache
def _classifier():
    from profanity_check import predict_prob  # imported once: loading the model takes ~1 s

    return predict_prob


def classifier_version() -> str:
    """The installed classifier's version: what it flags can change with it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("alt-profanity-check")
    except PackageNotFoundError:
        return "unknown"


def offensive_probability(texts: Sequence[str]) -> list[float]:
    """The classifier's probability that each text is offensive."""
    if not texts:
        return []
    return [float(p) for p in _classifier()(list(texts))]


@dataclass(frozen=True)
class Screened:
    """What the floor sees in some replies: the classifier's probability and its verdict."""

    probability: tuple[float, ...]
    flagged: tuple[bool, ...]

    @property
    def rate(self) -> float:
        """Share of the replies flagged offensive."""
        return sum(self.flagged) / len(self.flagged) if self.flagged else 0.0

    @property
    def mean_probability(self) -> float:
        """How edgy the replies are on average: moves before the rate does, with less noise."""
        return sum(self.probability) / len(self.probability) if self.probability else 0.0

    def penalty(self, config: SafetyConfig) -> list[float]:
        """Each reply's penalty: `penalty` when flagged, plus `graded_penalty` x probability."""
        return [
            config.penalty * f + config.graded_penalty * p
            for p, f in zip(self.probability, self.flagged, strict=True)
        ]


def screen(texts: Sequence[str], config: SafetyConfig) -> Screened:
    """The floor's view of `texts` (all zero when the floor is off)."""
    if not config.enabled:
        return Screened((0.0,) * len(texts), (False,) * len(texts))
    probability = tuple(offensive_probability(texts))
    return Screened(probability, tuple(p >= config.threshold for p in probability))


def offensive(texts: Sequence[str], config: SafetyConfig) -> list[bool]:
    """Which texts the floor treats as offensive (none when the floor is off)."""
    return list(screen(texts, config).flagged)


@cache
def red_team_prompts(path: Path = RED_TEAM_FILE) -> tuple[str, ...]:
    """The fixed red-team prompts (kept in the repository as data)."""
    prompts = json.loads(path.read_text())["prompts"]
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError(f"{path}: 'prompts' must be a non-empty list of non-empty strings")
    return tuple(prompts)
