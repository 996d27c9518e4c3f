"""Isolation through the public API, signed in as different users (tiny model, the app on a free
port): bob cannot read, rate, choose on, continue or train on anything of alice's, cannot reach
the operator endpoints, and cannot guess ids.

`test_bob_is_refused_everything_of_alices` is a table: every event that takes an id (public
ones through `gradio_client`, private ones through the queue the way the page calls them) x
every kind of alice's id and a set of guessed ones, and every operator event, each called as
bob. Every attempt must be refused with a known sentence, or answer nothing of alice's; the
database must be exactly as before after each attempt (full table contents, so nothing of bob's
was created either). Run with `pytest -s` to see the count.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from os.path import commonprefix
from pathlib import Path
from typing import Any

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from assistant import Assistant, UserExists
from online_rl import rounds
from storage import records
from tests.reliability.api_support import Answer, call_event, fn_indexes, snapshot
from tests.test_training import OPEN_GATE, give_feedback, open_with
from tests.test_ui_api import operator_components, signed_in_session
from tests.ui_support import PASSWORDS, add_users, seed_runs, serving
from ui.ab import WINNERS
from ui.identity import NOT_OPERATOR

MARKER = "alice-private-7f3a9c"  # in every message alice types; must never reach bob
HEX_ID = re.compile(r"[0-9a-f]{32}")
# The only sentences a refusal may say: none of them carries anything of the owner's.
REFUSALS = re.compile(
    "|".join(
        [
            r"^that (message|conversation|A/B pair) belongs to another user$",
            r"^no (message|conversation|A/B pair) .+$",
            r"^Ask a question first",
            r"^Click a thumb first",  # a reason with no reply id
            r"^That reply is still being written",
            "^" + re.escape(NOT_OPERATOR) + "$",
        ]
    ),
    re.DOTALL,
)
NO_DATA = {"__type__", "visible", "active"}  # an update that only hides a tab or a timer
# Attempts answered without an error, with nothing in the answer: an empty conversation id
# opens an empty chat; an operator's first view and tab are hidden from everyone else.
NOTHING_TO_REFUSE = {
    ("open_conversation", "empty"),
    # no conversation yet: the box is only remembered on the page, nothing is stored
    ("learn_from_conversation True", "empty"),
    ("learn_from_conversation False", "empty"),
    ("learn_after_chat", "empty"),
    ("learns_after_open", "empty"),  # a new conversation learns
    *(("operator_first_view", picked) for picked in ("alice", "bob", "")),
    *(("users_first_view", picked) for picked in ("alice", "bob", "")),
    ("operator_start", "-"),
}
OPERATOR_EVENTS = {  # every event that fills the Operator tab (checked against the layout)
    "operator_start": "private",
    "operator_first_view": "private",
    "operator_data": "public",
    "operator_on_timer": "private",
    "rollback": "public",
    "operator_after_rollback": "private",
    "train_now": "public",
    "operator_after_train": "private",
    "users_overview": "public",
    "users_on_timer": "private",
    "users_first_view": "private",
    "operator_pick_row": "private",
    "operator_after_pick": "private",
    "feedback_browser": "public",
    "feedback_conversation": "private",
    "export_feedback": "public",
}
PICKED_ONLY = {  # private operator events whose one input is the picked user
    "operator_first_view",
    "operator_on_timer",
    "operator_after_rollback",
    "operator_after_train",
    "operator_after_pick",
}


@dataclass(frozen=True)
class World:
    asst: Assistant
    url: str
    alice_ids: dict[str, str]  # kind -> one of alice's ids
    alice_texts: list[str]  # everything alice typed or was answered


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[World]:
    """alice has a conversation of two turns (one reply rated), an undecided A/B pair and
    training runs; bob (a user) and olga (an operator) exist."""
    data = tmp_path_factory.mktemp("isolation") / "data"
    with Assistant.open(data, model=str(tiny_model_dir)) as asst:
        add_users(asst)
        seed_runs(asst, "alice")
        with serving(asst) as url:
            alice = client(url, "alice")
            *_, first = alice.predict(f"{MARKER} first question", "", api_name="/chat")
            conversation = first["conversation_id"]
            *_, second = alice.predict(f"{MARKER} follow-up", conversation, api_name="/chat")
            alice.predict(second["message_id"], 1, "helpful", api_name="/rate")
            _, _, pair_id, *_ = alice.predict(f"{MARKER} compare these", api_name="/compare")
            pair = records.get_pair(asst.store.db, pair_id)
            stored = asst.messages("alice", conversation)
            ids = {
                "conversation": conversation,
                "user turn": stored[0]["id"],
                "reply": first["message_id"],
                "rated reply": second["message_id"],
                "pair": pair_id,
                "pair prompt": pair["prompt_message_id"],
                "answer a": pair["answer_a_id"],
                "answer b": pair["answer_b_id"],
                "pair conversation": pair["conversation_id"],
                "user id": asst.user("alice").id,
            }
            texts = [
                m["text"]
                for c in (conversation, pair["conversation_id"])
                for m in asst.messages("alice", c)
            ]
            yield World(asst, url, ids, texts)


def client(url: str, name: str) -> Client:
    return Client(url, auth=(name, PASSWORDS[name]), verbose=False)


def one_digit_changed(hex_id: str) -> str:
    return hex_id[:-1] + ("0" if hex_id[-1] != "0" else "1")


def guessed_ids(alice: dict[str, str]) -> dict[str, str]:
    """Ids bob might try without knowing any: counters, near misses, other spellings."""
    return {
        "sequential 0": "0",
        "sequential 1": "1",
        "sequential 2": "2",
        "reply id, one digit changed": one_digit_changed(alice["reply"]),
        "pair id, one digit changed": one_digit_changed(alice["pair"]),
        "conversation id, one digit changed": one_digit_changed(alice["conversation"]),
        "conversation id upper-cased": alice["conversation"].upper(),
        "reply id with a newline": alice["reply"] + "\n",
        "pair id as a dashed uuid": str(uuid.UUID(alice["pair"])),
        "empty": "",
        "sql": "' OR '1'='1",
        "sql wildcard": "%",
    }


@dataclass(frozen=True)
class Attempt:
    endpoint: str  # api name, with the variant (thumb, winner, liked)
    target: str  # which id was tried
    sent: str  # the id as sent: an error may echo it back
    call: Callable[[], Answer]


def predicted(bob: Client, api_name: str, *args: Any) -> Callable[[], Answer]:
    def call() -> Answer:
        try:
            return Answer(None, bob.predict(*args, api_name=api_name))
        except AppError as e:
            return Answer(str(e))

    return call


def queued(session: httpx.Client, fn_index: int, data: list[Any], event: Any = None):
    return lambda: call_event(session, fn_index, data, event)


def id_attempts(world: World, bob: Client, page: httpx.Client) -> list[Attempt]:
    """Every event that takes an id x every id of alice's and every guessed one."""
    index = fn_indexes(page)
    reply_text = world.alice_texts[1]  # what alice's page shows at index 1

    def calls(i: str) -> dict[str, Callable[[], Answer]]:
        out = {
            f"rate {thumb} {reason!r}": predicted(bob, "/rate", i, thumb, reason)
            for thumb, reason in [(1, "spite"), (-1, "wrong"), (0, "")]
        }
        out |= {f"choose {w}": predicted(bob, "/choose", i, w) for w in WINNERS}
        out["explain"] = predicted(bob, "/explain", i, "a reason on alice's thumb")
        out["regenerate_reply"] = predicted(bob, "/regenerate_reply", i)
        out["branch"] = predicted(bob, "/branch", i)
        clicked = {"index": 0, "value": [reply_text], "previous_value": [reply_text]}
        out["regenerate (retry)"] = queued(page, index["regenerate"], [i], clicked)
        out["edit"] = queued(page, index["edit"], [i], clicked | {"value": ["mine now"]})
        out |= {  # private: the buttons under a regenerated reply
            f"regenerated_{w}": queued(page, index[f"regenerated_{w}"], [i]) for w in WINNERS
        }
        out |= {  # private: the "why?" row after a thumb, its presets and own words
            name: queued(page, index[name], [i, reason])
            for name, reason in (("why_preset", "harmful"), ("why_own_words", "spite"))
        }
        out["open_conversation"] = predicted(bob, "/open_conversation", i)
        out |= {  # a conversation that does not teach: public, then the page's private ones
            f"learn_from_conversation {learn}": predicted(bob, "/learn_from_conversation", i, learn)
            for learn in (True, False)
        }
        out["learn_after_chat"] = queued(page, index["learn_after_chat"], [i, False])
        out["learns_after_open"] = queued(page, index["learns_after_open"], [i])
        if i:  # an empty conversation id starts a conversation of bob's own: not an attack
            out["chat"] = predicted(bob, "/chat", "let me continue this", i)
        out |= {  # private: the chat's thumbs, with the browser's event data
            f"like {liked!r}": queued(
                page,
                index["like"],
                [i],
                {"index": 1, "value": [reply_text], "liked": liked},
            )
            for liked in (True, False, "")
        }
        out |= {  # private: the Compare tab's four buttons
            f"choose_{w}": queued(page, index[f"choose_{w}"], [i]) for w in WINNERS
        }
        return out

    targets = {f"alice's {kind}": i for kind, i in world.alice_ids.items()}
    targets |= guessed_ids(world.alice_ids)
    return [
        Attempt(endpoint, target, i, call)
        for target, i in targets.items()
        for endpoint, call in calls(i).items()
    ]


