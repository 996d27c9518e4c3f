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

import contextlib
import logging
import os
import queue
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch

from assistant.config import LOCAL_RAY, ModelConfig, RayConfig
from online_rl.config import TrainingConfig
from online_rl.round_worker import RoundInputs, RoundResult, RoundWorker, computed_here
from online_rl.user_data import prompting_for

log = logging.getLogger(__name__)


def round_actor_process(pid: int) -> bool:
    """Whether `pid` is a process Ray titled as a `RoundActor` (pids are reused)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::RoundActor")
    except OSError:
        return False


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

    def process(self) -> tuple[str, int]:
        """This actor's Ray node id and process id."""
        import ray

        return ray.get_runtime_context().get_node_id(), os.getpid()


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
        """chat_first_s: an actor on this machine is stopped while replies are written here,
        at most this long at a time (`chat_busy`); 0: never."""
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
        self._node = ray.get_runtime_context().get_node_id()
        self.chat_first_s = chat_first_s
        self._lock = threading.Lock()
        self._actors: list[Any] = []
        self._process: dict[int, Any] = {}  # id(actor) -> its (node, pid), or the pending ref
        self._chat_lock = threading.Lock()
        self._timer: threading.Timer | None = None  # ends a stop at chat_first_s
        self._stopped_at: float | None = None  # when the local actors were stopped
        self._no_stop_before = 0.0  # they run at least this long after a stop
        self._may_stop = not ray.util.client.ray.is_connected()  # ray:// nodes are not ours
        self._idle: queue.Queue[Any] = queue.Queue()
        for _ in range(ray_config.actors):
            self._idle.put(self._new_actor())

    def _new_actor(self) -> Any:
        actor = self._actor_class.remote(*self._arguments)  # loads the model in the background
        with self._lock:
            self._actors.append(actor)
            self._process[id(actor)] = actor.process.remote()
        return actor

    def _replace(self, actor: Any) -> Any:
        import ray

        with self._chat_lock:  # never left stopped: a stopped process still dies, but late
            self._resume_now(time.monotonic())
        with self._lock:
            self._actors = [a for a in self._actors if a is not actor]
            self._process.pop(id(actor), None)
        ray.kill(actor, no_restart=True)
        return self._new_actor()

    def actors(self) -> list[Any]:
        """The pool's current actor handles (for tests and the cluster benchmark)."""
        with self._lock:
            return list(self._actors)

    def ready(self) -> list[str]:
        """Wait until every actor has loaded the model; where each runs (`computed_here`)."""
        import ray

        return ray.get([actor.where.remote() for actor in self.actors()])

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
        """Chat first across processes: while this process writes replies, the actors on this
        machine are stopped (SIGSTOP) and go on (SIGCONT) when the last reply ends. A stop
        takes effect at once, in the middle of a step: a round's steps (a DPO or PPO
        minibatch's backward pass) take seconds, longer than a reply, so waiting for the next
        step boundary would not spare the reply. A round is slowed, never starved: a stop
        lasts `chat_first_s` at most, and after a stop the actor runs at least half as long
        before the next one, so it keeps a third of the time under any chat. Actors on other
        machines share no cores with chat and are never stopped; nor is anything when this
        process reaches Ray as a client (`ray://`), whose node ids are the cluster's.
        Returns at once (called under the batcher's lock)."""
        if self.chat_first_s <= 0 or not self._may_stop:
            return
        with self._chat_lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            now = time.monotonic()
            if not busy:
                self._resume_now(now)
            elif self._stopped_at is None and now >= self._no_stop_before:
                self._stopped_at = now
                self._signal(signal.SIGSTOP)
                self._timer = threading.Timer(self.chat_first_s, self._resume_at_cap)
                self._timer.daemon = True
                self._timer.start()

    def _resume_at_cap(self) -> None:
        with self._chat_lock:
            self._resume_now(time.monotonic())

    def _resume_now(self, now: float) -> None:
        """SIGCONT if stopped; the next stop waits half as long as this one lasted."""
        if self._stopped_at is not None:
            self._signal(signal.SIGCONT)
            self._no_stop_before = now + (now - self._stopped_at) / 2
            self._stopped_at = None

    def _signal(self, sig: int) -> None:
        for pid in self.local_pids():
            if round_actor_process(pid):  # not a pid reused by another process since
                with contextlib.suppress(ProcessLookupError):  # died meanwhile
                    os.kill(pid, sig)

    def local_pids(self) -> list[int]:
        """Process ids of the pool's actors on this machine (those that have started; one
        that failed to start is left out)."""
        import ray

        with self._lock:
            pending = [ref for ref in self._process.values() if isinstance(ref, ray.ObjectRef)]
        if pending:
            ready, _ = ray.wait(pending, num_returns=len(pending), timeout=0)
            answers: dict[int, tuple[str, int] | None] = {}
            for ref in ready:
                try:
                    answers[id(ref)] = ray.get(ref)
                except Exception:  # the actor died loading: `run` replaces it
                    answers[id(ref)] = None
            with self._lock:
                for key, ref in list(self._process.items()):
                    if id(ref) in answers:
                        self._process[key] = answers[id(ref)]
        with self._lock:
            known = [p for p in self._process.values() if isinstance(p, tuple)]
        return [pid for node, pid in known if node == self._node]

    def forget_user(self, user_id: str) -> None:
        """Every actor drops what it holds in memory for the user (after its current round)."""
        for actor in self.actors():
            actor.forget_user.remote(user_id)

    def close(self) -> None:
        """Kill the actors; shut Ray down if this pool started it."""
        import ray

        if not ray.is_initialized():
            return
        with self._chat_lock:  # none stays stopped
            if self._timer is not None:
                self._timer.cancel()
            self._resume_now(time.monotonic())
        for actor in self.actors():
            ray.kill(actor, no_restart=True)
        if self.started_ray:
            ray.shutdown()
