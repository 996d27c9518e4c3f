"""Helpers of the isolation and bad-input suites: a dump of every table to compare before and
after, and events called through Gradio's queue with any body, as a page (or a hostile script)
would send it."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from sqlite_utils import Database

Row = tuple[tuple[str, Any], ...]
Snapshot = dict[str, frozenset[Row]]


def snapshot(db: Database) -> Snapshot:
    """Every row of every table (the migrations' own table included), comparable with ==."""
    return {t: frozenset(tuple(sorted(r.items())) for r in db[t].rows) for t in db.table_names()}


@dataclass(frozen=True)
class Change:
    """Rows added and removed per table between two snapshots (an update is one of each)."""

    added: dict[str, list[dict[str, Any]]]
    removed: dict[str, list[dict[str, Any]]]


def changes(before: Snapshot, after: Snapshot) -> Change:
    assert set(before) == set(after), f"tables changed: {set(before) ^ set(after)}"
    added = {t: [dict(r) for r in after[t] - before[t]] for t in after}
    removed = {t: [dict(r) for r in before[t] - after[t]] for t in before}
    return Change({t: r for t, r in added.items() if r}, {t: r for t, r in removed.items() if r})


def fn_indexes(session: httpx.Client) -> dict[str, int]:
    """Each event's index by its api name, from the page's config (private events included)."""
    return {d["api_name"]: d["id"] for d in session.get("config").json()["dependencies"]}


def event_body(fn_index: int, data: list[Any], event_data: Any = None) -> tuple[bytes, str]:
    """The JSON a page sends to join the queue for one event, and its session hash."""
    session_hash = uuid.uuid4().hex
    body = {
        "data": data,
        "fn_index": fn_index,
        "session_hash": session_hash,
        "event_data": event_data,
    }
    return json.dumps(body).encode(), session_hash  # ensure_ascii: "\ud800" travels escaped


@dataclass(frozen=True)
class Answer:
    """How one queued call ended: an error sentence (or an HTTP refusal), or its outputs."""

    error: str | None
    output: Any = None


def queue_call(session: httpx.Client, body: bytes, session_hash: str) -> Answer:
    """Join the queue with `body` as sent (bytes: broken ones too) and wait for the result."""
    joined = session.post(
        "gradio_api/queue/join", content=body, headers={"content-type": "application/json"}
    )
    if joined.status_code != 200:
        return Answer(f"HTTP {joined.status_code}: {joined.text}")
    params = {"session_hash": session_hash}
    with session.stream("GET", "gradio_api/queue/data", params=params) as events:
        for line in events.iter_lines():
            message = json.loads(line.removeprefix("data:")) if line.startswith("data:") else {}
            if message.get("msg") == "process_completed":
                if message["success"]:
                    return Answer(None, message["output"]["data"])
                return Answer(str(message["output"].get("error")))
    raise AssertionError("the queued event never completed")


def call_event(
    session: httpx.Client, fn_index: int, data: list[Any], event_data: Any = None
) -> Answer:
    """Call one event (private ones too) by index, with the browser's event data if any."""
    return queue_call(session, *event_body(fn_index, data, event_data))
