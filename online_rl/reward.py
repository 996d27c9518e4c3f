"""Reward from clicks: r_user(x) = r_pop(x) + h_user(x) on frozen base-model features.

Features are the base model's hidden states over (prompt, reply), pooled as
`online_rl.features` says, computed with every adapter disabled, so they do not drift while the
policy trains. The population head learns from everyone and gives a new user a sensible start;
the user's head is a small residual, initialised to zero and pulled toward zero, so three clicks
cannot over-fit it.

Losses, per kind of feedback, then weighted:
- A/B with a winner: Bradley-Terry, -log sigmoid(r_winner - r_loser).
- A/B tie: the same probability pushed toward 1/2 (the two scores move together).
- A/B both bad, and thumbs: logistic, sigmoid(r - c) toward the label, with c learned.
- a small mean(r^2) term keeps scores centred near zero (as TRL's reward trainer does).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from online_rl.features import MIDDLE_MEAN_AND_WORDS, FeatureSpec
from online_rl.policy import make_batch, reply_features

Outcome = Literal["a", "b", "tie", "both_bad"]


@dataclass(frozen=True)
class RewardConfig:
    """How reward heads are shaped and fitted.

    features: what the heads read of a reply (`online_rl.features`); stored per message and
        kind, so changing it recomputes features once, lazily.
    user_hidden: 0 makes the per-user head linear; > 0 gives it one hidden layer of that width.
    user_l2: pull of the per-user head's weights toward zero (its prior: "like everyone").
    pop_l2: the same for the population head, much weaker (it sees everyone's data).
    pair_weight, thumb_weight: how much A/B choices and thumbs count against each other.
    center: weight of mean(r^2), keeping scores near zero.
    balance_thumbs: weigh liked and not-liked labels half each in the thumbs loss. A rare
        taste (liked 1 time in 10) otherwise sets the threshold c so high that "liked" is
        almost never predicted: right 90% of the time, useless for finding the liked ones.
    threshold_folds: move the user's thumb threshold to where out-of-fold scores put it
        (`cross_fitted_threshold`); 0 or 1 keeps the fitted one.
    steps: the most L-BFGS iterations per fit (it stops earlier once converged).
    holdout_fraction: share of a user's events held out to measure accuracy.
    population_events: how many of the user's own events the population head counts as: its
        weight in the user's reward is k / (k + n) after n events, so it guides a new user
        and fades as the user's own head learns (where the user's clicks say nothing, e.g.
        about length, another group's taste would otherwise leak into this user's model).
    """

    features: FeatureSpec = MIDDLE_MEAN_AND_WORDS
    user_hidden: int = 0
    user_l2: float = 1.0
    pop_l2: float = 1e-4
    pair_weight: float = 1.0
    thumb_weight: float = 1.0
    center: float = 0.01
    balance_thumbs: bool = True
    threshold_folds: int = 4
    steps: int = 100
    holdout_fraction: float = 0.2
    population_events: int = 16
    seed: int = 0


@dataclass
class Feedback:
    """One user's clicks as indices into a feature matrix."""

    pairs: list[tuple[int, int, Outcome]] = field(
        default_factory=list
    )  # (answer a, answer b, outcome)
    thumbs: list[tuple[int, int]] = field(default_factory=list)  # (reply, +1 or -1)

    def __len__(self) -> int:
        return len(self.pairs) + len(self.thumbs)

    def split(self, fraction: float, seed: int) -> tuple[Feedback, Feedback]:
        """(train, held out), each kind split separately so both stay represented."""
        rng = random.Random(seed)
        pairs, thumbs = list(self.pairs), list(self.thumbs)
        rng.shuffle(pairs)
        rng.shuffle(thumbs)
        n_pairs = math.floor(len(pairs) * fraction)
        n_thumbs = math.floor(len(thumbs) * fraction)
        return (
            Feedback(pairs[n_pairs:], thumbs[n_thumbs:]),
            Feedback(pairs[:n_pairs], thumbs[:n_thumbs]),
        )


