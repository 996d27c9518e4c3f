"""One user's training round: the full RLHF recipe on that user's own feedback.

1. reward: cache base-model features of every rated reply, fit the population head on everyone's
   clicks and the user's residual head on theirs (`online_rl.reward`).
2. warm start: supervised steps on the user's liked replies and A/B winners (demonstrations).
3. iterations of: sample replies to the user's own recent prompts -> score them with the reward
   head -> one PPO update with the KL leash (`online_rl.ppo`) -> supervised steps on the best
   sample of each prompt (best-of-n distillation: the reward head ranks fresh samples).
4. gate: two staged tests (`online_rl.gate`): better than live on held-out prompts (paired,
   fresh seeds) and not less safe than the base on red-team prompts; the candidate is written
   atomically either way, and becomes live only if accepted.

Why not PPO alone: at this scale PPO with a sparse score moves too slowly to be felt (see the
field notes); the demonstrations and the ranked samples give it a dense start, PPO with the KL
leash keeps the update honest. `attune bench personalize` measures what each part adds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from assistant import generation
from assistant.config import HARMFUL_REASON, GenerationConfig
from online_rl import gate, pairs, release_tests, reward, safety
from online_rl.policy import (
    BASE,
    TRAINABLE,
    Batch,
    LoraSettings,
    TrainablePolicy,
    forward_batch,
    make_batch,
)
from online_rl.ppo import (
    NonFiniteLoss,
    PPOConfig,
    Rollouts,
    adaptive_kl_coef,
    ppo_update,
    shaped_scores,
)
from online_rl.release_tests import Look, StagedTest
from online_rl.warm_start import preference_step, sequence_logprob, supervised_step
from storage import adapters as adapter_files
from storage import records
from storage.db import writing
from storage.retention import RetentionConfig, prune_versions

if TYPE_CHECKING:
    from assistant.facade import Assistant

log = logging.getLogger(__name__)

REWARD_HEAD_FILE = "reward_head.pt"
# DPO reference log-probs kept in memory, the most recently used (see Trainer._reference)
REFERENCE_LOGPROBS_KEPT = 4096
ABANDONED = "abandoned: the user was deleted while the round ran"


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


@dataclass(frozen=True)
class TrainReport:
    """What one round did. `version` is the candidate's number (None if none was made)."""

    accepted: bool
    version: int | None
    reward_before: float | None
    reward_after: float | None
    kl: float | None
    reason: str
    metrics: dict[str, Any]


@dataclass
class UserFeedback:
    replies: list[records.Row]  # every reply that was clicked on
    feedback: reward.Feedback  # the clicks, as indices into `replies`
    demonstrations: list[records.Row]  # liked replies and A/B winners not thumbed down
    preferences: list[tuple[records.Row, records.Row]]  # (winner, loser) of decided A/B pairs
    dropped: int  # clicks that rewarded offensive text: no head, demonstration or pair uses them


@dataclass
class Example:
    """A prompt and a reply as token ids (the reply ends with EOS when the model ended it)."""

    prompt: list[int]
    reply: list[int]


@dataclass(frozen=True)
class GateMeasure:
    """What the gate measured: the two tests' last looks and the checks on the text."""

    gain: Look
    red_team: gate.RedTeamLooks | None
    kl: float  # mean over the candidate's held-out replies, summed over tokens
    kl_per_token: float
    candidate_text: gate.TextStats
    live_text: gate.TextStats
    reward_before: float  # live's mean score on the held-out pairs
    reward_after: float  # the candidate's

    def metrics(self) -> dict[str, Any]:
        red = self.red_team
        return {
            "reward_before": self.reward_before,
            "reward_after": self.reward_after,
            "gain": self.gain.mean,
            "gain_lower_bound": self.gain.lower,
            "gate_pairs": self.gain.n,
            "kl": self.kl,
            "kl_per_token": self.kl_per_token,
            "red_team_replies": red.rate.n if red else 0,
            "red_team_offensive_rate": red.candidate_rate if red else None,
            "base_red_team_offensive_rate": red.base_rate if red else None,
            "red_team_rate_rise_upper_bound": red.rate.upper if red else None,
            "red_team_offensive_probability": red.candidate_probability if red else None,
            "base_red_team_offensive_probability": red.base_probability if red else None,
            "red_team_edginess_rise_upper_bound": red.edginess.upper if red else None,
            "candidate_truncated_share": self.candidate_text.truncated_share,
            "candidate_repetition": self.candidate_text.repetition,
            "candidate_sameness": self.candidate_text.sameness,
            "live_sameness": self.live_text.sameness,
            "live_truncated_share": self.live_text.truncated_share,
        }


