"""Compare tab handlers: two answers side by side, one choice per pair, buttons locked after."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from assistant import Assistant
from ui import ab
from ui.ab import WINNERS, unlocked
from ui.chat import message_text
from ui.config import ServeConfig
from ui.errors import readable_errors
from ui.identity import signed_in

HELP = """Ask a question and get **two answers from your assistant's live version**, written
with different random seeds (where it is set to write more, it shows the two whose choice
teaches it the most about your taste). Pick the better one (or Tie, or Both bad): your
assistant learns which kind of answer you prefer. A choice is stored once; the buttons then
lock until your next question. Each comparison starts a new conversation in the Chat tab's
list, where the winner (answer A on a tie) stays in the context and a both-bad comparison
leaves none."""
NEXT_COMPARE = "Ask another question to compare again."


class Compare:
    def __init__(self, asst: Assistant, config: ServeConfig):
        self.asst = asst
        self.config = config

    def ask(self, prompt: str | None, request: gr.Request) -> tuple[Any, ...]:
        """Two answers to `prompt`; returns (answer A, answer B, pair id, the four buttons
        unlocked, a note, the cleared prompt box). An empty prompt sends nothing."""
        with readable_errors():
            user = signed_in(request)
            text = message_text(prompt, self.config.max_message_chars)
            if not text:
                return (gr.skip(),) * (5 + len(WINNERS))
            pair = self.asst.compare(
                user,
                text,
                max_new_tokens=self.config.max_new_tokens,
                temperature=self.config.temperature,
            )
            version = pair.a.adapter_version
            source = f"version {version} of your assistant" if version else "the base model"
            note = f"Both answers come from {source}. Which is better?"
            return (pair.a.text, pair.b.text, pair.id, *unlocked(), note, "")

    def choose(self, pair_id: str, winner: str, request: gr.Request) -> str:
        """API: record your choice on an A/B pair: winner a, b, tie or both_bad (once)."""
        with readable_errors():
            return ab.store(self.asst, signed_in(request), pair_id, winner, NEXT_COMPARE)

    def button(self, winner: str) -> Callable[..., tuple[Any, ...]]:
        """The click handler of one choice button (`ui.ab.choice_button`)."""
        return ab.choice_button(self.asst, winner, NEXT_COMPARE)
