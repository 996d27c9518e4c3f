"""Web app handlers called directly, on the tiny model: thumbs through `gr.LikeData`, streaming,
history from storage, bad input, A/B choices, the panel and the operator's role checks; and the
built app's wiring (api names, cancelled streams, one message at a time per page)."""

from __future__ import annotations

import inspect
import json
import re
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from gradio.blocks import BlocksConfig

from assistant import HARMFUL_REASON, Assistant, Delta, GenerationConfig, InvalidInput
from storage import records
from tests.conftest import row_counts
from tests.ui_support import FAST, add_users, as_user, seed_runs
from ui import ab, downloads, history
from ui.ab import DECIDED_ALREADY
from ui.app import build_app
from ui.chat import NEXT_IN_CHAT, NOT_ON_SCREEN, REGENERATED, Chat, thumb_of, visible_text
from ui.compare import Compare
from ui.config import MAX_NEW_TOKENS_LIMIT, ServeConfig
from ui.errors import UNEXPECTED, readable_errors
from ui.identity import NOT_OPERATOR, NOT_SIGNED_IN
from ui.operator import Operator, metric_frame, reward_frame
from ui.overview import NO_ALERTS, OVERVIEW_COLUMNS, Overview
from ui.panel import describe
from ui.serve import FIRST_ACCOUNTS, first_accounts

SEED = 0  # every reply samples with this seed: the tiny model's replies, pieces and all, repeat


@pytest.fixture
def users(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Assistant]:
    with Assistant.open(
        tmp_path / "data",
        model=str(tiny_model_dir),
        generation_defaults=GenerationConfig(seed=SEED),
    ) as asst:
        add_users(asst)
        yield asst


def chat_once(chat: Chat, user: str, text: str, conversation: str = "") -> dict:
    """Send a message through the handler; the stored reply's ids (last output)."""
    *_, final = chat.send(text, conversation, as_user(user))
    return final[-1]


def like(index: int, liked: bool | str, text: str) -> gr.LikeData:
    """What the browser sends for a thumb on the message drawn as `text` at `index`."""
    return gr.LikeData(None, {"index": index, "value": [text], "liked": liked})


def is_skip(update: Any) -> bool:
    return update == gr.skip()


def test_streaming_grows_the_reply_then_shows_what_was_stored(users: Assistant) -> None:
    chat = Chat(users, FAST)
    updates = list(chat.send("  hello there  ", "", as_user("alice")))
    first, *middle, final = updates
    assert first[0][-2:] == [
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": ""},
    ]
    assert is_skip(first[2])  # the message box keeps the text while the reply is written
    partial = [u[0][-1]["content"] for u in middle]
    assert len(partial) >= 2, partial  # SEED streams in several pieces on the tiny model
    assert all(
        len(b) > len(a) and b.startswith(a) for a, b in zip(partial, partial[1:], strict=False)
    )
    assert all(is_skip(u[2]) for u in middle)
    assert final[2] == ""  # cleared once the reply is stored
    reply = final[-1]
    stored = users.messages("alice", reply["conversation_id"])
    assert [m["text"] for m in stored] == ["hello there", reply["text"]]
    assert final[1] == reply["conversation_id"]
    assert final[0].feedback_value == [None]


def broken_stream(*args: Any, **kwargs: Any) -> Iterator[Delta]:
    """A reply that fails half-way (a bug, the database, the model)."""
    yield Delta("half a rep")
    raise RuntimeError("the model fell over")


def test_a_failed_reply_keeps_the_message_and_shows_what_is_stored(
    users: Assistant, monkeypatch: pytest.MonkeyPatch
) -> None:
    chat = Chat(users, FAST)
    reply = chat_once(chat, "alice", "first question")
    monkeypatch.setattr(users, "chat_stream", broken_stream)
    updates = []
    with pytest.raises(gr.Error, match=re.escape(UNEXPECTED)):
        for update in chat.send(
            "a question worth keeping", reply["conversation_id"], as_user("alice")
        ):
            updates.append(update)
    assert len(updates) >= 2  # the reply had started streaming
    assert all(is_skip(u[2]) for u in updates)  # the message box was never cleared
    back = updates[-1][0]  # the chat goes back to what is stored: the first exchange only
    assert [m["content"][0]["text"] for m in back.value] == ["first question", reply["text"]]
    assert len(users.messages("alice", reply["conversation_id"])) == 2


