"""Load: simulated users on the public API at once, chatting, rating and choosing while
training rounds run in the background; then every row checked against what the clients sent.

Each user is one `gradio_client.Client` signed in with its own password, in its own thread.
A user's turns: a chat reply rated thumbs up or down (every `retract_every`-th rating is
retracted and given again, to exercise the upsert), and every `compare_every`-th turn an A/B
comparison and a choice. Afterwards the database must hold exactly what was sent: each user's
questions (the same texts), their replies (1 per chat turn, 2 per comparison), one feedback
row per rated reply with its final thumb, one decided pair per choice with its winner;
`PRAGMA integrity_check` must say ok; no request may fail.

`attune bench load` runs it on the real model (16 users x 20 turns) and writes
bench/results/load.json; `tests/reliability/test_load.py` runs a smaller one on the tiny model.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from assistant import Assistant
from bench.fresh import open_fresh
from bench.questions import EVERYDAY
from bench.report import RESULTS, percentile
from online_rl.scheduler import SchedulerConfig
from storage import records

QUESTIONS = EVERYDAY[:6]
WINNERS = ("a", "b", "tie", "both_bad")


@dataclass(frozen=True)
class LoadSettings:
    users: int = 16
    turns: int = 20
    compare_every: int = 4  # every 4th turn is an A/B comparison (two answers, one choice)
    retract_every: int = 5  # every 5th rating is retracted, then given again
    max_new_tokens: int = 16
    seed: int = 0


@dataclass
class Sent:
    """What one client sent and saw: the database must match it exactly."""

    user: str
    chat_turns: int = 0
    compares: int = 0
    questions: list[str] = field(default_factory=list)  # every user turn, in the order sent
    thumbs: dict[str, int] = field(default_factory=dict)  # reply id -> final thumb
    choices: dict[str, str] = field(default_factory=dict)  # pair id -> winner
    seconds: dict[str, list[float]] = field(default_factory=dict)  # endpoint -> latencies
    errors: list[str] = field(default_factory=list)


def password_of(user: str) -> str:
    return f"{user}-load-password"


def user_names(settings: LoadSettings) -> list[str]:
    return [f"load{i:02d}" for i in range(settings.users)]


def add_users(asst: Assistant, settings: LoadSettings) -> None:
    for name in user_names(settings):
        asst.add_user(name, password=password_of(name))


def simulate(url: str, user: str, settings: LoadSettings) -> Sent:
    """One user's session: `settings.turns` turns over the public API."""
    from gradio_client import Client

    sent = Sent(user)
    rng = random.Random(f"{settings.seed}-{user}")

    def call(endpoint: str, *args):
        start = time.perf_counter()
        result = client.predict(*args, api_name=f"/{endpoint}")
        sent.seconds.setdefault(endpoint, []).append(time.perf_counter() - start)
        return result

    try:
        client = Client(url, auth=(user, password_of(user)), verbose=False)
    except Exception as e:  # a refused sign-in is one user's failure, reported with the rest
        sent.errors.append(f"sign-in: {type(e).__name__}: {e}")
        return sent
    conversation = ""
    ratings = 0
    for turn in range(settings.turns):
        question = f"{rng.choice(QUESTIONS)} (turn {turn})"
        try:
            if turn % settings.compare_every == settings.compare_every - 1:
                _a, _b, pair_id, *_ = call("compare", question)
                sent.questions.append(question)
                sent.compares += 1
                winner = rng.choice(WINNERS)
                call("choose", pair_id, winner)
                sent.choices[pair_id] = winner
                continue
            *_, reply = call("chat", question, conversation)
            sent.questions.append(question)
            conversation = reply["conversation_id"]
            sent.chat_turns += 1
            thumb = rng.choice((1, -1))
            call("rate", reply["message_id"], thumb, "")
            ratings += 1
            if ratings % settings.retract_every == 0:
                call("rate", reply["message_id"], 0, "")
                call("rate", reply["message_id"], thumb, "")
            sent.thumbs[reply["message_id"]] = thumb
        except Exception as e:  # counted, not raised: the run reports every failure
            sent.errors.append(f"turn {turn}: {type(e).__name__}: {e}")
    return sent


