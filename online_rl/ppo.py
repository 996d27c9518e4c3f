"""PPO for one batch of rollouts, written out in the order it runs (after CleanRL's ppo.py).

1. score: the reward head's score lands on each reply's last real token (EOS if sampled);
   replies cut off without EOS lose `missing_eos_penalty`; scores are normalised and clipped.
2. KL leash: every response token pays kl_coef * KL(policy || base) (k1 or k3 estimate),
   with kl_coef steered toward `target_kl` by an adaptive controller (Ziegler et al. 2019).
3. GAE (gamma, lambda) turns per-token rewards into advantages; advantages are whitened.
4. a few epochs over minibatches of clipped policy loss + clipped value loss; a minibatch whose
   mean ratio explodes is skipped; a NaN or inf anywhere aborts the round.

5. `ppo_iteration` is one whole iteration as a round runs it: sample the rollouts, one pass of
   the base (reference log-probs and reward features), score, screen, `ppo_update`, adapt the
   KL coefficient.

Nothing here knows about users or storage: `online_rl.rounds` feeds it prompts and a score.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from assistant.model import LoadedModel
from online_rl import safety, sampling
from online_rl.features import FeatureSpec
from online_rl.policy import TRAINABLE, Batch, Outputs, TrainablePolicy, forward_batch


@dataclass(frozen=True)
class PPOConfig:
    """Every PPO setting; defaults follow the field notes (TRL / trlx / DeepSpeed-Chat).

    temperature: rollouts are sampled at it (top_p 1) and the loss scores at it, so the
        sampled and the scored distribution are the same one (no "negative KL").
    max_new_tokens: rollout reply length; longer replies are cut and penalised.
    learning_rate, epochs, minibatch_size: the update; 1-2 epochs stay stable at this size.
    gamma, lam: GAE discount and smoothing.
    clip_range, value_clip_range: PPO's policy and value clipping.
    value_coef: weight of the value loss (the value head shares the LoRA backbone).
    kl_estimator: "k1" (logp - logp_ref) or "k3" ((r - 1) - log r, r = p_ref / p; never < 0).
    kl_coef: initial per-token KL weight; adaptive_kl moves it toward target_kl (nats per
        reply) with horizon kl_horizon (in rollouts).
    reward_clip: normalised scores are clipped to +-reward_clip.
    missing_eos_penalty: subtracted from the score of a reply cut off at max_new_tokens.
    max_ratio: skip a minibatch whose mean probability ratio leaves [1/max_ratio, max_ratio].
    max_grad_norm: gradient clipping.
    old_from_sampling: the "old" log-probs and values are the ones the sampler computed for
        each token (CleanRL's rollout buffer) rather than a second pass over the batch; the
        two differ by rounding only (the sampler decodes a row at a time), and the ratio
        divides by what really drew the token.
    """

    temperature: float = 0.7
    max_new_tokens: int = 96
    learning_rate: float = 1e-4
    epochs: int = 1
    minibatch_size: int = 8
    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float = 0.2
    value_clip_range: float = 0.2
    value_coef: float = 0.1
    kl_estimator: Literal["k1", "k3"] = "k1"
    kl_coef: float = 0.05
    adaptive_kl: bool = True
    target_kl: float = 6.0
    kl_horizon: int = 1000
    reward_clip: float = 5.0
    missing_eos_penalty: float = 1.0
    max_ratio: float = 10.0
    max_grad_norm: float = 1.0
    old_from_sampling: bool = True


class NonFiniteLoss(RuntimeError):
    """A NaN or inf reached the loss: the round is aborted and nothing is kept."""


@dataclass
class Rollouts:
    """What one PPO update consumes: sampled replies and everything computed before it."""

    batch: Batch
    scores: torch.Tensor  # (B,) reward-head score per reply, before the KL penalty
    finished: torch.Tensor  # (B,) bool: the reply ended with EOS
    ref_logprobs: torch.Tensor  # (B, R) the base's log-probs (from the pass that scored them)
    penalty: torch.Tensor | None = None  # (B,) the safety floor's, taken after clipping
    old: Outputs | None = None  # the sampler's log-probs and values; None: a pass computes them


def adaptive_kl_coef(kl_coef: float, observed_kl: float, n_rollouts: int, c: PPOConfig) -> float:
    """Ziegler et al.'s proportional controller: move kl_coef so that KL approaches target_kl."""
    if not c.adaptive_kl:
        return kl_coef
    error = max(-0.2, min(0.2, observed_kl / c.target_kl - 1.0))
    return kl_coef * (1.0 + error * n_rollouts / c.kl_horizon)


def kl_per_token(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str
) -> torch.Tensor:
    log_ratio = logprobs - ref_logprobs  # log p / p_ref
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    return log_ratio


def shaped_scores(
    scores: torch.Tensor,
    finished: torch.Tensor,
    c: PPOConfig,
    penalty: torch.Tensor | None = None,
) -> torch.Tensor:
    """Penalise cut-off replies, then clip (scores come in already normalised); `penalty` (the
    safety floor's) comes after the clip, so no score, however high, can offset it."""
    penalised = scores - c.missing_eos_penalty * (~finished).float()
    clipped = penalised.clamp(-c.reward_clip, c.reward_clip)
    return clipped if penalty is None else clipped - penalty


def token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, last: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """-kl_coef * KL on every response token, plus the score on each row's last real token."""
    rewards = -kl_coef * kl * mask
    rewards[torch.arange(len(scores)), last] += scores
    return rewards


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the response columns; returns (advantages, returns)."""
    values = values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(len(rewards), device=rewards.device)
    width = rewards.shape[1]
    for t in reversed(range(width)):
        next_value = values[:, t + 1] if t + 1 < width else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, advantages + values


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def _check_finite(name: str, x: torch.Tensor) -> None:
    if not torch.isfinite(x).all():
        raise NonFiniteLoss(f"{name} is not finite")


def ppo_update(
    policy: Any,
    value_head: nn.Module,
    optimizer: torch.optim.Optimizer,
    rollouts: Rollouts,
    kl_coef: float,
    c: PPOConfig,
    between_steps: Callable[[], object] = lambda: None,
) -> dict[str, float]:
    """One PPO update on `rollouts`. `between_steps()` runs before each minibatch (serving
    uses it to let a chat reply go first).

    Returns the statistics of the update (means over the minibatches that were not skipped).
    """
    batch = rollouts.batch
    mask = batch.response_mask.float()
    # scores are computed beside the features, on the CPU; the update runs where the model is
    device = mask.device
    penalty = None if rollouts.penalty is None else rollouts.penalty.to(device)
    finished = rollouts.finished.to(device)

    # Before the update: old log-probs and values of the policy that sampled the rollouts,
    # as the sampler computed them, or from a pass over the batch.
    started = time.monotonic()
    old = rollouts.old
    if old is None:
        with torch.no_grad():
            old = forward_batch(policy, batch, c.temperature, value_head)
    else:
        assert old.values is not None
        old = Outputs(old.logprobs.to(device), old.values.to(device), None)
    seconds_old_pass = time.monotonic() - started
    assert old.values is not None
    kl = kl_per_token(old.logprobs, rollouts.ref_logprobs, c.kl_estimator)
    scores = shaped_scores(rollouts.scores.to(device), finished, c, penalty)
    rewards = token_rewards(scores, kl, mask, batch.last_index, kl_coef)
    advantages, returns = gae(rewards, old.values, mask, c.gamma, c.lam)
    advantages = whiten(advantages, mask)
    for name, x in (("reward", rewards), ("advantage", advantages), ("value", old.values)):
        _check_finite(name, x)

    stats: dict[str, list[float]] = {
        "policy_loss": [],
        "value_loss": [],
        "approx_kl": [],
        "clip_fraction": [],
        "ratio": [],
    }
    skipped = 0
    n = len(batch.ids)
    for _epoch in range(c.epochs):
        order = torch.randperm(n)
        for start in range(0, n, c.minibatch_size):
            between_steps()
            rows = order[start : start + c.minibatch_size]
            m = mask[rows]
            new = forward_batch(policy, batch.rows(rows), c.temperature, value_head)
            assert new.values is not None
            # before the ratio guard: a NaN ratio fails every bound and would be skipped as
            # "moved too far", so NaN log-probs would leave the round running on a dead update
            _check_finite("policy log-prob", new.logprobs)
            log_ratio = new.logprobs - old.logprobs[rows]
            ratio = log_ratio.exp()
            mean_ratio = masked_mean(ratio, m).item()
            if not 1.0 / c.max_ratio <= mean_ratio <= c.max_ratio:
                skipped += 1  # the policy moved too far for these samples: skip, as TRL does
                continue

            adv = advantages[rows]
            clipped_ratio = ratio.clamp(1 - c.clip_range, 1 + c.clip_range)
            policy_loss = masked_mean(torch.max(-adv * ratio, -adv * clipped_ratio), m)

            old_values = old.values[rows]
            clipped_values = old_values + (new.values - old_values).clamp(
                -c.value_clip_range, c.value_clip_range
            )
            value_loss = 0.5 * masked_mean(
                torch.max((new.values - returns[rows]) ** 2, (clipped_values - returns[rows]) ** 2),
                m,
            )
            loss = policy_loss + c.value_coef * value_loss
            _check_finite("loss", loss)

            optimizer.zero_grad()
            loss.backward()
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, c.max_grad_norm)
            optimizer.step()

            with torch.no_grad():
                stats["policy_loss"].append(policy_loss.item())
                stats["value_loss"].append(value_loss.item())
                stats["approx_kl"].append(masked_mean((ratio - 1) - log_ratio, m).item())
                stats["clip_fraction"].append(
                    masked_mean(((ratio - 1).abs() > c.clip_range).float(), m).item()
                )
                stats["ratio"].append(mean_ratio)

    sequence_kl = (kl * mask).sum(-1)
    out = {k: sum(v) / len(v) if v else float("nan") for k, v in stats.items()}
    out.update(
        {
            "kl": sequence_kl.mean().item(),  # nats per reply, policy vs base, before the update
            "kl_coef": kl_coef,
            "score_mean": rollouts.scores.mean().item(),
            "shaped_score_mean": scores.mean().item(),
            "eos_share": rollouts.finished.float().mean().item(),
            "skipped_minibatches": float(skipped),
            "response_tokens": mask.sum().item(),
            "seconds_old_pass": seconds_old_pass,
        }
    )
    return out


@dataclass
class Iteration:
    """One iteration's rollouts and what was made of them (distillation reads them next)."""

    prompts: list[list[int]]
    replies: list[list[int]]
    texts: list[str]
    finished: torch.Tensor  # (B,) bool
    features: torch.Tensor  # (B, F) the reward's, from the base pass
    scores: torch.Tensor  # (B,) the score function's, 0 on provocations
    unsafe: torch.Tensor  # (B,) bool: the safety floor flagged the reply
    penalty: torch.Tensor  # (B,) the floor's penalty
    stats: dict[str, float] | None  # ppo_update's; None when the update is off
    kl_coef: float  # the coefficient for the next iteration
    seconds_sampling: float
    seconds_scoring: float  # the base pass, the scores and the safety screen
    seconds_update: float  # ppo_update: the old pass and the minibatches


def ppo_iteration(
    policy: TrainablePolicy,
    base: LoadedModel,
    optimizer: torch.optim.Optimizer,
    prompts: list[list[int]],
    seeds: list[int],
    provocation: torch.Tensor,
    score: Callable[[torch.Tensor, list[str]], torch.Tensor],
    kl_coef: float,
    c: PPOConfig,
    floor: safety.SafetyConfig,
    features: FeatureSpec,
    update: bool = True,
) -> Iteration:
    """Sample one reply per prompt from the trainable adapter, score it, and update.

    `score` maps the replies' reward features and texts to normalised scores (a user's head
    reads the features; `attune bench oracle`'s perfect reward, the texts); rows marked in
    `provocation` (red-team prompts) get none of it: there only the safety floor's penalty
    speaks. `update` False
    samples and scores without training (best-of-n distillation alone, for ablations).
    """
    started = time.monotonic()
    old = None
    if c.old_from_sampling and update:
        drawn = sampling.sample_rollouts(
            policy, base, prompts, seeds, c.max_new_tokens, c.temperature, policy.value_head
        )
        replies, ended = drawn.replies, drawn.ended
        old = Outputs(drawn.logprobs, drawn.values, None)
    else:
        adapters = [TRAINABLE] * len(prompts)
        replies, ended = sampling.sample(
            policy, base, prompts, adapters, seeds, c.max_new_tokens, c.temperature
        )
    sampled = time.monotonic()
    batch, ref = sampling.base_pass(policy, base, prompts, replies, c.temperature, features)
    x = ref.features.cpu()
    texts = sampling.texts(base, replies)
    scores = score(x, texts).masked_fill(provocation, 0.0)
    finished = torch.tensor(ended)
    screened = safety.screen(texts, floor)
    penalty = torch.tensor(screened.penalty(floor))
    scored = time.monotonic()
    stats = None
    if update:
        rollouts = Rollouts(batch, scores, finished, ref.logprobs, penalty, old)
        stats = ppo_update(
            policy.peft, policy.value_head, optimizer, rollouts, kl_coef, c, policy.between_steps
        )
        kl_coef = adaptive_kl_coef(kl_coef, stats["kl"], len(prompts), c)
    return Iteration(
        prompts,
        replies,
        texts,
        finished,
        x,
        scores,
        torch.tensor(screened.flagged),
        penalty,
        stats,
        kl_coef,
        seconds_sampling=sampled - started,
        seconds_scoring=scored - sampled,
        seconds_update=time.monotonic() - scored,
    )
