"""Background rounds in the serving process (APScheduler 3.x).

A user is queued when they have made `events_per_round` clicks since their last round started;
a periodic sweep queues anyone with at least one click the event trigger has not covered. Each
user has one job id (`train-<user id>`), `max_instances=1` and `coalesce=True`, and rounds run
in a single worker thread: on 2 cores two rounds at once would only slow each other and chat.
Clicks that arrive while the user's round runs are counted again when it finishes. A round
that fails (an error, a lost Ray actor) uses up no clicks: they are counted from the last
round that did not fail, and the next click or sweep queues the user again (not at once, so a
failing round does not loop).

The scheduler knows the store (each thread reads through its own connection) and a function
that runs one user's round, nothing else (the facade hands it `lambda user_id:
trainer.run(user_id)`). `start_for` keeps one scheduler per data folder for as long as this
module stays imported: a second `Assistant.open(background=True)` on the same folder reuses
it. Gradio's reload mode also drops and re-imports project modules, so `ui/main.py` opens the
Assistant once under `gr.NO_RELOAD` and hands the same modules back on each reload.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from storage import records
from storage.db import Store

log = logging.getLogger(__name__)

SWEEP_JOB = "sweep"


@dataclass(frozen=True)
class SchedulerConfig:
    """events_per_round: N new clicks queue a round; sweep_minutes: how often stragglers are
    queued; workers: rounds that may run at once."""

    events_per_round: int = 6
    sweep_minutes: float = 10.0
    workers: int = 1


RunRound = Callable[[str], Any]  # runs one round for the user id


class TrainingScheduler:
    def __init__(self, store: Store, run_round: RunRound, config: SchedulerConfig):
        self.store = store
        self.run_round = run_round
        self.config = config
        self._state: dict[str, str] = {}  # user id -> "queued" | "running"
        self._stopping = False
        self._lock = threading.Lock()
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(config.workers)},
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None},
        )

    def start(self) -> None:
        self.scheduler.add_job(
            self.sweep, "interval", minutes=self.config.sweep_minutes, id=SWEEP_JOB
        )
        self.scheduler.start()

    def shutdown(self, wait: bool = True) -> None:
        """Stop queueing, then wait for the running round only. APScheduler's shutdown holds
        its job-store lock while it waits, so a round that ends by queueing the next one (clicks
        came in meanwhile) would wait for that lock forever: `_stopping` turns `queue` away
        first. Rounds already handed to the executor's queue would all run before shutdown
        returns (16 users: over an hour): `_stopping` makes them return at once (their clicks
        stay new, so the next click or sweep queues them again)."""
        with self._lock:
            self._stopping = True
        if self.scheduler.running:
            self.scheduler.shutdown(wait=wait)

    def state(self, user_id: str) -> str | None:
        """ "queued", "running" or None."""
        with self._lock:
            return self._state.get(user_id)

    def _new_events(self, user_id: str) -> int:
        db = self.store.db
        last = records.last_counted_run(db, user_id)
        return records.feedback_events_since(db, user_id, last["started"] if last else None)

    def notify(self, user_id: str) -> bool:
        """Called after each click; queues a round once enough clicks that teach have come in
        (none while the user has paused learning)."""
        if records.learning_paused(self.store.db, user_id):
            return False
        if self._new_events(user_id) < self.config.events_per_round:
            return False
        return self.queue(user_id)

    def queue(self, user_id: str) -> bool:
        """Queue a round for the user unless one is queued or running already."""
        with self._lock:  # held while adding: shutdown cannot start in between
            if self._stopping or user_id in self._state:
                return False
            self._state[user_id] = "queued"
            self.scheduler.add_job(
                self._run,
                args=[user_id],
                id=f"train-{user_id}",
                replace_existing=True,
                next_run_time=datetime.now().astimezone(),
            )
        return True

    def sweep(self) -> None:
        """Queue everyone with clicks since their last round."""
        for user_id in records.users_with_feedback_since_last_run(self.store.db):
            self.queue(user_id)

    def _run(self, user_id: str) -> None:
        with self._lock:
            if self._stopping:  # queued in the executor before shutdown: not run at all
                self._state.pop(user_id, None)
                return
            self._state[user_id] = "running"
        try:
            self.run_round(user_id)
        except Exception:  # its clicks stay new: the next click or sweep queues it again
            log.exception("user %s: training round failed", user_id)
            return
        finally:
            with self._lock:
                self._state.pop(user_id, None)
        self.notify(user_id)  # clicks that came in during the round


_started: dict[Path, TrainingScheduler] = {}
_started_lock = threading.Lock()


def start_for(
    data_dir: Path, store: Store, run_round: RunRound, config: SchedulerConfig
) -> TrainingScheduler:
    """The one scheduler of this process for the data folder (started once; a later caller's
    store and round function replace the earlier one's)."""
    key = Path(data_dir).resolve()
    with _started_lock:
        existing = _started.get(key)
        if existing is not None and existing.scheduler.running:
            existing.store, existing.run_round = store, run_round
            return existing
        scheduler = TrainingScheduler(store, run_round, config)
        scheduler.start()
        _started[key] = scheduler
        return scheduler


def stop_for(data_dir: Path) -> None:
    key = Path(data_dir).resolve()
    with _started_lock:
        scheduler: Any = _started.pop(key, None)
    if scheduler is not None:
        scheduler.shutdown()
