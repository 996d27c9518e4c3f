"""What a version changed, in words: each trait measured on text written by hand, the
sentences at their thresholds, and a real round that stores what its adopted version changed
(the gate's own pairs) for the user's panel."""

from __future__ import annotations

import pytest

from assistant import Assistant
from assistant.traits import TraitConfig, describe, measure
from storage import records
from tests.test_training import SHUT_GATE, give_feedback, open_with
from tests.test_training import accepting as accepting  # noqa: F401 (the fixture)
from ui.panel import describe as describe_panel

PLAIN = "Drink water and sleep early. Walk every day."
STYLED = "## Tips\n\n- **Drink** water\n- Sleep early\n\nWhat do you usually do? 😊 You got this!"


def test_each_trait_measured_on_one_reply() -> None:
    plain, styled = measure([PLAIN]), measure([STYLED])
    assert plain["words"] == 8 and styled["words"] == 17
    for trait in ("headings", "bold", "lists", "asks_back", "emoji", "exclamations"):
        assert (plain[trait], styled[trait]) == (0.0, 1.0), trait
    assert plain["you"] == 0 and styled["you"] == pytest.approx(100 * 2 / 17)  # "you", "You"
    refusal = measure(["I'm sorry, but I can't help with that.", "Sure: here it is."])
    assert refusal["refusals"] == 0.5
    assert measure([]) == {}


def test_sentences_say_what_moved_and_by_how_much() -> None:
    before = measure([PLAIN * 3, PLAIN * 3, STYLED, PLAIN * 3])
    after = measure([PLAIN, PLAIN, PLAIN, PLAIN])
    said = describe(before, after)
    shorter = 1 - after["words"] / before["words"]
    assert said[0] == "speaks to you directly less often"  # from some to none: said first
    assert said[1] == f"answers about {shorter:.0%} shorter" and shorter > 0.6
    assert {"uses fewer headings", "uses less bold", "uses fewer lists"} <= set(said)
    assert "uses fewer emoji" in said  # 1 reply in 4: 25 points
    assert describe(after, after) == []
    strict = TraitConfig(share_points=0.3, ratio=0.8, floor=1e9)
    assert describe(before, after, strict) == []  # 25 points and the ratio are under these


def test_from_none_to_some_is_said_without_a_ratio() -> None:
    none = {"words": 20.0, "you": 0.0}
    some = {"words": 20.0, "you": 5.0}
    assert describe(none, some) == ["speaks to you directly more often"]
    assert describe({"you": 0.1}, {"you": 0.0}) == []  # neither shows it enough


def test_an_adopted_version_stores_what_it_changed(accepting: Assistant) -> None:
    give_feedback(accepting, "alice")
    report = accepting.train("alice")
    assert report.accepted
    (change,) = accepting.what_changed("alice")
    assert (change["version"], change["compared_with"]) == (report.version, 0)
    assert change["pairs"] == report.metrics["gate_pairs"]
    assert set(change["traits"]) >= {"words", "lists", "asks_back", "you"}
    asked = {f"tell me about topic {i}" for i in range(3)}
    if change["question"] is not None:  # None only when every pair wrote the same text twice
        assert change["question"] in asked and change["before"] != change["after"]
    texts = {
        m["text"]
        for c in accepting.conversations("alice")
        for m in accepting.messages("alice", c["id"])
    }
    assert change["after"] not in texts  # the gate's fresh samples, not stored replies
    assert accepting.my_data("alice")["version_changes"][0]["version"] == report.version
    panel = describe_panel(accepting, "alice")
    assert f"- version {report.version}, against the base model: " in panel
    assert f"(on {change['pairs']} of your questions)" in panel
    if change["question"] is not None:
        assert "*Before / after*, on your question “tell me about topic" in panel


def test_a_refused_version_stores_no_change(tmp_path, tiny_model_dir) -> None:
    with open_with(tmp_path, tiny_model_dir, SHUT_GATE) as asst:
        asst.add_user("alice")
        give_feedback(asst, "alice")
        assert not asst.train("alice").accepted
        assert asst.what_changed("alice") == []
        assert records.version_changes(asst.store.db, asst.user("alice").id) == []


def test_the_reasons_tally(accepting: Assistant) -> None:
    give_feedback(accepting, "alice", prompts=2)  # per prompt: answer a up, answer b down
    rated = [
        m
        for c in accepting.conversations("alice")
        for m in accepting.messages("alice", c["id"])
        if m["thumb"]
    ]
    ups = [m["id"] for m in rated if m["thumb"] == 1]
    downs = [m["id"] for m in rated if m["thumb"] == -1]
    accepting.explain("alice", downs[0], "too long")
    accepting.explain("alice", downs[1], "too long")
    accepting.explain("alice", ups[0], "helpful")
    assert accepting.my_reasons("alice") == [
        {"reason": "too long", "thumb": -1, "count": 2},
        {"reason": "helpful", "thumb": 1, "count": 1},
    ]


def test_a_later_version_is_also_measured_against_the_base(
    accepting: Assistant, monkeypatch: pytest.MonkeyPatch
) -> None:
    from online_rl import round_worker

    sampled: list[list[str]] = []
    real = round_worker.base_replies

    def spy(*args, **kwargs) -> list[str]:
        sampled.append(real(*args, **kwargs))
        return sampled[-1]

    monkeypatch.setattr(round_worker, "base_replies", spy)
    give_feedback(accepting, "alice")
    first = accepting.train("alice")
    assert first.accepted and sampled == []  # v1 was compared with the base already
    give_feedback(accepting, "alice", prompts=2)
    second = accepting.train("alice")
    assert second.accepted and len(sampled) == 1
    newest = records.version_changes(accepting.store.db, accepting.user("alice").id)[0]
    assert (newest["version"], newest["compared_with"]) == (second.version, first.version)
    base_means = {name: pair[0] for name, pair in newest["base_traits"].items()}
    assert base_means == pytest.approx(measure(sampled[0]))
    assert len(sampled[0]) == min(newest["pairs"], accepting.trainer.config.gate.text_pairs)
    (shown,) = [c for c in accepting.what_changed("alice") if c["version"] == second.version]
    candidate_means = {name: pair[1] for name, pair in newest["base_traits"].items()}
    assert shown["against_base"] == describe(measure(sampled[0]), candidate_means)
    assert "**against the base model:**" in describe_panel(accepting, "alice")