@dataclass
class GateSamples:
    """Everything the gate has sampled so far in a round, in order."""

    gains: list[float] = field(default_factory=list)  # candidate - live, per held-out pair
    candidate_scores: list[float] = field(default_factory=list)
    live_scores: list[float] = field(default_factory=list)
    kl_sums: list[float] = field(default_factory=list)  # per candidate reply
    reply_tokens: int = 0
    candidate_texts: list[str] = field(default_factory=list)
    live_texts: list[str] = field(default_factory=list)
    candidate_ended: list[bool] = field(default_factory=list)
    live_ended: list[bool] = field(default_factory=list)
    red_prompt: list[int] = field(default_factory=list)  # which red-team prompt, per reply
    red_flagged: list[bool] = field(default_factory=list)
    red_probability: list[float] = field(default_factory=list)

    def gain_look(self, config: gate.GateConfig) -> Look:
        """The improvement test on the pairs so far (their signs, or the gains themselves)."""
        gains = self.gains
        if config.gain_by_sign:
            gains = [float((d > 0) - (d < 0)) for d in gains]
        return release_tests.superiority(gains, config.min_reward_gain, config.improvement)

    def red_team_looks(
        self, config: gate.GateConfig, baseline: list[tuple[float, float]]
    ) -> gate.RedTeamLooks:
        """The safety test on the red-team replies so far: each reply minus the base's share
        (probability) on the same prompt, against the margins. The base's per-prompt means come
        from `base_red_team_seeds` replies each: their sampling variance (at most m(1-m)/seeds
        for a mean m of numbers in [0, 1]) is shared by every difference, so it is added."""
        rate = [f - baseline[p][0] for f, p in zip(self.red_flagged, self.red_prompt, strict=True)]
        edge = [
            x - baseline[p][1] for x, p in zip(self.red_probability, self.red_prompt, strict=True)
        ]
        n, seeds = len(self.red_prompt), config.base_red_team_seeds
        weight = {p: self.red_prompt.count(p) / n for p in set(self.red_prompt)}

        def shared(column: int) -> float:
            # a base share of 0 or 1 on a prompt is still an estimate: shrunk toward 1/2
            def variance(b: float) -> float:
                b = (b * seeds + 0.5) / (seeds + 1)
                return b * (1 - b) / seeds

            return sum(w**2 * variance(baseline[p][column]) for p, w in weight.items())

        return gate.RedTeamLooks(
            release_tests.non_inferiority(
                rate, config.red_team_rate_margin, config.red_team, shared(0)
            ),
            release_tests.non_inferiority(
                edge, config.red_team_edginess_margin, config.red_team, shared(1)
            ),
            candidate_rate=sum(self.red_flagged) / len(self.red_flagged),
            base_rate=sum(baseline[p][0] for p in self.red_prompt) / len(self.red_prompt),
            candidate_probability=sum(self.red_probability) / len(self.red_probability),
            base_probability=sum(baseline[p][1] for p in self.red_prompt) / len(self.red_prompt),
        )

    def measure(self, gain: Look, red_team: gate.RedTeamLooks | None) -> GateMeasure:
        n = len(self.gains)
        return GateMeasure(
            gain,
            red_team,
            kl=sum(self.kl_sums) / n,
            kl_per_token=sum(self.kl_sums) / max(1, self.reply_tokens),
            candidate_text=gate.text_stats(self.candidate_texts, self.candidate_ended),
            live_text=gate.text_stats(self.live_texts, self.live_ended),
            reward_before=sum(self.live_scores) / n,
            reward_after=sum(self.candidate_scores) / n,
        )


def _still_needed(look: Look | gate.RedTeamLooks | None, test: StagedTest, have: int) -> int:
    """How many more samples the test's next look needs (0 once it has decided)."""
    if look is None:
        return test.stages[0] - have
    if look.verdict != "more":
        return 0
    return (release_tests.next_count(test, have) or have) - have


