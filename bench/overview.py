"""How the operator's all-users table scales: seconds to compute it for N users, and to serve
a page of it and of the feedback browser.

A database with N users is written directly (`storage.records`' tables, as the app writes
them; no model is loaded): per user 4 conversations of 5 turns, a thumb on 60% of the replies
(a third of them with a reason, some "harmful"), 5 finished rounds with KL and head accuracy,
two versions (the second live). Then, through the facade: the first computation of the table
(every user, sorted), a page of it again within `OperatorConfig.cache_seconds` (the cached
rows), the alerts, and a page of the feedback browser filtered by a reason. Repeated, medians.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from assistant import Assistant, AssistantConfig
from bench import report
from storage import records
from storage.db import Store

NAME = "overview"
CONVERSATIONS, TURNS, THUMBED, RUNS = 4, 5, 0.6, 5


def synthetic_users(db_path: Path, users: int, seed: int = 0) -> int:
    """Write `users` users with their conversations, thumbs, rounds and versions; returns
    how many thumbs were written."""
    rng = random.Random(seed)
    tables: dict[str, list[dict[str, Any]]] = {
        t: []
        for t in ("users", "conversations", "messages", "feedback", "training_runs")
        + ("adapter_versions",)
    }
    for i in range(users):
        uid = records.new_id()
        tables["users"].append(
            {"id": uid, "name": f"user{i:05d}", "password_hash": None, "role": "user"}
            | {"created": "2026-01-01T00:00:00", "learning_paused": 0}
        )
        for c in range(CONVERSATIONS):
            cid = records.new_id()
            tables["conversations"].append(
                {"id": cid, "user_id": uid, "title": f"question {c}", "created": "2026-01-01"}
                | {"learn": 1}
            )
            for k in range(TURNS):
                reply = records.new_id()
                common = {"conversation_id": cid, "user_id": uid, "created": "2026-01-01"}
                tables["messages"] += [
                    common | {"id": records.new_id(), "seq": 2 * k, "role": "user", "text": "q"},
                    common
                    | {"id": reply, "seq": 2 * k + 1, "role": "assistant", "text": "a reply"}
                    | {"adapter_version": rng.choice([0, 1, 2])},
                ]
                if rng.random() < THUMBED:
                    reason = rng.choice([None, None, "too long", "harmful", "clear", None])
                    day = rng.randint(1, 9)
                    tables["feedback"].append(
                        {"message_id": reply, "user_id": uid, "thumb": rng.choice([1, -1])}
                        | {"reason": reason, "updated": f"2026-01-0{day}"}
                    )
        for r in range(RUNS):
            metrics = {"kl": rng.random() * 40, "heldout_accuracy": rng.random()}
            tables["training_runs"].append(
                {"id": records.new_id(), "user_id": uid, "started": f"2026-01-0{r + 1}"}
                | {"finished": f"2026-01-0{r + 1}", "version": r, "reason": "measured"}
                | {"outcome": rng.choice(["accepted", "rejected"]), "metrics": json.dumps(metrics)}
            )
        for v in (1, 2):
            tables["adapter_versions"].append(
                {"id": records.new_id(), "user_id": uid, "version": v, "path": f"v{v}"}
                | {"parent": v - 1 or None, "status": "live" if v == 2 else "retired"}
                | {"metrics": json.dumps({"red_team_offensive_rate": rng.random() / 5})}
                | {"reason": None, "created": "2026-01-02"}
            )
    store = Store(db_path)
    for table, rows in tables.items():
        store.db[table].insert_all(rows, batch_size=5000, alter=False)
    store.close()
    return len(tables["feedback"])


def seconds(call: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run(args: argparse.Namespace, options: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"attune bench {NAME}")
    parser.add_argument("--users", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--repeats", type=int, default=3)
    opts = parser.parse_args(options)
    rows = []
    for n in opts.users:
        data = Path(args.data_dir) / f"bench-{NAME}-{n}"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        thumbs = synthetic_users(data / "attune.db", n)
        with Assistant(AssistantConfig(data_dir=data)) as asst:

            def first() -> Any:
                asst._overview_cache = None  # what a refresh after the cache time does
                return asst.users_overview("share_up_change", descending=True)

            computed = seconds(first, opts.repeats)
            cached = seconds(lambda: asst.users_overview("share_up_change", True, 3), 5)
            alerts = len(asst.alerts())
            browse = seconds(lambda: asst.feedback_browser(reason_contains="harm"), opts.repeats)
        rows.append([n, thumbs, round(computed, 3), round(cached * 1e6, 1), round(browse, 3)])
        rows[-1].append(alerts)
        print(f"  {n} users: {rows[-1]}", flush=True)
    command = f"attune bench --data-dir {args.data_dir} {NAME} " + " ".join(options)
    headers = [
        "users",
        "thumbs",
        "table computed (s)",
        "a page, cached (µs)",
        "feedback browser page (s)",
        "alerts raised",
    ]
    report.write(NAME, command.strip(), headers, rows, {"repeats": opts.repeats})
    return 0
