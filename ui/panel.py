"""The "Your assistant" panel: which version answers, what the user taught it, and whether it
is learning right now."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import gradio as gr

from assistant import Assistant
from ui.errors import readable_errors
from ui.identity import signed_in

TRAINING_WORDS = {
    "queued": "a learning round is queued",
    "running": "a learning round is running now",
    None: "idle",
}


def when(stamp: str | None) -> str:
    """A stored UTC timestamp as people read it."""
    if not stamp:
        return "never"
    return datetime.fromisoformat(stamp).strftime("%Y-%m-%d %H:%M UTC")


def live_version(versions: list[dict[str, Any]]) -> int:
    """The live adapter version (0 = the bare base model)."""
    return next((v["version"] for v in versions if v["status"] == "live"), 0)


def last_learned(trends: list[dict[str, Any]]) -> str | None:
    """When the last accepted round finished."""
    accepted = [t["finished"] for t in trends if t["outcome"] == "accepted"]
    return accepted[-1] if accepted else None


# what a round's recorded reason says, in the user's words (first match wins)
ROUND_WORDS = (
    ("not shown better", "not adopted: it did not beat your assistant on your own questions"),
    ("better than live", "adopted: it beat your assistant on your own questions"),
    ("less safe", "not adopted: it answered provocations worse than the base model"),
    ("KL to the base", "not adopted: it drifted too far from the base model"),
    ("degenerate", "not adopted: its answers got repetitive or cut off"),
    ("stale", "not adopted: your assistant changed while it was learning"),
    ("paused while", "not adopted: you paused learning while it ran"),
    ("paused", "skipped: learning was paused"),
    ("not enough feedback", "skipped: not enough clicks yet"),
)
TREND_ROUNDS = 5  # the newest rounds the panel tells about


def round_in_words(outcome: str, reason: str | None) -> str:
    """One plain sentence for a learning round (the operator sees the exact reason)."""
    if outcome == "running":
        return "learning now"
    for marker, words in ROUND_WORDS:
        if marker in (reason or ""):
            return words
    if outcome == "failed":
        return "failed: nothing changed (the operator can see why)"
    return {"accepted": "adopted", "rejected": "not adopted"}.get(outcome, outcome)


def trend(asst: Assistant, user: str, runs: list[dict[str, Any]]) -> list[str]:
    """The "My trend" lines: thumbs up per version, then the newest `runs` (the user's
    `trends()`) in words."""
    lines = []
    for v in asst.thumbs_by_version(user):
        name = f"version {v['version']}" if v["version"] else "the base model"
        lines.append(
            f"- {name}: {v['share_up']:.0%} thumbs up ({v['up']} of {v['up'] + v['down']})"
        )
    for t in runs[-TREND_ROUNDS:][::-1]:
        lines.append(
            f"- {when(t['finished'] or t['started'])}: {round_in_words(t['outcome'], t['reason'])}"
        )
    return lines


EXAMPLE_CHARS = 280  # a before / after reply in the panel, cut to this


def _cut(text: str | None) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "…"


def learned(adopted: list[dict[str, Any]], live: int) -> list[str]:
    """ "What it learned": the live version against the base model, then each step (the
    live version and each version it grew from, against the one before), then the live
    version's before / after example."""
    changes = {c["version"]: c for c in adopted}
    lines, version, newest = [], live, changes.get(live)
    if newest is not None and newest["compared_with"]:  # else the first step says it
        said = "; ".join(newest["against_base"]) or "no measurable change in length, format or tone"
        lines.append(f"- **against the base model:** {said}")
    while version in changes:  # live, then what it was compared with, back to the base
        c = changes[version]
        than = f"version {c['compared_with']}" if c["compared_with"] else "the base model"
        said = "; ".join(c["changes"]) or "no measurable change in length, format or tone"
        lines.append(
            f"- version {version}, against {than}: {said} (on {c['pairs']} of your questions)"
        )
        version = c["compared_with"]
    if newest is not None and newest["question"]:
        lines += [
            "",
            f"*Before / after*, on your question “{_cut(newest['question'])}”:",
            f"> **before:** {_cut(newest['before'])}",
            ">",
            f"> **after:** {_cut(newest['after'])}",
        ]
    return lines


def nothing_learned(adopted: list[dict[str, Any]], live: int) -> str:
    if live == 0 and adopted:
        return "- the base model answers now: what it learned is not in use (undo or reset)"
    return "- nothing yet: no version adopted"


def reasons(asst: Assistant, user: str) -> str:
    said = [
        f"{r['reason']} ({r['count']} {'up' if r['thumb'] == 1 else 'down'})"
        for r in asst.my_reasons(user)
    ]
    return ", ".join(said) if said else "none yet (add one after a thumb)"


def describe(asst: Assistant, user: str) -> str:
    version = live_version(asst.versions(user))
    counts = asst.feedback_counts(user)
    runs = asst.trends(user)
    adopted = asst.what_changed(user)  # what each adopted version changed, newest first
    training = (
        TRAINING_WORDS.get(asst.training_state(user), "unknown")
        if asst.background
        else "no background training in this server"
    )
    if asst.learning_paused(user):
        training = "paused by you (your clicks are kept; they teach once you resume)"
    answering = f"version {version}" if version else "the base model (nothing learned yet)"
    return "\n".join(
        [
            "### Your assistant",
            f"**Signed in as** {user}",
            "",
            f"**Answering with:** {answering}",
            "",
            f"**Feedback given:** {counts['thumbs_up']} thumbs up · "
            f"{counts['thumbs_down']} thumbs down · {counts['choices']} A/B choices",
            "",
            f"**Last learned:** {when(last_learned(runs))}",
            "",
            f"**Training:** {training}",
            "",
            "**What it learned** (measured on your questions, never the model's own words):",
            *(learned(adopted, version) or [nothing_learned(adopted, version)]),
            "",
            f"**Your reasons:** {reasons(asst, user)}",
            "",
            "**My trend** (newest round first):",
            *(trend(asst, user, runs) or ["- nothing yet: rate some replies"]),
        ]
    )


class Panel:
    def __init__(self, asst: Assistant):
        self.asst = asst

    def render(self, request: gr.Request) -> str:
        with readable_errors():
            return describe(self.asst, signed_in(request))