def operator_attempts(bob: Client, page: httpx.Client) -> list[Attempt]:
    """Every operator event, public and private, for alice, bob himself and nobody picked."""
    index = fn_indexes(page)
    out = []
    for picked in ("alice", "bob", ""):
        out += [
            Attempt("operator_data", picked, picked, predicted(bob, "/operator_data", picked)),
            Attempt("rollback", picked, picked, predicted(bob, "/rollback", picked, 0)),
            Attempt("train_now", picked, picked, predicted(bob, "/train_now", picked)),
        ]
        out += [
            Attempt(name, picked, picked, queued(page, index[name], [picked]))
            for name in PICKED_ONLY
        ]
        table = ["user", False, 1, picked]  # sort, descending, page, name filter
        browse = [picked, "both", "", "", 1]  # user, thumbs, reason, version, page
        row = {"index": [0, 0], "value": picked, "selected": True}
        out += [
            Attempt("users_overview", picked, picked, predicted(bob, "/users_overview", *table)),
            Attempt(
                "feedback_browser", picked, picked, predicted(bob, "/feedback_browser", *browse)
            ),
            Attempt("export_feedback", picked, picked, predicted(bob, "/export_feedback", picked)),
            *(
                Attempt(name, picked, picked, queued(page, index[name], table))
                for name in ("users_on_timer", "users_first_view")
            ),
            *(  # a row clicked: the rows on the page are the server's own (gr.State)
                Attempt(name, picked, picked, queued(page, index[name], [None], row))
                for name in ("operator_pick_row", "feedback_conversation")
            ),
        ]
    out.append(Attempt("operator_start", "-", "", queued(page, index["operator_start"], [])))
    return out