@torch.inference_mode()
def features(
    model: Any,
    examples: Sequence[tuple[Sequence[int], Sequence[int]]],
    pad_id: int,
    device: torch.device,
    spec: FeatureSpec,
    base_only: AbstractContextManager[Any] | None = None,
    batch_size: int = 16,
) -> torch.Tensor:
    """Reward features of (prompt ids, reply ids) pairs, in batches: the same pass and the
    same pooling (`policy.reply_features`) as the features of rollouts and gate replies.

    `base_only` is the context that switches adapters off (peft's `disable_adapter()`), so
    features do not drift while the policy trains.
    """
    rows = []
    with base_only if base_only is not None else nullcontext():
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            batch = make_batch([p for p, _ in chunk], [r for _, r in chunk], pad_id, device)
            rows.append(reply_features(model, batch, spec).float().cpu())
    return torch.cat(rows)


class RewardHead(nn.Module):
    """A scalar score of a feature vector; starts at exactly zero everywhere."""

    def __init__(self, dim: int, hidden: int = 0):
        super().__init__()
        if hidden > 0:
            self.net: nn.Module = nn.Sequential(
                nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1)
            )
        else:
            self.net = nn.Linear(dim, 1)
        last = self.net[-1] if isinstance(self.net, nn.Sequential) else self.net
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.threshold = nn.Parameter(torch.zeros(()))  # c: where a thumb flips from down to up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


