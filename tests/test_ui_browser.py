"""The web app in a real browser: Debian's Chromium, headless, driven by Playwright for Python.

Sign in, send a message and watch the reply stream in, thumbs up and a reason after it, reload
(the conversation and its thumb come back from storage), click the thumb again to retract it,
an A/B choice, then sign in as an operator and see the trend plot, every user at a glance
and the feedback browser. A screenshot per step goes to
`<tmp_path>/screenshots`, taken when the step ends, also when it fails (`pytest -s` prints the
folder; `pytest --basetemp=DIR` puts it at a fixed path for CI artifacts).

Never a downloaded browser: `executable_path` is the system Chromium, which `make test`
installs with apt. Without it this test fails, loudly: it is never skipped.
"""

from __future__ import annotations

import json
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from assistant import Assistant
from storage import records
from tests.ui_support import FAST, PASSWORDS, add_users, seed_runs, serving
from ui.chat import visible_text

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-background-networking"]
TIMEOUT_MS = 60_000
STORAGE_TIMEOUT_S = 30
CONFIG = replace(FAST, max_new_tokens=48)

BOT_PREFIX = "bot's message: "  # the Chatbot labels each reply with its raw text
WATCH_STREAM = """() => {
  window.__replySnapshots = [];
  const seen = () => {
    const bots = document.querySelectorAll('#chatbot [data-testid="bot"]');
    const label = bots.length ? bots[bots.length - 1].getAttribute('aria-label') : '';
    const shots = window.__replySnapshots;
    if (label && shots[shots.length - 1] !== label) shots.push(label);
  };
  new MutationObserver(seen).observe(document.body, {
    subtree: true, childList: true, characterData: true, attributes: true,
  });
}"""
# The tiny model writes random bytes; whitespace and control characters do not survive into
# the label unchanged, so both sides are compared without them (as `visible_text`).
VISIBLE_JS = "(t) => t.replace(/[\\p{C}\\s]+/gu, '')"
SHOWS_REPLY = f"""(label) => {{
  const visible = {VISIBLE_JS};
  const bots = document.querySelectorAll('#chatbot [data-testid="bot"]');
  return bots.length === 1 && visible(bots[0].getAttribute('aria-label')) === visible(label);
}}"""


@pytest.fixture
def app(tmp_path: Path, tiny_model_dir: Path) -> Iterator[tuple[Assistant, str]]:
    with Assistant.open(tmp_path / "data", model=str(tiny_model_dir)) as asst:
        add_users(asst)
        seed_runs(asst, "alice")
        with serving(asst, CONFIG) as url:
            yield asst, url