def strings_in(value: Any) -> Iterator[str]:
    """Every string inside a decoded JSON answer (keys too)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from strings_in(k)
            yield from strings_in(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from strings_in(v)
    elif value is not None:
        yield str(value)


def problems_with(attempt: Attempt, answer: Answer, world: World) -> list[str]:
    """What is wrong with one answer to bob: an unknown error sentence, or any text or id
    of alice's in what came back (the id bob sent excepted: an error may quote it)."""
    said = (
        answer.error
        if answer.error is not None
        else json.dumps(answer.output, default=str, ensure_ascii=False)
    )
    problems = []
    if answer.error is not None and not REFUSALS.search(answer.error):
        problems.append(f"unexpected error {answer.error!r}")
    if answer.error is None and attempt.endpoint in OPERATOR_EVENTS:
        outputs = answer.output if isinstance(answer.output, list) else [answer.output]
        shown = [o for o in outputs if o is not None]  # None: a gr.State, never sent
        if not all(isinstance(o, dict) and set(o) <= NO_DATA for o in shown):
            problems.append(f"operator data answered: {said[:200]}")
    texts = [MARKER, *(t for t in world.alice_texts if len(t.strip()) >= 8)]
    # searched in the strings themselves: JSON escapes the quotes and control characters of
    # the tiny model's replies, so a leaked reply would not match its text in `said`
    leaves = [answer.error] if answer.error is not None else list(strings_in(answer.output))
    problems += [
        f"alice's text in the answer: {t[:40]!r}"
        for t in texts
        if any(t in leaf for leaf in leaves)
    ]
    problems += [
        f"alice's {kind} id in the answer"
        for kind, i in world.alice_ids.items()
        if i in said and i not in attempt.sent
    ]
    return problems