def test_history_comes_back_from_storage_after_a_reload(users: Assistant) -> None:
    first = chat_once(Chat(users, FAST), "alice", "first question")
    chat_once(Chat(users, FAST), "alice", "second question", first["conversation_id"])
    chatbot, current, conversations = Chat(users, FAST).restore(as_user("alice"))  # a new page
    assert current == first["conversation_id"]
    texts = [m["content"][0]["text"] for m in chatbot.value]
    assert texts[0] == "first question" and texts[2] == "second question" and len(texts) == 4
    assert [c[1] for c in conversations.choices] == [current]
    empty, none, _ = Chat(users, FAST).restore(as_user("bob"))
    assert empty.value == [] and none == ""


def test_thumb_first_then_its_reason_then_retract(users: Assistant) -> None:
    chat = Chat(users, FAST)
    reply = chat_once(chat, "alice", "rate me")
    conversation, text, alice = reply["conversation_id"], reply["text"], as_user("alice")
    rated, why_row, _, own_words = chat.like(conversation, alice, like(1, False, text))
    assert rated == reply["message_id"] and why_row["visible"] is True and own_words == ""
    row = records.get_feedback(users.store.db, rated)
    assert (row["thumb"], row["reason"]) == (-1, None)  # one click stored the thumb
    chat.explain(rated, "harmful", alice)  # the reason comes after
    row = records.get_feedback(users.store.db, rated)
    assert (row["thumb"], row["reason"]) == (-1, "harmful")
    chat.like(conversation, alice, like(1, True, text))  # a change of mind: a new thumb...
    row = records.get_feedback(users.store.db, rated)
    assert (row["thumb"], row["reason"]) == (1, None)  # ...does not inherit the old reason
    assert chat.explain(rated, "  my own words ", alice) == ""  # the box empties
    row = records.get_feedback(users.store.db, rated)
    assert (row["thumb"], row["reason"]) == (1, "my own words")
    assert history.feedback_values(history.load(users, "alice", conversation)) == ["Like"]
    rated, why_row, *_ = chat.like(conversation, alice, like(1, "", text))  # again: retract
    assert rated is None and why_row["visible"] is False
    row = records.get_feedback(users.store.db, reply["message_id"])
    assert (row["thumb"], row["reason"]) == (0, None)
    assert users.feedback_counts("alice") == {"thumbs_up": 0, "thumbs_down": 0, "choices": 0}
    before = row_counts(users)
    with pytest.raises(gr.Error, match="rate the reply first"):  # no standing thumb
        chat.explain(reply["message_id"], "too late", alice)
    with pytest.raises(gr.Error, match="Click a thumb first"):
        chat.explain(None, "no thumb", alice)
    with pytest.raises(gr.Error, match="another user"):
        chat.explain(reply["message_id"], "not mine", as_user("bob"))
    assert row_counts(users) == before


def test_likes_that_cannot_be_stored_are_refused_readably(users: Assistant) -> None:
    chat = Chat(users, FAST)
    reply = chat_once(chat, "alice", "mine")
    conversation = reply["conversation_id"]
    before = row_counts(users)
    with pytest.raises(gr.Error, match="assistant's replies"):  # the user's own message
        chat.like(conversation, as_user("alice"), like(0, True, "mine"))
    with pytest.raises(gr.Error, match="still being written"):  # not stored yet
        chat.like(conversation, as_user("alice"), like(2, True, "being written"))
    with pytest.raises(gr.Error, match="another user"):
        chat.like(conversation, as_user("bob"), like(1, True, reply["text"]))
    with pytest.raises(gr.Error, match="another user"):
        chat.rate(reply["message_id"], 1, "", as_user("bob"))
    with pytest.raises(gr.Error, match="sign in"):
        chat.rate(reply["message_id"], 1, "", as_user(None))
    with pytest.raises(gr.Error, match="thumb must be"):
        chat.rate(reply["message_id"], 2, "", as_user("alice"))
    assert row_counts(users) == before


