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
from ui.config import ServeConfig
from ui.errors import readable_errors
from ui.identity import signed_in

THUMB_WORDS = {1: "Thumbs up saved", -1: "Thumbs down saved", 0: "Rating retracted"}
STILL_WRITING = "That reply is still being written; rate it once it is complete."
NOT_ON_SCREEN = (
    "That message is not the one stored there any more (the chat changed while you clicked), "
    "so nothing was saved. Please click the thumb again."
)
REASON_SAVED = "Reason added to your thumb"


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

    def like(
        self, conversation_id: str | None, request: gr.Request, data: gr.LikeData
    ) -> tuple[str | None, Any, Any, str]:
        """A thumb clicked in the chat, stored at once; clicking it again retracts (Gradio
        sends ''). Returns the rated reply's id and the "why?" row: shown, emptied, after a
        thumb (its reason is optional and comes after the click), hidden after a retraction."""
        with readable_errors():
            user = signed_in(request)
            rows = history.load(self.asst, user, conversation_id)
            index = data.index[0] if isinstance(data.index, list | tuple) else data.index
            if not isinstance(index, int) or not 0 <= index < len(rows):
                raise gr.Error(STILL_WRITING, print_exception=False)
            if visible_text(clicked_text(data.value)) != visible_text(rows[index].content):
                raise gr.Error(NOT_ON_SCREEN, print_exception=False)
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
