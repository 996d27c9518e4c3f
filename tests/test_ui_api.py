"""The web app through `gradio_client`, launched on a free local port (tiny model, no
scheduler): sign-in, user isolation, retraction, both-bad, bad input, queued requests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from assistant import Assistant
from storage import records
from tests.conftest import row_counts
from tests.ui_support import FAST, PASSWORDS, add_users, seed_runs, serving


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[tuple]:
    data = tmp_path_factory.mktemp("ui-api") / "data"
    with Assistant.open(data, model=str(tiny_model_dir)) as asst:
        add_users(asst)
        seed_runs(asst, "alice")
        with serving(asst) as url:
            yield asst, url


def client(url: str, name: str) -> Client:
    return Client(url, auth=(name, PASSWORDS[name]), verbose=False)


def test_sign_in_is_required(app: tuple) -> None:
    _, url = app
    assert httpx.get(url + "config").status_code == 401
    with pytest.raises(ValueError):
        Client(url, verbose=False)
    with pytest.raises(ValueError):
        Client(url, auth=("alice", "wrong-password"), verbose=False)
    with pytest.raises(ValueError):
        Client(url, auth=("nobody", "alice-password"), verbose=False)


def test_chat_rate_and_retract(app: tuple) -> None:
    asst, url = app
    alice = client(url, "alice")
    *_, reply = alice.predict("hello from the api", "", api_name="/chat")
    stored = asst.messages("alice", reply["conversation_id"])
    assert [m["text"] for m in stored] == ["hello from the api", reply["text"]]
    assert alice.predict(reply["message_id"], 1, "helpful", api_name="/rate") == (
        "Thumbs up saved (helpful)"
    )
    row = records.get_feedback(asst.store.db, reply["message_id"])
    assert (row["thumb"], row["reason"]) == (1, "helpful")
    assert alice.predict(reply["message_id"], 0, "", api_name="/rate") == "Rating retracted"
    row = records.get_feedback(asst.store.db, reply["message_id"])
    assert (row["thumb"], row["reason"]) == (0, None)
    *_, again = alice.predict("and a follow-up", reply["conversation_id"], api_name="/chat")
    assert again["conversation_id"] == reply["conversation_id"]
    chatbot, conversation = alice.predict(reply["conversation_id"], api_name="/open_conversation")
    assert conversation == reply["conversation_id"] and len(chatbot["value"]) == 4


def test_users_cannot_touch_each_other_or_operator_data(app: tuple) -> None:
    asst, url = app
    *_, reply = client(url, "alice").predict("private thoughts", "", api_name="/chat")
    pair = client(url, "alice").predict("alice compares", api_name="/compare")
    bob = client(url, "bob")
    before = row_counts(asst)
    with pytest.raises(AppError, match="belongs to another user"):
        bob.predict(reply["message_id"], -1, "spite", api_name="/rate")
    with pytest.raises(AppError, match="belongs to another user"):
        bob.predict(pair[2], "b", api_name="/choose")
    with pytest.raises(AppError, match="belongs to another user"):
        bob.predict(reply["conversation_id"], api_name="/open_conversation")
    with pytest.raises(AppError, match="belongs to another user"):
        bob.predict("continue it", reply["conversation_id"], api_name="/chat")
    for endpoint, args in [
        ("/operator_data", ("alice",)),
        ("/rollback", ("alice", 0)),
        ("/train_now", ("alice",)),
    ]:
        with pytest.raises(AppError, match="Only operator accounts"):
            bob.predict(*args, api_name=endpoint)
    assert row_counts(asst) == before
    assert records.get_feedback(asst.store.db, reply["message_id"]) is None


def test_compare_then_both_bad_once(app: tuple) -> None:
    asst, url = app
    alice = client(url, "alice")
    answer_a, answer_b, pair_id, note, box = alice.predict(
        "two answers please", api_name="/compare"
    )
    pair = records.get_pair(asst.store.db, pair_id)
    texts = {m["id"]: m["text"] for m in asst.messages("alice", pair["conversation_id"])}
    assert (texts[pair["answer_a_id"]], texts[pair["answer_b_id"]]) == (answer_a, answer_b)
    assert alice.predict(pair_id, "both_bad", api_name="/choose").startswith("Saved: Both are bad")
    with pytest.raises(AppError, match="decided already"):
        alice.predict(pair_id, "a", api_name="/choose")
    with pytest.raises(AppError, match="winner must be one of"):
        alice.predict(pair_id, "c", api_name="/choose")
    assert records.get_pair(asst.store.db, pair_id)["winner"] == "both_bad"


def test_bad_input_is_refused_readably_and_stores_nothing(app: tuple) -> None:
    asst, url = app
    alice = client(url, "alice")
    before = row_counts(asst)
    limit = FAST.max_message_chars
    with pytest.raises(AppError, match=f"the limit is {limit}. Nothing was sent"):
        alice.predict("z" * (limit + 1), "", api_name="/chat")
    alice.predict("   ", "", api_name="/chat")  # empty: nothing is sent
    with pytest.raises(AppError, match="no conversation"):
        alice.predict("hi", "not-a-conversation", api_name="/chat")
    with pytest.raises(AppError, match="no message"):
        alice.predict("not-a-message", 1, "", api_name="/rate")
    assert row_counts(asst) == before


def test_concurrent_requests_of_one_user_are_queued_not_dropped(app: tuple) -> None:
    asst, url = app
    alice = client(url, "alice")
    jobs = [alice.submit(f"queued message {i}", "", api_name="/chat") for i in range(4)]
    replies = [job.result(timeout=120)[-1] for job in jobs]
    assert len({r["message_id"] for r in replies}) == 4
    titles = {c["title"] for c in asst.conversations("alice")}
    assert {f"queued message {i}" for i in range(4)} <= titles


def test_operator_reads_trends_and_acts(app: tuple) -> None:
    _, url = app
    olga = client(url, "olga")
    picked, reward, kl, accuracy, volume, versions, summary = olga.predict(
        "alice", api_name="/operator_data"
    )
    assert picked["value"] == "alice"
    assert len(reward["data"]) == 6 and len(kl["data"]) == 3 and len(accuracy["data"]) == 3
    assert {row[0] for row in volume["data"]} == {"alice", "bob", "olga"}
    assert "2 accepted, 1 rejected" in summary
    with pytest.raises(AppError, match="live already"):
        olga.predict("alice", 0, api_name="/rollback")
    said = olga.predict("bob", api_name="/train_now")
    assert "not enough feedback" in said
