"""What a user controls about their own learning: pause, conversations that do not teach, undo,
and their data. Rounds here are real (tiny model, the gate open or shut as named)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assistant import Assistant, InvalidInput, PermissionDenied
from online_rl.safety import SafetyConfig
from online_rl.user_data import user_feedback
from storage import records
from tests.conftest import SHORT, row_counts
from tests.test_scheduler import wait_for
from tests.test_training import SHUT_GATE, give_feedback, open_with
from tests.test_training import accepting as accepting  # noqa: F401 (the fixture)
from ui.panel import round_in_words


def test_undo_goes_back_to_the_parent_then_to_the_base(accepting: Assistant) -> None:
    give_feedback(accepting, "alice")
    assert accepting.train("alice").accepted  # v1, from the base
    give_feedback(accepting, "alice", prompts=2)
    assert accepting.train("alice").accepted  # v2, from v1
    assert accepting.undo_last_update("alice") == 1
    assert accepting.chat("alice", "which one?", **SHORT).adapter_version == 1
    assert accepting.undo_last_update("alice") == 0
    assert accepting.chat("alice", "and now?", **SHORT).adapter_version == 0
    before = row_counts(accepting)
    with pytest.raises(InvalidInput, match="nothing to undo"):
        accepting.undo_last_update("alice")
    assert row_counts(accepting) == before


def test_a_paused_user_is_not_trained_and_their_clicks_wait(accepting: Assistant) -> None:
    accepting.pause_learning("alice")
    assert accepting.learning_paused("alice")
    give_feedback(accepting, "alice")  # clicks while paused are kept...
    assert accepting.feedback_counts("alice")["choices"] == 3
    db = accepting.store.db
    assert records.users_with_feedback_since_last_run(db) == []  # ...the sweep passes them by
    report = accepting.train("alice")  # ...and a round queued before the pause skips
    assert not report.accepted and "paused" in report.reason and report.version is None
    accepting.pause_learning("alice", paused=False)
    assert not accepting.learning_paused("alice")
    assert accepting.train("alice").accepted  # the clicks made while paused teach now
    with pytest.raises(InvalidInput):
        accepting.pause_learning("alice", "yes")  # type: ignore[arg-type]


def test_a_paused_users_clicks_queue_no_round_in_the_background(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from online_rl.config import TrainingConfig
    from online_rl.ppo import PPOConfig
    from online_rl.scheduler import SchedulerConfig
    from tests.test_training import FAST, OPEN_GATE

    with Assistant.open(
        tmp_path / "data",
        model=str(tiny_model_dir),
        background=True,
        training=TrainingConfig(round=FAST, gate=OPEN_GATE, ppo=PPOConfig(max_new_tokens=8)),
        scheduler=SchedulerConfig(events_per_round=6, sweep_minutes=60),
    ) as asst:
        asst.add_user("alice")
        asst.pause_learning("alice")
        give_feedback(asst, "alice", prompts=3)  # 9 clicks: a round's worth and more
        assert asst.training_state("alice") is None and asst.trends("alice") == []
        asst.pause_learning("alice", paused=False)  # resuming counts them: a round starts
        wait_for(lambda: [r["outcome"] for r in asst.trends("alice")] == ["accepted"])


def test_a_conversation_that_does_not_teach_keeps_its_clicks_out_of_every_round(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    with open_with(tmp_path, tiny_model_dir, SHUT_GATE) as asst:
        asst.add_user("alice")
        private = asst.chat("alice", "a private question", **SHORT)
        asst.set_conversation_learning("alice", private.conversation_id, False)
        for i in range(3):
            pair = asst.compare("alice", f"private {i}", private.conversation_id, **SHORT)
            asst.choose("alice", pair.id, "a")
            asst.rate("alice", pair.a.id, 1)
        asst.rate("alice", private.id, -1)
        db, user_id = asst.store.db, asst.user("alice").id
        assert records.feedback_events_since(db, user_id, None) == 0
        assert len(user_feedback(db, user_id, SafetyConfig()).feedback) == 0
        assert records.user_prompts(db, user_id, 64) == []
        report = asst.train("alice")  # the real round: nothing of it may teach
        assert "not enough feedback" in report.reason
        shown = {c["id"]: c["learn"] for c in asst.conversations("alice")}
        assert shown == {private.conversation_id: False}
        assert len(asst.messages("alice", private.conversation_id)) == 11  # all kept, shown
        asst.set_conversation_learning("alice", private.conversation_id, True)
        assert records.feedback_events_since(db, user_id, None) == 7  # 4 thumbs, 3 choices
        assert len(user_feedback(db, user_id, SafetyConfig()).feedback) == 7


def test_conversation_learning_refuses_bad_input_and_other_users_conversations(
    asst: Assistant, alice: str, bob: str
) -> None:
    mine = asst.chat(alice, "mine", **SHORT)
    before = row_counts(asst)
    with pytest.raises(PermissionDenied):
        asst.set_conversation_learning(bob, mine.conversation_id, False)
    with pytest.raises(PermissionDenied):
        asst.conversation_learns(bob, mine.conversation_id)
    with pytest.raises(InvalidInput):
        asst.set_conversation_learning(alice, mine.conversation_id, "no")  # type: ignore[arg-type]
    assert row_counts(asst) == before
    assert asst.conversations(alice)[0]["learn"] is True
    assert asst.conversation_learns(alice, mine.conversation_id)


def test_my_data_holds_everything_of_the_user_and_nothing_of_anyone_else(
    asst: Assistant, alice: str, bob: str
) -> None:
    reply = asst.chat(alice, "alice asks", **SHORT)
    asst.rate(alice, reply.id, -1, reason="too long")
    pair = asst.compare(alice, "alice compares", reply.conversation_id, **SHORT)
    asst.choose(alice, pair.id, "b")
    asst.chat(bob, "bob's secret question", **SHORT)
    data = asst.my_data(alice)
    text = json.dumps(data)  # JSON as it is
    assert "bob's secret question" not in text and "password" not in text
    assert data["user"]["name"] == alice and data["user"]["learning_paused"] is False
    (conversation,) = data["conversations"]
    assert conversation["learn"] is True
    assert [m["role"] for m in conversation["messages"]] == ["user", "assistant"] + [
        "user",
        "assistant",
        "assistant",
    ]
    (thumb,) = data["feedback"]
    assert (thumb["message_id"], thumb["thumb"], thumb["reason"]) == (reply.id, -1, "too long")
    assert [c["winner"] for c in data["choices"]] == ["b"]
    assert data["versions"] == []


def test_a_pause_while_a_round_runs_keeps_its_version_from_going_live(
    accepting: Assistant, monkeypatch: pytest.MonkeyPatch
) -> None:
    from online_rl import round_worker

    measure = round_worker.measure_gate

    def pause_then_measure(*args, **kwargs):
        accepting.pause_learning("alice")  # the user pauses while the round runs
        return measure(*args, **kwargs)

    monkeypatch.setattr(round_worker, "measure_gate", pause_then_measure)
    give_feedback(accepting, "alice")
    report = accepting.train("alice")
    assert not report.accepted and "paused while the round ran" in report.reason
    (version,) = accepting.versions("alice")
    assert version["status"] == "rejected" and "paused" in version["reason"]
    assert accepting.chat("alice", "still the base?", **SHORT).adapter_version == 0
    assert (
        round_in_words("rejected", report.reason) == "not adopted: you paused learning while it ran"
    )
