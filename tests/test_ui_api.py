"""The web app through `gradio_client`, launched on a free local port (tiny model, no
scheduler): sign-in, retraction, both-bad, bad input, queued requests; and the private
endpoints, called the way the page calls them, refuse operator data to non-operators. User
isolation, attempt by attempt: `tests/reliability/test_isolation.py`."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from assistant import Assistant
from assistant.sign_in import SignInLimiter
from storage import records
from tests.conftest import row_counts
from tests.ui_support import FAST, PASSWORDS, add_users, seed_runs, serving
from ui.chat import visible_text
from ui.identity import NOT_OPERATOR

OPERATOR_TAB = "operator"  # the Operator tab's id in ui/app.py
NO_DATA = {"__type__", "visible", "active"}  # an update that only hides the tab or a timer
PRIVATE_OPERATOR_EVENTS = {
    "operator_on_timer",
    "operator_after_rollback",
    "operator_after_train",
    "operator_first_view",
    "users_on_timer",
    "users_first_view",
    "operator_pick_row",
    "operator_after_pick",
    "feedback_conversation",
}


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


def sign_in_session(url: str, name: str, password: str) -> tuple[httpx.Client, httpx.Response]:
    """A browser-like session that posted the sign-in form (cookies kept)."""
    session = httpx.Client(base_url=url, timeout=60)
    return session, session.post("login", data={"username": name, "password": password})


def test_a_new_password_or_a_deleted_account_ends_open_sessions(app: tuple) -> None:
    asst, url = app
    asst.add_user("sam", password="sam-password")
    page, signed_in = sign_in_session(url, "sam", "sam-password")
    other_page, _ = sign_in_session(url, "sam", "sam-password")
    alice_page, _ = sign_in_session(url, "alice", PASSWORDS["alice"])
    assert signed_in.status_code == 200 and page.get("config").status_code == 200
    asst.set_password("sam", "sam-new-password")  # as `attune user passwd` would
    assert page.get("config").status_code == 401  # both of sam's pages are signed out
    assert other_page.get("config").status_code == 401
    assert alice_page.get("config").status_code == 200  # nobody else is
    page, _ = sign_in_session(url, "sam", "sam-new-password")
    assert page.get("config").status_code == 200
    asst.delete_user("sam")
    assert page.get("config").status_code == 401


def test_password_guessing_is_paused_with_a_readable_answer(app: tuple) -> None:
    asst, url = app
    asst.add_user("rita", password="rita-password")
    try:
        for _ in range(asst.config.sign_in.failures_per_account_here):
            assert sign_in_session(url, "rita", "a-guess")[1].status_code == 400
        _, refused = sign_in_session(url, "rita", "rita-password")  # right, but paused
        assert refused.status_code == 429
        assert refused.json()["detail"].startswith("Too many wrong passwords for this account")
        assert int(refused.headers["retry-after"]) > 0
        assert "set-cookie" not in refused.headers
    finally:
        asst.sign_ins = SignInLimiter(asst.config.sign_in)  # the other tests sign in from here
        asst.delete_user("rita")


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


def test_compare_then_both_bad_once(app: tuple) -> None:
    asst, url = app
    alice = client(url, "alice")
    answer_a, answer_b, pair_id, note, box = alice.predict(
        "two answers please", api_name="/compare"
    )
    pair = records.get_pair(asst.store.db, pair_id)
    texts = {m["id"]: m["text"] for m in asst.messages("alice", pair["conversation_id"])}
    # gr.Markdown shows text through inspect.cleandoc (tabs expanded, common indent removed),
    # so compare what a reader sees
    stored = (texts[pair["answer_a_id"]], texts[pair["answer_b_id"]])
    assert [visible_text(t) for t in stored] == [visible_text(answer_a), visible_text(answer_b)]
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
    picked, reward, kl, accuracy, volume, versions, summary, safety, flagged = olga.predict(
        "alice", api_name="/operator_data"
    )
    assert {row[0] for row in safety["data"]} == {"alice", "bob", "olga"}
    assert flagged["headers"][-1] == "text"
    assert picked["value"] == "alice"
    assert len(reward["data"]) == 6 and len(kl["data"]) == 3 and len(accuracy["data"]) == 3
    assert {row[0] for row in volume["data"]} == {"alice", "bob", "olga"}
    assert "2 accepted, 1 rejected" in summary
    with pytest.raises(AppError, match="live already"):
        olga.predict("alice", 0, api_name="/rollback")
    said = olga.predict("bob", api_name="/train_now")
    assert "not enough feedback" in said


@contextmanager
def signed_in_session(url: str, name: str) -> Iterator[httpx.Client]:
    """An HTTP session with the sign-in cookie, as the browser holds it."""
    session, answer = sign_in_session(url, name, PASSWORDS[name])
    try:
        assert answer.status_code == 200, answer.text
        yield session
    finally:
        session.close()


def operator_components(config: dict[str, Any]) -> set[int]:
    """The ids of the Operator tab and everything in it, from the page's layout."""
    tab = next(
        c["id"]
        for c in config["components"]
        if c["type"] == "tabitem" and c["props"].get("id") == OPERATOR_TAB
    )

    def inside(node: dict[str, Any], found: bool) -> set[int]:
        found = found or node["id"] == tab
        ids = {node["id"]} if found else set()
        for child in node.get("children", []):
            ids |= inside(child, found)
        return ids

    return inside(config["layout"], False)


