"""`Assistant`: the one API that the UI, the CLI, training and outside evaluation call.

It checks every argument and every ownership before anything runs, turns bad input into the
errors of `assistant.errors`, and leaves the algorithms to the modules it calls. Its methods
live by concern in small modules, each readable on its own:

- `assistant.core` — storage, the lazily loaded model, adapters, batcher and trainer, lookups;
- `assistant.accounts` — users, passwords, signing in, deleting an account;
- `assistant.conversation` — chat, A/B compares, batched generation, reading back;
- `assistant.feedback` — thumbs, reasons, A/B choices;
- `assistant.training_control` — rounds, versions, rollback, the user's own controls, trends;
- `assistant.operator_views` — what operators see across users.
"""

from __future__ import annotations

from assistant.accounts import Accounts
from assistant.conversation import Conversations, Delta, Pair, Reply
from assistant.core import User, clean_text
from assistant.feedback import Feedback
from assistant.operator_views import OperatorViews
from assistant.training_control import TrainingControl


class Assistant(Accounts, Conversations, Feedback, TrainingControl, OperatorViews):
    """A personal assistant per user on one shared base model."""


__all__ = ["Assistant", "Delta", "Pair", "Reply", "User", "clean_text"]
