"""Feedback as JSONL in the conversational formats TRL's trainers read.

- preference.jsonl: {"prompt": [turns], "chosen": [reply], "rejected": [reply]} from decided
  A/B pairs (DPOTrainer, RewardTrainer). Ties carry no preference and are left out.
- unpaired.jsonl: {"prompt": [turns], "completion": [reply], "label": bool} from thumbs
  (KTOTrainer); both answers of a "both bad" pair are written here as label false.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from storage import records


def _turns(rows: list[records.Row]) -> list[dict[str, str]]:
    return [{"role": r["role"], "content": r["text"]} for r in rows]


def _reply(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def preference_rows(db: Database, user_id: str | None) -> list[dict[str, Any]]:
    rows = []
    for pair in records.decided_pairs(db, user_id):
        if pair["winner"] not in ("a", "b"):
            continue
        a = records.get_message(db, pair["answer_a_id"])
        b = records.get_message(db, pair["answer_b_id"])
        chosen, rejected = (a, b) if pair["winner"] == "a" else (b, a)
        prompt = records.context_before(db, pair["conversation_id"], a)
        rows.append(
            {
                "prompt": _turns(prompt),
                "chosen": _reply(chosen["text"]),
                "rejected": _reply(rejected["text"]),
            }
        )
    return rows


def unpaired_rows(db: Database, user_id: str | None) -> list[dict[str, Any]]:
    rows = []
    for message in records.rated_replies(db, user_id):
        prompt = records.context_before(db, message["conversation_id"], message)
        rows.append(
            {
                "prompt": _turns(prompt),
                "completion": _reply(message["text"]),
                "label": message["thumb"] > 0,
            }
        )
    for pair in records.decided_pairs(db, user_id):
        if pair["winner"] != "both_bad":
            continue
        for answer_id in (pair["answer_a_id"], pair["answer_b_id"]):
            answer = records.get_message(db, answer_id)
            prompt = records.context_before(db, pair["conversation_id"], answer)
            rows.append(
                {"prompt": _turns(prompt), "completion": _reply(answer["text"]), "label": False}
            )
    return rows


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    temp = path.with_name(f".tmp-{path.name}")
    with open(temp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(temp, path)


def write_jsonl(db: Database, out_dir: Path, user_id: str | None = None) -> dict[str, int]:
    """Write both files into `out_dir`; returns how many rows each got."""
    out_dir.mkdir(parents=True, exist_ok=True)
    preference = preference_rows(db, user_id)
    unpaired = unpaired_rows(db, user_id)
    _write(out_dir / "preference.jsonl", preference)
    _write(out_dir / "unpaired.jsonl", unpaired)
    return {"preference": len(preference), "unpaired": len(unpaired)}