def check(asst: Assistant, sent: list[Sent]) -> list[str]:
    """Every difference between the database and what the clients sent (empty: none)."""
    db = asst.store.db
    problems = []
    for s in sent:
        user_id = asst.user(s.user).id
        said = sorted(
            r["text"]
            for r in db.query(
                "select text from messages where user_id = ? and role = 'user'", [user_id]
            )
        )
        if said != sorted(s.questions):
            problems.append(f"{s.user}: {len(said)} user turns stored, {len(s.questions)} sent")
        replies = db.execute(
            "select count(*) from messages where user_id = ? and role = 'assistant'", [user_id]
        ).fetchone()[0]
        expected = s.chat_turns + 2 * s.compares
        if replies != expected:
            problems.append(f"{s.user}: {replies} replies stored, {expected} answered")
        feedback = {
            r["message_id"]: r["thumb"]
            for r in db.query("select message_id, thumb from feedback where user_id = ?", [user_id])
        }
        if feedback != s.thumbs:
            lost = set(s.thumbs) - set(feedback)
            extra = set(feedback) - set(s.thumbs)
            wrong = {m for m in set(s.thumbs) & set(feedback) if s.thumbs[m] != feedback[m]}
            problems.append(
                f"{s.user}: feedback rows differ: {len(lost)} lost, {len(extra)} extra, "
                f"{len(wrong)} with another thumb"
            )
        decided = {p["id"]: p["winner"] for p in records.decided_pairs(db, user_id)}
        if decided != s.choices:
            problems.append(f"{s.user}: {len(decided)} decided pairs stored, {len(s.choices)} sent")
    integrity = db.execute("pragma integrity_check").fetchone()[0]
    if integrity != "ok":
        problems.append(f"integrity_check: {integrity}")
    return problems


def run_load(asst: Assistant, url: str, settings: LoadSettings) -> dict:
    """All users at once; returns the report (errors, problems, latencies, rounds)."""
    names = user_names(settings)
    started = records.now()
    clock = time.perf_counter()
    with ThreadPoolExecutor(len(names)) as pool:
        sent = list(pool.map(lambda n: simulate(url, n, settings), names))
    wall = time.perf_counter() - clock
    during = [
        r["outcome"]
        for r in asst.store.db.query(
            "select outcome from training_runs where started >= ?", [started]
        )
    ]
    latencies: dict[str, list[float]] = {}
    for s in sent:
        for endpoint, xs in s.seconds.items():
            latencies.setdefault(endpoint, []).extend(xs)
    return {
        "settings": asdict(settings),
        "wall_seconds": round(wall, 1),
        "requests": sum(len(xs) for xs in latencies.values()),
        "errors": [f"{s.user} {e}" for s in sent for e in s.errors],
        "problems": check(asst, sent),
        "sent": {
            "chat_turns": sum(s.chat_turns for s in sent),
            "comparisons": sum(s.compares for s in sent),
            "feedback_rows": sum(len(s.thumbs) for s in sent),
            "choices": sum(len(s.choices) for s in sent),
        },
        "training_runs_during_load": {o: during.count(o) for o in sorted(set(during), key=str)},
        "latency_seconds": {
            endpoint: {
                "n": len(xs),
                "p50": statistics.median(xs),
                "p95": percentile(xs, 95),
            }
            for endpoint, xs in sorted(latencies.items())
        },
    }


def print_report(report: dict) -> None:
    print(f"{'endpoint':<10}{'n':>6}{'p50 s':>9}{'p95 s':>9}")
    for endpoint, lat in report["latency_seconds"].items():
        print(f"{endpoint:<10}{lat['n']:>6}{lat['p50']:>9.2f}{lat['p95']:>9.2f}")
    print(
        f"{report['requests']} requests in {report['wall_seconds']} s; "
        f"errors {len(report['errors'])}; database problems {len(report['problems'])}; "
        f"training runs during the load: {report['training_runs_during_load']}"
    )
    for line in report["errors"][:10] + report["problems"][:10]:
        print("  " + line)


def run(args: argparse.Namespace, options: list[str]) -> int:
    from ui.app import build_app
    from ui.config import ServeConfig
    from ui.serve import free_port, launch

    parser = argparse.ArgumentParser(prog="attune bench load")
    defaults = LoadSettings()
    parser.add_argument("--users", type=int, default=defaults.users)
    parser.add_argument("--turns", type=int, default=defaults.turns)
    parser.add_argument("--tokens", type=int, default=defaults.max_new_tokens)
    parser.add_argument("--out", default=str(RESULTS / "load.json"))
    opts = parser.parse_args(options)
    settings = LoadSettings(users=opts.users, turns=opts.turns, max_new_tokens=opts.tokens)

    asst = open_fresh(args, "load", background=True, scheduler=SchedulerConfig())
    add_users(asst, settings)
    config = ServeConfig(port=free_port(), max_new_tokens=settings.max_new_tokens)
    app = build_app(asst, config)
    try:
        url = launch(app, asst, config, block=False)
        report = run_load(asst, url, settings)
        report |= {
            "command": "attune bench load " + " ".join(options),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}, device {asst.base.device}",
            "model": args.model,
        }
        print_report(report)
        out = Path(opts.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))
        print(f"wrote {out}")
    finally:
        app.close()
        clock = time.perf_counter()
        asst.close()  # waits for the round in progress, if any
        print(f"closed in {time.perf_counter() - clock:.1f} s")
    return 0 if not report["errors"] and not report["problems"] else 1