def test_a_thumb_on_a_message_that_is_not_the_stored_one_is_refused(users: Assistant) -> None:
    """The chat on screen may show another conversation, or a reply still streaming, than the
    one the hidden conversation id names: the clicked text must be what is stored there."""
    chat = Chat(users, FAST)
    c = chat_once(chat, "alice", "conversation C")
    d = chat_once(chat, "alice", "conversation D, another question")
    assert c["text"] != d["text"]
    before = row_counts(users)
    on_screen = history.load(users, "alice", d["conversation_id"])[1].content
    with pytest.raises(gr.Error, match=re.escape(NOT_ON_SCREEN)):  # D shown, C's id hidden
        chat.like(c["conversation_id"], as_user("alice"), like(1, True, on_screen))
    last_visible = max(i for i, ch in enumerate(c["text"]) if visible_text(ch))
    streaming = c["text"][:last_visible]  # C's reply one visible character before its end
    with pytest.raises(gr.Error, match="nothing was saved"):
        chat.like(c["conversation_id"], as_user("alice"), like(1, False, streaming))
    with pytest.raises(gr.Error, match="nothing was saved"):  # no text from the browser
        chat.like(c["conversation_id"], as_user("alice"), like(1, True, ""))
    assert row_counts(users) == before
    assert records.get_feedback(users.store.db, c["message_id"]) is None
    chat.like(d["conversation_id"], as_user("alice"), like(1, True, on_screen))
    assert records.get_feedback(users.store.db, d["message_id"])["thumb"] == 1


def test_thumb_of_liked_values() -> None:
    assert [thumb_of(v) for v in (True, False, "", None)] == [1, -1, 0, 0]
    with pytest.raises(gr.Error):
        thumb_of("Funny")


def test_empty_message_sends_nothing_and_long_message_is_refused(users: Assistant) -> None:
    chat = Chat(users, replace(FAST, max_message_chars=50))
    before = row_counts(users)
    (only,) = list(chat.send("   ", "", as_user("alice")))
    assert all(isinstance(u, type(gr.skip())) for u in only)
    with pytest.raises(gr.Error, match="51 characters long; the limit is 50. Nothing was sent"):
        list(chat.send("x" * 51, "", as_user("alice")))
    with pytest.raises(gr.Error, match="limit is 50"):
        Compare(users, replace(FAST, max_message_chars=50)).ask("y" * 51, as_user("alice"))
    assert row_counts(users) == before


def test_compare_locks_after_one_choice(users: Assistant) -> None:
    compare = Compare(users, FAST)
    a, b, pair_id, *buttons, note, box = compare.ask("which is better?", as_user("alice"))
    assert all(button.interactive for button in buttons) and box == ""
    assert "base model" in note
    *after, said = compare.button("both_bad")(pair_id, as_user("alice"))
    assert not any(button.interactive for button in after) and "Both are bad" in said
    assert records.get_pair(users.store.db, pair_id)["winner"] == "both_bad"
    with pytest.raises(gr.Error, match="decided already"):
        compare.choose(pair_id, "a", as_user("alice"))  # the API says so as an error
    with pytest.raises(gr.Error, match="another user"):
        compare.choose(pair_id, "a", as_user("bob"))
    with pytest.raises(gr.Error, match="Ask a question first"):
        compare.button("a")("", as_user("alice"))
    assert records.get_pair(users.store.db, pair_id)["winner"] == "both_bad"
    shown = history.load(users, "alice", users.conversations("alice")[0]["id"])
    assert [s.content.split("\n")[0] for s in shown[1:]] == [
        "**Answer A** (A/B comparison)",
        "**Answer B** (A/B comparison)",
    ]


