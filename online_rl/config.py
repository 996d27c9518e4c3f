"""Every setting of a training round, one frozen dataclass per concern (the one source of truth)."""

from __future__ import annotations

from dataclasses import dataclass, field

from online_rl import gate, reward, safety
from online_rl.policy import LoraSettings
from online_rl.ppo import PPOConfig
from storage.retention import RetentionConfig


@dataclass(frozen=True)
class RoundConfig:
    """The recipe and the budget of one round (defaults: well under a minute on 2 CPU cores
    with SmolLM2-135M; see the README's round timing).

    min_feedback: fewer clicks than this and no round runs.
    max_seconds: no new PPO iteration starts after this many seconds (the gate still runs).
    prompt_pool: how many of the user's most recent prompts rollouts draw from.
    heldout_share: share of those prompts kept for the gate only.
    sft_steps, sft_batch, sft_learning_rate: the warm start on demonstrations.
    preference_steps, preference_batch, preference_beta, preference_pairs: the DPO warm start
        on the user's most recent `preference_pairs` A/B choices (same learning rate).
    iterations: PPO iterations at most (each: rollouts, one PPO update, distillation).
    rollout_prompts, samples_per_prompt: rollouts per iteration = their product.
    distill_steps: supervised steps per iteration on rollout samples the reward head predicts
        the user would like (score above its thumbs threshold), this iteration's first, then
        earlier ones from the pool that the current head still likes (sft_batch at most).
    ranked_preference_steps: DPO steps on (best, worst) sample of each prompt as the reward
        head ranks them, per iteration (online DPO: a preference even when no sample is good).
    liked_pool: how many liked rollout samples a user's pool keeps (the newest) for later
        rounds' distillation (in the database, so a restart keeps it).
    ranked_pair_margin: a prompt's (best, worst) becomes a pair only if their shaped scores
        differ by this much (normalised units), so near-ties teach nothing.
    ranked_nll_weight: the chosen sample's cross-entropy added to the ranked pairs' DPO loss
        (RPO): it anchors the update to text the policy itself wrote. Not used on the user's
        A/B pairs, whose winner may only be the lesser of two bad replies.
    ppo: run the PPO update on the rollouts (off: best-of-n distillation alone; for ablations).
    resume_refused: a round goes on from the user's newest candidate instead of the live version
        when that candidate was refused only for not beating live (its text and KL passed) and
        live has not changed since: small steps then add up over rounds instead of being thrown
        away. The gate still compares against live, and the KL budget ends a branch that drifts.
    seed: makes the rounds' sampling reproducible: the n-th round of a user draws from seed and
        n, so each round still gets its own seeds (the gate's fresh draws); None: random.
    """

    min_feedback: int = 4
    max_seconds: float = 40.0
    prompt_pool: int = 64
    heldout_share: float = 0.25
    sft_steps: int = 2
    sft_batch: int = 8
    sft_learning_rate: float = 3e-4
    preference_steps: int = 3
    preference_batch: int = 6
    preference_beta: float = 0.1
    preference_pairs: int = 24
    iterations: int = 1
    rollout_prompts: int = 4
    samples_per_prompt: int = 4
    distill_steps: int = 2
    ranked_preference_steps: int = 2
    liked_pool: int = 64
    ranked_pair_margin: float = 1.0
    ranked_nll_weight: float = 1.0
    ppo: bool = True
    resume_refused: bool = True
    seed: int | None = None


@dataclass(frozen=True)
class TrainingConfig:
    """Everything a round needs, one dataclass per concern."""

    reward: reward.RewardConfig = field(default_factory=reward.RewardConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    gate: gate.GateConfig = field(default_factory=gate.GateConfig)
    round: RoundConfig = field(default_factory=RoundConfig)
    safety: safety.SafetyConfig = field(default_factory=safety.SafetyConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