@pytest.fixture
def browser():
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium). "
            "The browser test is never skipped."
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def eventually(check, what: str):
    """Poll storage until `check()` is truthy: the browser's click reaches it asynchronously."""
    deadline = time.monotonic() + STORAGE_TIMEOUT_S
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def sign_in(browser, url: str, name: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.get_by_label("username").fill(name)
    page.get_by_label("password").fill(PASSWORDS[name])
    page.get_by_role("button", name="Login").click()
    page.locator("#assistant-panel").get_by_text(f"Signed in as {name}").wait_for()
    return page


def download(page, button: str, file_box: str, to: Path) -> Path:
    """Click `button`, then the link the file box offers; the downloaded file, saved `to`."""
    page.get_by_role("button", name=button).click()
    link = page.locator(f"{file_box} a[download]").first
    link.wait_for()
    with page.expect_download() as started:
        link.click()
    started.value.save_as(to)
    return to


class Screenshots:
    """One screenshot per step, taken when the step ends, also when it fails: the picture of
    a failing step is the one that explains it."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.page: Any = None  # the page the next screenshot is of

    @contextmanager
    def step(self, name: str, full_page: bool = False) -> Iterator[None]:
        try:
            yield
        except BaseException:
            self.take(name, full_page, best_effort=True)
            raise
        self.take(name, full_page, best_effort=False)

    def take(self, name: str, full_page: bool, best_effort: bool) -> None:
        from playwright.sync_api import Error as PlaywrightError

        if self.page is None or self.page.is_closed():
            return
        try:
            self.page.screenshot(path=self.folder / f"{name}.png", full_page=full_page)
        except PlaywrightError:
            if not best_effort:  # after a failure, the failure is what gets reported
                raise


def test_sign_in_chat_thumbs_choice_and_operator_plot(
    app: tuple[Assistant, str], browser, tmp_path: Path
) -> None:
    asst, url = app
    shots = Screenshots(tmp_path / "screenshots")
    shots.folder.mkdir()
    print(f"screenshots: {shots.folder}")
    operator_tab = "Operator"

    with shots.step("1-signed-in"):
        page = shots.page = sign_in(browser, url, "alice")
        assert page.get_by_role("tab", name=operator_tab).count() == 0  # not an operator

    with shots.step("2-streamed-reply"):
        page.evaluate(WATCH_STREAM)
        box = page.locator("#message textarea")
        box.fill("Hello from a real browser")
        box.press("Enter")
        conversation = eventually(lambda: asst.conversations("alice"), "the stored reply")[0]["id"]
        stored = asst.messages("alice", conversation)
        reply = stored[-1]
        page.wait_for_function(SHOWS_REPLY, arg=BOT_PREFIX + reply["text"])  # what was stored
        snapshots = [s.removeprefix(BOT_PREFIX) for s in page.evaluate("window.__replySnapshots")]
        print(f"the reply was drawn in {len(snapshots)} steps")
        *partial, final = snapshots
        assert visible_text(final) == visible_text(reply["text"]) and partial, (
            snapshots
        )  # it grew first
        assert all(visible_text(reply["text"]).startswith(visible_text(p)) for p in partial), (
            snapshots
        )
        assert stored[0]["text"] == "Hello from a real browser"
        page.wait_for_function("() => document.querySelector('#message textarea').value === ''")
        # every load event of the page has long finished: the tab stayed hidden
        assert page.get_by_role("tab", name=operator_tab).count() == 0

    with shots.step("3-thumbs-up"):
        page.locator("#chatbot").get_by_role("button", name="Like").last.click()
        eventually(
            lambda: (records.get_feedback(asst.store.db, reply["id"]) or {}).get("thumb") == 1,
            "the thumbs up in storage",
        )
        page.locator("#assistant-panel").get_by_text("1 thumbs up").wait_for()
        why = page.locator("#why-preset")  # thumb first; the reason, optional, after
        why.get_by_text("Thumb saved. Why?").wait_for()
        assert records.get_feedback(asst.store.db, reply["id"])["reason"] is None
        why.get_by_label(CONFIG.reasons[0]).check()
        eventually(
            lambda: records.get_feedback(asst.store.db, reply["id"])["reason"] == CONFIG.reasons[0],
            "the reason attached to the thumb",
        )
        own = page.locator("#why-own textarea")
        own.fill("short and to the point")
        own.press("Enter")
        eventually(
            lambda: (
                records.get_feedback(asst.store.db, reply["id"])["reason"]
                == "short and to the point"
            ),
            "the user's own words replacing the preset",
        )

    with shots.step("4-reload-and-retract"):
        page.reload()  # the conversation and its thumb come back from storage
        page.wait_for_function(SHOWS_REPLY, arg=BOT_PREFIX + reply["text"])
        page.locator("#chatbot").get_by_role("button", name="Like").last.click()  # again
        eventually(
            lambda: records.get_feedback(asst.store.db, reply["id"])["thumb"] == 0,
            "the retraction in storage",
        )
        page.locator("#assistant-panel").get_by_text("0 thumbs up").wait_for()

    with shots.step("5-ab-choice"):
        page.get_by_role("tab", name="Compare").click()
        prompt = page.locator("#prompt textarea")
        prompt.fill("Which answer is better?")
        prompt.press("Enter")
        choose_a = page.get_by_role("button", name="A is better")
        choose_a.wait_for()
        page.wait_for_function(
            "() => [...document.querySelectorAll('button')]"
            ".some(b => b.innerText.trim() === 'A is better' && !b.disabled)"
        )
        choose_a.click()
        page.get_by_text("Saved: A is better").wait_for()
        assert page.get_by_role("button", name="B is better").is_disabled()
        pair = eventually(
            lambda: next(
                iter(
                    asst.store.db.query(
                        "select * from pairs where user_id = ?", [asst.user("alice").id]
                    )
                ),
                None,
            ),
            "the pair in storage",
        )
        assert pair["winner"] == "a"
    page.close()

    with shots.step("6-operator-trend", full_page=True):
        asst.rate("alice", reply["id"], -1)
        asst.explain("alice", reply["id"], "too long")
        page = shots.page = sign_in(browser, url, "olga")
        page.get_by_role("tab", name=operator_tab).click()
        plot = page.locator("#reward-plot")
        plot.get_by_text("reward after (candidate)").first.wait_for()
        plot.locator("canvas, svg").first.wait_for()

    with shots.step("7-all-users-and-feedback-browser", full_page=True):
        page.get_by_text("Page 1 of 1 · 3 users").wait_for()  # every user, one row each
        page.locator("#all-users [role=gridcell]", has_text="bob").first.click()  # picks bob below
        page.get_by_text("**bob**").or_(page.locator("text=bob: training runs")).first.wait_for()
        page.get_by_text("Feedback browser").click()
        reason = page.get_by_label("Reason contains")
        reason.fill("too")
        reason.press("Enter")
        page.get_by_text("Page 1 of 1 · 1 thumbs").wait_for()
        cell = page.locator("#feedback-browser [role=gridcell]", has_text="too long").first
        cell.wait_for()
        cell.click()  # its conversation, below
        page.locator("#feedback-conversation").get_by_text("Hello from a real browser").wait_for()
        page.locator("#feedback-conversation").get_by_text("(thumbs down)").wait_for()
        saved = download(page, "Export feedback", "#feedback-export", tmp_path / "feedback.zip")
        with zipfile.ZipFile(saved) as archive:
            assert sorted(archive.namelist()) == ["preference.jsonl", "unpaired.jsonl"]
            assert b"Hello from a real browser" in archive.read("unpaired.jsonl")
    assert sorted(p.name for p in shots.folder.iterdir()) == [
        "1-signed-in.png",
        "2-streamed-reply.png",
        "3-thumbs-up.png",
        "4-reload-and-retract.png",
        "5-ab-choice.png",
        "6-operator-trend.png",
        "7-all-users-and-feedback-browser.png",
    ]


def test_the_users_controls_in_a_real_browser(
    app: tuple[Assistant, str], browser, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Pause learning, a conversation that does not teach, undo the last update (it asks
    first), download my data, and deleting an account (it needs the password)."""
    from tests.test_adapters import publish_adapter

    asst, url = app
    shots = Screenshots(tmp_path / "screenshots")
    shots.folder.mkdir()
    print(f"screenshots: {shots.folder}")
    publish_adapter(asst, tiny_model_dir, "alice", 1, seed=1)
    measured = {"words": (60.0, 30.0), "lists": (0.6, 0.1), "asks_back": (0.0, 0.5)}
    example = ("How do I sleep better?", "Here are ten long tips ...", "Keep a schedule.")
    alice_id = asst.user("alice").id
    records.add_version_change(asst.store.db, alice_id, 1, 0, 24, measured, measured, example)

    with shots.step("1-what-it-learned-and-pause"):
        page = shots.page = sign_in(browser, url, "alice")
        page.locator("#assistant-panel").get_by_text("version 1").first.wait_for()
        said = "answers about 50% shorter; uses fewer lists; asks you a question back more often"
        page.locator("#assistant-panel").get_by_text(said).wait_for()
        page.locator("#assistant-panel").get_by_text("Keep a schedule.").wait_for()
        page.locator("#assistant-panel").get_by_text("My trend").wait_for()
        assert page.locator("#assistant-panel").get_by_text("not adopted").count() > 0
        page.get_by_label("Pause learning").check()
        eventually(lambda: asst.learning_paused("alice"), "the pause in storage")
        page.locator("#assistant-panel").get_by_text("paused by you").wait_for()
        page.reload()  # the box comes back ticked from storage
        page.locator("#assistant-panel").get_by_text("paused by you").wait_for()
        page.wait_for_function("() => document.querySelector('#pause-learning input').checked")
        page.get_by_label("Pause learning").uncheck()
        eventually(lambda: not asst.learning_paused("alice"), "learning resumed")
        page.locator("#assistant-panel").get_by_text("paused by you").wait_for(state="detached")

    with shots.step("2-conversation-that-does-not-teach"):
        page.get_by_label("Learn from this conversation").uncheck()  # before the first message
        box = page.locator("#message textarea")
        box.fill("Something I do not want it to learn from")
        box.press("Enter")
        stored = eventually(lambda: asst.conversations("alice"), "the conversation")[0]
        eventually(
            lambda: asst.conversations("alice")[0]["learn"] is False, "the conversation's flag"
        )
        assert stored["title"].startswith("Something I do not want")

    with shots.step("2b-regenerate-then-choose"):
        conversation = asst.conversations("alice")[0]["id"]
        eventually(lambda: len(asst.messages("alice", conversation)) == 2, "the first reply")
        page.locator("#chatbot").get_by_role("button", name="Retry").last.click()
        row = page.locator("#regenerated")
        row.get_by_text("Two answers to your last message").wait_for()
        pair = eventually(lambda: asst.messages("alice", conversation)[-1]["pair_id"], "the pair")
        page.locator("#chatbot").get_by_text("Answer B").wait_for()
        row.get_by_role("button", name="B is better").click()
        row.get_by_text("The conversation goes on with the one you chose").wait_for()
        eventually(lambda: asst.store.db["pairs"].get(pair)["winner"] == "b", "the choice")

    with shots.step("2c-edit-a-message"):
        page.locator("#chatbot").get_by_role("button", name="Edit").first.click()
        editor = page.locator("#chatbot textarea").first
        editor.fill("Something I want to ask differently")
        page.locator("#chatbot").get_by_role("button", name="Submit").click()
        branch = eventually(
            lambda: next(
                (c for c in asst.conversations("alice") if c["title"].endswith("(edited)")), None
            ),
            "the branch",
        )
        eventually(lambda: len(asst.messages("alice", branch["id"])) == 2, "the branch's reply")
        assert (
            asst.messages("alice", branch["id"])[0]["text"] == "Something I want to ask differently"
        )
        assert len(asst.messages("alice", conversation)) == 3  # the original, as it was
        page.locator("#chatbot").get_by_text("Something I want to ask differently").wait_for()

    with shots.step("3-undo-asks-then-undoes"):
        page.get_by_role("button", name="Undo last update").click()
        page.locator("#controls-note").get_by_text("Confirm below").wait_for()
        assert asst.versions("alice")[0]["status"] == "live"  # asking changed nothing
        page.get_by_role("button", name="Yes, undo it").click()
        page.locator("#controls-note").get_by_text("the base model again").wait_for()
        assert asst.versions("alice")[0]["status"] == "rolled_back"
        page.locator("#assistant-panel").get_by_text("nothing learned yet").wait_for()

    with shots.step("4-download-my-data"):
        saved = download(page, "Download my data", "#my-data", tmp_path / "my-data.json")
        data = json.loads(saved.read_text())
        assert data["user"]["name"] == "alice" and data["conversations"][0]["learn"] is False
    page.close()

    with shots.step("5-delete-account"):
        page = shots.page = sign_in(browser, url, "bob")
        page.get_by_label("Your password, to delete your account").fill("wrong")
        page.get_by_role("button", name="Delete my account").click()
        page.get_by_text("That is not your password").first.wait_for()
        assert "bob" in {u.name for u in asst.users()}
        page.get_by_label("Your password, to delete your account").fill(PASSWORDS["bob"])
        page.get_by_role("button", name="Delete my account").click()
        page.get_by_label("username").wait_for()  # signed out, back at the sign-in page
        assert "bob" not in {u.name for u in asst.users()}
    page.close()

    with shots.step("6-new-password-signs-out-and-guessing-pauses"):
        page = shots.page = sign_in(browser, url, "alice")
        asst.set_password("alice", "alice-new-password")  # as `attune user passwd` would
        page.reload()
        page.get_by_label("username").wait_for()  # the old session ended
        for attempt in range(asst.config.sign_in.failures_per_account_here + 1):
            page.get_by_label("username").fill("alice")
            page.get_by_label("password").fill(f"guess-{attempt}")
            with page.expect_response(lambda r: r.url.rstrip("/").endswith("/login")) as answer:
                page.get_by_role("button", name="Login").click()
        assert answer.value.status == 429
        page.get_by_role("alert").get_by_text("Too many wrong passwords").wait_for()
    assert sorted(p.name for p in shots.folder.iterdir()) == [
        "1-what-it-learned-and-pause.png",
        "2-conversation-that-does-not-teach.png",
        "2b-regenerate-then-choose.png",
        "2c-edit-a-message.png",
        "3-undo-asks-then-undoes.png",
        "4-download-my-data.png",
        "5-delete-account.png",
        "6-new-password-signs-out-and-guessing-pauses.png",
    ]
