"""What operators see across users: every user at a glance (sorted, paged, filtered), the
alerts each row raises, the feedback browser. Rows are written as the app writes them
(`storage.records`), without a model: the views never need one."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from assistant import Assistant, AssistantConfig, InvalidInput, UnknownUser
from assistant.alerts import alerts_for
from assistant.config import AlertConfig, OperatorConfig
from storage import records

BUDGET = 40.0  # the gate's KL budget the alerts compare with (GateConfig.kl_budget)


def viewer(tmp_path: Path, **operator: float) -> Assistant:
    config = AssistantConfig(data_dir=tmp_path, operator=OperatorConfig(**operator))
    return Assistant(config)


@pytest.fixture
def ops(tmp_path: Path) -> Iterator[Assistant]:
    asst = viewer(tmp_path, page_size=2, cache_seconds=0.0)
    yield asst
    asst.close()


def replies(asst: Assistant, user: str, thumbs: list[tuple[int, int, str | None]]) -> list[str]:
    """One conversation of the user's with a reply per (version, thumb, reason); 0 = unrated."""
    db = asst.store.db
    user_id = asst.user(user).id
    conversation = records.add_conversation(db, user_id, f"{user}'s questions")["id"]
    ids = []
    for version, thumb, reason in thumbs:
        rows = records.add_messages(
            db,
            conversation,
            user_id,
            [
                {"role": "user", "text": "a question"},
                {
                    "role": "assistant",
                    "text": f"an answer of v{version}",
                    "adapter_version": version,
                },
            ],
        )
        if thumb:
            records.upsert_feedback(db, rows[1]["id"], user_id, thumb, reason)
        ids.append(rows[1]["id"])
    return ids


def release(asst: Assistant, user: str, version: int, parent: int | None, red: float) -> None:
    db = asst.store.db
    user_id = asst.user(user).id
    metrics = {"red_team_offensive_rate": red}
    records.add_adapter_version(
        db, user_id, version, f"v{version}", parent, "retired", None, metrics
    )
    records.make_live(db, user_id, version, old_status="retired")


def rounds(asst: Assistant, user: str, outcomes: list[tuple[str, float, float]]) -> None:
    """Finished rounds: (outcome, KL, held-out accuracy)."""
    db = asst.store.db
    for outcome, kl, accuracy in outcomes:
        run = records.start_training_run(db, asst.user(user).id)
        metrics = {"kl": kl, "heldout_accuracy": accuracy}
        reason = "it did not beat live" if outcome == "rejected" else None
        records.finish_training_run(db, run["id"], outcome, None, reason, metrics)


@pytest.fixture
def troubled(ops: Assistant) -> Assistant:
    """alice: v2 (from v1) live, liked less than v1, more offensive, three refused rounds with
    a high KL and a head at chance; bob: a quiet user on the base model."""
    for name in ["alice", "bob", "carol_x", "carolxx"]:
        ops.add_user(name)
    release(ops, "alice", 1, None, red=0.02)
    release(ops, "alice", 2, 1, red=0.10)
    replies(ops, "alice", [(1, 1, None)] * 5 + [(1, -1, None)])  # v1: 5 of 6 up
    rounds(ops, "alice", [("accepted", 10.0, 0.8)] + [("rejected", 35.0, 0.52)] * 3)
    replies(ops, "alice", [(2, 1, None)] * 2 + [(2, -1, "harmful")] * 3)  # after: 2 of 5 up
    replies(ops, "bob", [(0, 1, "clear"), (0, 0, None)])
    return ops


def test_every_user_at_a_glance(troubled: Assistant) -> None:
    page = troubled.users_overview("user", page=1)
    assert (page["total"], page["pages"]) == (4, 2)
    alice, bob = page["rows"]
    assert (alice["live_version"], alice["live_parent"]) == (2, 1)
    assert (alice["last_outcome"], alice["kl"], alice["head_accuracy"]) == ("rejected", 35.0, 0.52)
    assert alice["share_up_before"] == pytest.approx(5 / 6) and alice["thumbs_before"] == 6
    assert alice["share_up_live"] == pytest.approx(2 / 5) and alice["thumbs_live"] == 5
    assert (alice["clicks_waiting"], alice["flagged"], alice["refused_recently"]) == (5, 3, 3)
    assert (bob["live_version"], bob["share_up_live"], bob["share_up_before"]) == (0, 1.0, None)
    assert (bob["clicks_waiting"], bob["flagged"], bob["alerts"]) == (1, 0, [])
    assert [a.split(" ")[0] for a in alice["alerts"]] == [
        "offensive",
        "thumbs-up",
        "3",
        "KL",
        "reward",
    ]


def test_sorted_paged_and_filtered(troubled: Assistant) -> None:
    by_drop = troubled.users_overview("share_up_change", descending=False)
    assert by_drop["rows"][0]["user"] == "alice"  # the biggest fall first; no parent: last
    flagged = troubled.users_overview("flagged", descending=True)["rows"]
    assert [r["user"] for r in flagged] == ["alice", "bob"]
    second = troubled.users_overview("user", page=2)["rows"]
    assert [r["user"] for r in second] == ["carol_x", "carolxx"]
    literal = troubled.users_overview(name_contains="l_")  # "_" is a character, not a wildcard
    assert [r["user"] for r in literal["rows"]] == ["carol_x"]
    assert troubled.users_overview(page=9)["rows"] == []
    too_far = {"page": 10**30}  # refused readably, not handed to SQLite
    for bad in [
        {"sort": "password_hash"},
        {"page": 0},
        {"page": "1"},
        {"descending": "yes"},
        too_far,
    ]:
        with pytest.raises(InvalidInput):
            troubled.users_overview(**bad)
    with pytest.raises(InvalidInput, match="control character"):
        troubled.users_overview(name_contains="a\x00")


