"""Chat tab handlers: streamed replies, history from storage, thumbs and (after) reasons.

Every handler takes `request: gr.Request` and acts as `request.username`; the facade checks
that the conversation or message belongs to that user. A thumb is stored only when the message
the browser clicked is the stored one at that place in that conversation: the chat on screen
can be changing (a reply streaming in, another conversation being opened) while the hidden
conversation id says otherwise.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from typing import Any

import gradio as gr

from assistant import Assistant, Delta, Reply
from ui import history
from ui.ab import unlocked
from ui.config import ServeConfig
from ui.errors import readable_errors
from ui.identity import signed_in

THUMB_WORDS = {1: "Thumbs up saved", -1: "Thumbs down saved", 0: "Rating retracted"}
STILL_WRITING = "That reply is still being written; rate it once it is complete."
NOT_ON_SCREEN = (
    "That message is not the one stored there any more (the chat changed while you clicked), "
    "so nothing was saved. Please click again."
)
REASON_SAVED = "Reason added to your thumb"
NEXT_IN_CHAT = "The conversation goes on with the one you chose."
WRONG_ROLE = {
    "assistant": "Only the assistant's replies can be rated.",
    "user": "Only your own messages can be edited or asked again.",
}
ONLY_THE_LAST = "Only the last reply can be regenerated."
REGENERATED = (
    "Two answers to your last message: **A** the earlier, **B** the new one. Which is better? "
    "(Until you choose, the conversation continues with B.)"
)


def thumb_of(liked: bool | str | None) -> int:
    """Gradio's LikeData.liked as a thumb: True 1, False -1, empty (a second click) 0."""
    if liked is True:
        return 1
    if liked is False:
        return -1
    if liked in ("", None):
        return 0
    raise gr.Error(f"Unknown feedback {liked!r}.", print_exception=False)


def clicked_text(value: Any) -> str:
    """The text of the clicked message as the browser drew it. Gradio sends the contents of
    the clicked group of messages (one per message here), each a string or a text part."""
    parts = value if isinstance(value, list | tuple) else [value]
    return "".join(p.get("text", "") if isinstance(p, dict) else str(p or "") for p in parts)


def visible_text(text: str) -> str:
    """`text` without whitespace and control or format characters: what survives the trip
    through the browser unchanged (tabs, newlines and control bytes do not), so a clicked
    message is matched to the stored one on this."""
    return "".join(
        c for c in text if not c.isspace() and not unicodedata.category(c).startswith("C")
    )


def message_text(raw: str | None, limit: int) -> str:
    """The typed text, stripped ("" means send nothing); over the limit is a readable error,
    raised before anything is stored. Chat and Compare share it."""
    text = (raw or "").strip()
    if len(text) > limit:
        raise gr.Error(
            f"Your message is {len(text)} characters long; the limit is {limit}. Nothing was sent.",
            print_exception=False,
        )
    return text


