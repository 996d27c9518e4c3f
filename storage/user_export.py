"""Everything attune keeps about one user, as one JSON-ready dict: "download my data".

What a person may ask to see of an assistant that learns from them: their conversations (with
which version of their assistant wrote each reply, and whether the conversation teaches), every
thumb with its reason, every A/B choice, and their assistant's versions with why each was or was
not adopted. Password hashes and other users' rows never appear; adapter weights are not data
the user gave, so versions carry their metadata, not their files.
"""

from __future__ import annotations

import json
from typing import Any

from sqlite_utils import Database

from storage import records

FORMAT = "attune-user-data/1"


def _rows(db: Database, sql: str, user_id: str) -> list[dict[str, Any]]:
    return [dict(r) for r in db.query(sql, [user_id])]


def user_data(db: Database, user_id: str) -> dict[str, Any]:
    """The user's data (see the module docstring); the caller has checked that the user exists."""
    users = _rows(
        db, "select name, role, created, learning_paused from users where id = ?", user_id
    )
    conversations = []
    for c in records.list_conversations(db, user_id):
        messages = [
            {
                "id": m["id"],
                "role": m["role"],
                "text": m["text"],
                "created": m["created"],
                "adapter_version": m["adapter_version"],
                "pair_id": m["pair_id"],
            }
            for m in records.conversation_messages(db, c["id"])
        ]
        conversations.append(
            {
                "id": c["id"],
                "title": c["title"],
                "created": c["created"],
                "learn": bool(c["learn"]),
                "messages": messages,
            }
        )
    versions = [
        {
            "version": v["version"],
            "parent": v["parent"],
            "status": v["status"],
            "reason": v["reason"],
            "created": v["created"],
            "metrics": json.loads(v["metrics"] or "{}"),
        }
        for v in records.list_adapter_versions(db, user_id)
    ]
    return {
        "format": FORMAT,
        "exported": records.now(),
        "user": users[0] | {"learning_paused": bool(users[0]["learning_paused"])},
        "conversations": conversations,
        "feedback": _rows(
            db,
            "select message_id, thumb, reason, updated from feedback where user_id = ? "
            "order by updated",
            user_id,
        ),
        "choices": _rows(
            db,
            "select id, kind, conversation_id, prompt_message_id, answer_a_id, answer_b_id, "
            "winner, created, chosen_at from pairs where user_id = ? order by created",
            user_id,
        ),
        "versions": versions,
        "version_changes": [
            {k: c[k] for k in ("version", "compared_with", "pairs", "traits", "base_traits")}
            | {"question": c["question"]}
            | {"before": c["before_text"], "after": c["after_text"], "created": c["created"]}
            for c in records.version_changes(db, user_id)
        ],
    }
