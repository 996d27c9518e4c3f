"""`export` writes what TRL's trainers read: conversational preference and unpaired rows."""

from __future__ import annotations

import json
from pathlib import Path

from assistant import Assistant
from tests.conftest import SHORT


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_export_formats(asst: Assistant, alice: str, bob: str, tmp_path: Path) -> None:
    first = asst.chat(alice, "hello", **SHORT)
    asst.rate(alice, first.id, 1)
    second = asst.chat(alice, "and more", first.conversation_id, **SHORT)
    asst.rate(alice, second.id, -1, reason="too vague")
    retracted = asst.chat(alice, "never mind", **SHORT)
    asst.rate(alice, retracted.id, 1)
    asst.rate(alice, retracted.id, 0)
    pair = asst.compare(alice, "which?", **SHORT)
    asst.choose(alice, pair.id, "b")
    tie = asst.compare(alice, "tie?", **SHORT)
    asst.choose(alice, tie.id, "tie")
    bad = asst.compare(alice, "both bad?", **SHORT)
    asst.choose(alice, bad.id, "both_bad")
    asst.compare(alice, "undecided", **SHORT)
    asst.rate(bob, asst.chat(bob, "bob's", **SHORT).id, 1)

    counts = asst.export(tmp_path / "out", user=alice)
    assert counts == {"preference": 1, "unpaired": 4}
    (preference,) = read(tmp_path / "out" / "preference.jsonl")
    assert preference == {
        "prompt": [{"role": "user", "content": "which?"}],
        "chosen": [{"role": "assistant", "content": pair.b.text}],
        "rejected": [{"role": "assistant", "content": pair.a.text}],
    }
    unpaired = read(tmp_path / "out" / "unpaired.jsonl")
    assert [row["label"] for row in unpaired] == [True, False, False, False]
    assert unpaired[1]["prompt"] == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": first.text},
        {"role": "user", "content": "and more"},
    ]
    assert unpaired[1]["completion"] == [{"role": "assistant", "content": second.text}]
    assert {r["completion"][0]["content"] for r in unpaired[2:]} == {bad.a.text, bad.b.text}

    everyone = asst.export(tmp_path / "all")
    assert everyone == {"preference": 1, "unpaired": 5}
