"""Feedback: thumbs (with an optional reason) and A/B choices, each one click that teaches."""

from __future__ import annotations

from assistant.core import AssistantCore, clean_text
from assistant.errors import (
    AlreadyChosen,
    InvalidInput,
    PermissionDenied,
    UnknownPair,
)
from storage import records
from storage.db import writing

THUMBS = (1, -1, 0)
WINNERS = ("a", "b", "tie", "both_bad")


class Feedback(AssistantCore):
    """The `Assistant`'s feedback methods."""

    def rate(self, user: str, message_id: str, thumb: int, reason: str | None = None) -> None:
        """Thumbs up (1) or down (-1) on one of the user's replies; 0 retracts."""
        u = self.user(user)
        if type(thumb) is not int or thumb not in THUMBS:
            raise InvalidInput(f"thumb must be 1, -1 or 0, not {thumb!r}")
        if reason is not None:
            reason = clean_text(reason, "reason", self.config.chat.max_reason_chars)
        message = self._message(u, message_id)
        if message["role"] != "assistant":
            raise InvalidInput("only the assistant's replies can be rated")
        records.upsert_feedback(
            self.store.db, message["id"], u.id, thumb, reason if thumb else None
        )
        self._clicked(u)

    def explain(self, user: str, message_id: str, reason: str) -> None:
        """Attach a reason to the user's standing thumb on one of their replies: the thumb is
        one click, the reason (a preset such as "harmful", or their own words) may come after
        it. Replaces an earlier reason; refused when the reply has no standing thumb."""
        u = self.user(user)
        text = clean_text(reason, "reason", self.config.chat.max_reason_chars)
        message = self._message(u, message_id)
        with writing(self.store.db):
            if not records.set_feedback_reason(self.store.db, message["id"], text):
                raise InvalidInput("rate the reply first: a reason explains a thumb up or down")

    def choose(self, user: str, pair_id: str, winner: str) -> None:
        """Record which answer of an A/B pair the user preferred; a pair is decided once."""
        u = self.user(user)
        if not isinstance(winner, str) or winner not in WINNERS:
            raise InvalidInput(f"winner must be one of {', '.join(WINNERS)}, not {winner!r}")
        pair = records.get_pair(self.store.db, pair_id) if isinstance(pair_id, str) else None
        if pair is None:
            raise UnknownPair(f"no A/B pair {pair_id!r}")
        if pair["user_id"] != u.id:
            raise PermissionDenied("that A/B pair belongs to another user")
        if not records.set_pair_winner(self.store.db, pair_id, winner):
            raise AlreadyChosen("this A/B pair was decided already")
        self._clicked(u)

    def feedback_counts(self, user: str) -> dict[str, int]:
        """How much the user has taught their assistant: standing thumbs up and down
        (retractions not counted) and decided A/B choices."""
        u = self.user(user)
        return records.feedback_counts(self.store.db, u.id)
