"""Operator views: what an operator sees across users (safety report, feedback export)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from assistant.config import (
    HARMFUL_REASON,
)
from assistant.core import AssistantCore
from storage import export as feedback_export
from storage import records


class OperatorViews(AssistantCore):
    """The `Assistant`'s methods for operators."""

    def safety_report(self, replies: int = 2000) -> dict[str, list[dict[str, Any]]]:
        """For operators: per user, how often their replies are offensive (the safety floor's
        classifier, over everyone's newest `replies` replies), how many they flagged harmful,
        and the live version's offensive rate on the red-team prompts at its gate; and the
        flagged replies themselves (by the classifier or by their user), newest first."""
        from online_rl import safety

        config = self.trainer.config.safety
        rows = records.recent_replies(self.store.db, replies)
        scores = safety.offensive_probability([r["text"] for r in rows])
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
        users = []
        for u in self.users():
            mine = [p for r, p in zip(rows, scores, strict=True) if r["user"] == u.name]
            live = next((v for v in self.versions(u.name) if v["status"] == "live"), None)
            users.append(
                {
                    "user": u.name,
                    "replies": len(mine),
                    "offensive_rate": (
                        sum(p >= config.threshold for p in mine) / len(mine) if mine else None
                    ),
                    "flagged_harmful": sum(
                        f["flagged_by_user"] for f in flagged if f["user"] == u.name
                    ),
                    "live_red_team_rate": (
                        live["metrics"].get("red_team_offensive_rate") if live else None
                    ),
                }
            )
        return {"users": users, "flagged": flagged}

    def export(self, out_dir: str | Path, user: str | None = None) -> dict[str, int]:
        """Write the collected feedback as JSONL that TRL's trainers read; returns row counts."""
        user_id = self.user(user).id if user is not None else None
        return feedback_export.write_jsonl(self.store.db, Path(out_dir), user_id)
