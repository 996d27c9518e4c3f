"""Load on the tiny model: users at once over the public API while rounds train in the
background; every feedback row, pair and message checked against what the clients sent.
(`attune bench load` is the full run on the real model: 16 users x 20 turns.)"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from assistant import Assistant
from bench.load import LoadSettings, add_users, check, run_load, simulate, user_names
from online_rl.config import TrainingConfig
from online_rl.ppo import PPOConfig
from online_rl.scheduler import SchedulerConfig
from tests.test_training import FAST, OPEN_GATE
from tests.ui_support import FAST as FAST_SERVING
from tests.ui_support import serving

SETTINGS = LoadSettings(users=6, turns=8, compare_every=4, retract_every=3, max_new_tokens=8)


def test_concurrent_users_lose_and_duplicate_nothing_while_rounds_train(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    training = TrainingConfig(round=FAST, gate=OPEN_GATE, ppo=PPOConfig(max_new_tokens=8))
    with Assistant.open(
        tmp_path / "data",
        model=str(tiny_model_dir),
        background=True,
        training=training,
        scheduler=SchedulerConfig(events_per_round=4),
    ) as asst:
        add_users(asst, SETTINGS)
        config = replace(FAST_SERVING, max_new_tokens=SETTINGS.max_new_tokens)
        with serving(asst, config) as url:
            report = run_load(asst, url, SETTINGS)
        assert report["errors"] == [] and report["problems"] == [], report
        sent = report["sent"]
        compares = SETTINGS.turns // SETTINGS.compare_every
        assert sent["comparisons"] == sent["choices"] == SETTINGS.users * compares
        assert (
            sent["chat_turns"]
            == sent["feedback_rows"]
            == SETTINGS.users * (SETTINGS.turns - compares)
        )
        assert sum(report["training_runs_during_load"].values()) >= 1, report
        assert set(report["latency_seconds"]) == {"chat", "rate", "compare", "choose"}


def test_the_check_finds_lost_extra_and_changed_rows(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The load run's verdict can fail: tamper with what one client's clicks stored."""
    settings = replace(SETTINGS, users=1, turns=4)
    with Assistant.open(tmp_path / "data", model=str(tiny_model_dir)) as asst:
        add_users(asst, settings)
        with serving(asst, replace(FAST_SERVING, max_new_tokens=8)) as url:
            sent = [simulate(url, user_names(settings)[0], settings)]
        assert not sent[0].errors and check(asst, sent) == []
        db = asst.store.db
        rated = list(sent[0].thumbs)
        db.execute("update feedback set thumb = -thumb where message_id = ?", [rated[0]])
        db.execute("delete from feedback where message_id = ?", [rated[1]])
        db.conn.commit()
        problems = check(asst, sent)
        assert len(problems) == 1 and "1 lost, 0 extra, 1 with another thumb" in problems[0]
        (pair_id,) = sent[0].choices
        sent[0].choices[pair_id] = "tie" if sent[0].choices[pair_id] != "tie" else "a"
        assert any("decided pairs" in p for p in check(asst, sent))
        sent[0].thumbs.pop(rated[2])  # a row the client never sent
        assert any("1 extra" in p for p in check(asst, sent))
        sent[0].questions[0] += " (edited)"  # a question stored other than it was sent
        assert any("user turns stored" in p for p in check(asst, sent))
