"""Operator tab, across users: every user at a glance (sortable, paged, filtered), the
alerts, and the feedback browser with its conversations and an export.

Every handler checks the operator role server-side (`identity.operator`) before it reads
anything; the numbers come from the facade (`Assistant.users_overview`, `alerts`,
`feedback_browser`), which computes them from indexed queries, reused for a few seconds.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from assistant import Assistant
from ui import downloads
from ui.errors import readable_errors
from ui.identity import is_operator, operator
from ui.panel import when

SORTS = {  # what the operator picks -> the facade's sort key
    "user": "user",
    "live version": "live_version",
    "live since": "live_since",
    "last round": "last_round",
    "last outcome": "last_outcome",
    "KL": "kl",
    "head accuracy": "head_accuracy",
    "thumbs up (live)": "share_up_live",
    "thumbs-up change": "share_up_change",
    "clicks waiting": "clicks_waiting",
    "flagged": "flagged",
    "refused lately": "refused_recently",
}
OVERVIEW_COLUMNS = [
    "user",
    "live",
    "live since",
    "last round",
    "outcome",
    "reason",
    "KL",
    "head acc.",
    "thumbs up (live)",
    "thumbs up (before)",
    "clicks waiting",
    "flagged",
    "alerts",
]
THUMB_FILTERS = {"both": None, "up": 1, "down": -1}
FEEDBACK_COLUMNS = ["clicked", "user", "thumb", "reason", "version", "conversation", "reply"]
NO_ALERTS = "No alerts: no user's training needs a look right now."
PICK_A_ROW = "Click a row of the feedback table to read its conversation here."


def _share(share: float | None, n: int) -> str:
    return f"{share:.0%} of {n}" if share is not None else ""


def _number(value: float | None, digits: int) -> float | None:
    return round(value, digits) if value is not None else None


def overview_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The all-users table as shown: one line per user, alerts as one short cell."""
    shown = [
        [
            r["user"] + (" (paused)" if r["paused"] else ""),
            r["live_version"],
            when(r["live_since"]) if r["live_since"] else "",
            when(r["last_round"]) if r["last_round"] else "",
            r["last_outcome"] or "",
            r["last_reason"] or "",
            _number(r["kl"], 1),
            _number(r["head_accuracy"], 2),
            _share(r["share_up_live"], r["thumbs_live"]),
            _share(r["share_up_before"], r["thumbs_before"]),
            r["clicks_waiting"],
            r["flagged"],
            len(r["alerts"]),
        ]
        for r in rows
    ]
    return pd.DataFrame(shown, columns=OVERVIEW_COLUMNS)


def alerts_text(alerts: list[dict[str, str]]) -> str:
    if not alerts:
        return NO_ALERTS
    lines = [f"- **{a['user']}**: {a['alert']}" for a in alerts]
    return f"**Alerts ({len(alerts)})**\n\n" + "\n".join(lines)


def page_note(page: dict[str, Any], what: str) -> str:
    return f"Page {page['page']} of {page['pages']} · {page['total']} {what}"


def _page(value: float | None) -> int:
    """The page asked for; 1 for none. The facade refuses one past its limit, readably."""
    if value is None or value != value or value in (float("inf"), float("-inf")):
        return 1
    return int(value) if value >= 1 and int(value) == value else 1


def _version(typed: str | None) -> int | None:
    """The version filter as typed: empty for any, else a whole number (the facade checks it)."""
    typed = (typed or "").strip()
    if not typed:
        return None
    if not typed.isdigit():
        raise gr.Error(f"Version must be a whole number, not {typed!r}.", print_exception=False)
    return int(typed)


def feedback_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    shown = [
        [
            when(r["clicked"]),
            r["user"],
            "up" if r["thumb"] == 1 else "down",
            r["reason"] or "",
            r["version"],
            r["conversation"] + ("" if r["teaches"] else " (does not teach)"),
            r["reply"],
        ]
        for r in rows
    ]
    return pd.DataFrame(shown, columns=FEEDBACK_COLUMNS)


