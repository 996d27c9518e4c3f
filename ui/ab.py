"""A/B choice buttons, shared by the Compare tab and the chat's regenerated replies: the four
choices, locking them once one is stored, and the click handler that stores it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from assistant import AlreadyChosen, Assistant
from ui.errors import readable_errors
from ui.identity import signed_in

WINNERS = {"a": "A is better", "b": "B is better", "tie": "Tie", "both_bad": "Both are bad"}
ASK_FIRST = "Ask a question first: there is nothing to choose between yet."
DECIDED_ALREADY = "This A/B pair was decided already (in another tab, or by a second click)."


def locked(n: int = len(WINNERS)) -> tuple[gr.Button, ...]:
    return tuple(gr.Button(interactive=False) for _ in range(n))


def unlocked(n: int = len(WINNERS)) -> tuple[gr.Button, ...]:
    return tuple(gr.Button(interactive=True) for _ in range(n))


def store(asst: Assistant, user: str, pair_id: str, winner: str, next_step: str) -> str:
    """Record the choice; the sentence that confirms it, then what to do next."""
    if not pair_id:
        raise gr.Error(ASK_FIRST, print_exception=False)
    asst.choose(user, pair_id, winner)
    return f"Saved: {WINNERS[winner]}. {next_step}"


def choice_button(asst: Assistant, winner: str, next_step: str) -> Callable[..., tuple[Any, ...]]:
    """The click handler of one choice button: store the choice, lock the buttons. A pair
    decided already (another tab, a double click) locks them too, with a note."""

    def click(pair_id: str, request: gr.Request) -> tuple[Any, ...]:
        with readable_errors():
            user = signed_in(request)
            try:
                said = store(asst, user, pair_id, winner, next_step)
            except AlreadyChosen:
                gr.Warning(DECIDED_ALREADY)
                said = DECIDED_ALREADY
            return (*locked(), said)

    click.__name__ = f"choose_{winner}"
    return click