@pytest.mark.filterwarnings("ignore:This comparison was decided already")
def test_buttons_lock_when_the_pair_was_decided_elsewhere(users: Assistant) -> None:
    """Another tab (or the API, or a double click) decided the pair: the buttons of this page
    lock too, saying why, and the first choice stands."""
    compare = Compare(users, FAST)
    _, _, pair_id, *buttons, _, _ = compare.ask("decide me twice", as_user("alice"))
    assert all(button.interactive for button in buttons)
    compare.choose(pair_id, "tie", as_user("alice"))  # the other tab
    *after, said = compare.button("b")(pair_id, as_user("alice"))
    assert not any(button.interactive for button in after)
    assert said == DECIDED_ALREADY
    assert records.get_pair(users.store.db, pair_id)["winner"] == "tie"


def test_panel_says_version_feedback_and_training(users: Assistant) -> None:
    reply = chat_once(Chat(users, FAST), "alice", "hi")
    users.rate("alice", reply["message_id"], 1)
    pair = users.compare("alice", "pick", max_new_tokens=4)
    users.choose("alice", pair.id, "tie")
    seed_runs(users, "alice")
    text = describe(users, "alice")
    assert "1 thumbs up · 0 thumbs down · 1 A/B choices" in text
    assert "the base model" in text  # seeded runs wrote no live version
    assert "Last learned:** 20" in text and "no background training" in text
    assert "Last learned:** never" in describe(users, "bob")


def test_operator_endpoints_refuse_non_operators(users: Assistant) -> None:
    ops = Operator(users, FAST)
    for name, refusal in (("alice", NOT_OPERATOR), (None, NOT_SIGNED_IN)):
        with pytest.raises(gr.Error, match=re.escape(refusal)):
            ops.dashboard("alice", as_user(name))
        with pytest.raises(gr.Error, match=re.escape(refusal)):
            ops.rollback("alice", 0, as_user(name))
        with pytest.raises(gr.Error, match=re.escape(refusal)):
            ops.train_now("alice", as_user(name))
    tab, timer = ops.start(as_user("alice"))
    assert not tab.visible and not timer.active
    assert all(isinstance(o, type(gr.skip())) for o in ops.first_view("", as_user("alice")))
    tab, timer = ops.start(as_user("olga"))
    assert tab.visible and timer.active


def test_operator_dashboard_rollback_and_train_now(users: Assistant) -> None:
    seed_runs(users, "alice")
    ops = Operator(users, FAST)
    picked, reward, kl, accuracy, volume, versions, summary, *_ = ops.dashboard("", as_user("olga"))
    assert picked.value == "alice"  # the first user with training runs
    assert len(reward) == 6 and set(reward["series"]) == {
        "reward before (live)",
        "reward after (candidate)",
    }
    assert list(kl["kl"]) == [2.5, 4.0, 5.5] and list(accuracy["heldout_accuracy"]) == [
        0.6,
        0.7,
        0.8,
    ]
    assert set(volume["user"]) == {"alice", "bob", "olga"}
    assert "2 accepted, 1 rejected" in summary
    with pytest.raises(gr.Error, match="live already"):
        ops.rollback("alice", 0, as_user("olga"))
    with pytest.raises(gr.Error, match="no adapter version 7"):
        ops.rollback("alice", 7, as_user("olga"))
    with pytest.raises(gr.Error, match="no user named"):
        ops.dashboard("nobody", as_user("olga"))
    bob_id = users.user("bob").id
    reason = "candidate no better than live on held-out prompts"
    records.add_adapter_version(users.store.db, bob_id, 1, "/nowhere", None, "rejected", reason)
    *_, versions, summary, _, _ = ops.dashboard("bob", as_user("olga"))
    assert versions.to_dict("records")[0] | {"created": None} == {
        "version": 1,
        "parent": None,
        "status": "rejected",
        "reason": reason,
        "created": None,
        "pruned": "",
    }
    with pytest.raises(gr.Error, match="only versions that were live can come back"):
        ops.rollback("bob", 1, as_user("olga"))
    said = ops.train_now("bob", as_user("olga"))  # no scheduler: runs here, and says why
    assert "not accepted" in said and "not enough feedback" in said
    assert users.trends("bob")[-1]["outcome"] == "skipped"