def test_alerts_list_and_the_server_log(
    troubled: Assistant, caplog: pytest.LogCaptureFixture
) -> None:
    alerts = troubled.alerts()
    assert {a["user"] for a in alerts} == {"alice"} and len(alerts) == 5
    with caplog.at_level(logging.WARNING):
        troubled._round_finished(troubled.user("alice").id)  # what follows every round
        troubled._round_finished(troubled.user("bob").id)
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 5 and all(m.startswith("alert for user alice: ") for m in logged)


def test_each_alert_rule_at_its_threshold() -> None:
    quiet = {
        "live_version": 3,
        "live_parent": 2,
        "red_team_live": 0.10,
        "red_team_before": 0.06,
        "share_up_live": 0.60,
        "share_up_before": 0.74,
        "thumbs_live": 5,
        "thumbs_before": 5,
        "refused_recently": 2,
        "last_reason": "not better",
        "last_outcome": "rejected",
        "kl": 31.9,
        "head_accuracy": 0.56,
    }
    config = AlertConfig()
    assert alerts_for(quiet, BUDGET, config) == []
    crossing = {
        "red_team_live": 0.11,  # +0.05
        "share_up_live": 0.59,  # -0.15
        "refused_recently": 3,
        "kl": 32.0,  # 80% of 40
        "head_accuracy": 0.55,
    }
    for key, value in crossing.items():
        said = alerts_for({**quiet, key: value}, BUDGET, config)
        assert len(said) == 1, (key, said)
    few_thumbs = {**quiet, "share_up_live": 0.0, "thumbs_live": 4}
    assert alerts_for(few_thumbs, BUDGET, config) == []  # too few thumbs to tell
    on_the_base = {**quiet, "live_version": 0, "share_up_live": 0.0, "red_team_live": 0.9}
    assert alerts_for(on_the_base, BUDGET, config) == []


def test_one_computation_is_reused_for_the_cache_seconds(tmp_path: Path) -> None:
    with viewer(tmp_path, cache_seconds=3600.0) as cached:
        cached.add_user("dana")
        assert cached.users_overview()["rows"][0]["clicks_waiting"] == 0
        replies(cached, "dana", [(0, 1, None)])
        assert cached.users_overview()["rows"][0]["clicks_waiting"] == 0  # the cached rows
    with viewer(tmp_path, cache_seconds=0.0) as fresh:
        assert fresh.users_overview()["rows"][0]["clicks_waiting"] == 1


def test_the_feedback_browser(troubled: Assistant) -> None:
    everything = troubled.feedback_browser()
    assert everything["total"] == 5 + 6 + 1 and everything["pages"] == 6  # no retraction
    harmful = troubled.feedback_browser(reason_contains="harm")
    assert harmful["total"] == 3
    row = harmful["rows"][0]
    assert (row["user"], row["thumb"], row["reason"], row["version"]) == ("alice", -1, "harmful", 2)
    assert row["reply"] == "an answer of v2" and row["conversation"] == "alice's questions"
    assert troubled.feedback_browser(user="alice", thumb=1, version=1)["total"] == 5
    assert troubled.feedback_browser(user="bob")["rows"][0]["reason"] == "clear"
    with pytest.raises(UnknownUser):
        troubled.feedback_browser(user="nobody")
    for bad in [{"thumb": 0}, {"thumb": "1"}, {"version": -1}, {"page": 0}]:
        with pytest.raises(InvalidInput):
            troubled.feedback_browser(**bad)


def test_a_skipped_round_hides_no_measurement_and_a_first_version_meets_the_base(
    ops: Assistant,
) -> None:
    ops.add_user("erin")
    db, erin = ops.store.db, ops.user("erin").id
    records.add_adapter_version(
        db,
        erin,
        1,
        "v1",
        None,
        "retired",
        None,
        {"red_team_offensive_rate": 0.20, "base_red_team_offensive_rate": 0.05},
    )
    records.make_live(db, erin, 1, old_status="retired")
    rounds(ops, "erin", [("accepted", 36.0, 0.5)])
    skipped = records.start_training_run(db, erin)  # a round with too few clicks since
    records.finish_training_run(db, skipped["id"], "skipped", None, "not enough feedback", {})
    replies(ops, "erin", [(1, 1, None)])  # a click after the skipped round
    (row,) = ops.users_overview(name_contains="erin")["rows"]
    assert (row["last_outcome"], row["kl"], row["head_accuracy"]) == ("accepted", 36.0, 0.5)
    assert (row["red_team_before"], row["red_team_live"]) == (0.05, 0.20)
    assert row["clicks_waiting"] == 1  # counted from the skipped round, as the scheduler does
    assert [a.split(" ")[0] for a in row["alerts"]] == ["offensive", "KL", "reward"]


def test_a_round_that_fails_still_reports_its_alerts(
    troubled: Assistant, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        def run(self, user_id: str) -> None:
            raise RuntimeError("the round broke")

    monkeypatch.setattr(type(troubled), "trainer", property(lambda self: Broken()))
    with caplog.at_level(logging.WARNING), pytest.raises(RuntimeError):
        troubled.train("alice")
    assert sum(r.getMessage().startswith("alert for user alice") for r in caplog.records) == 5