class Standardizer(nn.Module):
    """Per-dimension mean and scale of the features, fitted once on the population's data.

    Hidden states have a few huge dimensions; without this a linear head's steps are dominated
    by them.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    def fit(self, x: torch.Tensor, unscaled: int = 0) -> Standardizer:
        """Mean and scale from `x`; the last `unscaled` columns (lexical counts, already on
        a common scale, mostly zero) are left as they are: standardising a bucket seen once
        in a thousand replies would blow it up forty-fold."""
        dense = x.shape[1] - unscaled
        self.mean.zero_()
        self.scale.fill_(1.0)
        self.mean[:dense] = x[:, :dense].mean(0)
        if len(x) > 1:
            self.scale[:dense] = x[:, :dense].std(0).clamp(min=1e-4)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


def feedback_loss(
    scores: torch.Tensor, threshold: torch.Tensor, feedback: Feedback, config: RewardConfig
) -> torch.Tensor:
    """The weighted sum of the pair and thumb losses described at the top of this module."""
    terms = []
    decided = [(a, b) if o == "a" else (b, a) for a, b, o in feedback.pairs if o in ("a", "b")]
    ties = [(a, b) for a, b, o in feedback.pairs if o == "tie"]
    both_bad = [i for a, b, o in feedback.pairs if o == "both_bad" for i in (a, b)]
    pair_losses = []
    if decided:
        win, lose = map(torch.tensor, zip(*decided, strict=True))
        pair_losses.append(-F.logsigmoid(scores[win] - scores[lose]))
    if ties:
        a, b = map(torch.tensor, zip(*ties, strict=True))
        margin = scores[a] - scores[b]
        pair_losses.append(
            F.binary_cross_entropy_with_logits(
                margin, torch.full_like(margin, 0.5), reduction="none"
            )
        )
    if pair_losses:
        terms.append(config.pair_weight * torch.cat(pair_losses).mean())
    labelled = [(i, 1.0 if t > 0 else 0.0) for i, t in feedback.thumbs] + [
        (i, 0.0) for i in both_bad
    ]
    if labelled:
        index, label = zip(*labelled, strict=True)
        logits = scores[torch.tensor(index)] - threshold
        target = torch.tensor(label)
        weight = None
        if config.balance_thumbs and 0 < target.sum() < len(target):
            # each class counts half, however rare likes are
            share = target.mean()
            weight = torch.where(target > 0, 0.5 / share, 0.5 / (1 - share))
        terms.append(
            config.thumb_weight * F.binary_cross_entropy_with_logits(logits, target, weight=weight)
        )
    if not terms:
        return scores.sum() * 0.0
    return sum(terms) + config.center * scores.pow(2).mean()


def pairwise_accuracy(scores: torch.Tensor, feedback: Feedback) -> float | None:
    """Share of comparisons the scores order the way the user did.

    Comparisons: every A/B pair with a winner, and every (thumbed-up, thumbed-down) pair of
    replies. None when there is nothing to compare.
    """
    comparisons = [(a, b) if o == "a" else (b, a) for a, b, o in feedback.pairs if o in ("a", "b")]
    ups = [i for i, t in feedback.thumbs if t > 0]
    downs = [i for i, t in feedback.thumbs if t < 0]
    comparisons += [(u, d) for u in ups for d in downs]
    if not comparisons:
        return None
    right = sum(float(scores[win] > scores[lose]) for win, lose in comparisons)
    return right / len(comparisons)


def fit_head(
    inputs: torch.Tensor,
    feedback: Feedback,
    config: RewardConfig,
    l2: float,
    prior: torch.Tensor | None = None,
    hidden: int = 0,
    threshold: float = 0.0,
) -> tuple[RewardHead, list[float]]:
    """A head fitted on `feedback` (indices into `inputs`), and its loss at each iteration.

    Full-batch L-BFGS: a linear head's loss is convex (logistic and Bradley-Terry terms plus
    L2), so this reaches its minimum in a few dozen cheap iterations where Adam needed
    hundreds of steps and still stopped short. `prior` is a fixed score added to the head's;
    `threshold` is where the thumb threshold c starts (it stays there without thumbs).
    """
    head = RewardHead(inputs.shape[1], hidden)
    head.threshold.data.fill_(threshold)
    weights = [p for n, p in head.named_parameters() if n.endswith("weight")]
    optimizer = torch.optim.LBFGS(
        head.parameters(),
        lr=1.0,
        max_iter=config.steps,
        history_size=20,
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )
    losses: list[float] = []

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        scores = head(inputs) + (prior if prior is not None else 0.0)
        loss = feedback_loss(scores, head.threshold, feedback, config)
        loss = loss + l2 * sum(w.pow(2).sum() for w in weights)
        loss.backward()
        losses.append(loss.item())
        return loss

    if len(feedback):
        optimizer.step(closure)
    return head, losses


def cross_fitted_threshold(
    inputs: torch.Tensor,
    feedback: Feedback,
    config: RewardConfig,
    l2: float,
    prior: torch.Tensor | None = None,
    hidden: int = 0,
) -> float | None:
    """How far to move a head's thumb threshold c so "liked" generalises: each of
    `threshold_folds` heads is fitted without a fold of the thumbs (and of the pairs touching
    them), scores that fold, and the offset from its own c with the best balanced accuracy on
    all these out-of-fold scores is returned (None when the thumbs hold one label only).

    Why: with a few liked replies a head separates its training thumbs perfectly and sets c
    just under them, above most liked replies it has not seen; the head still ranks well
    (A/B accuracy) but calls almost nothing "liked". Out-of-fold scores show where c belongs.
    """
    folds = config.threshold_folds
    thumbs = list(feedback.thumbs)
    if folds < 2 or len({t > 0 for _, t in thumbs}) < 2 or len(thumbs) < folds:
        return None
    order = random.Random(config.seed).sample(range(len(thumbs)), len(thumbs))
    offsets: list[tuple[float, bool]] = []
    for fold in range(folds):
        out = [thumbs[i] for k, i in enumerate(order) if k % folds == fold]
        left_out = {i for i, _ in out}
        kept = Feedback(
            [p for p in feedback.pairs if p[0] not in left_out and p[1] not in left_out],
            [t for t in thumbs if t[0] not in left_out],
        )
        head, _ = fit_head(inputs, kept, config, l2, prior, hidden)
        with torch.no_grad():
            scores = head(inputs) + (prior if prior is not None else 0.0) - head.threshold
        offsets += [(scores[i].item(), t > 0) for i, t in out]
    liked = [s for s, up in offsets if up]
    disliked = [s for s, up in offsets if not up]
    if not liked or not disliked:
        return None

    def balanced(c: float) -> float:
        hits = sum(s > c for s in liked) / len(liked)
        rejections = sum(s <= c for s in disliked) / len(disliked)
        return (hits + rejections) / 2

    cuts = sorted({s for s, _ in offsets})
    candidates = [cuts[0] - 1.0] + [(a + b) / 2 for a, b in zip(cuts, cuts[1:], strict=False)]
    return max(candidates, key=lambda c: (balanced(c), -abs(c)))


def fit_liking(
    inputs: torch.Tensor,
    feedback: Feedback,
    config: RewardConfig,
    l2: float,
    prior: torch.Tensor | None = None,
    hidden: int = 0,
    threshold: float = 0.0,
) -> tuple[RewardHead, list[float]]:
    """`fit_head`, then its thumb threshold moved where out-of-fold scores put it
    (`cross_fitted_threshold`, when `config.threshold_folds` asks for it): a user's head."""
    head, losses = fit_head(inputs, feedback, config, l2, prior, hidden, threshold)
    offset = cross_fitted_threshold(inputs, feedback, config, l2, prior, hidden)
    if offset is not None:
        head.threshold.data += offset
    return head, losses


