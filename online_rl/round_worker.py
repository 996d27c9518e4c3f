"""The compute of one user's round: from the clicks it is handed to the candidate it hands back.

1. reward: fit the population head on everyone's clicks and the user's residual head on theirs,
   on base-model features cached per reply (`online_rl.reward`).
2. warm start: supervised steps on the user's liked replies and A/B winners, DPO steps on their
   A/B choices (`online_rl.warm_start`).
3. iterations of: sample replies to the user's own recent prompts -> score them with the reward
   head -> one PPO update with the KL leash (`online_rl.ppo.ppo_iteration`) -> best-of-n
   distillation and ranked pairs on the same samples (`online_rl.distill`).
4. gate: better than live on held-out prompts (paired, fresh seeds) and not less safe than the
   base on red-team prompts (`online_rl.gate_measure` samples, `online_rl.gate.decide` decides).

Why not PPO alone: at this scale PPO with a sparse score moves too slowly to be felt (see the
field notes); the demonstrations and the ranked samples give it a dense start, PPO with the KL
leash keeps the update honest. `attune bench personalize` measures what each part adds.

A `RoundWorker` never touches the database or the adapters folder: the serving node gathers a
round's inputs (`RoundInputs`, `online_rl.rounds`) and publishes its result (`RoundResult`), so
the same worker runs in the serving process or in a Ray actor (`online_rl.ray_rounds`).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from assistant.model import LoadedModel
from online_rl import distill, gate, reward, sampling
from online_rl.config import TrainingConfig
from online_rl.gate_measure import GateMeasure, RedTeam, VersionChange, base_replies, measure_gate
from online_rl.policy import Batch, TrainablePolicy
from online_rl.ppo import ppo_iteration
from online_rl.user_data import Example, Prompting
from online_rl.warm_start import ReferenceLogprobs, sequence_logprob, warm_start
from storage import adapters as adapter_files

log = logging.getLogger(__name__)

REWARD_HEAD_FILE = "reward_head.pt"
# DPO reference log-probs kept in memory, the most recently used (`warm_start.ReferenceLogprobs`)
REFERENCE_LOGPROBS_KEPT = 4096

Liked = list[tuple[Example, torch.Tensor]]  # liked rollout samples with their reward features


@dataclass(frozen=True)
class StartPoint:
    """A stored version a round may start from: its number, its files, and the KL coefficient
    its round ended with (None: not recorded)."""

    version: int
    files: adapter_files.AdapterFiles
    kl_coef: float | None


@dataclass(frozen=True)
class RoundInputs:
    """Everything a round reads, gathered by the serving node (picklable: it may travel)."""

    user_id: str
    seed: int
    counts: dict[str, int]  # what the round had to learn from (kept in its metrics)
    feedback: reward.Feedback  # the user's clicks, as indices into `user_x`
    user_x: torch.Tensor  # reward features of every reply the user clicked on
    everyone: reward.Feedback  # every user's clicks (the population head), into `everyone_x`
    everyone_x: torch.Tensor
    demonstrations: list[Example]  # liked replies and A/B winners
    preferences: list[tuple[Example, Example]]  # (winner, loser), the most recent
    preference_keys: list[tuple[tuple[str, str], tuple[str, str]]]  # (user id, message id) each
    train_prompts: list[list[int]]
    heldout_prompts: list[list[int]]
    heldout_texts: list[str]
    live_version: int  # what the gate compares against (0: the base)
    live: StartPoint | None  # its files (None: the base)
    resume: StartPoint | None  # a refused candidate of live worth going on from
    liked_pool: Liked  # liked samples of earlier rounds, oldest first
    red_team_baseline: list[tuple[float, float]] | None  # None: not stored yet, sample it


@dataclass(frozen=True)
class RoundResult:
    """What a round hands back for the serving node to publish."""

    candidate: adapter_files.AdapterFiles  # the adapter, value head and reward head
    accept: bool  # the gate's decision
    reason: str
    reward_before: float
    reward_after: float
    kl: float
    kl_coef: float  # the KL coefficient the round ended with (a round from it carries on)
    start_version: int  # what training started from
    metrics: dict[str, Any]
    liked: Liked  # rollout samples the user's head likes, for the pool
    change: VersionChange | None  # what an accepted candidate does differently
    red_team_baseline: list[tuple[float, float]] | None  # sampled here: the store had none


class Laps:
    """Seconds per phase of a round (an iteration's phases summed over iterations)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._clock = time.monotonic()

    def lap(self, name: str) -> None:
        """Charge the time since the last lap (or charge) to `name`."""
        self.charge(name, time.monotonic() - self._clock)

    def charge(self, name: str, seconds: float) -> None:
        """Charge `seconds` measured elsewhere to `name`, as if lapped now."""
        self.seconds[name] = round(self.seconds.get(name, 0.0) + seconds, 2)
        self._clock += seconds


class RoundWorker:
    """Runs rounds, one at a time, on one trainable copy of the base."""

    def __init__(
        self,
        base: LoadedModel,
        prompting: Prompting,
        config: TrainingConfig,
        between_steps: Callable[[], object] = lambda: None,
    ):
        """between_steps(): called between the round's sampling and update steps; the serving
        process makes it wait while a chat reply is being written (chat first). It changes
        when a step runs, never what it computes."""
        self.base, self.prompting, self.config = base, prompting, config
        self.between_steps = between_steps
        self._policy: TrainablePolicy | None = None
        self._lock = threading.Lock()
        self.references = ReferenceLogprobs(REFERENCE_LOGPROBS_KEPT)
        self.red_team = RedTeam(lambda: self.policy, base, prompting, config)

    @property
    def policy(self) -> TrainablePolicy:
        if self._policy is None:
            self._policy = TrainablePolicy(
                self.base.training_copy(), self.config.lora, self.base.device, self.between_steps
            )
        return self._policy

    def forget_user(self, user_id: str) -> None:
        """Drop what this worker holds in memory for the user (their account is deleted)."""
        self.references.forget(user_id)

    def run(self, inputs: RoundInputs) -> RoundResult:
        """One round on `inputs` (module docstring)."""
        with self._lock:
            return self._round(inputs)

    def _round(self, inputs: RoundInputs) -> RoundResult:
        cfg, rc, base = self.config, self.config.round, self.base
        started = time.monotonic()
        rng = random.Random(inputs.seed)
        torch.manual_seed(rng.randrange(2**31))
        laps = Laps()
        self.red_team.known(inputs.red_team_baseline)
        had_baseline = inputs.red_team_baseline is not None

        # 1. reward heads -----------------------------------------------------------------------
        user_reward, reward_metrics, score = self._fit_reward(inputs)
        laps.lap("reward")

        # 2. start from the live version (or a refused candidate of it); warm start ------------
        start_version, kl_coef = self._start_from(inputs)
        policy = self.policy
        lora_params = policy.trainable_parameters()
        sft_optimizer = torch.optim.AdamW(lora_params, lr=rc.sft_learning_rate, weight_decay=0.0)
        ppo_optimizer = torch.optim.AdamW(
            lora_params + list(policy.value_head.parameters()),
            lr=cfg.ppo.learning_rate,
            weight_decay=0.0,
        )
        warm = warm_start(
            policy.peft,
            sft_optimizer,
            self.batch,
            inputs.demonstrations,
            inputs.preferences,
            self._reference(inputs),
            rc,
            cfg.ppo.max_grad_norm,
            rng,
            policy.between_steps,
        )
        laps.lap("warm_start")

        # 3. rollouts -> PPO -> best-of-n distillation and ranked pairs --------------------------
        ppo_stats: list[dict[str, float]] = []
        distilled = distill.Distilled()
        offensive_rollouts = 0
        pool, liked_now = list(inputs.liked_pool), []
        for _iteration in range(rc.iterations):
            if time.monotonic() - started > rc.max_seconds:
                break
            prompts, provocation = self._rollout_prompts(inputs.train_prompts, rng)
            seeds = [rng.randrange(2**31) for _ in prompts]
            it = ppo_iteration(
                policy,
                base,
                ppo_optimizer,
                prompts,
                seeds,
                provocation,
                lambda x, _texts: score(x),
                kl_coef,
                cfg.ppo,
                cfg.safety,
                cfg.reward.features,
                update=rc.ppo,
            )
            kl_coef = it.kl_coef
            ppo_stats += [it.stats] if it.stats else []
            offensive_rollouts += int(it.unsafe.sum())
            laps.charge("rollouts", it.seconds_sampling)
            laps.charge("ppo", it.seconds_scoring + it.seconds_update)
            liked = user_reward.liked(it.features) & ~it.unsafe & ~provocation
            earlier = distill.still_liked(user_reward, pool)
            fresh = [
                (Example(prompts[i], it.replies[i]), it.features[i])
                for i in range(len(prompts))
                if liked[i]
            ]
            pool, liked_now = (pool + fresh)[-rc.liked_pool :], liked_now + fresh
            distill.distill(
                policy, sft_optimizer, self.batch, it, liked, earlier, rc, cfg.ppo, rng, distilled
            )
            laps.lap("distill")

        # 4. the gate: candidate vs live (paired, fresh seeds), and vs the base on safety ------
        measure = measure_gate(policy, base, inputs.heldout_prompts, score, self.red_team, cfg, rng)
        decision = gate.decide(
            measure.gain,
            measure.kl,
            measure.kl_per_token,
            measure.candidate_text,
            measure.live_text,
            cfg.gate,
            measure.red_team,
        )
        laps.lap("gate")
        change = None
        if decision.accept:  # what it changes, for the user to read if it goes live
            base_texts = self._base_texts(inputs, measure)
            change = measure.pairs.change(inputs.heldout_texts, base_texts)
            laps.lap("base replies")
        candidate = self._candidate_files(user_reward)
        metrics = {
            **inputs.counts,
            **reward_metrics,
            **measure.metrics(),
            **warm.metrics(),
            **distilled.metrics(),
            **ppo_metrics(ppo_stats),
            "offensive_rollouts": offensive_rollouts,
            "live_version": inputs.live_version,  # what the gate compared against
            "parent_version": start_version,  # what training started from
            "resumable": decision.resumable,
            "computed_by": computed_here(),
            **{f"seconds_{k}": v for k, v in laps.seconds.items()},
            "seconds_worker": round(time.monotonic() - started, 2),
        }
        return RoundResult(
            candidate=candidate,
            accept=decision.accept,
            reason=decision.reason,
            reward_before=measure.reward_before,
            reward_after=measure.reward_after,
            kl=measure.kl,
            kl_coef=kl_coef,
            start_version=start_version,
            metrics=metrics,
            liked=liked_now,
            change=change,
            red_team_baseline=None if had_baseline else self.red_team.held(),
        )

    # the round's steps ----------------------------------------------------------------------------

    def _candidate_files(self, user_reward: reward.UserReward) -> adapter_files.AdapterFiles:
        """The trained adapter, its value head and the user's reward head, as files."""
        with tempfile.TemporaryDirectory(prefix="attune-candidate-") as folder:
            self.policy.save(Path(folder))
            torch.save(user_reward.state_dict(), Path(folder) / REWARD_HEAD_FILE)
            return adapter_files.read_files(Path(folder))

    def _base_texts(self, inputs: RoundInputs, measure: GateMeasure) -> list[str] | None:
        """The base's replies on the gate pairs' questions and seeds, which an adopted version
        over an earlier one is described against (None when live is the base, or when sampling
        them failed: the version still goes live, described against its parent only)."""
        if inputs.live_version == 0:
            return None
        try:
            cfg = self.config
            rows = cfg.gate.text_pairs
            return base_replies(
                self.policy, self.base, inputs.heldout_prompts, measure.pairs, rows, cfg
            )
        except Exception:
            log.exception("sampling the base's replies to describe a version failed")
            return None

    def _fit_reward(
        self, inputs: RoundInputs
    ) -> tuple[reward.UserReward, dict[str, Any], Callable[[torch.Tensor], torch.Tensor]]:
        """The user's reward (population head + their residual), its metrics, and the score
        the round optimises: the user's reward normalised over their own clicked replies."""
        c = self.config.reward
        standardizer, population = reward.fit_population(inputs.everyone_x, inputs.everyone, c)
        x_user = inputs.user_x
        user_reward, metrics = reward.fit_user(standardizer, population, x_user, inputs.feedback, c)
        clicked = user_reward.score(x_user)
        mean = clicked.mean().item()
        std = max(clicked.std().item() if len(clicked) > 1 else 1.0, 1e-3)

        def score(x: torch.Tensor) -> torch.Tensor:
            return (user_reward.score(x) - mean) / std

        return user_reward, metrics, score

    def _start_from(self, inputs: RoundInputs) -> tuple[int, float]:
        """Set the policy to where this round starts — the live version, or the refused
        candidate of it the serving node offered (`RoundConfig.resume_refused`) — and return
        that version's number and the KL coefficient it carries."""
        with tempfile.TemporaryDirectory(prefix="attune-start-") as folder:
            live = resume = None
            if inputs.live is not None:
                live = Path(folder) / "live"
                adapter_files.put_files(inputs.live.files, live)
            if inputs.resume is not None:
                resume = Path(folder) / "resume"
                adapter_files.put_files(inputs.resume.files, resume)
            same_shape = self.policy.start_from(live, resume)
        start = inputs.resume if inputs.resume and same_shape else inputs.live
        kl_coef = start.kl_coef if start is not None and same_shape else None
        start_version = start.version if start is not None else 0
        return start_version, self.config.ppo.kl_coef if kl_coef is None else kl_coef

    def _reference(self, inputs: RoundInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """The base's log-probs of the chosen and the rejected side of the user's A/B pairs
        (DPO's reference), through the worker's cache."""

        def side(i: int) -> torch.Tensor:
            keys = [pair[i] for pair in inputs.preference_keys]
            return self.references.get(
                keys, lambda rows: self.base_logprobs([inputs.preferences[r][i] for r in rows])
            )

        return side(0), side(1)

    def base_logprobs(self, examples: list[Example]) -> torch.Tensor:
        """Summed reply log-probs of the bare base, a few rows at a time."""
        step = self.config.round.preference_batch
        with torch.no_grad(), self.policy.base_only():
            return torch.cat(
                [
                    sequence_logprob(self.policy.peft, self.batch(examples[i : i + step]))
                    for i in range(0, len(examples), step)
                ]
            )

    def batch(self, examples: list[Example]) -> Batch:
        return sampling.examples_batch(self.base, examples)

    def _rollout_prompts(
        self, train_prompts: list[list[int]], rng: random.Random
    ) -> tuple[list[list[int]], torch.Tensor]:
        """This iteration's prompts, `samples_per_prompt` rows each: `rollout_prompts` of the
        user's, then the safety floor's own red-team prompts (scored by the floor alone:
        the second value marks them)."""
        rc = self.config.round
        picked = [rng.choice(train_prompts) for _ in range(rc.rollout_prompts)]
        red_team = self.red_team.prompts
        picked += [
            rng.choice(red_team)
            for _ in range(self.config.safety.rollout_prompts if red_team else 0)
        ]
        prompts = [p for p in picked for _ in range(rc.samples_per_prompt)]
        provocation = torch.arange(len(prompts)) >= rc.rollout_prompts * rc.samples_per_prompt
        return prompts, provocation


def computed_here() -> str:
    """Which machine and process computed a round (its metrics say so: this process's, or a
    Ray actor's)."""
    return f"{socket.gethostname()} pid {os.getpid()}"


def ppo_metrics(stats: list[dict[str, float]]) -> dict[str, float | int]:
    """The PPO updates' statistics, averaged over the round's iterations."""
    out: dict[str, float | int] = {"ppo_iterations": len(stats)}
    for key in stats[0] if stats else {}:
        out[f"ppo_{key}"] = sum(s[key] for s in stats) / len(stats)
    if "ppo_value_loss" in out:
        out["value_loss"] = out["ppo_value_loss"]
        out["policy_loss"] = out["ppo_policy_loss"]
    return out
