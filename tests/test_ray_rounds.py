"""Rounds computed by Ray actors (`online_rl.ray_rounds`), on a local Ray with this machine's
cores and no dashboard: the serving process gathers and publishes, an actor computes."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import ray

from assistant import Assistant, RayConfig
from online_rl.config import TrainingConfig
from online_rl.ppo import PPOConfig
from online_rl.round_worker import computed_here
from storage import adapters as adapter_files
from storage import records
from storage.serving_format import problems
from tests.conftest import SHORT
from tests.test_training import FAST, OPEN_GATE, give_feedback

# long enough that a test can act while an actor computes: PPO iterations go on for this long
ROUND_SECONDS = 4.0


def use_keyword_classifier() -> None:
    """Every Ray worker process flags exactly the tests' offensive words (tests/conftest.py)."""
    from online_rl import safety
    from tests.conftest import keyword_offensive_probability

    safety.offensive_probability = keyword_offensive_probability


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={
            # the workers import this repository's `tests` package, as pytest does here
            "env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])},
            "worker_process_setup_hook": use_keyword_classifier,
        },
    )
    yield
    ray.shutdown()


def open_on_ray(root: Path, model: Path, actors: int, seconds: float = 0.0) -> Assistant:
    """The tests' accepting gate, rounds on `actors` Ray actors; with `seconds`, a round's PPO
    iterations go on that long (so the round is still computing when a test acts)."""
    rounds = replace(FAST, iterations=10_000, max_seconds=seconds) if seconds else FAST
    training = TrainingConfig(round=rounds, gate=OPEN_GATE, ppo=PPOConfig(max_new_tokens=8))
    ray_config = RayConfig(actors=actors, round_timeout_s=300)
    return Assistant.open(root / "data", model=str(model), training=training, ray=ray_config)


def actors_ready(asst: Assistant) -> list[str]:
    """Where each actor runs, once each has loaded the model."""
    workers = asst.trainer.workers
    assert workers is not None and asst.trainer.worker is None  # no round in this process
    return workers.ready()


def train_in_thread(asst: Assistant, user: str) -> tuple[threading.Thread, list]:
    out: list = []

    def run() -> None:
        try:
            out.append(asst.train(user))
        except Exception as e:  # the test reads it
            out.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def wait_for_running_round(asst: Assistant, user: str) -> None:
    user_id = asst.user(user).id
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        run = records.last_training_run(asst.store.db, user_id)
        if run is not None and run["outcome"] == "running":
            time.sleep(1.5)  # past gathering (a fraction of a second): the actor computes
            return
        time.sleep(0.05)
    raise AssertionError("the round never started")


def second_round_in_flight(asst: Assistant, user: str) -> tuple[threading.Thread, list]:
    """v1 live, more clicks, and a second round started: its actor is computing it."""
    actors_ready(asst)
    give_feedback(asst, user)
    assert asst.train(user).accepted  # v1 live
    give_feedback(asst, user, prompts=2)
    thread, out = train_in_thread(asst, user)
    wait_for_running_round(asst, user)
    return thread, out


def test_a_round_computed_by_a_ray_actor_goes_live(
    local_ray: None, tmp_path: Path, tiny_model_dir: Path
) -> None:
    with open_on_ray(tmp_path, tiny_model_dir, actors=1) as asst:
        alice = asst.add_user("alice").id
        (where,) = actors_ready(asst)
        assert where != computed_here()  # another process
        give_feedback(asst, "alice")
        report = asst.train("alice")
        assert report.accepted and report.version == 1, report.reason
        assert report.metrics["computed_by"] == where  # computed there, published here
        (version,) = asst.versions("alice")
        assert version["status"] == "live"
        folder = adapter_files.version_dir(asst.config.adapters_dir, alice, 1)
        assert problems(folder) == []  # a plain PEFT adapter, as every version
        assert asst.chat("alice", "hello", **SHORT).adapter_version == 1
        # the base's red-team baseline the actor sampled is stored here, the only writer
        assert asst.store.db["red_team_baselines"].count == 1


