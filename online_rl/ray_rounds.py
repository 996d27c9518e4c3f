"""Rounds computed by a pool of Ray actors: training past one process, and past one machine.

Each actor loads the base model once and computes rounds for any user (`RoundWorker.run` on a
`RoundInputs`). The serving node gathers each round's inputs and publishes its result
(`online_rl.rounds.Trainer`), so it stays the only writer of the database and of the version
folders; what travels is the round's inputs (clicks as indices, cached features, prompt ids,
the live version's files) and its result (the candidate's files, figures, liked samples).

- One user never has two rounds at once: the serving node's scheduler queues a user once, and
  the trainer holds a lock per user around the whole round, wherever it is computed.
- An actor that dies mid-round (killed, out of memory, its node lost) or runs past
  `round_timeout_s` fails that round with `RoundLost`; the trainer records the run as failed
  with the reason, live serving is untouched, a fresh actor takes the dead one's place, and
  the user's clicks stay new for the next round (`online_rl.scheduler`).
- A result that arrives after the user rolled back or was deleted is recorded stale or dropped
  by the publish step, as for a round computed in the serving process.
"""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path
from typing import Any

import torch

from assistant.config import LOCAL_RAY, ModelConfig, RayConfig
from online_rl.config import TrainingConfig
from online_rl.round_worker import RoundInputs, RoundResult, RoundWorker, computed_here
from online_rl.user_data import prompting_for

log = logging.getLogger(__name__)


class RoundLost(RuntimeError):
    """The actor computing a round died or timed out; the round's run is recorded failed."""


class RoundActor:
    """One Ray actor: the base model, loaded once, and a worker that computes rounds."""

    def __init__(
        self,
        model: ModelConfig,
        cache_dir: Path,
        system_prompt: str,
        context_tokens: int,
        config: TrainingConfig,
        threads: int,
    ):
        from assistant.model import load

        torch.set_num_threads(threads)
        base = load(model, cache_dir)
        prompting = prompting_for(
            base.tokenizer, system_prompt, context_tokens, config.ppo.max_new_tokens
        )
        self.worker = RoundWorker(base, prompting, config)

    def run(self, inputs: RoundInputs) -> RoundResult:
        return self.worker.run(inputs)

    def forget_user(self, user_id: str) -> None:
        self.worker.forget_user(user_id)

    def where(self) -> str:
        """Host and process id (answers once the model is loaded)."""
        return computed_here()


class RayWorkers:
    """A pool of `RoundActor`s; `run` computes a round on the next free one (blocking)."""

    def __init__(
        self,
        ray_config: RayConfig,
        model: ModelConfig,
        cache_dir: Path,
        system_prompt: str,
        context_tokens: int,
        config: TrainingConfig,
    ):
        import ray

        self.ray_config = ray_config
        self.started_ray = not ray.is_initialized()
        if self.started_ray:
            local = ray_config.address == LOCAL_RAY
            ray.init(
                address=None if local else ray_config.address,
                include_dashboard=False,
                log_to_driver=False,
            )
        threads = ray_config.cpus_per_actor
        self._actor_class = ray.remote(num_cpus=threads, max_restarts=0)(RoundActor)
        self._arguments = (model, cache_dir, system_prompt, context_tokens, config, threads)
        self._lock = threading.Lock()
        self._actors: list[Any] = []
        self._idle: queue.Queue[Any] = queue.Queue()
        for _ in range(ray_config.actors):
            self._idle.put(self._new_actor())

    def _new_actor(self) -> Any:
        actor = self._actor_class.remote(*self._arguments)  # loads the model in the background
        with self._lock:
            self._actors.append(actor)
        return actor

    def _replace(self, actor: Any) -> Any:
        import ray

        with self._lock:
            self._actors = [a for a in self._actors if a is not actor]
        ray.kill(actor, no_restart=True)
        return self._new_actor()

    def actors(self) -> list[Any]:
        """The pool's current actor handles (for tests and the cluster benchmark)."""
        with self._lock:
            return list(self._actors)

    def run(self, inputs: RoundInputs) -> RoundResult:
        """Compute the round on the next free actor; `RoundLost` if that actor dies or times
        out (it is replaced). An exception raised by the round itself comes back as itself."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        actor = self._idle.get()
        try:
            return ray.get(actor.run.remote(inputs), timeout=self.ray_config.round_timeout_s)
        except RayActorError as e:
            actor = self._replace(actor)
            raise RoundLost(f"the Ray actor computing the round died: {e}") from e
        except GetTimeoutError as e:
            actor = self._replace(actor)
            limit = self.ray_config.round_timeout_s
            raise RoundLost(f"the round was not back from its Ray actor in {limit:g} s") from e
        finally:
            self._idle.put(actor)

    def forget_user(self, user_id: str) -> None:
        """Every actor drops what it holds in memory for the user (after its current round)."""
        for actor in self.actors():
            actor.forget_user.remote(user_id)

    def close(self) -> None:
        """Kill the actors; shut Ray down if this pool started it."""
        import ray

        if not ray.is_initialized():
            return
        for actor in self.actors():
            ray.kill(actor, no_restart=True)
        if self.started_ray:
            ray.shutdown()