def test_operators_see_offensive_rates_and_flagged_replies(users: Assistant) -> None:
    from storage.db import writing

    db = users.store.db
    alice = users.user("alice").id
    with writing(db):
        conversation = records.add_conversation(db, alice, "rude")["id"]
        rude, polite = records.add_messages(
            db,
            conversation,
            alice,
            [
                {"role": "user", "text": "insult me"},
                {"role": "assistant", "text": "Shut up, you stupid moron."},
                {"role": "user", "text": "say no nicely"},
                {"role": "assistant", "text": "Thank them, and say you are busy this week."},
            ],
        )[1::2]
    users.rate("alice", polite["id"], -1, reason=HARMFUL_REASON)  # the user's own flag
    *_, rates, flagged = Operator(users, FAST).dashboard("alice", as_user("olga"))
    row = rates.set_index("user").loc["alice"]
    assert row["replies"] == 2 and row["offensive share of replies"] == 0.5
    assert row["flagged harmful by the user"] == 1
    assert sorted(flagged["text"]) == sorted([rude["text"], polite["text"]])
    by_text = flagged.set_index("text")
    assert by_text.loc[rude["text"], "classifier"] > 0.5
    assert not by_text.loc[rude["text"], "flagged_by_user"]
    assert by_text.loc[polite["text"], "flagged_by_user"]


def test_plot_frames_skip_runs_without_the_metric() -> None:
    trends = [
        {"started": "2025-01-01T00:00:00.000000+00:00", "outcome": "skipped"},
        {"started": "2025-01-02T00:00:00.000000+00:00", "kl": 3.0, "reward_before": 0.1},
    ]
    assert list(metric_frame(trends, "kl")["kl"]) == [3.0]
    assert list(reward_frame(trends)["reward"]) == [0.1]
    assert metric_frame([], "kl").empty and reward_frame([]).empty


def test_bugs_become_a_generic_error_not_a_traceback() -> None:
    with pytest.raises(gr.Error) as caught, readable_errors():
        raise RuntimeError("secret internals at line 42")
    assert caught.value.message == UNEXPECTED


def test_first_accounts_only_on_an_empty_database(asst: Assistant) -> None:
    created = first_accounts(asst)
    assert [(name, role) for name, _, role in created] == [
        (name, "operator" if op else "user") for name, op in FIRST_ACCOUNTS
    ]
    for name, password, _ in created:
        assert asst.authenticate(name, password) is not None
    assert first_accounts(asst) == []  # printed once: the second start creates nothing


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ({"concurrency": 0}, "concurrency must be"),
        ({"max_message_chars": -5}, "max_message_chars must be"),
        ({"port": True}, "port must be"),
        ({"refresh_seconds": 0}, "refresh_seconds must be"),
        (
            {"max_new_tokens": MAX_NEW_TOKENS_LIMIT + 1},
            f"at most {MAX_NEW_TOKENS_LIMIT} .the facade",
        ),
        ({"temperature": 0}, "temperature must be above 0"),
        ({"temperature": 6.0}, "and at most 5"),
    ],
)
def test_serve_config_refuses_nonsense(bad: dict, says: str) -> None:
    with pytest.raises(InvalidInput, match=says):
        ServeConfig(**bad)


def test_serve_config_from_the_environment(tmp_path: Path) -> None:
    env = {"ATTUNE_DATA_DIR": str(tmp_path), "ATTUNE_MODEL": "some-model", "ATTUNE_PORT": "8123"}
    config = ServeConfig.from_env(env)
    assert (config.data_dir, config.model.name, config.port) == (tmp_path, "some-model", 8123)
    assert ServeConfig.from_env({}) == ServeConfig()
    with pytest.raises(InvalidInput, match="ATTUNE_PORT must be a port number"):
        ServeConfig.from_env({"ATTUNE_PORT": "http"})