def process_state(pid: int) -> str:
    """R running, S sleeping, T stopped (/proc/PID/stat's third field)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_replies_stop_a_local_actor_and_it_goes_on_after(
    local_ray: None, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Chat first across processes: while the serving process writes a reply, the actors on
    this machine are stopped (the OS's SIGSTOP, mid-step), and they go on when it ends, or
    after `chat_first_s` of replies without a pause."""
    with open_on_ray(tmp_path, tiny_model_dir, actors=1) as asst:
        asst.add_user("alice")
        actors_ready(asst)
        workers = asst.trainer.workers
        deadline = time.monotonic() + 30
        while not workers.local_pids():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (pid,) = workers.local_pids()
        seen = [process_state(pid) for _ in asst.chat_stream("alice", "hello", **SHORT)]
        assert "T" in seen  # stopped while the reply was written
        time.sleep(0.2)
        assert process_state(pid) != "T"  # and going on once it ended
        workers.chat_first_s = 0.5
        workers.chat_busy(True)  # a stretch of replies that does not end
        assert process_state(pid) == "T"
        time.sleep(1.5)
        assert process_state(pid) != "T"  # resumed after chat_first_s: slowed, never starved


def test_an_actor_killed_mid_round_fails_the_run_and_leaves_live_serving(
    local_ray: None, tmp_path: Path, tiny_model_dir: Path
) -> None:
    with open_on_ray(tmp_path, tiny_model_dir, actors=1, seconds=ROUND_SECONDS) as asst:
        alice = asst.add_user("alice").id
        thread, out = second_round_in_flight(asst, "alice")
        (actor,) = asst.trainer.workers.actors()
        ray.kill(actor, no_restart=True)
        thread.join(120)
        (error,) = out
        assert "RoundLost" in type(error).__name__ and "died" in str(error)
        run = records.last_training_run(asst.store.db, alice)
        assert run["outcome"] == "failed" and "Ray actor" in run["reason"]
        assert [v["version"] for v in asst.versions("alice")] == [1]
        assert sorted(p.name for p in (asst.config.adapters_dir / alice).iterdir()) == ["v00001"]
        assert asst.chat("alice", "still there?", **SHORT).adapter_version == 1
        # the clicks the failed round had are still new, and a fresh actor took the dead one's place
        since = records.last_counted_run(asst.store.db, alice)["started"]
        assert records.feedback_events_since(asst.store.db, alice, since) > 0
        assert alice in records.users_with_feedback_since_last_run(asst.store.db)
        (fresh,) = asst.trainer.workers.actors()
        assert fresh is not actor
        report = asst.train("alice")
        assert report.accepted and report.version == 2, report.reason


def test_two_users_rounds_run_on_two_actors_at_once(
    local_ray: None, tmp_path: Path, tiny_model_dir: Path
) -> None:
    with open_on_ray(tmp_path, tiny_model_dir, actors=2, seconds=ROUND_SECONDS) as asst:
        where = set(actors_ready(asst))
        assert len(where) == 2
        for name in ("alice", "bob"):
            asst.add_user(name)
            give_feedback(asst, name)
        threads = [train_in_thread(asst, name) for name in ("alice", "bob")]
        for thread, _ in threads:
            thread.join(300)
        reports = [out[0] for _, out in threads]
        assert all(r.accepted for r in reports), [r.reason for r in reports]
        assert {r.metrics["computed_by"] for r in reports} == where  # one round on each
        runs = [records.last_training_run(asst.store.db, asst.user(n).id) for n in ("alice", "bob")]
        first, second = sorted(runs, key=lambda r: r["started"])
        assert second["started"] < first["finished"]  # computed at the same time
        scheduler = asst.start_background()
        assert scheduler.config.workers == 2  # the scheduler runs as many rounds at once


@pytest.mark.parametrize("meanwhile", ["rollback", "delete"])
def test_a_result_that_arrives_after_a_rollback_or_a_deletion_is_not_applied(
    local_ray: None, tmp_path: Path, tiny_model_dir: Path, meanwhile: str
) -> None:
    with open_on_ray(tmp_path, tiny_model_dir, actors=1, seconds=ROUND_SECONDS) as asst:
        alice = asst.add_user("alice").id
        thread, out = second_round_in_flight(asst, "alice")
        if meanwhile == "rollback":
            asst.rollback("alice", 0)
        else:
            asst.delete_user("alice")
        thread.join(120)
        (report,) = out
        assert not report.accepted
        if meanwhile == "rollback":
            assert report.reason.startswith("stale")
            statuses = {v["version"]: v["status"] for v in asst.versions("alice")}
            assert statuses[2] == "stale"
            assert asst.chat("alice", "the base?", **SHORT).adapter_version == 0
        else:
            assert report.reason == "abandoned: the user was deleted while the round ran"
            assert not (asst.config.adapters_dir / alice).exists()
            assert not records.list_training_runs(asst.store.db, alice)
