"""Training control: rounds now or queued, versions, rollback and the user's own controls
(pause, a conversation that does not teach, undo, my data), trends.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from assistant import traits
from assistant.core import AssistantCore
from assistant.errors import (
    InvalidInput,
    NotFound,
)
from storage import adapters as adapter_files
from storage import records, user_export
from storage.db import writing

if TYPE_CHECKING:  # online_rl imports assistant; the facade reaches it only at call time
    from online_rl.rounds import TrainReport


def _sentences(measured: dict[str, list[float]]) -> list[str]:
    """Stored (before, after) trait means as the sentences `assistant.traits` says."""
    before = {name: pair[0] for name, pair in measured.items()}
    after = {name: pair[1] for name, pair in measured.items()}
    return traits.describe(before, after)


class TrainingControl(AssistantCore):
    """The `Assistant`'s training and version methods."""

    def train(self, user: str) -> TrainReport:
        """Run one online-RL round for the user now, and wait for it.

        The candidate version goes live only if the gate accepts it; the report says why.
        """
        u = self.user(user)
        return self._run_round(u.id)

    @property
    def background(self) -> bool:
        """True while this assistant's background training scheduler runs."""
        return self.scheduler is not None

    def queue_training(self, user: str) -> bool:
        """Queue a round for the user on the background scheduler now, whatever their click
        count (an operator's "train now" that must not block the caller). False when a round
        is queued or running already; InvalidInput when no scheduler runs (call `train`)."""
        u = self.user(user)
        if self.scheduler is None:
            raise InvalidInput("no background scheduler is running: use train() to train now")
        return self.scheduler.queue(u.id)

    def training_state(self, user: str) -> str | None:
        """ "queued" or "running" while the background scheduler has a round for the user."""
        u = self.user(user)
        return self.scheduler.state(u.id) if self.scheduler is not None else None

    def versions(self, user: str) -> list[dict[str, Any]]:
        """The user's adapter versions, oldest first, with status, the reason of rejections and
        when their files were pruned (None while kept)."""
        u = self.user(user)
        keys = ("version", "parent", "status", "reason", "created", "pruned")
        return [
            {k: r[k] for k in keys} | {"metrics": json.loads(r["metrics"] or "{}")}
            for r in records.list_adapter_versions(self.store.db, u.id)
        ]

    def rollback(self, user: str, version: int) -> None:
        """Make an earlier version live again (0 = the bare base model).

        The version must have been live before (retired or rolled back), keep its files (not
        pruned) and be intact on disk; the current live version becomes rolled_back. Replies in
        flight finish on the old one. Checked and switched in one write transaction, so pruning
        cannot take the files away in between.
        """
        u = self.user(user)
        if type(version) is not int or version < 0:
            raise InvalidInput(f"version must be a whole number >= 0, not {version!r}")
        db = self.store.db
        with writing(db):
            if version == records.live_version(db, u.id):
                what = f"version {version}" if version else "the base model (version 0)"
                raise InvalidInput(f"{what} is live already")
            if version != 0:
                rows = {r["version"]: r for r in records.list_adapter_versions(db, u.id)}
                self._check_restorable(user, version, rows.get(version))
            records.make_live(db, u.id, version or None, old_status="rolled_back")

    # the user's own controls ------------------------------------------------------------------

    def undo_last_update(self, user: str) -> int:
        """Put back the version the live one was trained from (its parent; 0 is the base
        model) and return it: the user's "undo". Refused, with the reason, when the user is on
        the base model already or the parent's files are gone."""
        u = self.user(user)
        db = self.store.db
        live = records.live_version(db, u.id)
        if live == 0:
            raise InvalidInput("nothing to undo: your assistant is the base model already")
        row = next(r for r in records.list_adapter_versions(db, u.id) if r["version"] == live)
        parent = row["parent"] or 0
        self.rollback(user, parent)
        return parent

    def pause_learning(self, user: str, paused: bool = True) -> None:
        """Stop learning from the user's clicks (paused=False: start again). Clicks made while
        paused are kept and teach once learning resumes; a round queued before the pause is
        skipped, with that reason."""
        u = self.user(user)
        if type(paused) is not bool:
            raise InvalidInput(f"paused must be true or false, not {paused!r}")
        records.set_learning_paused(self.store.db, u.id, paused)
        if not paused:
            self._clicked(u)  # clicks made while paused may be a round's worth

    def learning_paused(self, user: str) -> bool:
        return records.learning_paused(self.store.db, self.user(user).id)

    def set_conversation_learning(self, user: str, conversation_id: str, learn: bool) -> None:
        """Whether this conversation may teach the user's assistant: with learn=False its
        messages and clicks stay stored and shown, and no round ever trains on them (nor
        counts them toward the next round); True lets them teach again."""
        u = self.user(user)
        if type(learn) is not bool:
            raise InvalidInput(f"learn must be true or false, not {learn!r}")
        self._conversation(u, conversation_id)
        records.set_conversation_learn(self.store.db, conversation_id, learn)
        if learn:
            self._clicked(u)

    def conversation_learns(self, user: str, conversation_id: str) -> bool:
        """Whether this conversation of the user's teaches their assistant."""
        return bool(self._conversation(self.user(user), conversation_id)["learn"])

    def thumbs_by_version(self, user: str) -> list[dict[str, Any]]:
        """Per version of the user's assistant that wrote replies they rated (0 = the base),
        oldest first: thumbs up, thumbs down, and the share up — does each version please
        them more than the last?"""
        rows = records.thumbs_by_version(self.store.db, self.user(user).id)
        return [
            {
                "version": r["adapter_version"],
                "up": r["up"],
                "down": r["down"],
                "share_up": r["up"] / (r["up"] + r["down"]),
            }
            for r in rows
        ]

    def what_changed(self, user: str) -> list[dict[str, Any]]:
        """What each version the user's assistant adopted changed, newest first: measured when
        the release gate compared it with the version before it (`compared_with`, 0 = the
        base) on the user's own held-out questions with the same seeds (`pairs` of them), as
        sentences ("answers about 40% shorter", `assistant.traits`); `against_base`, the
        same against the base model on those questions and seeds; and one of the questions
        with both versions' replies to it (`question`, `before`, `after`)."""
        out = []
        for c in records.version_changes(self.store.db, self.user(user).id):
            out.append(
                {
                    "version": c["version"],
                    "compared_with": c["compared_with"],
                    "pairs": c["pairs"],
                    "created": c["created"],
                    "changes": _sentences(c["traits"]),
                    "against_base": _sentences(c["base_traits"]),
                    "traits": c["traits"],
                    "question": c["question"],
                    "before": c["before_text"],
                    "after": c["after_text"],
                }
            )
        return out

    def my_reasons(self, user: str) -> list[dict[str, Any]]:
        """The reasons the user gave with their standing thumbs, most given first:
        {"reason", "thumb", "count"}."""
        rows = records.reason_tally(self.store.db, self.user(user).id)
        return [{"reason": r["reason"], "thumb": r["thumb"], "count": r["n"]} for r in rows]

    def my_data(self, user: str) -> dict[str, Any]:
        """Everything kept about the user, as JSON-ready data (`storage.user_export`)."""
        return user_export.user_data(self.store.db, self.user(user).id)

    @staticmethod
    def _check_restorable(user: str, version: int, row: records.Row | None) -> None:
        """Raise unless the version may come back: it was live before and its files are whole."""
        if row is None:
            raise NotFound(f"user {user!r} has no adapter version {version}")
        if row["status"] not in ("retired", "rolled_back"):
            raise InvalidInput(
                f"version {version} is {row['status']}: only versions that were live can come back"
            )
        if row["pruned"]:
            raise InvalidInput(
                f"version {version} cannot come back: its files were pruned on {row['pruned'][:10]}"
            )
        try:
            adapter_files.verify_version(Path(row["path"]))
        except adapter_files.CorruptAdapter as e:
            raise InvalidInput(f"version {version} is damaged on disk: {e}") from e

    def trends(self, user: str) -> list[dict[str, Any]]:
        """One row per training run, oldest first: what the operator's trend plot draws."""
        u = self.user(user)
        out = []
        for run in records.list_training_runs(self.store.db, u.id):
            metrics = json.loads(run["metrics"] or "{}")
            out.append(
                {
                    "started": run["started"],
                    "finished": run["finished"],
                    "outcome": run["outcome"],
                    "version": run["version"],
                    "reason": run["reason"],
                    **metrics,
                }
            )
        return out
