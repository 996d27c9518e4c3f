"""Regenerate a reply (the two become an A/B pair the user can decide) and edit a message
(the conversation continues in a branch; the original, its thumbs, stay as they were). On the
tiny model, through the facade; what the model sees next is checked in storage's context."""

from __future__ import annotations

import pytest

from assistant import Assistant, InvalidInput, PermissionDenied
from storage import records
from tests.conftest import SHORT, row_counts

HOT = {"max_new_tokens": 10, "temperature": 1.0}


def texts_in_context(asst: Assistant, conversation_id: str) -> list[str]:
    return [m["text"] for m in records.context_before(asst.store.db, conversation_id)]


def test_regenerate_makes_a_pair_of_the_old_and_the_new_reply(asst: Assistant, alice: str) -> None:
    first = asst.chat(alice, "Name a colour", **SHORT)
    asst.rate(alice, first.id, -1)
    pair = asst.regenerate(alice, first.id, seed=5, **HOT)
    assert pair.a.id == first.id and pair.a.text == first.text
    assert pair.b.id != first.id and pair.b.conversation_id == first.conversation_id
    stored = asst.messages(alice, first.conversation_id)
    assert [m["role"] for m in stored] == ["user", "assistant", "assistant"]
    assert {m["pair_id"] for m in stored} == {pair.id}
    assert stored[1]["thumb"] == -1  # the old reply keeps its thumb
    # undecided: the newest reply is the one the conversation continues with
    assert texts_in_context(asst, first.conversation_id) == ["Name a colour", pair.b.text]
    asst.choose(alice, pair.id, "a")
    assert texts_in_context(asst, first.conversation_id) == ["Name a colour", first.text]
    assert asst.feedback_counts(alice)["choices"] == 1  # a click that teaches
    follow = asst.chat(alice, "Another one", first.conversation_id, **SHORT)
    assert asst.messages(alice, first.conversation_id)[-1]["id"] == follow.id


def test_regenerate_refuses_what_it_cannot_do_and_stores_nothing(
    asst: Assistant, alice: str, bob: str
) -> None:
    first = asst.chat(alice, "Question one", **SHORT)
    second = asst.chat(alice, "Question two", first.conversation_id, **SHORT)
    pair = asst.compare(alice, "Compare these", **SHORT)
    before = row_counts(asst)
    with pytest.raises(InvalidInput, match="only the last reply"):
        asst.regenerate(alice, first.id, **SHORT)
    with pytest.raises(InvalidInput, match="pick the better one"):
        asst.regenerate(alice, pair.b.id, **SHORT)
    with pytest.raises(PermissionDenied):
        asst.regenerate(bob, second.id, **SHORT)
    user_turn = asst.messages(alice, first.conversation_id)[0]["id"]
    with pytest.raises(InvalidInput, match="only the assistant's replies"):
        asst.regenerate(alice, user_turn, **SHORT)
    assert row_counts(asst) == before
    assert asst.messages(alice, first.conversation_id)[-1]["pair_id"] is None


def test_edit_continues_in_a_branch_and_leaves_the_original(asst: Assistant, alice: str) -> None:
    first = asst.chat(alice, "Tell me about tea", **SHORT)
    asst.rate(alice, first.id, 1)
    second = asst.chat(alice, "And coffee?", first.conversation_id, **SHORT)
    original = asst.messages(alice, first.conversation_id)
    edited_turn = original[2]["id"]  # "And coffee?"
    branch = asst.branch(alice, edited_turn)
    assert branch != first.conversation_id
    assert texts_in_context(asst, branch) == ["Tell me about tea", first.text]
    reply = asst.chat(alice, "And cocoa?", branch, **SHORT)
    assert [m["text"] for m in asst.messages(alice, branch)] == [
        "Tell me about tea",
        first.text,
        "And cocoa?",
        reply.text,
    ]
    assert asst.messages(alice, first.conversation_id) == original  # thumbs and all
    assert not asst.messages(alice, branch)[1]["thumb"]  # the thumb stays on the original
    titles = {c["id"]: c["title"] for c in asst.conversations(alice)}
    assert titles[branch] == "Tell me about tea (edited)"
    assert second.conversation_id == first.conversation_id


def test_edit_keeps_only_what_the_model_saw_of_a_comparison(asst: Assistant, alice: str) -> None:
    pair = asst.compare(alice, "Which one?", **SHORT)
    asst.choose(alice, pair.id, "b")
    after = asst.chat(alice, "Thanks", pair.a.conversation_id, **SHORT)
    stored = asst.messages(alice, after.conversation_id)
    branch = asst.branch(alice, stored[-2]["id"])  # edit "Thanks"
    assert texts_in_context(asst, branch) == ["Which one?", pair.b.text]
    assert all(m["pair_id"] is None for m in asst.messages(alice, branch))


def test_edit_refusals(asst: Assistant, alice: str, bob: str) -> None:
    first = asst.chat(alice, "Hello there", **SHORT)
    before = row_counts(asst)
    with pytest.raises(InvalidInput, match="only your own messages"):
        asst.branch(alice, first.id)  # a reply, not a user's message
    user_turn = asst.messages(alice, first.conversation_id)[0]["id"]
    with pytest.raises(PermissionDenied):
        asst.branch(bob, user_turn)
    assert row_counts(asst) == before
    branch = asst.branch(alice, user_turn)  # the first message: an empty branch
    assert asst.messages(alice, branch) == []


def test_both_bad_on_a_regenerated_reply_keeps_the_turn(asst: Assistant, alice: str) -> None:
    first = asst.chat(alice, "Name a fruit", **SHORT)
    pair = asst.regenerate(alice, first.id, seed=3, **HOT)
    asst.choose(alice, pair.id, "both_bad")  # the question stays part of the conversation
    assert texts_in_context(asst, first.conversation_id) == ["Name a fruit", pair.b.text]
