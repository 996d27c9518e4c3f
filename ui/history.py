"""Stored conversations as the chat shows them.

One shown entry per stored message, in order, so the index of a `.like()` click is the index
of a stored message: the click is resolved against storage, never against what the browser
says the message was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from assistant import Assistant

FEEDBACK = {1: "Like", -1: "Dislike", 0: None}  # the Chatbot's own names for thumbs


@dataclass(frozen=True)
class Shown:
    message_id: str
    role: str
    content: str
    thumb: int


def shown(messages: list[dict[str, Any]]) -> list[Shown]:
    """The conversation's messages for display; both answers of an A/B comparison are shown,
    labelled A and B, so what the user sees is what was stored."""
    answers_seen: dict[str, int] = {}
    out = []
    for m in messages:
        content = m["text"]
        if m["pair_id"] is not None and m["role"] == "assistant":
            label = "AB"[answers_seen.get(m["pair_id"], 0) % 2]
            answers_seen[m["pair_id"]] = answers_seen.get(m["pair_id"], 0) + 1
            content = f"**Answer {label}** (A/B comparison)\n\n{content}"
        out.append(Shown(m["id"], m["role"], content, m["thumb"] or 0))
    return out


def load(asst: Assistant, user: str, conversation_id: str | None) -> list[Shown]:
    """The shown entries of one of the user's conversations ([] for a new one)."""
    if not conversation_id:
        return []
    return shown(asst.messages(user, conversation_id))


def chat_messages(rows: list[Shown]) -> list[dict[str, str]]:
    return [{"role": r.role, "content": r.content} for r in rows]


def feedback_values(rows: list[Shown]) -> list[str | None]:
    """The standing thumb of each assistant message, in order, as the Chatbot draws it."""
    return [FEEDBACK.get(r.thumb) for r in rows if r.role == "assistant"]