def message_line(message: dict[str, Any]) -> str:
    """One stored message as the feedback browser shows it: who, which version, the thumb."""
    who = message["role"]
    if who == "assistant":
        who += f" (v{message['adapter_version']})"
    thumb = {1: " (thumbs up)", -1: " (thumbs down)"}.get(message["thumb"], "")
    return f"**{who}**{thumb}: {message['text']}"


def clicked_row(event: gr.SelectData, rows_on_page: int) -> int:
    """The row a table click names, if it is still on the page shown."""
    row = event.index[0] if isinstance(event.index, list | tuple) else event.index
    if not isinstance(row, int) or not 0 <= row < rows_on_page:
        raise gr.Error("That row is not on this page any more.", print_exception=False)
    return row


class Overview:
    def __init__(self, asst: Assistant):
        self.asst = asst

    def table(
        self,
        sort: str | None,
        descending: bool,
        page: float | None,
        name_contains: str | None,
        request: gr.Request,
    ) -> tuple[pd.DataFrame, str, str, list[str]]:
        """(the all-users table, its page line, the alerts, the user names on this page)."""
        with readable_errors():
            operator(self.asst, request)
            shown = self.asst.users_overview(
                SORTS.get(sort or "user", "user"),
                bool(descending),
                _page(page),
                name_contains or "",
            )
            names = [r["user"] for r in shown["rows"]]
            return (
                overview_frame(shown["rows"]),
                page_note(shown, "users"),
                alerts_text(self.asst.alerts()),
                names,
            )

    def first_table(
        self,
        sort: str | None,
        descending: bool,
        page: float | None,
        name_contains: str | None,
        request: gr.Request,
    ) -> tuple[Any, ...]:
        """The table on page load for operators; nothing (and no error) for others."""
        if not is_operator(self.asst, request):
            return (gr.skip(),) * 4
        return self.table(sort, descending, page, name_contains, request)

    def pick(self, names: list[str], request: gr.Request, event: gr.SelectData) -> str:
        """A click on a row of the all-users table picks that user for the dashboard."""
        with readable_errors():
            operator(self.asst, request)
            return names[clicked_row(event, len(names or []))]

    def feedback(
        self,
        user: str | None,
        thumb: str | None,
        reason_contains: str | None,
        version: str | None,
        page: float | None,
        request: gr.Request,
    ) -> tuple[pd.DataFrame, str, list[dict[str, str]]]:
        """(the feedback table, its page line, each row's user and conversation id)."""
        with readable_errors():
            operator(self.asst, request)
            shown = self.asst.feedback_browser(
                (user or "").strip(),
                THUMB_FILTERS.get(thumb or "both"),
                reason_contains or "",
                _version(version),
                _page(page),
            )
            links = [
                {"user": r["user"], "conversation_id": r["conversation_id"]} for r in shown["rows"]
            ]
            return feedback_frame(shown["rows"]), page_note(shown, "thumbs"), links

    def conversation(
        self, links: list[dict[str, str]], request: gr.Request, event: gr.SelectData
    ) -> str:
        """The conversation of the clicked feedback row, as stored, with each reply's thumb."""
        with readable_errors():
            operator(self.asst, request)
            link = links[clicked_row(event, len(links or []))]
            messages = self.asst.messages(link["user"], link["conversation_id"])
        lines = [message_line(m) for m in messages]
        return f"Conversation of **{link['user']}**\n\n" + "\n\n".join(lines)

    def export(self, user: str | None, request: gr.Request) -> gr.File:
        """The feedback (one user's, or everyone's) as TRL's JSONL files, zipped."""
        with readable_errors():
            operator(self.asst, request)
            user = (user or "").strip() or None
            with tempfile.TemporaryDirectory() as folder:
                counts = self.asst.export(folder, user)
                buffer = io.BytesIO()
                with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
                    for path in sorted(Path(folder).iterdir()):
                        archive.write(path, path.name)
            offered = downloads.offer(f"attune-feedback-{user or 'all'}.zip", buffer.getvalue())
        gr.Info(", ".join(f"{n} {kind}" for kind, n in counts.items()) + " exported")
        return gr.File(value=str(offered), visible=True)
