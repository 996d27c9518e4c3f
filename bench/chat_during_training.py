"""Chat latency for one user while another user's training round runs in the background.

User "trainee" gives enough A/B feedback for a round; user "chatter" streams replies, first
with nothing else running (idle), then while trainee's rounds run back to back in a worker
thread: once with the round not yielding ("training, round not waiting":
`round_waits_for_chat_s` = 0), once with chat first (the default: the round waits between its
steps while a reply is being written). `--gap` seconds pass between chats in the training
phases (a person reading the reply), in which the round goes on. Reported per phase: time to
first token and whole-reply seconds, median and p95, and the round steps done per second.

With `--ray-cpus N` the rounds run instead on one Ray actor (a local Ray, the actor holding N
of the machine's cores; `online_rl.ray_rounds`), another process: the phases are then "idle",
"training on a Ray actor, chat first" (the default: the actor is stopped while a reply is
written here, `RayWorkers.chat_busy`) and "..., round not waiting" (the actor's steps are not
counted).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from assistant import Assistant, Delta, RayConfig
from bench import report
from bench.fresh import open_fresh
from bench.questions import EVERYDAY

QUESTIONS = EVERYDAY[:4]


def chat_once(asst: Assistant, user: str, question: str, tokens: int) -> tuple[float, float]:
    start = time.perf_counter()
    first = None
    for event in asst.chat_stream(user, question, max_new_tokens=tokens, seed=0):
        if first is None and isinstance(event, Delta):
            first = time.perf_counter() - start
    return first if first is not None else float("nan"), time.perf_counter() - start


def run(args: argparse.Namespace, options: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="attune bench chat-during-training")
    parser.add_argument("--chats", type=int, default=12, help="replies per phase")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per reply")
    parser.add_argument("--gap", type=float, default=1.0, help="seconds between chats")
    parser.add_argument("--out", default=str(report.RESULTS / "chat_during_training.json"))
    parser.add_argument(
        "--ray-cpus", type=int, default=0, help="rounds on a local Ray actor with N cores"
    )
    opts = parser.parse_args(options)

    ray = RayConfig(actors=1, cpus_per_actor=opts.ray_cpus) if opts.ray_cpus else None
    asst = open_fresh(args, "chat-during-training", ray=ray)
    asst.add_user("trainee")
    asst.add_user("chatter")
    for i, q in enumerate(QUESTIONS * 2):
        pair = asst.compare("trainee", q, max_new_tokens=48, seed=i)
        asst.choose("trainee", pair.id, "a" if len(pair.a.text) < len(pair.b.text) else "b")

    phases: dict[str, dict[str, list[float]]] = {}
    steps: dict[str, float] = {}  # round steps per second, per phase

    def measure(phase: str, gap: float) -> None:
        phases[phase] = {}
        for i in range(opts.chats):
            ttft, total = chat_once(asst, "chatter", QUESTIONS[i % len(QUESTIONS)], opts.tokens)
            phases[phase].setdefault("ttft", []).append(ttft)
            phases[phase].setdefault("reply_seconds", []).append(total)
            time.sleep(gap)

    measure("idle", 0.0)
    if ray is not None:
        return write_results(
            asst, opts, options, phases, steps, on_ray_actor(asst, measure, opts.gap)
        )
    policy = asst.trainer.worker.policy
    done = [0]
    chat_first = policy.between_steps

    def counted() -> None:
        chat_first()
        done[0] += 1

    policy.between_steps = counted
    stop, rounds, worker = rounds_back_to_back(asst)
    default_wait = asst.config.round_waits_for_chat_s
    for phase, wait in [
        ("training, round not waiting", 0.0),
        ("training, chat first", default_wait),
    ]:
        asst.config = replace(asst.config, round_waits_for_chat_s=wait)
        before, started = done[0], time.perf_counter()
        measure(phase, opts.gap)
        steps[phase] = (done[0] - before) / (time.perf_counter() - started)
    stop.set()
    worker.join()
    asst.config = replace(asst.config, round_waits_for_chat_s=default_wait)
    return write_results(asst, opts, options, phases, steps, rounds)


def rounds_back_to_back(asst: Assistant) -> tuple[threading.Event, list[float], threading.Thread]:
    """Trainee's rounds one after another in a thread until the event is set, each one's
    seconds in the list; returns once the first round is past its set-up."""
    stop = threading.Event()
    rounds: list[float] = []

    def train_loop() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            asst.train("trainee")
            rounds.append(time.perf_counter() - t)

    worker = threading.Thread(target=train_loop, daemon=True)
    worker.start()
    time.sleep(5)  # past gathering and set-up: sampling and updates run
    return stop, rounds, worker


def on_ray_actor(asst: Assistant, measure: Callable[[str, float], None], gap: float) -> list[float]:
    """The training phase with rounds on the Ray actor, back to back; their seconds."""
    workers = asst.trainer.workers
    assert workers is not None
    workers.ready()
    stop, rounds, worker = rounds_back_to_back(asst)
    measure("training on a Ray actor, chat first", gap)
    workers.chat_first_s = 0.0  # replies no longer stop the actor
    measure("training on a Ray actor, round not waiting", gap)
    stop.set()
    worker.join()
    return rounds


def write_results(
    asst: Assistant,
    opts: argparse.Namespace,
    options: list[str],
    phases: dict[str, dict[str, list[float]]],
    steps: dict[str, float],
    rounds: list[float],
) -> int:
    summary = {
        phase: {f"{k}_median": statistics.median(v) for k, v in values.items()}
        | {f"{k}_p95": report.percentile(v, 95) for k, v in values.items()}
        for phase, values in phases.items()
    }
    idle = summary["idle"]
    rows = [
        [
            phase,
            round(s["ttft_median"], 3),
            round(s["ttft_p95"], 3),
            round(s["ttft_p95"] / idle["ttft_p95"], 2),
            round(s["reply_seconds_median"], 2),
            round(s["reply_seconds_p95"], 2),
            round(s["reply_seconds_p95"] / idle["reply_seconds_p95"], 2),
            round(steps.get(phase, 0.0), 2),
        ]
        for phase, s in summary.items()
    ]
    headers = [
        "phase",
        "TTFT p50 (s)",
        "TTFT p95 (s)",
        "TTFT p95 / idle",
        "reply p50 (s)",
        "reply p95 (s)",
        "reply p95 / idle",
        "round steps/s",
    ]
    print(report.table(headers, rows))
    training = next(p for p in summary if "chat first" in p)
    ratio = summary[training]["ttft_p95"] / idle["ttft_p95"]
    print(f"p95 TTFT while training ({training}) / idle: {ratio:.2f}; rounds: {len(rounds)}")
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "command": "attune bench chat-during-training " + " ".join(options),
                "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
                f"torch {torch.__version__}, device {asst.base.device}",
                "settings": vars(opts),
                "summary": summary,
                "p95_ttft_ratio": ratio,
                "headers": headers,
                "rows": rows,
                "round_steps_per_second": steps,
                "round_seconds": rounds,
                "raw": phases,
            },
            indent=1,
        )
    )
    print(f"wrote {out}")
    asst.close()
    return 0