@dataclass
class UserReward:
    """w * r_pop + h_user on standardised features: what PPO and the gate score replies with."""

    standardizer: Standardizer
    population: RewardHead
    user: RewardHead
    population_weight: float = 1.0

    @torch.no_grad()
    def score(self, x: torch.Tensor) -> torch.Tensor:
        z = self.standardizer(x)
        return self.population_weight * self.population(z) + self.user(z)

    @torch.no_grad()
    def liked(self, x: torch.Tensor) -> torch.Tensor:
        """Whether the user would thumb these replies up: score above the learned threshold c."""
        return self.score(x) > self.user.threshold

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to score again later (saved beside the user's adapter)."""
        return {
            "standardizer": self.standardizer.state_dict(),
            "population": self.population.state_dict(),
            "user": self.user.state_dict(),
            "population_weight": self.population_weight,
        }


def fit_population(
    x: torch.Tensor, feedback: Feedback, config: RewardConfig
) -> tuple[Standardizer, RewardHead]:
    """The shared head, on everyone's feedback (indices into `x`)."""
    torch.manual_seed(config.seed)
    standardizer = Standardizer(x.shape[1]).fit(x, config.features.lexical_dim)
    head, _ = fit_head(standardizer(x), feedback, config, config.pop_l2)
    return standardizer, head


def fit_user(
    standardizer: Standardizer,
    population: RewardHead,
    x: torch.Tensor,
    feedback: Feedback,
    config: RewardConfig,
) -> tuple[UserReward, dict[str, Any]]:
    """Fit the user's residual head on a train split; report held-out accuracy."""
    torch.manual_seed(config.seed)
    train, held_out = feedback.split(config.holdout_fraction, config.seed)
    z = standardizer(x).detach()
    weight = config.population_events / (config.population_events + len(feedback))
    with torch.no_grad():
        prior = weight * population(z)
    head, losses = fit_liking(
        z, train, config, config.user_l2, prior, config.user_hidden, population.threshold.item()
    )
    reward = UserReward(standardizer, population, head, weight)
    scores = reward.score(x)
    metrics = {
        "reward_loss_first": losses[0] if losses else None,
        "reward_loss_last": losses[-1] if losses else None,
        "train_accuracy": pairwise_accuracy(scores, train),
        "heldout_accuracy": pairwise_accuracy(scores, held_out),
        "population_heldout_accuracy": pairwise_accuracy(prior, held_out),
        "population_weight": weight,
        "n_pairs": len(feedback.pairs),
        "n_thumbs": len(feedback.thumbs),
    }
    return reward, metrics
