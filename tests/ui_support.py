"""Helpers shared by the web app tests: requests as a signed-in user, a launched app on a free
port, training-run rows for the operator plots."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import gradio as gr

from assistant import Assistant
from storage import records
from ui.app import build_app
from ui.config import ServeConfig
from ui.serve import free_port, launch

PASSWORDS = {"alice": "alice-password", "bob": "bob-password", "olga": "olga-password"}
FAST = ServeConfig(max_new_tokens=8, background=False, refresh_seconds=2.0)
FIRST_RUN = datetime(2025, 1, 1, tzinfo=UTC)
RUNS = [  # reward before/after, KL, reward-head accuracy, outcome of three rounds
    (0.10, 0.30, 2.5, 0.60, "accepted"),
    (0.30, 0.25, 4.0, 0.70, "rejected"),
    (0.30, 0.55, 5.5, 0.80, "accepted"),
]


def as_user(name: str | None) -> gr.Request:
    """What Gradio passes a handler for a signed-in user (None: nobody signed in)."""
    return gr.Request(username=name)


def add_users(asst: Assistant) -> None:
    """alice and bob (users) and olga (operator), with the passwords above."""
    for name, password in PASSWORDS.items():
        asst.add_user(name, password=password, operator=name == "olga")


def seed_runs(asst: Assistant, user: str) -> None:
    """Training-run rows as rounds record them, without spending minutes training."""
    db = asst.store.db
    user_id = asst.user(user).id
    for version, (before, after, kl, accuracy, outcome) in enumerate(RUNS, start=1):
        run = records.start_training_run(db, user_id)
        metrics = {
            "reward_before": before,
            "reward_after": after,
            "kl": kl,
            "heldout_accuracy": accuracy,
        }
        records.finish_training_run(db, run["id"], outcome, version, None, metrics)
        day = (FIRST_RUN + timedelta(days=version)).isoformat(timespec="microseconds")
        db["training_runs"].update(run["id"], {"started": day, "finished": day})  # spread out


@contextmanager
def serving(asst: Assistant, config: ServeConfig = FAST) -> Iterator[str]:
    """The app launched on a free local port with sign-in; yields its URL."""
    config = replace(config, port=free_port())
    app = build_app(asst, config)
    url = launch(app, asst, config, block=False)
    try:
        yield url
    finally:
        app.close()
