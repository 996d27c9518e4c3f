"""One user's training round, as the serving node runs it: gather, compute, publish.

1. gather: what the round reads about the user — clicks, prompts, cached reward features, the
   live version's files, the liked pool, the base's red-team baseline — from the database and
   the adapters folder (`online_rl.user_data`), into one `RoundInputs`.
2. compute: a `RoundWorker` fits the reward, trains and measures the candidate against the gate
   (`online_rl.round_worker`) — in this process, or in a Ray actor (`online_rl.ray_rounds`).
3. publish: the candidate's folder is written atomically either way, and becomes live only if
   the gate accepted it and live has not changed meanwhile (`online_rl.publish`).

The serving node is the only writer of the database and the version folders: a worker gets
the inputs and hands back files and figures. One user never has two rounds at once (a lock per
user here, where every round of every worker starts). The trainer gets what it needs from the
serving side explicitly (`RoundContext`): the base model, the database, the settings, and a
function for the version serving uses.
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
from typing import Any, Protocol

import torch

from assistant.model import LoadedModel
from assistant.threads import in_work_thread
from online_rl import pairs, reward
from online_rl.config import TrainingConfig
from online_rl.gate_measure import red_team_baseline_key
from online_rl.ppo import NonFiniteLoss
from online_rl.publish import Published, publish, write_candidate
from online_rl.round_worker import RoundInputs, RoundResult, RoundWorker, StartPoint
from online_rl.user_data import (
    LikedPool,
    cached_features,
    example,
    hash_text,
    prompting_for,
    user_feedback,
    user_prompts,
)
from storage import adapters as adapter_files
from storage import records
from storage.db import Store
from storage.retention import prune_versions

log = logging.getLogger(__name__)

ABANDONED = "abandoned: the user was deleted while the round ran"


@dataclass(frozen=True)
class RoundContext:
    """What a round needs from the serving side, and nothing more.

    serving_version(user_id) -> (version, folder): the version serving uses (the live one, or
    the newest older intact one if live's files are damaged; 0 and None for the base).
    between_steps(): called between the round's sampling and update steps of a round computed
    in this process; serving makes it wait while a chat reply is being written (chat first).
    """

    base: LoadedModel
    store: Store  # its `db` is the calling thread's own connection
    adapters_dir: Path
    system_prompt: str
    context_tokens: int
    quantize: str
    serving_version: Callable[[str], tuple[int, Path | None]]
    between_steps: Callable[[], object] = lambda: None


class Workers(Protocol):
    """Where rounds are computed when not in this process (`online_rl.ray_rounds.RayWorkers`)."""

    def run(self, inputs: RoundInputs) -> RoundResult: ...

    def forget_user(self, user_id: str) -> None: ...

    def chat_busy(self, busy: bool) -> None: ...

    def close(self) -> None: ...


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


class Trainer:
    """Runs rounds for any user: gathers each round's inputs, has a worker compute it (this
    process's own, or `workers`), publishes the result."""

    def __init__(
        self, context: RoundContext, config: TrainingConfig, workers: Workers | None = None
    ):
        self.context = context
        self.config = config
        self.prompting = prompting_for(
            context.base.tokenizer,
            context.system_prompt,
            context.context_tokens,
            config.ppo.max_new_tokens,
        )
        # computes rounds in this process unless `workers` are given (then never made)
        self.worker = (
            None
            if workers
            else RoundWorker(context.base, self.prompting, config, context.between_steps)
        )
        self.workers = workers
        self.red_team_key = red_team_baseline_key(
            context.base, context.quantize, self.prompting, config
        )
        self.feature_kind = config.reward.features.stored_kind(context.base.training_dtype)
        self.liked_pool = LikedPool(
            context.store,
            context.base.source,
            self.feature_kind,
            config.round.liked_pool,
            self.base_features,
        )
        self._users: dict[str, threading.Lock] = {}  # one round per user at a time
        self._users_lock = threading.Lock()

    # what the serving side asks of it -----------------------------------------------------------

    def features(self, messages: list[records.Row]) -> torch.Tensor:
        """The reward features of stored replies (cached per message)."""
        c = self.context
        return cached_features(
            c.store.db,
            self.prompting,
            messages,
            c.base.source,
            self.feature_kind,
            self.base_features,
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
        """Drop what the workers hold in memory for the user (their account is being
        deleted; their stored rows go with `records.delete_user`). Never waits for a round:
        a round of that user still running forgets them again when it ends (`run`)."""
        self._computing.forget_user(user_id)

    # the round ------------------------------------------------------------------------------------

    def run(self, user_id: str) -> TrainReport:
        """One round for the user, recorded in training_runs whatever its outcome."""
        with self._user_lock(user_id):
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
                    reason = records.failure_reason(
                        db, user_id, run["id"], f"{type(e).__name__}: {e}"
                    )
                    records.finish_training_run(db, run["id"], "failed", None, reason, {})
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

    @property
    def _computing(self) -> RoundWorker | Workers:
        """Where rounds are computed: this process's worker, or the Ray actors."""
        computing = self.worker or self.workers
        assert computing is not None, "a trainer has a worker or workers"
        return computing

    def _user_lock(self, user_id: str) -> threading.Lock:
        with self._users_lock:
            return self._users.setdefault(user_id, threading.Lock())

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
        if self.workers is None:
            inputs = self.gather(user_id)
        else:  # this thread waits out the round beside decoding: it must own no OpenMP team,
            # so the gather's feature passes run in a thread that ends with them
            inputs = in_work_thread(self.context.store, lambda: self.gather(user_id))
        if isinstance(inputs, TrainReport):
            return inputs
        gathered = time.monotonic()
        result = self._computing.run(inputs)
        # in this process the call is the worker's own time; on Ray it adds the trip there
        # and back (inputs and candidate serialised, sent, deserialised) and any wait for a
        # free actor
        seconds = {
            "seconds_gather": round(gathered - started, 2),
            "seconds_compute": round(time.monotonic() - gathered, 2),
        }
        return self._publish(user_id, run_id, started, inputs, result, seconds)

    def gather(self, user_id: str) -> RoundInputs | TrainReport:
        """What a round of the user would be handed now, or why it is skipped."""
        cfg, rc, db = self.config, self.config.round, self.context.store.db
        if records.learning_paused(db, user_id):  # paused after the round was queued
            return skipped("learning is paused: the user turned it off", {})
        mine = user_feedback(db, user_id, cfg.safety)
        counts = mine.counts()
        if len(mine.feedback) < rc.min_feedback:
            have = len(mine.feedback)
            return skipped(f"not enough feedback yet: {have} of {rc.min_feedback} clicks", counts)
        everyone = user_feedback(db, None, cfg.safety)
        train, heldout, heldout_texts = user_prompts(
            db, self.prompting, user_id, rc.prompt_pool, rc.heldout_share
        )
        live_version, live_path = self.context.serving_version(user_id)
        chosen = mine.preferences[-rc.preference_pairs :] if rc.preference_steps else []
        return RoundInputs(
            user_id=user_id,
            seed=round_seed(rc.seed, len(records.list_training_runs(db, user_id))),
            counts=counts,
            feedback=mine.feedback,
            user_x=self.features(mine.replies),
            everyone=everyone.feedback,
            everyone_x=self.features(everyone.replies),
            demonstrations=[example(db, self.prompting, m) for m in mine.demonstrations],
            preferences=[
                (example(db, self.prompting, w), example(db, self.prompting, lo))
                for w, lo in chosen
            ],
            preference_keys=[
                ((w["user_id"], w["id"]), (lo["user_id"], lo["id"])) for w, lo in chosen
            ],
            train_prompts=train,
            heldout_prompts=heldout,
            heldout_texts=heldout_texts,
            live_version=live_version,
            live=self._start_point(user_id, live_version, live_path),
            resume=self._resume_point(user_id, live_version),
            liked_pool=self.liked_pool.read(user_id),
            red_team_baseline=records.get_red_team_baseline(db, self.red_team_key),
        )

    def _start_point(self, user_id: str, version: int, path: Path | None) -> StartPoint | None:
        """The version's files (CorruptAdapter unless its folder is whole) and KL coefficient."""
        if path is None:
            return None
        adapter_files.verify_version(path)  # a missing folder has no manifest either
        kl_coef = records.version_kl_coef(self.context.store.db, user_id, version)
        return StartPoint(version, adapter_files.read_files(path), kl_coef)

    def _resume_point(self, user_id: str, live_version: int) -> StartPoint | None:
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
        try:
            return self._start_point(user_id, newest["version"], Path(newest["path"]))
        except adapter_files.CorruptAdapter as e:
            log.warning("user %s: not resuming v%s: %s", user_id, newest["version"], e)
            return None

    def _publish(
        self,
        user_id: str,
        run_id: str,
        started: float,
        inputs: RoundInputs,
        result: RoundResult,
        seconds: dict[str, float],
    ) -> TrainReport:
        """Store what the round learned beside the candidate (liked samples, the base's
        red-team baseline), write the candidate's folder, and make it live if accepted."""
        db, base = self.context.store.db, self.context.base
        if result.red_team_baseline is not None:
            records.put_red_team_baseline(
                db, self.red_team_key, base.source, result.red_team_baseline
            )
        self.liked_pool.add(user_id, result.liked)
        metrics = {**result.metrics, **seconds, "liked_pool": self.liked_pool.count(user_id)}
        version, path = write_candidate(
            db,
            self.context.adapters_dir,
            user_id,
            lambda folder: adapter_files.put_files(result.candidate, folder),
        )

        def finish(published: Published) -> TrainReport:
            change = result.change
            if published.accepted and change is not None:  # what it changed, for the user
                records.add_version_change(
                    db,
                    user_id,
                    version,
                    inputs.live_version,
                    change.pairs,
                    change.traits,
                    change.against_base,
                    change.example,
                )
            report = TrainReport(
                published.accepted,
                version,
                result.reward_before,
                result.reward_after,
                result.kl,
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
            inputs.live_version,
            result.start_version,
            result.accept,
            result.reason,
            metrics,
            result.kl_coef,
            self.context.serving_version,
            finish,
        ) or skipped(ABANDONED, metrics)


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
