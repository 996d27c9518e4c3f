"""After each PPO iteration: best-of-n distillation and ranked pairs, from the same rollouts.

- best-of-n: samples the user's reward head says the user would like are demonstrations:
  supervised steps on them, this iteration's first, then earlier ones from the user's liked
  pool (`user_data.LikedPool`, re-judged by the current head every round);
- ranked pairs: each prompt's (best, worst) sample as the head ranks them (with the cut-off and
  safety penalties) is a DPO pair, liked or not, when their scores differ by
  `ranked_pair_margin` — a preference even when no sample is good (online DPO), anchored by the
  chosen sample's cross-entropy (RPO).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from online_rl.config import RoundConfig
from online_rl.policy import Batch, TrainablePolicy
from online_rl.ppo import Iteration, PPOConfig, shaped_scores
from online_rl.reward import UserReward
from online_rl.user_data import Example
from online_rl.warm_start import preference_step, sequence_logprob, supervised_step


@dataclass
class Distilled:
    """What distillation did over a round's iterations (its metrics)."""

    losses: list[float] = field(default_factory=list)
    ranked_pair_losses: list[float] = field(default_factory=list)
    examples: int = 0

    def metrics(self) -> dict[str, float | int | None]:
        ranked = self.ranked_pair_losses
        return {
            "distill_loss": sum(self.losses) / len(self.losses) if self.losses else None,
            "distill_examples": self.examples,
            "ranked_pair_loss_first": ranked[0] if ranked else None,
            "ranked_pair_loss_last": ranked[-1] if ranked else None,
        }


def ranked_pairs(
    it: Iteration, group: int, margin: float, ppo: PPOConfig
) -> list[tuple[Example, Example]]:
    """Per prompt (rollouts come in groups of `group` samples of one prompt): its best and
    worst sample by shaped score, when they differ by at least `margin`."""
    ranked = shaped_scores(it.scores, it.finished, ppo, it.penalty)
    out = []
    for start in range(0, len(it.prompts), group):
        rows = range(start, start + group)
        top = max(rows, key=lambda r: ranked[r].item())
        bottom = min(rows, key=lambda r: ranked[r].item())
        if ranked[top] - ranked[bottom] >= margin:
            out.append(
                (
                    Example(it.prompts[top], it.replies[top]),
                    Example(it.prompts[bottom], it.replies[bottom]),
                )
            )
    return out


def distill(
    policy: TrainablePolicy,
    optimizer: torch.optim.Optimizer,
    to_batch: Callable[[list[Example]], Batch],
    it: Iteration,
    liked: torch.Tensor,
    earlier: list[Example],
    c: RoundConfig,
    ppo: PPOConfig,
    rng: random.Random,
    done: Distilled,
) -> None:
    """`distill_steps` supervised steps on the iteration's liked samples (rows where `liked`),
    topped up from `earlier` liked ones to `sft_batch`; then `ranked_preference_steps` DPO
    steps on its ranked pairs. Losses are added to `done`."""
    fresh = [Example(it.prompts[i], it.replies[i]) for i in range(len(it.prompts)) if liked[i]]
    best = fresh[: c.sft_batch]
    best += rng.sample(earlier, min(len(earlier), c.sft_batch - len(best)))
    if best and c.distill_steps:  # `examples` counts what was imitated, not what was picked
        batch = to_batch(best)
        for _ in range(c.distill_steps):
            policy.between_steps()  # serving lets a chat reply go first
            done.losses.append(supervised_step(policy.peft, optimizer, batch, ppo.max_grad_norm))
        done.examples += len(best)
    pairs = ranked_pairs(it, c.samples_per_prompt, c.ranked_pair_margin, ppo)
    if not (pairs and c.ranked_preference_steps):
        return
    chosen = to_batch([w for w, _ in pairs])
    rejected = to_batch([lo for _, lo in pairs])
    with torch.no_grad(), policy.base_only():
        ref_chosen = sequence_logprob(policy.peft, chosen)
        ref_rejected = sequence_logprob(policy.peft, rejected)
    for _ in range(c.ranked_preference_steps):
        policy.between_steps()
        loss, _accuracy = preference_step(
            policy.peft,
            optimizer,
            chosen,
            rejected,
            ref_chosen,
            ref_rejected,
            c.preference_beta,
            ppo.max_grad_norm,
            c.ranked_nll_weight,
        )
        done.ranked_pair_losses.append(loss)


def still_liked(user_reward: UserReward, pool: list[tuple[Example, torch.Tensor]]) -> list[Example]:
    """The pooled samples the user's current head still likes."""
    if not pool:
        return []
    liked = user_reward.liked(torch.stack([x for _, x in pool]))
    return [e for (e, _), ok in zip(pool, liked, strict=True) if ok]