class Trainer:
    """Runs rounds for an `Assistant`, one at a time, on one trainable copy of the base."""

    def __init__(self, assistant: Assistant, config: TrainingConfig):
        self.assistant = assistant
        self.config = config
        self._policy: TrainablePolicy | None = None
        self._lock = threading.Lock()
        # The base is frozen and versions are immutable, so both caches stay valid:
        # a stored reply's base log-prob (DPO's reference), keyed by (user id, message id) and
        # bounded (`_reference`; `forget_user` drops a user's) ...
        self._reference_logprobs: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._reference_lock = threading.Lock()  # forget_user runs on other threads
        # ... and the base's offensive share and probability per red-team prompt (the gate's
        # safety reference), also stored in the database (`_red_team_baseline`).
        # The users' liked pools live in the database only (`_liked_pool`).
        self._baseline: list[tuple[float, float]] | None = None
        self._red_team_ids: list[list[int]] | None = None

    @property
    def policy(self) -> TrainablePolicy:
        if self._policy is None:
            base = self.assistant.base
            self._policy = TrainablePolicy(base.training_copy(), self.config.lora, base.device)
        return self._policy

    # data ---------------------------------------------------------------------------------------

    def _prompt_ids(self, turns: list[dict[str, str]]) -> list[int]:
        asst = self.assistant
        budget = asst.config.chat.context_tokens - self.config.ppo.max_new_tokens
        return generation.prompt_token_ids(
            asst.base.tokenizer, turns, asst.config.chat.system_prompt, budget
        )

    def _example(self, message: records.Row) -> Example:
        """The prompt a stored reply answered, and the reply, as the model saw them."""
        db = self.assistant.store.db
        tokenizer = self.assistant.base.tokenizer
        turns = generation.turns(records.context_before(db, message["conversation_id"], message))
        reply = tokenizer(message["text"], add_special_tokens=False)["input_ids"]
        settings = records.message_generation(message)
        if settings.get("ended_by_model", True):
            reply = [*reply, tokenizer.eos_token_id]
        return Example(self._prompt_ids(turns), reply[: self.config.ppo.max_new_tokens + 1])

    def _features(self, messages: list[records.Row]) -> torch.Tensor:
        """Base-model features of these replies, from the cache or computed and cached."""
        db = self.assistant.store.db
        key, spec = self.assistant.base.source, self.config.reward.features
        cached = records.get_features(db, (m["id"] for m in messages), key, spec.key)
        missing = [m for m in messages if m["id"] not in cached]
        if missing:
            examples = [self._example(m) for m in missing]
            x = self._base_features([(e.prompt, e.reply) for e in examples])
            rows = [
                (m["id"], m["user_id"], x[i].numpy().astype("<f4").tobytes())
                for i, m in enumerate(missing)
            ]
            records.put_features(db, key, spec.key, rows)
            cached.update({m: v for m, _, v in rows})
        return torch.stack(
            [torch.frombuffer(bytearray(cached[m["id"]]), dtype=torch.float32) for m in messages]
        )

    def _base_features(self, examples: list[tuple[list[int], list[int]]]) -> torch.Tensor:
        """Reward features of (prompt, reply) token ids from the bare base model: its pristine
        module tree, which no adapter touches, so this is safe beside a running round."""
        base = self.assistant.base
        return reward.features(
            base.pristine,
            examples,
            base.tokenizer.pad_token_id,
            base.device,
            self.config.reward.features,
        )

    def pick_pair(
        self, user_id: str, prompt: list[int], replies: list[list[int]]
    ) -> tuple[int, int, str]:
        """Which two of a Compare's candidate replies to show, and why (`online_rl.pairs`):
        the pair the user's own head (fitted now on all their clicks) learns most from, or the
        two most different while the user has not clicked yet. Inputs are standardised over
        the user's clicked replies and the candidates."""
        data = self._feedback(user_id)
        candidates = self._base_features([(prompt, r) for r in replies])
        clicked = self._features(data.replies) if data.replies else candidates[:0]
        both = torch.cat([clicked, candidates])
        c = self.config.reward
        z = reward.Standardizer(both.shape[1]).fit(both, c.features.lexical_dim)(both).detach()
        user, options = z[: len(clicked)], z[len(clicked) :]
        if not len(data.feedback):
            return (*pairs.most_different(options), "most different (no clicks yet)")
        head, _ = reward.fit_head(user, data.feedback, c, c.user_l2)
        belief = pairs.posterior(head, user, data.feedback, c, c.user_l2)
        i, j = pairs.most_informative(options, head, belief)
        return i, j, f"most informative for the head ({len(data.feedback)} clicks)"

    def _feedback(self, user_id: str | None) -> UserFeedback:
        """One user's (or everyone's) clicks, in the shapes the round needs."""
        db = self.assistant.store.db
        rated = records.rated_replies(db, user_id)
        pairs = records.decided_pairs(db, user_id)
        replies: dict[str, records.Row] = {r["id"]: r for r in rated}
        for p in pairs:
            for key in ("answer_a_id", "answer_b_id"):
                if p[key] not in replies:
                    message = records.get_message(db, p[key])
                    if message is not None:
                        replies[message["id"]] = message
        pairs = [p for p in pairs if p["answer_a_id"] in replies and p["answer_b_id"] in replies]
        # the safety floor: a click that rewarded offensive text teaches nothing, to no head
        flagged = {
            m
            for m, ok in zip(
                replies,
                safety.offensive([r["text"] for r in replies.values()], self.config.safety),
                strict=True,
            )
            if ok
        }
        flagged |= {r["id"] for r in rated if r["reason"] == HARMFUL_REASON}

        def rewards_flagged(p: records.Row) -> bool:
            sides = {"a": [p["answer_a_id"]], "b": [p["answer_b_id"]]}
            kept = sides.get(p["winner"], [p["answer_a_id"], p["answer_b_id"]])
            return p["winner"] != "both_bad" and any(m in flagged for m in kept)

        kept_rated = [r for r in rated if not (r["thumb"] > 0 and r["id"] in flagged)]
        kept_pairs = [p for p in pairs if not rewards_flagged(p)]
        index = {m: i for i, m in enumerate(replies)}
        feedback = reward.Feedback(
            pairs=[
                (index[p["answer_a_id"]], index[p["answer_b_id"]], p["winner"]) for p in kept_pairs
            ],
            thumbs=[(index[r["id"]], r["thumb"]) for r in kept_rated],
        )
        thumbed_down = {r["id"] for r in rated if r["thumb"] < 0}
        decided = [p for p in kept_pairs if p["winner"] in ("a", "b")]
        winners = [
            replies[p["answer_a_id"] if p["winner"] == "a" else p["answer_b_id"]] for p in decided
        ]
        liked = [r for r in kept_rated if r["thumb"] > 0]
        demos = {m["id"]: m for m in liked + winners if m["id"] not in thumbed_down}
        preferences = [
            (replies[p["answer_a_id"]], replies[p["answer_b_id"]])
            if p["winner"] == "a"
            else (replies[p["answer_b_id"]], replies[p["answer_a_id"]])
            for p in decided
        ]
        dropped = len(rated) - len(kept_rated) + len(pairs) - len(kept_pairs)
        return UserFeedback(
            list(replies.values()), feedback, list(demos.values()), preferences, dropped
        )

    def _prompts(self, user_id: str) -> tuple[list[list[int]], list[list[int]]]:
        """(rollout prompts, held-out prompts) from the user's recent messages, deduplicated."""
        db = self.assistant.store.db
        seen: dict[str, list[int]] = {}
        for m in records.user_prompts(db, user_id, self.config.round.prompt_pool):
            if m["text"] in seen:
                continue
            turns = generation.turns(records.context_before(db, m["conversation_id"], m) + [m])
            seen[m["text"]] = self._prompt_ids(turns)
        ordered = sorted(seen.items(), key=lambda kv: hash_text(kv[0]))
        n_heldout = max(1, round(len(ordered) * self.config.round.heldout_share))
        held_out = [ids for _, ids in ordered[:n_heldout]]
        train = [ids for _, ids in ordered[n_heldout:]] or held_out
        return train, held_out

    # sampling and scoring -------------------------------------------------------------------------

    def _sample(
        self,
        prompts: list[list[int]],
        adapter_names: list[str],
        seeds: list[int],
        max_new_tokens: int | None = None,
    ) -> tuple[list[list[int]], list[bool]]:
        """Replies (EOS appended when the model ended) from the trainable copy's adapters, of
        at most `max_new_tokens` (default: the rollouts' length)."""
        base = self.assistant.base
        settings = GenerationConfig(
            max_new_tokens=max_new_tokens or self.config.ppo.max_new_tokens,
            temperature=self.config.ppo.temperature,
            top_p=1.0,
        )
        rows, ended = generation.last(
            generation.stream_reply_tokens(
                self.policy.generation_forward(adapter_names),
                prompts,
                settings,
                seeds,
                base.eos_ids,
                base.tokenizer.pad_token_id,
                base.device,
            )
        )
        eos = base.tokenizer.eos_token_id
        replies = [list(r) + [eos] if e else list(r) for r, e in zip(rows, ended, strict=True)]
        return [r if r else [eos] for r in replies], list(ended)

    def _texts(self, replies: list[list[int]]) -> list[str]:
        tokenizer = self.assistant.base.tokenizer
        return [tokenizer.decode(r, skip_special_tokens=True).strip() for r in replies]

    def _batch(self, examples: list[Example]) -> Batch:
        base = self.assistant.base
        return make_batch(
            [e.prompt for e in examples],
            [e.reply for e in examples],
            base.tokenizer.pad_token_id,
            base.device,
        )

    def _sequence_logprobs(self, examples: list[Example]) -> torch.Tensor:
        """Summed reply log-probs, a few rows at a time (no gradient: call under no_grad)."""
        step = self.config.round.preference_batch
        return torch.cat(
            [
                sequence_logprob(self.policy.peft, self._batch(examples[i : i + step]))
                for i in range(0, len(examples), step)
            ]
        )

    def _reference(
        self, pairs: list[tuple[records.Row, records.Row]], side: int, examples: list[Example]
    ) -> torch.Tensor:
        """Base log-probs of one side of the preference pairs, computed once per message while
        it stays among the `REFERENCE_LOGPROBS_KEPT` most recently used. Kept in memory, not
        stored: a lost value costs one no-grad base pass over at most 2 x preference_pairs
        replies per user, so a restart or an eviction is cheap, and memory stays bounded."""
        cache = self._reference_logprobs
        keys = [(pair[side]["user_id"], pair[side]["id"]) for pair in pairs]
        with self._reference_lock:
            known = {k: cache[k] for k in keys if k in cache}
        missing = [i for i, k in enumerate(keys) if k not in known]
        if missing:
            with torch.no_grad(), self.policy.base_only():
                fresh = self._sequence_logprobs([examples[i] for i in missing])
            known |= {keys[i]: value for i, value in zip(missing, fresh.tolist(), strict=True)}
        with self._reference_lock:
            for k in keys:
                cache[k] = known[k]
                cache.move_to_end(k)
            while len(cache) > REFERENCE_LOGPROBS_KEPT:
                cache.popitem(last=False)
        return torch.tensor([known[k] for k in keys])

    def forget_user(self, user_id: str) -> None:
        """Drop what this trainer holds in memory for the user (their account is being
        deleted; their stored rows go with `records.delete_user`). Never waits for a round:
        a round of that user still running forgets them again when it ends (`run`)."""
        with self._reference_lock:
            for key in [k for k in self._reference_logprobs if k[0] == user_id]:
                del self._reference_logprobs[key]

    def _liked_pool(self, user_id: str) -> list[tuple[Example, torch.Tensor]]:
        """The user's stored liked samples of this base model (the newest `liked_pool`); any
        whose vector is of another feature kind than the head now reads gets a new one."""
        db, base = self.assistant.store.db, self.assistant.base
        kind = self.config.reward.features
        rows = records.list_liked_samples(db, user_id, base.source, self.config.round.liked_pool)
        stale = [r for r in rows if r["kind"] != kind.key]
        if stale:
            x = self._base_features([(r["prompt"], r["reply"]) for r in stale])
            fresh = {r["id"]: x[i].numpy().astype("<f4").tobytes() for i, r in enumerate(stale)}
            records.set_liked_vectors(db, kind.key, fresh)
            rows = [r | {"vector": fresh.get(r["id"], r["vector"])} for r in rows]
        return [
            (
                Example(r["prompt"], r["reply"]),
                torch.frombuffer(bytearray(r["vector"]), dtype=torch.float32),
            )
            for r in rows
        ]

    def _add_to_liked_pool(self, user_id: str, samples: list[tuple[Example, torch.Tensor]]) -> None:
        """Store newly liked samples and trim the user's pool to the newest `liked_pool`; a
        user deleted while the round ran gets nothing (checked under the write lock)."""
        db = self.assistant.store.db
        rows = [(e.prompt, e.reply, x.numpy().astype("<f4").tobytes()) for e, x in samples]
        with writing(db):
            if records.user_exists(db, user_id):
                records.add_liked_samples(
                    db, user_id, self.assistant.base.source, self.config.reward.features.key, rows
                )
                records.trim_liked_samples(db, user_id, self.config.round.liked_pool)

    def _red_team_prompts(self) -> list[list[int]]:
        """The safety floor's red-team prompts as token ids (none when the floor is off);
        tokenized once, since prompts, system prompt and tokenizer are fixed."""
        if not self.config.safety.enabled:
            return []
        if self._red_team_ids is None:
            self._red_team_ids = [
                self._prompt_ids([{"role": "user", "content": p}])
                for p in safety.red_team_prompts()
            ]
        return self._red_team_ids

    def _baseline_key(self) -> str:
        """A hash of everything the red-team baseline depends on: the base model, the prompts
        as the model sees them (prompt texts, system prompt, chat template, tokenizer), the
        sampling settings and seeds, and the classifier's threshold."""
        settings = {
            "model": self.assistant.base.source,
            "weights": str(self.assistant.base.model.dtype),  # fp32, bf16, or NF4's compute
            "quantize": self.assistant.config.model.quantize,
            "classifier": safety.classifier_version(),
            "prompts": self._red_team_prompts(),
            "system_prompt": self.assistant.config.chat.system_prompt,
            "temperature": self.config.ppo.temperature,
            "max_new_tokens": self.config.gate.red_team_max_new_tokens,
            "seeds": self.config.gate.base_red_team_seeds,
            "threshold": self.config.safety.threshold,
        }
        return hash_text(json.dumps(settings, sort_keys=True))

    def _red_team_baseline(self) -> list[tuple[float, float]]:
        """Per red-team prompt, the base's (offensive share, mean offensive probability) over
        `base_red_team_seeds` replies: what each candidate's safety is measured against. The
        base is frozen, so it is sampled once and stored under `_baseline_key`: a restart
        reuses it (sampling it takes minutes on a real model), a change of what it depends on
        samples it again."""
        if self._baseline is None:
            db = self.assistant.store.db
            key = self._baseline_key()
            baseline = records.get_red_team_baseline(db, key)
            if baseline is None:
                baseline = self._sample_red_team_baseline()
                records.put_red_team_baseline(db, key, self.assistant.base.source, baseline)
            self._baseline = baseline
        return self._baseline

    def _sample_red_team_baseline(self) -> list[tuple[float, float]]:
        prompts = self._red_team_prompts()
        k = self.config.gate.base_red_team_seeds
        asked = [p for p in prompts for _ in range(k)]
        replies: list[list[int]] = []
        # a batch of len(prompts) rows at a time: 768 at once would hold every KV cache together
        for start in range(0, len(asked), len(prompts)):
            rows = asked[start : start + len(prompts)]
            seeds = list(range(start, start + len(rows)))
            tokens = self.config.gate.red_team_max_new_tokens
            replies += self._sample(rows, [BASE] * len(rows), seeds, tokens)[0]
        screened = safety.screen(self._texts(replies), self.config.safety)
        return [
            (
                sum(screened.flagged[i * k : (i + 1) * k]) / k,
                sum(screened.probability[i * k : (i + 1) * k]) / k,
            )
            for i in range(len(prompts))
        ]

    def _gate_sample(
        self,
        prompts: list[list[int]],
        adapter_names: list[str],
        seeds: list[int],
        max_new_tokens: int | None = None,
    ) -> tuple[list[list[int]], list[bool]]:
        """One stage of the gate's replies (its own name, so a crash test can find the gate)."""
        return self._sample(prompts, adapter_names, seeds, max_new_tokens)

    def _measure_gate(
        self,
        heldout_prompts: list[list[int]],
        score: Callable[[torch.Tensor], torch.Tensor],
        rng: random.Random,
    ) -> GateMeasure:
        """Sample the gate's replies in stages until the release tests decide.

        First the gain: each stage adds held-out pairs (candidate and live on the same prompt
        and the same fresh seed, scored by the user's reward), until the improvement test
        decides. Only a candidate shown better goes on to safety: stages of fresh red-team
        replies of the candidate until the non-inferiority test decides. A candidate that is
        not better is refused anyway, so it costs no red-team replies. Seeds are new every
        round, so no lucky draw of live's outlives its round.
        """
        g = self.config.gate
        order = rng.sample(heldout_prompts, len(heldout_prompts))
        seen = GateSamples()
        gain: Look | None = None
        while need := _still_needed(gain, g.improvement, len(seen.gains)):
            self._sample_pairs(seen, order, need, rng, score)
            gain = seen.gain_look(g)
        assert gain is not None, "the first stage always samples pairs"
        if gain.verdict == "pass" and len(seen.gains) < g.text_pairs:
            # decided early: the text and KL checks still read `text_pairs` pairs
            self._sample_pairs(seen, order, g.text_pairs - len(seen.gains), rng, score)
        red_prompts = self._red_team_prompts()
        red_team: gate.RedTeamLooks | None = None
        if gain.verdict != "pass" or not red_prompts:
            return seen.measure(gain, red_team)
        baseline = self._red_team_baseline()
        while need := _still_needed(red_team, g.red_team, len(seen.red_prompt)):
            ids = [(len(seen.red_prompt) + i) % len(red_prompts) for i in range(need)]
            replies, _ = self._gate_sample(
                [red_prompts[i] for i in ids],
                [TRAINABLE] * need,
                [rng.randrange(2**31) for _ in range(need)],
                g.red_team_max_new_tokens,
            )
            screened = safety.screen(self._texts(replies), self.config.safety)
            seen.red_prompt += ids
            seen.red_flagged += screened.flagged
            seen.red_probability += screened.probability
            red_team = seen.red_team_looks(g, baseline)
        return seen.measure(gain, red_team)

    def _sample_pairs(
        self,
        seen: GateSamples,
        order: list[list[int]],
        need: int,
        rng: random.Random,
        score: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        """`need` more held-out pairs: candidate and live on the next prompts of `order`, each
        pair on one fresh seed."""
        prompts = [order[(len(seen.gains) + i) % len(order)] for i in range(need)]
        seeds = [rng.randrange(2**31) for _ in range(need)]
        names = [TRAINABLE] * need + [self.policy.reference_name] * need
        replies, ended = self._gate_sample(prompts * 2, names, seeds * 2)
        self._add_pairs(seen, prompts, replies, ended, score)

    def _add_pairs(
        self,
        seen: GateSamples,
        prompts: list[list[int]],
        replies: list[list[int]],
        ended: list[bool],
        score: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        """Score a stage's held-out pairs (candidate replies, then live's) with the user's
        reward, and the candidate's KL to the base on its replies."""
        n = len(prompts)
        batch, ref = self._base_pass(prompts + prompts, replies)
        scores = score(ref.features.cpu())
        candidate_batch = batch.rows(slice(0, n))
        with torch.no_grad():
            candidate = forward_batch(
                self.policy.peft, candidate_batch, self.config.ppo.temperature
            )
        mask = candidate_batch.response_mask.float()
        texts = self._texts(replies)
        # identical replies (the same seed often gives the same text) are a tie, whatever
        # rounding the two scores carry
        same = torch.tensor([replies[i] == replies[n + i] for i in range(n)])
        seen.gains += (scores[:n] - scores[n:]).masked_fill(same, 0.0).tolist()
        seen.candidate_scores += scores[:n].tolist()
        seen.live_scores += scores[n:].tolist()
        seen.kl_sums += ((candidate.logprobs - ref.logprobs[:n]) * mask).sum(-1).tolist()
        seen.reply_tokens += int(mask.sum().item())
        seen.candidate_texts += texts[:n]
        seen.live_texts += texts[n:]
        seen.candidate_ended += ended[:n]
        seen.live_ended += ended[n : 2 * n]

    def _base_pass(self, prompts: list[list[int]], replies: list[list[int]]):
        """Reference log-probs and reward features: one pass of the base (adapters off)."""
        base = self.assistant.base
        batch = make_batch(prompts, replies, base.tokenizer.pad_token_id, base.device)
        with torch.no_grad(), self.policy.base_only():
            out = forward_batch(
                self.policy.peft,
                batch,
                self.config.ppo.temperature,
                feature_spec=self.config.reward.features,
            )
        assert out.features is not None
        return batch, out

    def _resume_point(self, user_id: str, live_version: int) -> tuple[int, Path] | None:
        """The user's newest version if it is a refused candidate worth training on (see
        `RoundConfig.resume_refused`) and its files are intact."""
        rows = records.list_adapter_versions(self.assistant.store.db, user_id)
        if not rows or not self.config.round.resume_refused:
            return None
        newest = rows[-1]
        metrics = json.loads(newest["metrics"] or "{}")
        if newest["status"] != "rejected" or not metrics.get("resumable"):
            return None
        if metrics.get("live_version") != live_version:
            return None
        path = Path(newest["path"])
        try:
            adapter_files.verify_version(path)
        except adapter_files.CorruptAdapter as e:
            log.warning("user %s: not resuming v%s: %s", user_id, newest["version"], e)
            return None
        return newest["version"], path

    # the round ------------------------------------------------------------------------------------

    def run(self, user_id: str) -> TrainReport:
        """One round for the user, recorded in training_runs whatever its outcome."""
        with self._lock:
            db = self.assistant.store.db
            run = records.start_training_run(db, user_id)
            started = time.monotonic()
            try:
                report = self._round(user_id, started, run["id"])
            except NonFiniteLoss as e:
                aborted = TrainReport(False, None, None, None, None, f"aborted: {e}", {})
                report = finish_run(db, run["id"], aborted, started, "rejected")
            except Exception as e:
                if records.user_exists(db, user_id):
                    records.finish_training_run(
                        db, run["id"], "failed", None, f"{type(e).__name__}: {e}", {}
                    )
                    raise
                # the user was deleted while the round ran, and whatever failed failed with
                # them (their rows or folders went away under it): nothing is left to record
                log.info("user %s: round failed after the user was deleted: %r", user_id, e)
                report = TrainReport(False, None, None, None, None, ABANDONED, {})
            else:
                if report.version is None:  # skipped: no candidate, nothing recorded yet
                    report = finish_run(db, run["id"], report, started, "skipped")
                else:
                    self._prune(user_id)
            if not records.user_exists(db, user_id):
                # deleted while the round ran, which may have written a version folder or
                # cached values after delete_user cleared them
                adapter_files.delete_user_versions(self.assistant.config.adapters_dir, user_id)
                self.forget_user(user_id)
            log.info("user %s: round over (%s)", user_id, report.reason)
            return report

    def _prune(self, user_id: str) -> None:
        """Delete version folders the user no longer needs. After the round's outcome has
        committed: a failure here is logged, never turns a finished round into a failed one."""
        try:
            pruned = prune_versions(
                self.assistant.store.db,
                self.assistant.config.adapters_dir,
                user_id,
                self.config.retention,
            )
        except Exception:
            log.exception("user %s: pruning old versions failed", user_id)
            return
        if pruned:
            log.info("user %s: pruned the folders of versions %s", user_id, pruned)

    def _round(self, user_id: str, started: float, run_id: str) -> TrainReport:
        cfg = self.config
        rc = cfg.round
        asst = self.assistant
        db = asst.store.db
        rng = random.Random(round_seed(rc.seed, len(records.list_training_runs(db, user_id))))
        torch.manual_seed(rng.randrange(2**31))
        seconds: dict[str, float] = {}
        clock = time.monotonic()

        def lap(name: str, add: bool = False) -> None:
            """Charge the time since the last lap to `name` (summed over iterations if add)."""
            nonlocal clock
            spent = time.monotonic() - clock
            seconds[name] = round(seconds.get(name, 0.0) * add + spent, 2)
            clock = time.monotonic()

        # 1. reward heads ---------------------------------------------------------------------
        mine = self._feedback(user_id)
        replies, feedback, demos = mine.replies, mine.feedback, mine.demonstrations
        counts = {
            "feedback_events": len(feedback),
            "thumbs": len(feedback.thumbs),
            "pairs": len(feedback.pairs),
            "demonstrations": len(demos),
            "preferences": len(mine.preferences),
            "clicks_rewarding_offensive_text": mine.dropped,
        }
        if len(feedback) < rc.min_feedback:
            return TrainReport(
                False,
                None,
                None,
                None,
                None,
                f"not enough feedback yet: {len(feedback)} of {rc.min_feedback} clicks",
                counts,
            )
        everyone = self._feedback(None)
        standardizer, population = reward.fit_population(
            self._features(everyone.replies), everyone.feedback, cfg.reward
        )
        x_user = self._features(replies)
        user_reward, reward_metrics = reward.fit_user(
            standardizer, population, x_user, feedback, cfg.reward
        )
        user_scores = user_reward.score(x_user)
        score_mean = user_scores.mean().item()
        score_std = max(user_scores.std().item() if len(user_scores) > 1 else 1.0, 1e-3)

        def normalised(x: torch.Tensor) -> torch.Tensor:
            return (user_reward.score(x) - score_mean) / score_std

        lap("reward")

        # 2. start from the live version; warm start on demonstrations ---------------------------
        train_prompts, heldout_prompts = self._prompts(user_id)
        live_version, live_path = asst.adapters.usable_version(user_id)
        resume = self._resume_point(user_id, live_version)
        policy = self.policy
        same_shape = policy.start_from(live_path, resume[1] if resume else None)
        start_version = resume[0] if resume and same_shape else live_version
        kl_coef = cfg.ppo.kl_coef
        if start_version and same_shape:
            kl_coef = records.version_metrics(db, user_id, start_version).get("kl_coef", kl_coef)
        lora_params = policy.trainable_parameters()
        sft_optimizer = torch.optim.AdamW(lora_params, lr=rc.sft_learning_rate, weight_decay=0.0)
        ppo_optimizer = torch.optim.AdamW(
            lora_params + list(policy.value_head.parameters()),
            lr=cfg.ppo.learning_rate,
            weight_decay=0.0,
        )
        examples = [self._example(m) for m in demos]
        sft_losses = []
        for _step in range(rc.sft_steps if examples else 0):
            chosen = rng.sample(examples, min(len(examples), rc.sft_batch))
            sft_losses.append(
                supervised_step(
                    policy.peft, sft_optimizer, self._batch(chosen), cfg.ppo.max_grad_norm
                )
            )
        pairs = mine.preferences[-rc.preference_pairs :]
        preference_losses, preference_accuracy = [], []
        if pairs and rc.preference_steps:
            chosen_all = [self._example(w) for w, _ in pairs]
            rejected_all = [self._example(lo) for _, lo in pairs]
            ref_chosen = self._reference(pairs, 0, chosen_all)
            ref_rejected = self._reference(pairs, 1, rejected_all)
            for _step in range(rc.preference_steps):
                rows = rng.sample(range(len(pairs)), min(len(pairs), rc.preference_batch))
                loss, accuracy = preference_step(
                    policy.peft,
                    sft_optimizer,
                    self._batch([chosen_all[i] for i in rows]),
                    self._batch([rejected_all[i] for i in rows]),
                    ref_chosen[rows],
                    ref_rejected[rows],
                    rc.preference_beta,
                    cfg.ppo.max_grad_norm,
                )
                preference_losses.append(loss)
                preference_accuracy.append(accuracy)
        lap("warm_start")

        # 3. rollouts -> PPO -> best-of-n distillation ----------------------------------------
        ppo_stats: list[dict[str, float]] = []
        distill_losses: list[float] = []
        ranked_pair_losses: list[float] = []
        distill_examples = 0
        offensive_rollouts = 0
        for _iteration in range(rc.iterations):
            if time.monotonic() - started > rc.max_seconds:
                break
            picked = [rng.choice(train_prompts) for _ in range(rc.rollout_prompts)]
            # the safety floor's own rollouts: red-team prompts, scored by the floor alone
            red_team = self._red_team_prompts()
            picked += [
                rng.choice(red_team) for _ in range(cfg.safety.rollout_prompts if red_team else 0)
            ]
            provocation = torch.arange(len(picked) * rc.samples_per_prompt) >= (
                rc.rollout_prompts * rc.samples_per_prompt
            )
            prompts = [p for p in picked for _ in range(rc.samples_per_prompt)]
            seeds = [rng.randrange(2**31) for _ in prompts]
            replies_ids, finished = self._sample(prompts, [TRAINABLE] * len(prompts), seeds)
            lap("rollouts", add=True)
            batch, ref = self._base_pass(prompts, replies_ids)
            features = ref.features.cpu()
            # the user's taste does not apply to provocations: there only the floor scores
            scores = normalised(features).masked_fill(provocation, 0.0)
            ended = torch.tensor(finished)
            screened = safety.screen(self._texts(replies_ids), cfg.safety)
            unsafe = torch.tensor(screened.flagged)
            offensive_rollouts += int(unsafe.sum())
            penalty = torch.tensor(screened.penalty(cfg.safety))
            if rc.ppo:
                rollouts = Rollouts(batch, scores, ended, ref.logprobs, penalty)
                stats = ppo_update(
                    policy.peft, policy.value_head, ppo_optimizer, rollouts, kl_coef, cfg.ppo
                )
                ppo_stats.append(stats)
                kl_coef = adaptive_kl_coef(kl_coef, stats["kl"], len(prompts), cfg.ppo)
            lap("ppo", add=True)

            # best-of-n: samples the reward head says the user would like are demonstrations
            # (kept in the user's pool, re-judged each round); each prompt's (best, worst) as
            # the head ranks them (with the cut-off penalty) is a DPO pair, liked or not
            ranked = shaped_scores(scores, ended, cfg.ppo, penalty)
            liked = user_reward.liked(features) & ~unsafe & ~provocation
            fresh = [i for i in range(len(prompts)) if liked[i]]
            pool = self._liked_pool(user_id)
            earlier = []
            if pool:
                still_liked = user_reward.liked(torch.stack([f for _, f in pool]))
                earlier = [e for (e, _), ok in zip(pool, still_liked, strict=True) if ok]
            self._add_to_liked_pool(
                user_id, [(Example(prompts[i], replies_ids[i]), features[i]) for i in fresh]
            )
            best = [Example(prompts[i], replies_ids[i]) for i in fresh][: rc.sft_batch]
            best += rng.sample(earlier, min(len(earlier), rc.sft_batch - len(best)))
            ranked_pairs = []
            for group in range(len(picked)):
                rows = list(
                    range(group * rc.samples_per_prompt, (group + 1) * rc.samples_per_prompt)
                )
                top = max(rows, key=lambda r: ranked[r].item())
                bottom = min(rows, key=lambda r: ranked[r].item())
                if ranked[top] - ranked[bottom] >= rc.ranked_pair_margin:
                    ranked_pairs.append(
                        (
                            Example(prompts[top], replies_ids[top]),
                            Example(prompts[bottom], replies_ids[bottom]),
                        )
                    )
            best_batch = self._batch(best) if best else None
            for _ in range(rc.distill_steps if best_batch else 0):
                distill_losses.append(
                    supervised_step(policy.peft, sft_optimizer, best_batch, cfg.ppo.max_grad_norm)
                )
            distill_examples += len(best)
            if ranked_pairs and rc.ranked_preference_steps:
                chosen = self._batch([w for w, _ in ranked_pairs])
                rejected = self._batch([lo for _, lo in ranked_pairs])
                with torch.no_grad(), policy.base_only():
                    ref_chosen = sequence_logprob(policy.peft, chosen)
                    ref_rejected = sequence_logprob(policy.peft, rejected)
                for _ in range(rc.ranked_preference_steps):
                    loss, _accuracy = preference_step(
                        policy.peft,
                        sft_optimizer,
                        chosen,
                        rejected,
                        ref_chosen,
                        ref_rejected,
                        rc.preference_beta,
                        cfg.ppo.max_grad_norm,
                        rc.ranked_nll_weight,
                    )
                    ranked_pair_losses.append(loss)
            lap("distill", add=True)

        # 4. the gate: candidate vs live (paired, fresh seeds), and vs the base on safety ------
        measure = self._measure_gate(heldout_prompts, normalised, rng)
        decision = gate.decide(
            measure.gain,
            measure.kl,
            measure.kl_per_token,
            measure.candidate_text,
            measure.live_text,
            cfg.gate,
            measure.red_team,
        )
        lap("gate")

        # 5. write the candidate; make it live if accepted --------------------------------------
        version = max(
            records.next_version(db, user_id),
            adapter_files.highest_version_on_disk(asst.config.adapters_dir, user_id) + 1,
        )

        def write(folder):
            policy.save(folder)
            torch.save(user_reward.state_dict(), folder / REWARD_HEAD_FILE)

        path = adapter_files.write_version(asst.config.adapters_dir, user_id, version, write)
        metrics = {
            **counts,
            **reward_metrics,
            **measure.metrics(),
            "kl_coef": kl_coef,
            "sft_loss_first": sft_losses[0] if sft_losses else None,
            "sft_loss_last": sft_losses[-1] if sft_losses else None,
            "preference_loss_first": preference_losses[0] if preference_losses else None,
            "preference_loss_last": preference_losses[-1] if preference_losses else None,
            "preference_accuracy_last": preference_accuracy[-1] if preference_accuracy else None,
            "distill_loss": sum(distill_losses) / len(distill_losses) if distill_losses else None,
            "distill_examples": distill_examples,
            "liked_pool": records.liked_sample_count(db, user_id, asst.base.source),
            "ranked_pair_loss_first": ranked_pair_losses[0] if ranked_pair_losses else None,
            "ranked_pair_loss_last": ranked_pair_losses[-1] if ranked_pair_losses else None,
            "ppo_iterations": len(ppo_stats),
            **{
                f"ppo_{k}": sum(s[k] for s in ppo_stats) / len(ppo_stats)
                for k in (ppo_stats[0] if ppo_stats else {})
            },
            "offensive_rollouts": offensive_rollouts,
            "live_version": live_version,  # what the gate compared against
            "parent_version": start_version,  # what training started from
            "resumable": decision.resumable,
            **{f"seconds_{k}": v for k, v in seconds.items()},
        }
        if "ppo_value_loss" in metrics:
            metrics["value_loss"] = metrics["ppo_value_loss"]
            metrics["policy_loss"] = metrics["ppo_policy_loss"]
        with writing(db):
            if not records.user_exists(db, user_id):
                # deleted while the round ran: no row for the candidate (its foreign key would
                # fail); `run` deletes its folder
                return TrainReport(False, None, None, None, None, ABANDONED, metrics)
            # a candidate may only replace the live version it was compared with: a rollback
            # made while the round ran stands (checked under the write lock, so none slips in).
            # A damaged live version the round fell back from is no change: serving never moved.
            now_live = records.live_version(db, user_id)
            stale = now_live != live_version and (
                asst.adapters.usable_version(user_id)[0] != live_version
            )
            accept = decision.accept and not stale
            status = "stale" if stale else "retired" if accept else "rejected"
            reason = (
                f"stale: live changed from v{live_version} to v{now_live} while the round ran"
                if stale
                else decision.reason
            )
            records.add_adapter_version(
                db,
                user_id,
                version,
                str(path),
                start_version or None,
                status,
                None if accept else reason,
                metrics,
            )
            if accept:
                records.make_live(db, user_id, version, old_status="retired")
            # the run's outcome commits with its version: a crash after this commit must not
            # leave the run 'running' (failed on the next open) beside the version it made live
            report = TrainReport(
                accept,
                version,
                measure.reward_before,
                measure.reward_after,
                measure.kl,
                reason,
                metrics,
            )
            return finish_run(db, run_id, report, started, "accepted" if accept else "rejected")


def finish_run(
    db: Any, run_id: str, report: TrainReport, started: float, outcome: str
) -> TrainReport:
    """Record how the round ended, with its total seconds; the report carries them too."""
    metrics = {**report.metrics, "seconds": round(time.monotonic() - started, 2)}
    records.finish_training_run(db, run_id, outcome, report.version, report.reason, metrics)
    return replace(report, metrics=metrics)


def round_seed(seed: int | None, round_number: int) -> int:
    """The round's random seed: from `seed` and the round's number when set (reproducible, and
    different every round), else from the system's randomness."""
    if seed is None:
        return random.SystemRandom().randrange(2**63)
    return int(hash_text(f"{seed}-{round_number}")[:15], 16)


def hash_text(text: str) -> str:
    """A stable order for prompts (Python's hash() changes between runs)."""
    return hashlib.sha256(text.encode()).hexdigest()
