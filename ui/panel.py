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


def describe(asst: Assistant, user: str) -> str:
    version = live_version(asst.versions(user))
    counts = asst.feedback_counts(user)
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
            f"**Last learned:** {when(last_learned(asst.trends(user)))}",
            "",
            f"**Training:** {training}",
        ]
    )


class Panel:
    def __init__(self, asst: Assistant):
        self.asst = asst

    def render(self, request: gr.Request) -> str:
        with readable_errors():
            return describe(self.asst, signed_in(request))