def call_like_the_page(
    session: httpx.Client, fn_index: int, data: list[Any], event_data: Any = None
) -> dict:
    """Join the queue for one event by its index, as the page does (private events have no
    api name for clients), and return the finished message."""
    session_hash = uuid.uuid4().hex
    body = {"data": data, "fn_index": fn_index, "session_hash": session_hash}
    joined = session.post("gradio_api/queue/join", json=body | {"event_data": event_data})
    assert joined.status_code == 200, joined.text
    params = {"session_hash": session_hash}
    with session.stream("GET", "gradio_api/queue/data", params=params) as events:
        for line in events.iter_lines():
            message = json.loads(line.removeprefix("data:")) if line.startswith("data:") else {}
            if message.get("msg") == "process_completed":
                return message
    raise AssertionError(f"event {fn_index} never completed")


def page_value(component: dict[str, Any]) -> Any:
    """A value the page could send for this input (a choice among a list's choices), naming
    alice where text goes."""
    kind, props = component["type"], component.get("props", {})
    if kind == "number":
        return props.get("minimum") or 0
    if kind == "checkbox":
        return False
    if kind == "state":
        return None
    if kind in ("dropdown", "radio") and not props.get("allow_custom_value"):
        return props["choices"][0][1]  # (label, value) pairs
    return "alice"


def test_no_event_gives_operator_data_to_a_non_operator(app: tuple) -> None:
    """Every event that fills the Operator tab, private ones included, checks the role
    server-side: called directly by a signed-in user it refuses or changes nothing."""
    asst, url = app
    with signed_in_session(url, "bob") as bob:
        config = bob.get("config").json()
        components = {c["id"]: c for c in config["components"]}
        tab = operator_components(config)
        events = [d for d in config["dependencies"] if set(d["outputs"]) & tab]
        assert {d["api_name"] for d in events} >= PRIVATE_OPERATOR_EVENTS
        before = row_counts(asst)
        for event in events:
            data = [page_value(components[i]) for i in event["inputs"]]
            row_clicked = {"index": [0, 0], "value": "alice", "selected": True}
            done = call_like_the_page(bob, event["id"], data, row_clicked)
            if done["success"]:
                outputs = done["output"]["data"]
                shown = [o for o in outputs if o is not None]  # None: a gr.State, never sent
                assert all(set(o) <= NO_DATA for o in shown), (event["api_name"], outputs)
            else:
                assert done["output"]["error"] == NOT_OPERATOR, event["api_name"]
        assert row_counts(asst) == before