def test_bob_is_refused_everything_of_alices(world: World) -> None:
    """Each attempt is refused or answers nothing of alice's, and changes nothing at all."""
    db = world.asst.store.db
    bob = client(world.url, "bob")
    with signed_in_session(world.url, "bob") as page:
        config = page.get("config").json()
        tab = operator_components(config)
        in_tab = {d["api_name"] for d in config["dependencies"] if set(d["outputs"]) & tab}
        assert in_tab == set(OPERATOR_EVENTS)  # the table has every operator event
        attempts = id_attempts(world, bob, page) + operator_attempts(bob, page)
        before = snapshot(db)
        problems, answered = [], set()
        for attempt in attempts:
            answer = attempt.call()
            found = problems_with(attempt, answer, world)
            if snapshot(db) != before:
                found.append("the database changed")
                before = snapshot(db)  # report each change once
            problems += [f"{attempt.endpoint} on {attempt.target}: {p}" for p in found]
            if answer.error is None:
                answered.add((attempt.endpoint, attempt.target))
    n = len(attempts)
    assert problems == [], "\n".join(problems)
    assert answered == NOTHING_TO_REFUSE  # every other attempt ended in an error
    assert n >= 300
    print(f"\n{n} attempts, {n} refused ({n - len(answered)} with an error, the rest no data)")


def test_the_owner_still_has_everything(world: World) -> None:
    """The refusals above are refusals of bob, not breakage: alice reads, rates and
    decides her own things through the same endpoints."""
    alice = client(world.url, "alice")
    chatbot, conversation = alice.predict(
        world.alice_ids["conversation"], api_name="/open_conversation"
    )
    assert conversation == world.alice_ids["conversation"] and len(chatbot["value"]) == 4
    assert MARKER in json.dumps(chatbot)
    assert alice.predict(world.alice_ids["reply"], -1, "", api_name="/rate") == (
        "Thumbs down saved"
    )
    assert alice.predict(world.alice_ids["pair"], "b", api_name="/choose").startswith("Saved")


def test_bobs_own_pages_show_nothing_of_alices(world: World) -> None:
    """Everything bob's page loads by itself (history, panel, conversation list) is his."""
    bob = client(world.url, "bob")
    *_, reply = bob.predict("bob's own question", "", api_name="/chat")
    answers = [
        bob.predict(api_name="/assistant_panel"),
        bob.predict(api_name="/new_conversation"),
        bob.predict(reply["conversation_id"], api_name="/open_conversation"),
    ]
    with signed_in_session(world.url, "bob") as page:
        answers.append(call_event(page, fn_indexes(page)["restore"], []).output)
    said = json.dumps(answers, ensure_ascii=False)
    assert "bob's own question" in said  # the check can see text when it is there
    assert MARKER not in said
    assert not [i for i in world.alice_ids.values() if i in said]