class Chat:
    def __init__(self, asst: Assistant, config: ServeConfig):
        self.asst = asst
        self.config = config

    def _chatbot(self, rows: list[history.Shown]) -> gr.Chatbot:
        return gr.Chatbot(
            value=history.chat_messages(rows), feedback_value=history.feedback_values(rows)
        )

    def _conversations(self, user: str, selected: str | None) -> gr.Dropdown:
        choices = [(c["title"] or "(untitled)", c["id"]) for c in self.asst.conversations(user)]
        return gr.Dropdown(choices=choices, value=selected or None)

    def restore(self, request: gr.Request) -> tuple[gr.Chatbot, str, gr.Dropdown]:
        """On page load: the newest conversation from storage, so a reload loses nothing."""
        with readable_errors():
            user = signed_in(request)
            conversations = self.asst.conversations(user)
            current = conversations[0]["id"] if conversations else ""
            rows = history.load(self.asst, user, current)
            return self._chatbot(rows), current, self._conversations(user, current)

    def open(self, conversation_id: str | None, request: gr.Request) -> tuple[gr.Chatbot, str]:
        """Show one of the user's conversations (picked in the list)."""
        with readable_errors():
            user = signed_in(request)
            rows = history.load(self.asst, user, conversation_id)
            return self._chatbot(rows), conversation_id or ""

    def new(self, request: gr.Request) -> tuple[gr.Chatbot, str, gr.Dropdown]:
        """Start a new conversation: the next message opens it."""
        with readable_errors():
            user = signed_in(request)
            return self._chatbot([]), "", self._conversations(user, None)

    def send(
        self, message: str | None, conversation_id: str | None, request: gr.Request
    ) -> Iterator[tuple[Any, ...]]:
        """Stream the reply to `message`; yields (chatbot, conversation id, message box,
        conversation list, stored reply). An empty message sends nothing; an over-long one
        is refused with a sentence and nothing is stored.

        The message box keeps the text until the reply is stored, so a reply that fails or
        is cancelled (another conversation opened) loses nothing typed; on a failure the chat
        goes back to what is stored."""
        with readable_errors():
            user = signed_in(request)
            text = message_text(message, self.config.max_message_chars)
            if not text:
                yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
                return
            stream = self.asst.chat_stream(
                user,
                text,
                conversation_id or None,
                max_new_tokens=self.config.max_new_tokens,
                temperature=self.config.temperature,
            )
            stored = history.load(self.asst, user, conversation_id)
            try:
                yield from self._stream(user, text, stored, stream)
            except Exception:
                yield self._chatbot(stored), gr.skip(), gr.skip(), gr.skip(), gr.skip()
                raise

    def _stream(
        self,
        user: str,
        text: str,
        stored: list[history.Shown],
        stream: Iterator[Delta | Reply],
    ) -> Iterator[tuple[Any, ...]]:
        """The updates of one streaming reply, ending with what was stored."""
        shown = history.chat_messages(stored)
        shown += [{"role": "user", "content": text}, {"role": "assistant", "content": ""}]
        yield shown, gr.skip(), gr.skip(), gr.skip(), gr.skip()
        for event in stream:
            if isinstance(event, Delta):
                grown = {"role": "assistant", "content": shown[-1]["content"] + event.text}
                shown = [*shown[:-1], grown]  # a new list per update: nothing yielded changes
                yield shown, gr.skip(), gr.skip(), gr.skip(), gr.skip()
            elif isinstance(event, Reply):
                rows = history.load(self.asst, user, event.conversation_id)
                yield (
                    self._chatbot(rows),
                    event.conversation_id,
                    "",  # stored: now the message box can be cleared
                    self._conversations(user, event.conversation_id),
                    {
                        "message_id": event.id,
                        "conversation_id": event.conversation_id,
                        "text": event.text,
                        "adapter_version": event.adapter_version,
                    },
                )

    def _clicked_row(
        self, user: str, conversation_id: str | None, index: Any, value: Any, role: str
    ) -> tuple[list[history.Shown], int]:
        """The stored rows and the index of the clicked message, which must be the stored
        message of that `role` at that place (the chat on screen may be changing)."""
        rows = history.load(self.asst, user, conversation_id)
        index = index[0] if isinstance(index, list | tuple) else index
        if not isinstance(index, int) or not 0 <= index < len(rows):
            raise gr.Error(STILL_WRITING, print_exception=False)
        if visible_text(clicked_text(value)) != visible_text(rows[index].content):
            raise gr.Error(NOT_ON_SCREEN, print_exception=False)
        if rows[index].role != role:
            raise gr.Error(WRONG_ROLE[role], print_exception=False)
        return rows, index

    def retry(
        self, conversation_id: str | None, request: gr.Request, data: gr.RetryData
    ) -> tuple[Any, ...]:
        """Regenerate the last reply: the earlier one and the new one become an A/B pair
        (both shown, A the earlier); returns (chat, pair id, the choice buttons unlocked,
        a note). The pair is decided with the buttons under the chat, or not at all."""
        with readable_errors():
            user = signed_in(request)
            rows, index = self._clicked_row(user, conversation_id, data.index, data.value, "user")
            if index != len(rows) - 2 or rows[-1].role != "assistant":
                raise gr.Error(ONLY_THE_LAST, print_exception=False)
            pair = self.asst.regenerate(
                user,
                rows[-1].message_id,
                max_new_tokens=self.config.max_new_tokens,
                temperature=self.config.temperature,
            )
            shown = self._chatbot(history.load(self.asst, user, conversation_id))
            return shown, pair.id, *unlocked(), REGENERATED

    def edit(
        self, conversation_id: str | None, request: gr.Request, data: gr.EditData
    ) -> Iterator[tuple[Any, ...]]:
        """Edit one of your messages and continue from there: a new conversation (named
        "... (edited)") holds what came before it, the edited message is sent in it and its
        reply streams in; the original conversation, its thumbs and choices, stay as stored."""
        with readable_errors():
            user = signed_in(request)
            rows, index = self._clicked_row(
                user, conversation_id, data.index, data.previous_value, "user"
            )
            text = message_text(clicked_text(data.value), self.config.max_message_chars)
            if not text:
                raise gr.Error("An edited message cannot be empty.", print_exception=False)
            branch = self.asst.branch(user, rows[index].message_id, text)
            # the page moves to the branch at once, whatever happens to the reply; the message
            # box keeps whatever the user is typing there
            yield gr.skip(), branch, gr.skip(), self._conversations(user, branch), gr.skip()
        for shown, _, _, conversations, reply in self.send(text, branch, request):
            yield shown, gr.skip(), gr.skip(), conversations, reply

    def regenerate_api(self, message_id: str, request: gr.Request) -> dict[str, Any]:
        """API: regenerate your conversation's last reply by its id; the earlier and the new
        reply become an A/B pair ({"pair_id", "a", "b"}: message ids and texts) to decide
        with /choose, or not."""
        with readable_errors():
            pair = self.asst.regenerate(
                signed_in(request),
                message_id,
                max_new_tokens=self.config.max_new_tokens,
                temperature=self.config.temperature,
            )
            return {
                "pair_id": pair.id,
                "a": {"message_id": pair.a.id, "text": pair.a.text},
                "b": {"message_id": pair.b.id, "text": pair.b.text},
            }

    def branch_api(self, message_id: str, request: gr.Request) -> str:
        """API: to edit one of your messages, a new conversation holding what came before it;
        send the edited text to /chat with the returned conversation id."""
        with readable_errors():
            return self.asst.branch(signed_in(request), message_id)

    def like(
        self, conversation_id: str | None, request: gr.Request, data: gr.LikeData
    ) -> tuple[str | None, Any, Any, str]:
        """A thumb clicked in the chat, stored at once; clicking it again retracts (Gradio
        sends ''). Returns the rated reply's id and the "why?" row: shown, emptied, after a
        thumb (its reason is optional and comes after the click), hidden after a retraction."""
        with readable_errors():
            user = signed_in(request)
            rows, index = self._clicked_row(
                user, conversation_id, data.index, data.value, "assistant"
            )
            thumb = thumb_of(data.liked)
            self.record(user, rows[index].message_id, thumb, None)
            rated = rows[index].message_id if thumb else None
            return rated, gr.update(visible=bool(thumb)), gr.update(value=None), ""

    def explain(self, message_id: str | None, reason: str | None, request: gr.Request) -> str:
        """API and the "why?" row: attach a reason (a preset or your own words) to your
        standing thumb on a reply. Returns the emptied box for your own words."""
        with readable_errors():
            user = signed_in(request)
            if not message_id:
                raise gr.Error("Click a thumb first; the reason is added to it.")
            if reason is None or (isinstance(reason, str) and not reason.strip()):
                return ""  # an emptied choice or box: nothing to add
            self.asst.explain(user, message_id, reason)
            gr.Info(f"{REASON_SAVED}: {reason.strip()}")
            return ""

    def explain_preset(self, message_id: str | None, reason: str | None, request: gr.Request):
        """A preset reason picked: like `explain`, leaving the own-words box as the user has
        it (a reply that emptied it could land after they started typing)."""
        self.explain(message_id, reason, request)

    def rate(self, message_id: str, thumb: int, reason: str, request: gr.Request) -> str:
        """API: rate one of your replies by id: thumb 1 (up), -1 (down) or 0 (retract),
        with an optional reason ("" for none)."""
        with readable_errors():
            return self.record(signed_in(request), message_id, thumb, reason)

    def record(self, user: str, message_id: str, thumb: int, reason: str | None) -> str:
        if isinstance(reason, str):  # anything else (an API client's number) the facade refuses
            reason = reason.strip() or None
        self.asst.rate(user, message_id, thumb, reason if thumb else None)
        said = THUMB_WORDS[thumb] + (f" ({reason})" if reason and thumb else "")
        gr.Info(said)
        return said
