"""Operator views: what an operator sees across users — every user at a glance with alerts,
the feedback browser, the safety report, the feedback export."""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from assistant.alerts import alerts_for
from assistant.config import HARMFUL_REASON
from assistant.core import AssistantCore, clean_text
from assistant.errors import InvalidInput

if TYPE_CHECKING:
    from online_rl.config import TrainingConfig
from storage import export as feedback_export
from storage import overview, records

log = logging.getLogger(__name__)
MAX_FILTER_CHARS = 200


MAX_PAGE = 1_000_000


def _page_number(page: Any) -> int:
    if type(page) is not int or not 1 <= page <= MAX_PAGE:
        raise InvalidInput(f"page must be a whole number from 1 to {MAX_PAGE:,}, not {page!r}")
    return page


def _filter_text(text: Any, what: str) -> str:
    """A filter's words: "" for none; else checked like any typed text."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return ""
    return clean_text(text, what, MAX_FILTER_CHARS)


def _share_up_change(row: dict[str, Any]) -> float | None:
    live, before = row["share_up_live"], row["share_up_before"]
    return None if live is None or before is None else live - before


def _column(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda row: row[name]


# what the operator's table sorts by -> the value of a row
OVERVIEW_SORTS: dict[str, Callable[[dict[str, Any]], Any]] = {
    name: _column(name)
    for name in (
        "user",
        "live_version",
        "live_since",
        "last_round",
        "last_outcome",
        "kl",
        "head_accuracy",
        "share_up_live",
        "clicks_waiting",
        "flagged",
        "refused_recently",
    )
} | {"share_up_change": _share_up_change}


def _paged(rows: list[Any], total: int, page: int, size: int) -> dict[str, Any]:
    return {"rows": rows, "total": total, "page": page, "pages": max(1, math.ceil(total / size))}


class OperatorViews(AssistantCore):
    """The `Assistant`'s methods for operators."""

    def _training_settings(self) -> TrainingConfig:
        """The settings rounds use, read without making the trainer (which loads a model)."""
        from online_rl.config import TrainingConfig

        return self._training_config or TrainingConfig()

    def _kl_budget(self) -> float:
        return self._training_settings().gate.kl_budget

    def _overview(self) -> list[records.Row]:
        """Every user's overview row, by name, each with its alerts: one computation reused
        for `OperatorConfig.cache_seconds`, whatever the table is sorted or filtered by (a 5 s
        refresh of thousands of users does not read every click each time)."""
        now = time.monotonic()
        cached = self._overview_cache
        if cached is not None and now - cached[0] < self.config.operator.cache_seconds:
            return cached[1]
        budget, alert_config = self._kl_budget(), self.config.operator.alerts
        rows = [
            {**r, "alerts": alerts_for(r, budget, alert_config)}
            for r in overview.user_overview(self.store.db, HARMFUL_REASON)
        ]
        self._overview_cache = (now, rows)
        return rows

    def users_overview(
        self, sort: str = "user", descending: bool = False, page: int = 1, name_contains: str = ""
    ) -> dict[str, Any]:
        """For operators, one page of every user at a glance: live version and when it was
        made, the latest round's outcome, reason, KL and reward-head accuracy, the thumbs-up
        share on the live version's replies and on its parent's, clicks waiting for the next
        round, replies the user flagged harmful, and the alerts each raises
        (`assistant.alerts`). `sort`: a key of OVERVIEW_SORTS (ties by name, missing values
        last). Returns {"rows", "total", "page", "pages"}."""
        if sort not in OVERVIEW_SORTS:
            raise InvalidInput(f"sort must be one of {', '.join(OVERVIEW_SORTS)}, not {sort!r}")
        if type(descending) is not bool:
            raise InvalidInput(f"descending must be true or false, not {descending!r}")
        page = _page_number(page)
        words = _filter_text(name_contains, "name filter")
        rows = [r for r in self._overview() if words.lower() in r["user"].lower()]
        key = OVERVIEW_SORTS[sort]
        present = [r for r in rows if key(r) is not None]
        present.sort(key=key, reverse=descending)  # stable: ties stay by name
        rows = present + [r for r in rows if key(r) is None]
        size = self.config.operator.page_size
        return _paged(rows[(page - 1) * size : page * size], len(rows), page, size)

    def alerts(self) -> list[dict[str, str]]:
        """Every user's alerts, one row each: {"user", "alert"}, users by name."""
        return [{"user": r["user"], "alert": a} for r in self._overview() for a in r["alerts"]]

    def _round_finished(self, user_id: str) -> None:
        """After a round: its user's alerts go to the server log (as the dashboard shows them)."""
        try:
            for row in overview.user_overview(self.store.db, HARMFUL_REASON, user_id):
                for alert in alerts_for(row, self._kl_budget(), self.config.operator.alerts):
                    log.warning("alert for user %s: %s", row["user"], alert)
        except Exception:  # the round is done and recorded; a failed alert must not undo it
            log.exception("checking alerts after a round failed")

    def feedback_browser(
        self,
        user: str = "",
        thumb: int | None = None,
        reason_contains: str = "",
        version: int | None = None,
        page: int = 1,
    ) -> dict[str, Any]:
        """For operators, every standing thumb, newest first, with its reason, the reply and
        the version that wrote it, and its conversation: filtered by user (exact name),
        thumb (1 / -1), words in the reason, version; paged. {"rows", "total", "page", "pages"}."""
        user = self.user(user).name if user else ""
        if thumb is not None and (type(thumb) is not int or thumb not in (1, -1)):
            raise InvalidInput(f"thumb must be 1 or -1 (or none for both), not {thumb!r}")
        if version is not None and (type(version) is not int or version < 0):
            raise InvalidInput(f"version must be a whole number >= 0, not {version!r}")
        page = _page_number(page)
        size = self.config.operator.page_size
        rows, total = overview.feedback_rows(
            self.store.db,
            user,
            thumb,
            _filter_text(reason_contains, "reason filter"),
            version,
            limit=size,
            offset=(page - 1) * size,
        )
        return _paged(rows, total, page, size)

    def safety_report(self, replies: int = 2000) -> dict[str, list[dict[str, Any]]]:
        """For operators: per user, how often their replies are offensive (the safety floor's
        classifier, over everyone's newest `replies` replies), how many they flagged harmful,
        and the live version's offensive rate on the red-team prompts at its gate; and the
        flagged replies themselves (by the classifier or by their user), newest first."""

        config = self._training_settings().safety
        rows = records.recent_replies(self.store.db, replies)
        scores = self._offensive_probabilities(rows)
        by_user = [r["reason"] == HARMFUL_REASON and r["thumb"] == -1 for r in rows]
        flagged = [
            {
                "user": r["user"],
                "created": r["created"],
                "version": r["adapter_version"],
                "classifier": round(p, 2),
                "flagged_by_user": harmful,
                "text": r["text"],
            }
            for r, p, harmful in zip(rows, scores, by_user, strict=True)
            if p >= config.threshold or harmful
        ]
        mine: dict[str, list[float]] = {}  # each user's scores, in one pass over the rows
        for r, p in zip(rows, scores, strict=True):
            mine.setdefault(r["user"], []).append(p)
        harmful_by = Counter(f["user"] for f in flagged if f["flagged_by_user"])
        live_rates = records.live_red_team_rates(self.store.db)
        users = []
        for u in self.users():
            theirs = mine.get(u.name, [])
            users.append(
                {
                    "user": u.name,
                    "replies": len(theirs),
                    "offensive_rate": (
                        sum(p >= config.threshold for p in theirs) / len(theirs) if theirs else None
                    ),
                    "flagged_harmful": harmful_by[u.name],
                    "live_red_team_rate": live_rates.get(u.name),
                }
            )
        return {"users": users, "flagged": flagged}

    def _offensive_probabilities(self, rows: list[records.Row]) -> list[float]:
        """The classifier's score per reply; each reply is classified once (replies do not
        change), so a refresh classifies only what arrived since the last one."""
        from online_rl import safety

        new = [r for r in rows if r["id"] not in self._offensive_scores]
        if new:
            scored = safety.offensive_probability([r["text"] for r in new])
            self._offensive_scores.update(zip((r["id"] for r in new), scored, strict=True))
        wanted = {r["id"] for r in rows}
        self._offensive_scores = {k: v for k, v in self._offensive_scores.items() if k in wanted}
        return [self._offensive_scores[r["id"]] for r in rows]

    def export(self, out_dir: str | Path, user: str | None = None) -> dict[str, int]:
        """Write the collected feedback as JSONL that TRL's trainers read; returns row counts."""
        user_id = self.user(user).id if user is not None else None
        return feedback_export.write_jsonl(self.store.db, Path(out_dir), user_id)