def test_ids_clients_see_are_random_not_sequential(world: World) -> None:
    """Message, conversation and pair ids are uuid4 hex: 122 random bits, no counter, no
    clock in front, so knowing your own ids says nothing about anyone else's."""
    seen: list[str] = []
    for name in ("alice", "bob"):
        user = client(world.url, name)
        for i in range(5):
            *_, r = user.predict(f"id probe {i}", "", api_name="/chat")
            seen += [r["message_id"], r["conversation_id"]]
        for i in range(2):
            seen.append(user.predict(f"pair probe {i}", api_name="/compare")[2])
    assert len(seen) == 24 and len(set(seen)) == len(seen)
    assert all(HEX_ID.fullmatch(i) and uuid.UUID(i).version == 4 for i in seen), seen
    assert seen != sorted(seen) and seen != sorted(seen, reverse=True)  # creation order lost
    # ids made one after another share no prefix (a clock-based id would share many digits)
    shared = max(len(commonprefix([a, b])) for n, a in enumerate(seen) for b in seen[n + 1 :])
    assert shared <= 8, shared  # by chance: 276 pairs x 16**-9, about 4e-9


def test_a_round_for_alice_learns_from_alices_rows_only(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bob's clicks never become alice's training data: the user's reward head, the
    demonstrations and preference pairs, and the rollout prompts of alice's round are all
    alice's rows, and the round writes only rows of alice's. By design (README, "Online RLHF")
    the population head, the shared prior every user's reward starts from, is fitted on
    everyone's clicks: it is called with no user, and it caches feature vectors of bob's
    replies. That bob's round leaves alice's adapter files alone is
    `tests/test_training.py::test_other_users_adapters_are_untouched_by_a_round`."""
    with open_with(tmp_path, tiny_model_dir, OPEN_GATE) as asst:
        for name in ("alice", "bob"):
            asst.add_user(name)
            give_feedback(asst, name)
        alice, bob = asst.user("alice").id, asst.user("bob").id
        read: list[tuple[str | None, Any]] = []
        prompts_of: list[str] = []
        feedback, user_prompts = rounds.user_feedback, records.user_prompts

        def spy_feedback(db: Any, user_id: str | None, config: Any) -> Any:
            read.append((user_id, feedback(db, user_id, config)))
            return read[-1][1]

        def spy_prompts(db: Any, user_id: str, limit: int) -> list[records.Row]:
            rows = user_prompts(db, user_id, limit)
            prompts_of.extend(r["user_id"] for r in rows)
            return rows

        monkeypatch.setattr(rounds, "user_feedback", spy_feedback)
        monkeypatch.setattr(records, "user_prompts", spy_prompts)
        before = snapshot(asst.store.db)
        asst.train("alice")
        after = snapshot(asst.store.db)

    assert [user for user, _ in read] == [alice, None]  # alice's own, then the population's
    mine = read[0][1]
    rows = [*mine.replies, *mine.demonstrations, *(m for pair in mine.preferences for m in pair)]
    assert mine.replies and mine.demonstrations and mine.preferences
    assert {r["user_id"] for r in rows} == {alice}
    assert {r["user_id"] for r in read[1][1].replies} == {alice, bob}  # the population's
    assert prompts_of and set(prompts_of) == {alice}
    # the base's red-team rates belong to no user: the base model's, sampled once for everyone
    for table in set(after) - {"features", "red_team_baselines"}:
        new = after[table] - before[table]
        assert {dict(r)["user_id"] for r in new} <= {alice}, table
        assert before[table] <= after[table], table  # nothing of anyone's changed or removed


def test_a_deleted_accounts_open_session_never_becomes_a_new_account(world: World) -> None:
    """carl signs in, his account is deleted: his open page's session ends (HTTP 401 on its
    next request, `ui.identity.Sessions`), and the name carl is never given to a new account,
    whose data a session that outlived its account would otherwise read."""
    world.asst.add_user("carl", password="old-carl-password")
    old_page = Client(world.url, auth=("carl", "old-carl-password"), verbose=False)
    world.asst.delete_user("carl")
    before = snapshot(world.asst.store.db)
    with pytest.raises(httpx.HTTPStatusError, match="401 Unauthorized"):
        old_page.predict("still there?", "", api_name="/chat")
    with pytest.raises(UserExists, match="belonged to a deleted account"):
        world.asst.add_user("carl", password="new-carl-password")
    assert snapshot(world.asst.store.db) == before
