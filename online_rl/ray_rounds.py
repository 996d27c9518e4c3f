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
    """One Ray actor: the base model, loaded once, and a worker that computes rounds.

    Chat first across processes: on the serving node's machine, a round waits between its
    steps while the serving process writes a reply (`chat`, told by the serving node's
    batcher), at most `chat_first_s` a step, as a round in the serving process does. On other
    machines it never waits: it shares no cores with chat. The actor runs two threads (Ray's
    `max_concurrency`), so `chat` arrives while `run` computes."""

    def __init__(
        self,
        model: ModelConfig,
        cache_dir: Path,
        system_prompt: str,
        context_tokens: int,
        config: TrainingConfig,
        threads: int,
        serving_node: str,
        chat_first_s: float,
    ):
        import ray

        from assistant.model import load

        torch.set_num_threads(threads)
        base = load(model, cache_dir)
        prompting = prompting_for(
            base.tokenizer, system_prompt, context_tokens, config.ppo.max_new_tokens
        )
        self.beside_chat = ray.get_runtime_context().get_node_id() == serving_node
        self.chat_first_s = chat_first_s
        self._chat_idle = threading.Event()
        self._chat_idle.set()
        self._chat_told = 0  # the newest `chat` message applied (threads may reorder them)
        self._chat_lock = threading.Lock()
        self.worker = RoundWorker(base, prompting, config, self._chat_first)

    def run(self, inputs: RoundInputs) -> RoundResult:
        return self.worker.run(inputs)

    def chat(self, number: int, busy: bool) -> None:
        """The serving process started (busy) or stopped writing replies; `number` orders the
        messages."""
        with self._chat_lock:
            if number <= self._chat_told:
                return
            self._chat_told = number
            if busy and self.beside_chat:
                self._chat_idle.clear()
            else:
                self._chat_idle.set()

    def chat_state(self) -> tuple[int, bool]:
        """(the newest message applied, whether rounds go on now)."""
        with self._chat_lock:
            return self._chat_told, self._chat_idle.is_set()

    def _chat_first(self) -> None:
        if self.chat_first_s > 0:
            self._chat_idle.wait(self.chat_first_s)

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
        chat_first_s: float = 0.0,
    ):
        """chat_first_s: an actor on this machine waits at most this long per step while a
        reply is being written here (`chat_busy`); 0: never."""
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
        remote = ray.remote(num_cpus=threads, max_restarts=0, max_concurrency=2)
        self._actor_class = remote(RoundActor)
        here = ray.get_runtime_context().get_node_id()
        self._arguments = (
            *(model, cache_dir, system_prompt, context_tokens, config, threads),
            *(here, chat_first_s),
        )
        self._lock = threading.Lock()
        self._chat_messages = 0
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

    def chat_busy(self, busy: bool) -> None:
        """Tell every actor that this process started (True) or stopped writing replies; those
        on this machine pause their rounds meanwhile. Returns at once."""
        with self._lock:
            self._chat_messages += 1
            number, actors = self._chat_messages, list(self._actors)
        for actor in actors:
            actor.chat.remote(number, busy)

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
