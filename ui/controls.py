"""The user's own controls: pause learning, a conversation that does not teach, undo the last
update, go back to the base model, download my data, delete my account.

Each acts as the signed-in user through the facade. What destroys something asks first: undo
and reset show a confirming button (the first click only asks), deleting the account needs the
account's password.
"""

from __future__ import annotations

import json

import gradio as gr

from assistant import Assistant
from ui import downloads
from ui.errors import readable_errors
from ui.identity import signed_in

ASK_UNDO = "Go back to the version your assistant had before its last update? Confirm below."
ASK_RESET = "Forget everything your assistant learned and answer as the base model? Your "
ASK_RESET += "conversations and clicks stay. Confirm below."
WRONG_PASSWORD = "That is not your password: nothing was deleted."


def hidden() -> gr.Button:
    return gr.Button(visible=False)


def shown() -> gr.Button:
    return gr.Button(visible=True)


class Controls:
    def __init__(self, asst: Assistant):
        self.asst = asst

    def pause(self, paused: bool, request: gr.Request) -> str:
        with readable_errors():
            self.asst.pause_learning(signed_in(request), paused)
        if paused:
            return "Learning paused: your clicks are kept and teach nothing until you resume."
        return "Learning resumed: your clicks teach your assistant again."

    def paused(self, request: gr.Request) -> bool:
        with readable_errors():
            return self.asst.learning_paused(signed_in(request))

    def learn_here(self, conversation_id: str, learn: bool, request: gr.Request) -> str:
        """The checkbox of the open conversation; before its first message there is nothing
        to store yet (`apply_learn_here` stores it once the conversation exists)."""
        with readable_errors():
            user = signed_in(request)
            if conversation_id:
                self.asst.set_conversation_learning(user, conversation_id, learn)
        if learn:
            return "This conversation teaches your assistant."
        return "This conversation is kept but never teaches your assistant."

    def apply_learn_here(self, conversation_id: str, learn: bool, request: gr.Request) -> None:
        """After a reply: a new conversation started with the box unticked is stored so."""
        if conversation_id and not learn:
            with readable_errors():
                self.asst.set_conversation_learning(signed_in(request), conversation_id, False)

    def learns(self, conversation_id: str, request: gr.Request) -> bool:
        """Whether the opened conversation teaches (a new one does until told otherwise)."""
        with readable_errors():
            user = signed_in(request)
            if not conversation_id:
                return True
            return self.asst.conversation_learns(user, conversation_id)

    def ask_undo(self) -> tuple[gr.Button, str]:
        return shown(), ASK_UNDO

    def undo(self, request: gr.Request) -> tuple[gr.Button, str]:
        with readable_errors():
            version = self.asst.undo_last_update(signed_in(request))
        now = f"version {version}" if version else "the base model"
        return hidden(), f"Undone: your assistant answers with {now} again."

    def ask_reset(self) -> tuple[gr.Button, str]:
        return shown(), ASK_RESET

    def reset(self, request: gr.Request) -> tuple[gr.Button, str]:
        with readable_errors():
            self.asst.rollback(signed_in(request), 0)
        return hidden(), "Reset: your assistant answers as the base model."

    def download(self, request: gr.Request) -> gr.File:
        """Everything kept about the user as one JSON file, offered for download."""
        with readable_errors():
            user = signed_in(request)
            text = json.dumps(self.asst.my_data(user), ensure_ascii=False, indent=1)
            path = downloads.offer(f"attune-{user}-data.json", text.encode("utf-8"))
            return gr.File(value=str(path), visible=True)

    def delete_account(self, password: str, request: gr.Request) -> str:
        """Delete the signed-in account and everything of it, if the password is theirs."""
        with readable_errors():
            user = signed_in(request)
            if self.asst.authenticate(user, password or "") is None:
                raise gr.Error(WRONG_PASSWORD, print_exception=False)
            self.asst.delete_user(user)
        return "Your account and everything of it were deleted."
