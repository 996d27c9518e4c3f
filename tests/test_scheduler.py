"""The background scheduler: clicks queue rounds, one per user at a time, started once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from assistant import Assistant
from online_rl import scheduler as training_scheduler
from online_rl.config import TrainingConfig
from online_rl.scheduler import SchedulerConfig
from tests.conftest import SHORT
from tests.test_training import FAST, OPEN_GATE, give_feedback


def wait_for(condition, timeout: float = 60.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


@pytest.fixture
def background(tmp_path: Path, tiny_model_dir: Path):
    from online_rl.ppo import PPOConfig

    asst = Assistant.open(
        tmp_path / "data",
        model=str(tiny_model_dir),
        background=True,
        training=TrainingConfig(round=FAST, gate=OPEN_GATE, ppo=PPOConfig(max_new_tokens=8)),
        scheduler=SchedulerConfig(events_per_round=6, sweep_minutes=60),
    )
    asst.add_user("alice")
    yield asst
    asst.close()


def test_enough_clicks_start_a_round_in_the_background(background: Assistant) -> None:
    pair = background.compare("alice", "first", **SHORT)
    background.choose("alice", pair.id, "a")
    assert background.trends("alice") == []  # one click is not enough
    give_feedback(background, "alice", prompts=2)  # six more clicks
    wait_for(lambda: [r["outcome"] for r in background.trends("alice")] == ["accepted"])
    wait_for(lambda: background.training_state("alice") is None)
    assert background.chat("alice", "and now?", **SHORT).adapter_version == 1


def test_a_user_is_queued_once_while_queued_or_running(
    background: Assistant, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    started = threading.Event()
    calls = []

    def slow_round(user_id: str) -> None:
        calls.append(user_id)
        started.set()
        release.wait(10)

    monkeypatch.setattr(background.trainer, "run", slow_round)
    user_id = background.user("alice").id
    scheduler = background.scheduler
    assert scheduler is not None
    assert scheduler.queue(user_id)
    started.wait(10)
    assert background.training_state("alice") == "running"
    assert not scheduler.queue(user_id)  # already running: not queued twice
    release.set()
    wait_for(lambda: background.training_state("alice") is None)
    assert calls == [user_id]


def test_the_sweep_queues_users_with_clicks_since_their_last_round(
    background: Assistant, monkeypatch: pytest.MonkeyPatch
) -> None:
    background.add_user("bob")
    ran: list[str] = []
    monkeypatch.setattr(background.trainer, "run", ran.append)
    pair = background.compare("bob", "one click only", **SHORT)
    background.choose("bob", pair.id, "b")
    assert background.scheduler is not None
    background.scheduler.sweep()
    wait_for(lambda: ran == [background.user("bob").id])


def test_one_scheduler_per_data_folder_even_when_opened_twice(background: Assistant) -> None:
    again = training_scheduler.start_for(
        background.config.data_dir,
        background.store,
        lambda user_id: background.trainer.run(user_id),
        SchedulerConfig(),
    )
    assert again is background.scheduler
    jobs = [j.id for j in again.scheduler.get_jobs()]
    assert jobs.count(training_scheduler.SWEEP_JOB) == 1


def test_closing_while_a_round_ends_with_new_clicks_does_not_hang(
    background: Assistant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round that ends while the app closes, with clicks that came in during it, would queue
    the next round inside APScheduler's shutdown (which holds the lock adding a job needs)."""
    started = threading.Event()
    release = threading.Event()
    real_run = background.trainer.run

    def slow_round(user_id: str):
        report = real_run(user_id)
        started.set()
        release.wait(30)  # the round's end, held until close has begun
        return report

    monkeypatch.setattr(background.trainer, "run", slow_round)
    give_feedback(background, "alice", prompts=2)  # 8 clicks: a round runs
    assert started.wait(60)
    give_feedback(background, "alice", prompts=2)  # 8 more before it ends: it will queue again
    closing = threading.Thread(target=background.close)
    closing.start()
    time.sleep(0.5)  # let close reach the scheduler's shutdown, then let the round end
    release.set()
    closing.join(60)
    assert not closing.is_alive(), "close() hung on the scheduler's shutdown"
    assert [r["outcome"] for r in background.trends("alice")] == ["accepted"]  # no second round


def test_closing_runs_only_the_round_in_progress_not_the_queued_ones(
    background: Assistant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rounds queued for other users when the app closes are dropped, not run one by one
    before close returns (their clicks stay new: the next click or sweep queues them again)."""
    started = threading.Event()
    release = threading.Event()
    ran: list[str] = []

    def slow_round(user_id: str) -> None:
        ran.append(user_id)
        started.set()
        release.wait(30)

    monkeypatch.setattr(background.trainer, "run", slow_round)
    for name in ("alice", "bob", "carol"):
        if name != "alice":
            background.add_user(name)
        give_feedback(background, name, prompts=2)  # 8 clicks each: all three queued
    assert started.wait(30)
    closing = threading.Thread(target=background.close)
    closing.start()
    time.sleep(0.5)
    release.set()
    closing.join(60)
    assert not closing.is_alive()
    assert len(ran) == 1  # the round in progress finished; the two queued never started


def test_a_failed_round_uses_up_no_clicks_and_is_not_retried_at_once(
    background: Assistant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real round fails (its model pass raises): the run is recorded failed, the user is not
    queued again straight away (a failing round must not loop), and their clicks stay new, so
    the sweep queues them again and the next round, which works, goes live."""
    from online_rl import reward

    real_features = reward.features

    def broken(*args, **kwargs):
        raise RuntimeError("a model pass failed")

    monkeypatch.setattr(reward, "features", broken)
    give_feedback(background, "alice", prompts=2)  # six clicks queue a round
    wait_for(lambda: [r["outcome"] for r in background.trends("alice")] == ["failed"])
    wait_for(lambda: background.training_state("alice") is None)
    time.sleep(0.5)
    assert [r["outcome"] for r in background.trends("alice")] == ["failed"]  # not retried
    monkeypatch.setattr(reward, "features", real_features)
    assert background.scheduler is not None
    background.scheduler.sweep()  # the six clicks are still new
    wait_for(lambda: [r["outcome"] for r in background.trends("alice")] == ["failed", "accepted"])


def test_three_failures_in_a_row_use_up_the_clicks_and_an_interrupted_run_does_too(
    background: Assistant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retrying what keeps failing (or what killed the process) would loop: the third failed
    round in a row, and a round interrupted by the process's death, count the clicks used."""
    from online_rl import reward
    from storage import records

    def broken(*args, **kwargs):
        raise RuntimeError("a model pass failed")

    monkeypatch.setattr(reward, "features", broken)
    assert background.scheduler is not None
    background.scheduler.shutdown()  # rounds by hand here
    give_feedback(background, "alice", prompts=2)
    db, alice = background.store.db, background.user("alice").id
    for attempt in range(3):
        with pytest.raises(RuntimeError, match="a model pass failed"):
            background.train("alice")
        counted = alice not in records.users_with_feedback_since_last_run(db)
        assert counted == (attempt == 2)  # only the third gives up
    reasons = [r["reason"] for r in background.trends("alice")]
    assert [r.startswith(records.GAVE_UP) for r in reasons] == [False, False, True]
    give_feedback(background, "alice", prompts=1)  # new clicks are new again
    assert alice in records.users_with_feedback_since_last_run(db)
    records.start_training_run(db, alice)
    records.fail_interrupted_runs(db)  # the process died during that round
    assert alice not in records.users_with_feedback_since_last_run(db)