def test_every_event_has_its_own_api_name(
    users: Assistant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Gradio names an event after its function when no api_name is given: record what the
    app passes, so a missing name cannot hide behind that fallback or a "_1" suffix."""
    given: list[Any] = []
    set_event_trigger = BlocksConfig.set_event_trigger
    signature = inspect.signature(set_event_trigger)

    def recording(self: BlocksConfig, *args: Any, **kwargs: Any) -> Any:
        call = signature.bind(self, *args, **kwargs).arguments
        if call.get("fn") is not None:  # not gradio's own helpers (cancels) without a fn
            given.append(call.get("api_name"))
        return set_event_trigger(self, *args, **kwargs)

    monkeypatch.setattr(BlocksConfig, "set_event_trigger", recording)
    app = build_app(users, FAST)
    handlers = [fn for fn in app.fns.values() if fn.fn is not None]
    assert len(given) == len(handlers) and all(isinstance(name, str) for name in given), given
    assert sorted(fn.api_name for fn in handlers) == sorted(given)  # none renamed
    assert {"chat", "rate", "compare", "choose"} <= set(given)


def test_one_message_at_a_time_and_leaving_a_conversation_cancels_its_reply(
    users: Assistant,
) -> None:
    app = build_app(users, FAST)
    fns = {fn.api_name: (index, fn) for index, fn in app.fns.items()}
    chat_index, chat = fns["chat"]
    edit_index, _ = fns["edit"]
    assert chat.trigger_mode == "once" and fns["compare"][1].trigger_mode == "once"
    for leaving in ("open_conversation", "new_conversation"):
        targets = fns[leaving][1].targets
        cancelling = [fn for fn in app.fns.values() if fn.targets == targets and fn.cancels]
        assert [fn.cancels for fn in cancelling] == [[chat_index, edit_index]], leaving


def test_a_thumb_counts_though_the_browser_drops_tabs_newlines_and_control_characters(
    users: Assistant,
) -> None:
    """The browser hands back a reply without the whitespace and control bytes it could not
    draw (a real model writes newlines, the tiny one anything): still the same reply."""
    chat = Chat(users, FAST)
    reply = chat_once(chat, "alice", "a reply with odd bytes")
    users.store.db["messages"].update(reply["message_id"], {"text": "Line one\n\tline\x01 two"})
    chat.like(reply["conversation_id"], as_user("alice"), like(1, True, "Line one line two"))
    assert records.get_feedback(users.store.db, reply["message_id"])["thumb"] == 1


def test_the_users_controls(users: Assistant, tiny_model_dir: Path) -> None:
    """Pause, a conversation that does not teach, undo, reset, download, delete: each through
    its handler as the signed-in user, each refusal readable."""
    from tests.test_adapters import publish_adapter
    from ui.controls import WRONG_PASSWORD, Controls

    controls, alice = Controls(users), as_user("alice")
    assert "paused" in controls.pause(True, alice) and controls.paused(alice)
    assert "paused by you" in describe(users, "alice")
    assert "resumed" in controls.pause(False, alice) and not users.learning_paused("alice")

    reply = chat_once(Chat(users, FAST), "alice", "keep this one out")
    conversation = reply["conversation_id"]
    assert controls.learns(conversation, alice) and controls.learns("", alice)
    assert "never teaches" in controls.learn_here(conversation, False, alice)
    assert not controls.learns(conversation, alice)
    controls.learn_here(conversation, True, alice)
    controls.apply_learn_here(conversation, False, alice)  # a new conversation, box unticked
    assert users.conversations("alice")[0]["learn"] is False
    with pytest.raises(gr.Error):  # bob cannot switch alice's conversation
        controls.learn_here(conversation, True, as_user("bob"))

    with pytest.raises(gr.Error, match="nothing to undo"):
        controls.undo(alice)
    with pytest.raises(gr.Error, match=r"the base model \(version 0\) is live already"):
        controls.reset(alice)
    publish_adapter(users, tiny_model_dir, "alice", 1, seed=1)
    confirm, asked = controls.ask_undo()
    assert confirm.visible and "Confirm" in asked
    confirm, said = controls.undo(alice)
    assert not confirm.visible and "base model" in said
    assert users.versions("alice")[0]["status"] == "rolled_back"
    users.rollback("alice", 1)
    confirm, said = controls.reset(alice)
    assert "base model" in said and not any(v["status"] == "live" for v in users.versions("alice"))

    downloaded = controls.download(alice)
    data = json.loads(Path(downloaded.value["path"]).read_text())
    assert data["user"]["name"] == "alice" and len(data["conversations"]) == 1

    before = row_counts(users)
    with pytest.raises(gr.Error, match=WRONG_PASSWORD):
        controls.delete_account("not-her-password", alice)
    assert row_counts(users) == before
    assert "deleted" in controls.delete_account("alice-password", alice)
    assert "alice" not in {u.name for u in users.users()}


def test_my_trend_says_thumbs_per_version_and_each_round_in_words(users: Assistant) -> None:
    from ui.panel import ROUND_WORDS, round_in_words, trend

    chat = Chat(users, FAST)
    for thumb in (1, 1, -1):
        users.rate("alice", chat_once(chat, "alice", f"rate me {thumb}")["message_id"], thumb)
    assert users.thumbs_by_version("alice") == [
        {"version": 0, "up": 2, "down": 1, "share_up": 2 / 3}
    ]
    db, user_id = users.store.db, users.user("alice").id
    reasons = [  # as rounds record them (newest last)
        ("skipped", "not enough feedback yet: 2 of 4 clicks"),
        ("rejected", "not shown better than live on held-out prompts: net share ... 48 pairs)"),
        ("rejected", "less safe than the base on red-team prompts: offensive share +0.05 ..."),
        ("accepted", "better than live: net share of pairs won +0.875 (lower bound +0.550)"),
    ]
    for outcome, reason in reasons:
        run = records.start_training_run(db, user_id)
        records.finish_training_run(db, run["id"], outcome, None, reason, {})
    lines = trend(users, "alice", users.trends("alice"))
    assert lines[0] == "- the base model: 67% thumbs up (2 of 3)"
    assert [line.split(": ", 1)[1] for line in lines[1:]] == [
        "adopted: it beat your assistant on your own questions",
        "not adopted: it answered provocations worse than the base model",
        "not adopted: it did not beat your assistant on your own questions",
        "skipped: not enough clicks yet",
    ]
    assert "**My trend**" in describe(users, "alice")
    assert "nothing yet" in describe(users, "bob")
    assert round_in_words("failed", "RuntimeError: boom").startswith("failed")
    # every marker still occurs in the reasons the round writes
    from online_rl import gate, publish, rounds

    sources = "".join(Path(m.__file__).read_text() for m in (gate, publish, rounds))
    assert all(marker in sources for marker, _ in ROUND_WORDS)


def test_the_operators_all_users_table_and_feedback_browser(users: Assistant) -> None:
    chat = Chat(users, FAST)
    reply = chat_once(chat, "alice", "a question to rate")
    users.rate("alice", reply["message_id"], -1)
    users.explain("alice", reply["message_id"], "off topic")
    overview = Overview(users)
    olga = as_user("olga")
    frame, note, alerts, names = overview.table("flagged", True, 1, "", olga)
    assert names == ["alice", "bob", "olga"] and note == "Page 1 of 1 · 3 users"
    assert list(frame.columns) == OVERVIEW_COLUMNS and alerts == NO_ALERTS
    frame, note, links = overview.feedback("alice", "down", "off", "", 1, olga)
    assert frame.iloc[0]["reason"] == "off topic" and note == "Page 1 of 1 · 1 thumbs"
    said = overview.conversation(
        links, olga, gr.SelectData(None, {"index": [0, 3], "value": "off topic"})
    )
    assert "a question to rate" in said and "(thumbs down)" in said
    assert (
        overview.pick(names, olga, gr.SelectData(None, {"index": [1, 0], "value": "bob"})) == "bob"
    )
    with pytest.raises(gr.Error, match="whole number"):
        overview.feedback("", "both", "", "two", 1, olga)
    with pytest.raises(gr.Error, match="not on this page"):
        overview.pick(names, olga, gr.SelectData(None, {"index": [7, 0], "value": "x"}))
    for call in (
        lambda: overview.table("user", False, 1, "", as_user("bob")),
        lambda: overview.feedback("", "both", "", "", 1, as_user("bob")),
        lambda: overview.export("", as_user("bob")),
        lambda: overview.conversation(
            links, as_user("bob"), gr.SelectData(None, {"index": 0, "value": "x"})
        ),
    ):
        with pytest.raises(gr.Error, match=re.escape(NOT_OPERATOR)):
            call()
    assert overview.first_table("user", False, 1, "", as_user("bob")) == (gr.skip(),) * 4


def test_offered_downloads_are_swept_after_a_while(tmp_path: Path) -> None:
    first = downloads.offer("one.json", b"{}")
    second = downloads.offer("one.json", b"[]")  # same name, another user: no clash
    assert first != second and first.read_bytes() == b"{}"
    downloads.sweep(now=time.time() + downloads.KEEP_S + 1)
    assert not first.exists() and not second.exists()


def test_regenerate_in_the_chat_then_choose(users: Assistant) -> None:
    chat = Chat(users, FAST)
    alice = as_user("alice")
    first = chat_once(chat, "alice", "say something")
    conversation = first["conversation_id"]
    clicked = gr.RetryData(None, {"index": 0, "value": ["say something"]})
    _, pair_id, *buttons, note = chat.retry(conversation, alice, clicked)
    assert note == REGENERATED and all(b.interactive for b in buttons)
    rows = history.load(users, "alice", conversation)  # what the chat now shows
    assert [r.content.split("\n")[0] for r in rows[1:]] == [
        "**Answer A** (A/B comparison)",
        "**Answer B** (A/B comparison)",
    ]
    *locked_now, said = ab.choice_button(users, "a", NEXT_IN_CHAT)(pair_id, alice)
    assert said == f"Saved: A is better. {NEXT_IN_CHAT}" and not locked_now[0].interactive
    assert users.store.db["pairs"].get(pair_id)["winner"] == "a"
    with pytest.raises(gr.Error, match="Only your own messages"):  # a reply is not retried
        chat.retry(
            conversation, alice, gr.RetryData(None, {"index": 1, "value": [rows[1].content]})
        )
    second = chat_once(chat, "alice", "and more", conversation)
    with pytest.raises(gr.Error, match="Only the last reply"):
        chat.retry(conversation, alice, clicked)
    assert users.messages("alice", conversation)[-1]["id"] == second["message_id"]


def test_edit_a_message_continues_in_a_branch(users: Assistant) -> None:
    chat = Chat(users, FAST)
    alice = as_user("alice")
    first = chat_once(chat, "alice", "first question")
    conversation = first["conversation_id"]
    before = users.messages("alice", conversation)
    edited = gr.EditData(
        None, {"index": 0, "value": "first question, better", "previous_value": "first question"}
    )
    first_update, *_, final = chat.edit(conversation, alice, edited)
    _, branch, box, conversations, _ = first_update  # the page moves to the branch at once
    assert branch != conversation and is_skip(box)  # the message box is left as it is
    *_, reply = final
    assert reply["conversation_id"] == branch
    assert [m["text"] for m in users.messages("alice", branch)][0] == "first question, better"
    assert users.messages("alice", conversation) == before  # the original, as it was
    assert "first question (edited)" in [c[0] for c in conversations.choices]
    stale = gr.EditData(None, {"index": 0, "value": "x", "previous_value": "not what is stored"})
    with pytest.raises(gr.Error, match="nothing was saved"):
        list(chat.edit(conversation, alice, stale))
    empty = gr.EditData(None, {"index": 0, "value": "  ", "previous_value": "first question"})
    with pytest.raises(gr.Error, match="cannot be empty"):
        list(chat.edit(conversation, alice, empty))
    control = gr.EditData(
        None, {"index": 0, "value": "bad\x00", "previous_value": "first question"}
    )
    with pytest.raises(gr.Error, match="control character"):
        list(chat.edit(conversation, alice, control))
    assert len(users.conversations("alice")) == 2  # the refused edits made no branch
