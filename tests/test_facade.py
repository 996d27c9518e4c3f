"""The Assistant facade on the tiny model: the API, ownership, bad input, what gets stored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assistant import (
    AlreadyChosen,
    Assistant,
    Delta,
    InvalidInput,
    PermissionDenied,
    Reply,
    UnknownConversation,
    UnknownMessage,
    UnknownPair,
    UnknownUser,
    UserExists,
)
from tests.conftest import SHORT, row_counts


def test_chat_stores_both_turns_with_version_and_settings(asst: Assistant, alice: str) -> None:
    reply = asst.chat(alice, "Hello there", max_new_tokens=6, seed=3)
    assert isinstance(reply, Reply) and reply.adapter_version == 0
    stored = asst.messages(alice, reply.conversation_id)
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[0]["text"] == "Hello there" and stored[1]["text"] == reply.text
    row = asst.store.db["messages"].get(reply.id)
    settings = json.loads(row["generation"])
    assert settings["seed"] == 3 and settings["max_new_tokens"] == 6
    assert row["adapter_version"] == 0


def test_same_seed_same_text_and_seed_is_recorded(asst: Assistant, alice: str) -> None:
    first = asst.chat(alice, "Tell me something", max_new_tokens=12, seed=7, temperature=1.0)
    again = asst.chat(alice, "Tell me something", max_new_tokens=12, seed=7, temperature=1.0)
    other = asst.chat(alice, "Tell me something", max_new_tokens=12, seed=8, temperature=1.0)
    assert first.text == again.text
    assert first.text != other.text
    unseeded = asst.chat(alice, "Tell me something", max_new_tokens=12, temperature=1.0)
    seed = json.loads(asst.store.db["messages"].get(unseeded.id)["generation"])["seed"]
    replay = asst.chat(alice, "Tell me something", max_new_tokens=12, temperature=1.0, seed=seed)
    assert replay.text == unseeded.text


def test_stream_yields_deltas_that_add_up_to_the_reply(asst: Assistant, alice: str) -> None:
    """Also when the token limit cuts the reply inside a character (the tiny model writes
    byte tokens): the text held back while the character was incomplete comes last."""
    cut_inside_a_character = 0
    for seed in range(10):
        events = list(asst.chat_stream(alice, "Stream please", max_new_tokens=10, seed=seed))
        *deltas, reply = events
        assert isinstance(reply, Reply)
        assert deltas and all(isinstance(d, Delta) for d in deltas)
        assert "".join(d.text for d in deltas).strip() == reply.text, seed
        cut_inside_a_character += reply.text.endswith("\ufffd")
    assert cut_inside_a_character  # the case the last delta is for did occur


def test_abandoned_stream_stores_nothing(asst: Assistant, alice: str) -> None:
    before = row_counts(asst)
    stream = asst.chat_stream(alice, "I will leave early", max_new_tokens=10)
    next(stream)
    stream.close()
    assert row_counts(asst) == before


def test_conversation_continues_and_is_private(asst: Assistant, alice: str, bob: str) -> None:
    first = asst.chat(alice, "First turn", **SHORT)
    second = asst.chat(alice, "Second turn", first.conversation_id, **SHORT)
    assert second.conversation_id == first.conversation_id
    assert len(asst.messages(alice, first.conversation_id)) == 4
    before = row_counts(asst)
    with pytest.raises(PermissionDenied):
        asst.chat(bob, "let me in", first.conversation_id, **SHORT)
    with pytest.raises(PermissionDenied):
        asst.messages(bob, first.conversation_id)
    with pytest.raises(UnknownConversation):
        asst.chat(alice, "hi", "no-such-conversation", **SHORT)
    assert row_counts(asst) == before


@pytest.mark.parametrize(
    "message, error",
    [
        ("", "empty"),
        ("   \n\t ", "empty"),
        ("x" * 8001, "too long"),
        ("nul \x00 inside", "control character"),
        ("escape \x1b[31m", "control character"),
        ("bad \ud800 surrogate", "surrogate"),
        (None, "must be text"),
        (42, "must be text"),
    ],
)
def test_bad_messages_are_refused_and_store_nothing(
    asst: Assistant, alice: str, message, error
) -> None:
    before = row_counts(asst)
    with pytest.raises(InvalidInput, match=error):
        asst.chat(alice, message, **SHORT)
    with pytest.raises(InvalidInput, match=error):
        asst.compare(alice, message, **SHORT)
    assert row_counts(asst) == before


@pytest.mark.parametrize(
    "gen, error",
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 100_000}, "max_new_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"seed": -5}, "seed"),
        ({"seed": "abc"}, "seed"),
        ({"beams": 4}, "unknown generation setting"),
    ],
)
def test_bad_generation_settings_are_refused(asst: Assistant, alice: str, gen, error) -> None:
    before = row_counts(asst)
    with pytest.raises(InvalidInput, match=error):
        asst.chat(alice, "hello", **gen)
    assert row_counts(asst) == before


def test_unknown_user_is_refused_everywhere(asst: Assistant, alice: str) -> None:
    reply = asst.chat(alice, "hi", **SHORT)
    for call in (
        lambda: asst.chat("nobody", "hi"),
        lambda: asst.rate("nobody", reply.id, 1),
        lambda: asst.compare("nobody", "hi"),
        lambda: asst.choose("nobody", "x", "a"),
        lambda: asst.generate("nobody", ["hi"]),
        lambda: asst.trends("nobody"),
        lambda: asst.delete_user("nobody"),
    ):
        with pytest.raises(UnknownUser):
            call()


def test_rate_overwrites_and_retracts(asst: Assistant, alice: str) -> None:
    reply = asst.chat(alice, "Rate me", **SHORT)
    asst.rate(alice, reply.id, 1, reason="helpful")
    assert asst.store.db["feedback"].get(reply.id)["thumb"] == 1
    asst.rate(alice, reply.id, -1, reason="wrong")
    row = asst.store.db["feedback"].get(reply.id)
    assert (row["thumb"], row["reason"]) == (-1, "wrong")
    asst.rate(alice, reply.id, 0)
    asst.rate(alice, reply.id, 0)  # retracting twice is harmless
    assert asst.store.db["feedback"].get(reply.id)["thumb"] == 0
    assert asst.store.db["feedback"].count == 1


@pytest.mark.parametrize("thumb", [2, -2, True, "1", 1.0, None])
def test_invalid_thumbs_change_nothing(asst: Assistant, alice: str, thumb) -> None:
    reply = asst.chat(alice, "Rate me", **SHORT)
    before = row_counts(asst)
    with pytest.raises(InvalidInput):
        asst.rate(alice, reply.id, thumb)
    assert row_counts(asst) == before


def test_rating_is_owner_only_and_replies_only(asst: Assistant, alice: str, bob: str) -> None:
    reply = asst.chat(alice, "Mine", **SHORT)
    with pytest.raises(PermissionDenied):
        asst.rate(bob, reply.id, -1)
    assert asst.store.db["feedback"].count == 0
    with pytest.raises(UnknownMessage):
        asst.rate(alice, "does-not-exist", 1)
    user_turn = asst.messages(alice, reply.conversation_id)[0]
    with pytest.raises(InvalidInput, match="only the assistant"):
        asst.rate(alice, user_turn["id"], 1)


def test_compare_and_choose_once(asst: Assistant, alice: str, bob: str) -> None:
    pair = asst.compare(alice, "Pick one", max_new_tokens=10, seed=11, temperature=1.0)
    assert pair.a.text != pair.b.text and pair.a.id != pair.b.id
    assert pair.a.conversation_id == pair.b.conversation_id
    with pytest.raises(PermissionDenied):
        asst.choose(bob, pair.id, "a")
    with pytest.raises(InvalidInput, match="winner"):
        asst.choose(alice, pair.id, "c")
    with pytest.raises(UnknownPair):
        asst.choose(alice, "nope", "a")
    asst.choose(alice, pair.id, "both_bad")
    with pytest.raises(AlreadyChosen):
        asst.choose(alice, pair.id, "a")
    assert asst.store.db["pairs"].get(pair.id)["winner"] == "both_bad"


def test_compare_shows_two_of_k_candidates_and_stores_how_to_replay_them(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """With k candidates: k answers sampled at seeds s..s+k-1; the two shown are named with
    every seed and why, and each is exactly what its stored seed samples again."""
    from assistant.config import ChatConfig

    chat = ChatConfig(compare_candidates=4)
    with Assistant.open(tmp_path / "d", model=str(tiny_model_dir), chat=chat) as asst:
        alice = asst.add_user("alice").name
        first = asst.compare(alice, "Pick one", max_new_tokens=8, seed=21, temperature=1.0)
        for reply in (first.a, first.b):
            settings = json.loads(asst.store.db["messages"].get(reply.id)["generation"])
            drawn = settings["compare"]
            assert drawn["seeds"] == [21, 22, 23, 24]
            assert settings["seed"] in drawn["seeds"]
            assert drawn["why"].startswith("most different")  # no clicks yet
            again = asst.sample_replies(
                alice, ["Pick one"], max_new_tokens=8, seed=settings["seed"], temperature=1.0
            )
            assert again[0].text == reply.text
        shown = drawn["shown"]
        assert len(set(shown)) == 2 and all(0 <= i < 4 for i in shown)
        asst.rate(alice, first.a.id, 1)
        asst.choose(alice, first.id, "a")
        later = asst.compare(alice, "Pick one", max_new_tokens=8, seed=40, temperature=1.0)
        settings = json.loads(asst.store.db["messages"].get(later.a.id)["generation"])
        assert settings["compare"]["why"].startswith("most informative")  # the head picks now


def test_the_default_compare_shows_both_samples_as_drawn(asst: Assistant, alice: str) -> None:
    pair = asst.compare(alice, "Pick one", max_new_tokens=8, seed=5, temperature=1.0)
    rows = [asst.store.db["messages"].get(r.id) for r in (pair.a, pair.b)]
    drawn = [json.loads(r["generation"]) for r in rows]
    assert [g["seed"] for g in drawn] == [5, 6]
    assert drawn[0]["compare"] == {"seeds": [5, 6], "shown": [0, 1], "why": "as drawn"}


def test_a_decided_pair_continues_the_conversation_with_the_winner(
    asst: Assistant, alice: str
) -> None:
    from storage import records

    pair = asst.compare(alice, "Pick one", **SHORT)
    conversation = pair.a.conversation_id
    assert records.context_before(asst.store.db, conversation) == []  # undecided: no trace
    asst.choose(alice, pair.id, "b")
    seen = records.context_before(asst.store.db, conversation)
    assert [m["role"] for m in seen] == ["user", "assistant"] and seen[1]["id"] == pair.b.id
    follow = asst.chat(alice, "And then?", conversation, **SHORT)
    assert follow.conversation_id == conversation


def test_generate_is_batched_and_stores_nothing(asst: Assistant, alice: str) -> None:
    before = row_counts(asst)
    texts = asst.generate(alice, ["one", "two", "three"], max_new_tokens=6, seed=5)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert row_counts(asst) == before
    with pytest.raises(InvalidInput):
        asst.generate(alice, "not a list")
    with pytest.raises(InvalidInput):
        asst.generate(alice, [])


def test_users_passwords_and_roles(asst: Assistant) -> None:
    op = asst.add_user("olga", password="operator-pw", operator=True)
    assert op.is_operator
    row = asst.store.db["users"].get(op.id)
    assert row["password_hash"].startswith("scrypt$") and "operator-pw" not in row["password_hash"]
    assert asst.authenticate("olga", "operator-pw") == op
    assert asst.authenticate("olga", "wrong") is None
    assert asst.authenticate("ghost", "operator-pw") is None
    with pytest.raises(UserExists):
        asst.add_user("olga")
    for bad in ["", "has space", "x" * 65, "semi;colon", None]:
        with pytest.raises(InvalidInput):
            asst.add_user(bad)
    with pytest.raises(InvalidInput, match="password"):
        asst.add_user("shorty", password="short")


def test_delete_user_removes_rows_and_adapter_files(asst: Assistant, alice: str, bob: str) -> None:
    reply = asst.chat(alice, "hello", **SHORT)
    asst.rate(alice, reply.id, 1)
    pair = asst.compare(alice, "again", **SHORT)
    asst.choose(alice, pair.id, "a")
    asst.chat(bob, "bob stays", **SHORT)
    alice_id = asst.user(alice).id
    folder = Path(asst.config.adapters_dir) / alice_id / "v00001"
    folder.mkdir(parents=True)
    asst.delete_user(alice)
    db = asst.store.db
    for table in [
        "messages",
        "conversations",
        "feedback",
        "pairs",
        "adapter_versions",
        "training_runs",
    ]:
        assert (
            db.execute(f"select count(*) from {table} where user_id = ?", [alice_id]).fetchone()[0]
            == 0
        )
    assert not folder.parent.exists()
    assert db["messages"].count == 2  # bob's turn and reply
    with pytest.raises(UnknownUser):
        asst.chat(alice, "still here?")


def test_train_without_feedback_is_skipped_and_recorded(asst: Assistant, alice: str) -> None:
    report = asst.train(alice)
    assert (report.accepted, report.version) == (False, None)
    assert [r["outcome"] for r in asst.trends(alice)] == ["skipped"]
    with pytest.raises(UnknownUser):
        asst.train("nobody")


def test_background_starts_one_scheduler_and_close_stops_it(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    asst = Assistant.open(tmp_path, model=str(tiny_model_dir), background=True)
    scheduler = asst.scheduler
    assert scheduler is not None and scheduler.scheduler.running
    asst.close()
    assert asst.scheduler is None and not scheduler.scheduler.running


def test_reopen_keeps_everything(tmp_path: Path, tiny_model_dir: Path) -> None:
    with Assistant.open(tmp_path, model=str(tiny_model_dir)) as first:
        first.add_user("carol")
        reply = first.chat("carol", "remember me", **SHORT)
    with Assistant.open(tmp_path, model=str(tiny_model_dir)) as second:
        assert [m["text"] for m in second.messages("carol", reply.conversation_id)][
            0
        ] == "remember me"


def test_feedback_counts_and_queue_training_need_a_scheduler(asst: Assistant, alice: str) -> None:
    reply = asst.chat(alice, "count me", **SHORT)
    asst.rate(alice, reply.id, -1)
    pair = asst.compare(alice, "and compare me", **SHORT)
    asst.choose(alice, pair.id, "tie")
    assert asst.feedback_counts(alice) == {"thumbs_up": 0, "thumbs_down": 1, "choices": 1}
    asst.rate(alice, reply.id, 0)  # a retraction is not feedback given
    assert asst.feedback_counts(alice)["thumbs_down"] == 0
    assert not asst.background
    with pytest.raises(InvalidInput, match="no background scheduler"):
        asst.queue_training(alice)
