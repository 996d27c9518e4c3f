"""One user's training round: the full RLHF recipe on that user's own feedback.

1. reward: fit the population head on everyone's clicks and the user's residual head on theirs,
   on base-model features cached per reply (`online_rl.reward`, `online_rl.user_data`).
2. warm start: supervised steps on the user's liked replies and A/B winners, DPO steps on their
   A/B choices (`online_rl.warm_start`).
3. iterations of: sample replies to the user's own recent prompts -> score them with the reward
   head -> one PPO update with the KL leash (`online_rl.ppo.ppo_iteration`) -> best-of-n
   distillation and ranked pairs on the same samples (`online_rl.distill`).
4. gate: better than live on held-out prompts (paired, fresh seeds) and not less safe than the
   base on red-team prompts (`online_rl.gate_measure` samples, `online_rl.gate.decide` decides).
5. publish: the candidate is written atomically either way, and becomes live only if accepted
   (`online_rl.publish`).

Why not PPO alone: at this scale PPO with a sparse score moves too slowly to be felt (see the
field notes); the demonstrations and the ranked samples give it a dense start, PPO with the KL
leash keeps the update honest. `attune bench personalize` measures what each part adds.

The trainer gets what it needs from the serving side explicitly (`RoundContext`): the base
model, the database, the settings, and a function for the version serving uses.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from assistant.model import LoadedModel
from online_rl import distill, gate, pairs, reward, sampling
from online_rl.config import TrainingConfig
from online_rl.gate_measure import GateMeasure, RedTeam, base_replies, measure_gate
from online_rl.policy import Batch, TrainablePolicy
from online_rl.ppo import NonFiniteLoss, ppo_iteration
from online_rl.publish import Published, publish, write_candidate
from online_rl.user_data import (
    Example,
    Prompting,
    UserFeedback,
    cached_features,
    example,
    hash_text,
    user_feedback,
    user_prompts,
)
from online_rl.warm_start import ReferenceLogprobs, sequence_logprob, warm_start
from storage import adapters as adapter_files
from storage import records
from storage.db import Store
from storage.retention import prune_versions

log = logging.getLogger(__name__)

REWARD_HEAD_FILE = "reward_head.pt"
# DPO reference log-probs kept in memory, the most recently used (`warm_start.ReferenceLogprobs`)
REFERENCE_LOGPROBS_KEPT = 4096
ABANDONED = "abandoned: the user was deleted while the round ran"


@dataclass(frozen=True)
class RoundContext:
    """What a round needs from the serving side, and nothing more.

    serving_version(user_id) -> (version, folder): the version serving uses (the live one, or
    the newest older intact one if live's files are damaged; 0 and None for the base).
    between_steps(): called between the round's sampling and update steps; serving makes it
    wait while a chat reply is being written (chat first). It changes when a step runs, never
    what it computes.
    """

    base: LoadedModel
    store: Store  # its `db` is the calling thread's own connection
    adapters_dir: Path
    system_prompt: str
    context_tokens: int
    quantize: str
    serving_version: Callable[[str], tuple[int, Path | None]]
    between_steps: Callable[[], object] = lambda: None


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


def skipped(reason: str, metrics: dict[str, Any]) -> TrainReport:
    return TrainReport(False, None, None, None, None, reason, metrics)


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


class Trainer:
    """Runs rounds, one at a time, on one trainable copy of the base."""

    def __init__(self, context: RoundContext, config: TrainingConfig):
        self.context = context
        self.config = config
        self.prompting = Prompting(
            context.base.tokenizer,
            context.system_prompt,
            context.context_tokens - config.ppo.max_new_tokens,
            config.ppo.max_new_tokens,
        )
        self._policy: TrainablePolicy | None = None
        self._lock = threading.Lock()
        self.references = ReferenceLogprobs(REFERENCE_LOGPROBS_KEPT)
        self.red_team = RedTeam(
            context.store,
            lambda: self.policy,
            context.base,
            self.prompting,
            context.quantize,
            config,
        )
        self.liked_pool = distill.LikedPool(
            context.store,
            context.base.source,
            config.reward.features,
            config.round.liked_pool,
            self.base_features,
        )

    @property
    def policy(self) -> TrainablePolicy:
        if self._policy is None:
            base = self.context.base
            self._policy = TrainablePolicy(
                base.training_copy(), self.config.lora, base.device, self.context.between_steps
            )
        return self._policy

    # what the serving side asks of it -----------------------------------------------------------

    def features(self, messages: list[records.Row]) -> torch.Tensor:
        """The reward features of stored replies (cached per message)."""
        c = self.context
        spec = self.config.reward.features
        return cached_features(
            c.store.db, self.prompting, messages, c.base.source, spec, self.base_features
        )

    def base_features(self, examples: list[tuple[list[int], list[int]]]) -> torch.Tensor:
        """Reward features of (prompt, reply) token ids from the bare base model: its pristine
        module tree, which no adapter touches, so this is safe beside a running round."""
        base = self.context.base
        pad = base.tokenizer.pad_token_id
        return reward.features(
            base.pristine, examples, pad, base.device, self.config.reward.features
        )

    def pick_pair(
        self, user_id: str, prompt: list[int], replies: list[list[int]]
    ) -> tuple[int, int, str]:
        """Which two of a Compare's candidate replies to show, and why (`online_rl.pairs`):
        the pair the user's own head (fitted now on all their clicks) learns most from, or the
        two most different while the user has not clicked yet. Inputs are standardised over
        the user's clicked replies and the candidates."""
        data = user_feedback(self.context.store.db, user_id, self.config.safety)
        candidates = self.base_features([(prompt, r) for r in replies])
        clicked = self.features(data.replies) if data.replies else candidates[:0]
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

    def forget_user(self, user_id: str) -> None:
        """Drop what this trainer holds in memory for the user (their account is being
        deleted; their stored rows go with `records.delete_user`). Never waits for a round:
        a round of that user still running forgets them again when it ends (`run`)."""
        self.references.forget(user_id)

    # the round ------------------------------------------------------------------------------------

    def run(self, user_id: str) -> TrainReport:
        """One round for the user, recorded in training_runs whatever its outcome."""
        with self._lock:
            db = self.context.store.db
            run = records.start_training_run(db, user_id)
            started = time.monotonic()
            try:
                report = self._round(user_id, started, run["id"])
            except NonFiniteLoss as e:
                aborted = skipped(f"aborted: {e}", {})
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
                report = skipped(ABANDONED, {})
            else:
                if report.version is None:  # skipped: no candidate, nothing recorded yet
                    report = finish_run(db, run["id"], report, started, "skipped")
                else:
                    self._prune(user_id)
            if not records.user_exists(db, user_id):
                # deleted while the round ran, which may have written a version folder or
                # cached values after delete_user cleared them
                adapter_files.delete_user_versions(self.context.adapters_dir, user_id)
                self.forget_user(user_id)
            log.info("user %s: round over (%s)", user_id, report.reason)
            return report

    def _prune(self, user_id: str) -> None:
        """Delete version folders the user no longer needs. After the round's outcome has
        committed: a failure here is logged, never turns a finished round into a failed one."""
        c = self.context
        try:
            pruned = prune_versions(c.store.db, c.adapters_dir, user_id, self.config.retention)
        except Exception:
            log.exception("user %s: pruning old versions failed", user_id)
            return
        if pruned:
            log.info("user %s: pruned the folders of versions %s", user_id, pruned)

    def _round(self, user_id: str, started: float, run_id: str) -> TrainReport:
        cfg, rc, db, base = self.config, self.config.round, self.context.store.db, self.context.base
        rng = random.Random(round_seed(rc.seed, len(records.list_training_runs(db, user_id))))
        torch.manual_seed(rng.randrange(2**31))
        laps = Laps()

        if records.learning_paused(db, user_id):  # paused after the round was queued
            return skipped("learning is paused: the user turned it off", {})

        # 1. reward heads ---------------------------------------------------------------------
        mine = user_feedback(db, user_id, cfg.safety)
        counts = mine.counts()
        if len(mine.feedback) < rc.min_feedback:
            have = len(mine.feedback)
            return skipped(f"not enough feedback yet: {have} of {rc.min_feedback} clicks", counts)
        user_reward, reward_metrics, score = self._fit_reward(mine)
        laps.lap("reward")

        # 2. start from the live version (or a refused candidate of it); warm start ----------------
        train_prompts, heldout_prompts, heldout_texts = user_prompts(
            db, self.prompting, user_id, rc.prompt_pool, rc.heldout_share
        )
        live_version, live_path = self.context.serving_version(user_id)
        start_version, kl_coef = self._start_from(user_id, live_version, live_path)
        policy = self.policy
        lora_params = policy.trainable_parameters()
        sft_optimizer = torch.optim.AdamW(lora_params, lr=rc.sft_learning_rate, weight_decay=0.0)
        ppo_optimizer = torch.optim.AdamW(
            lora_params + list(policy.value_head.parameters()),
            lr=cfg.ppo.learning_rate,
            weight_decay=0.0,
        )
        demonstrations = [example(db, self.prompting, m) for m in mine.demonstrations]
        preferences = mine.preferences[-rc.preference_pairs :] if rc.preference_steps else []
        pair_examples = [
            (example(db, self.prompting, w), example(db, self.prompting, lo))
            for w, lo in preferences
        ]
        warm = warm_start(
            policy.peft,
            sft_optimizer,
            self.batch,
            demonstrations,
            pair_examples,
            self._reference(preferences, pair_examples),
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
        for _iteration in range(rc.iterations):
            if time.monotonic() - started > rc.max_seconds:
                break
            prompts, provocation = self._rollout_prompts(train_prompts, rng)
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
            laps.charge("ppo", it.seconds_update)
            liked = user_reward.liked(it.features) & ~it.unsafe & ~provocation
            earlier = distill.still_liked(user_reward, self.liked_pool.read(user_id))
            fresh = [i for i in range(len(prompts)) if liked[i]]
            self.liked_pool.add(
                user_id, [(Example(prompts[i], it.replies[i]), it.features[i]) for i in fresh]
            )
            distill.distill(
                policy, sft_optimizer, self.batch, it, liked, earlier, rc, cfg.ppo, rng, distilled
            )
            laps.lap("distill")

        # 4. the gate: candidate vs live (paired, fresh seeds), and vs the base on safety ------
        measure = measure_gate(policy, base, heldout_prompts, score, self.red_team, cfg, rng)
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

        # 5. write the candidate; make it live if accepted --------------------------------------
        def write(folder: Path) -> None:
            policy.save(folder)
            torch.save(user_reward.state_dict(), folder / REWARD_HEAD_FILE)

        base_texts = self._base_texts(
            decision.accept, live_version, policy, heldout_prompts, measure
        )
        laps.lap("base replies")
        version, path = write_candidate(db, self.context.adapters_dir, user_id, write)
        metrics = {
            **counts,
            **reward_metrics,
            **measure.metrics(),
            **warm.metrics(),
            **distilled.metrics(),
            "liked_pool": self.liked_pool.count(user_id),
            **ppo_metrics(ppo_stats),
            "offensive_rollouts": offensive_rollouts,
            "live_version": live_version,  # what the gate compared against
            "parent_version": start_version,  # what training started from
            "resumable": decision.resumable,
            **{f"seconds_{k}": v for k, v in laps.seconds.items()},
        }

        def finish(published: Published) -> TrainReport:
            if published.accepted:  # what it changed, for the user to read
                change = measure.pairs.change(heldout_texts, base_texts)
                records.add_version_change(
                    db,
                    user_id,
                    version,
                    live_version,
                    change.pairs,
                    change.traits,
                    change.against_base,
                    change.example,
                )
            report = TrainReport(
                published.accepted,
                version,
                measure.reward_before,
                measure.reward_after,
                measure.kl,
                published.reason,
                metrics,
            )
            outcome = "accepted" if published.accepted else "rejected"
            return finish_run(db, run_id, report, started, outcome)

        return publish(
            db,
            user_id,
            version,
            path,
            live_version,
            start_version,
            decision.accept,
            decision.reason,
            metrics,
            kl_coef,
            self.context.serving_version,
            finish,
        ) or skipped(ABANDONED, metrics)

    # the round's steps ----------------------------------------------------------------------------

    def _base_texts(
        self,
        accepted: bool,
        live_version: int,
        policy: TrainablePolicy,
        heldout_prompts: list[list[int]],
        measure: GateMeasure,
    ) -> list[str] | None:
        """The base's replies on the gate pairs' questions and seeds, which an adopted version
        over an earlier one is described against (None when not needed, or when sampling
        them failed: the version still goes live, described against its parent only)."""
        if not accepted or live_version == 0:
            return None
        try:
            cfg = self.config
            rows = cfg.gate.text_pairs
            return base_replies(
                policy, self.context.base, heldout_prompts, measure.pairs, rows, cfg
            )
        except Exception:
            log.exception("sampling the base's replies to describe a version failed")
            return None

    def _fit_reward(
        self, mine: UserFeedback
    ) -> tuple[reward.UserReward, dict[str, Any], Callable[[torch.Tensor], torch.Tensor]]:
        """The user's reward (population head + their residual), its metrics, and the score
        the round optimises: the user's reward normalised over their own clicked replies."""
        cfg = self.config
        everyone = user_feedback(self.context.store.db, None, cfg.safety)
        standardizer, population = reward.fit_population(
            self.features(everyone.replies), everyone.feedback, cfg.reward
        )
        x_user = self.features(mine.replies)
        user_reward, metrics = reward.fit_user(
            standardizer, population, x_user, mine.feedback, cfg.reward
        )
        clicked = user_reward.score(x_user)
        mean = clicked.mean().item()
        std = max(clicked.std().item() if len(clicked) > 1 else 1.0, 1e-3)

        def score(x: torch.Tensor) -> torch.Tensor:
            return (user_reward.score(x) - mean) / std

        return user_reward, metrics, score

    def _start_from(
        self, user_id: str, live_version: int, live_path: Path | None
    ) -> tuple[int, float]:
        """Set the policy to where this round starts — the live version, or the newest refused
        candidate of it (`RoundConfig.resume_refused`) — and return that version's number and
        the KL coefficient it carries."""
        resume = self._resume_point(user_id, live_version)
        same_shape = self.policy.start_from(live_path, resume[1] if resume else None)
        start_version = resume[0] if resume and same_shape else live_version
        kl_coef = None
        if start_version and same_shape:
            kl_coef = records.version_kl_coef(self.context.store.db, user_id, start_version)
        return start_version, self.config.ppo.kl_coef if kl_coef is None else kl_coef

    def _resume_point(self, user_id: str, live_version: int) -> tuple[int, Path] | None:
        """The user's newest version if it is a refused candidate worth training on (see
        `RoundConfig.resume_refused`) and its files are intact."""
        rows = records.list_adapter_versions(self.context.store.db, user_id)
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

    def _reference(
        self,
        preferences: list[tuple[records.Row, records.Row]],
        examples: list[tuple[Example, Example]],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The base's log-probs of the chosen and the rejected side of the user's A/B pairs
        (DPO's reference), through the trainer's cache."""

        def side(i: int) -> torch.Tensor:
            keys = [(pair[i]["user_id"], pair[i]["id"]) for pair in preferences]
            return self.references.get(
                keys, lambda rows: self.base_logprobs([examples[r][i] for r in rows])
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
        return sampling.examples_batch(self.context.base, examples)

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


def ppo_metrics(stats: list[dict[str, float]]) -> dict[str, float | int]:
    """The PPO updates' statistics, averaged over the round's iterations."""
    out: dict[str, float | int] = {"ppo_iterations": len(stats)}
    for key in stats[0] if stats else {}:
        out[f"ppo_{key}"] = sum(s[key] for s in stats) / len(stats)
    if "ppo_value_loss" in out:
        out["value_loss"] = out["ppo_value_loss"]
        out["policy_loss"] = out["ppo_policy_loss"]
    return out


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
