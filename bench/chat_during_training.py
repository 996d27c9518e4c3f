"""Chat latency for one user while another user's training round runs in the background.

User "trainee" gives enough A/B feedback for a round; user "chatter" streams replies, first
with nothing else running (idle), then while trainee's rounds run back to back in a worker
thread. Reported: time to first token and whole-reply seconds, median and p95, per phase.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import threading
import time
from pathlib import Path

import torch

from assistant import Assistant, Delta
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
    parser.add_argument("--out", default=str(report.RESULTS / "chat_during_training.json"))
    opts = parser.parse_args(options)

    asst = open_fresh(args, "chat-during-training")
    asst.add_user("trainee")
    asst.add_user("chatter")
    for i, q in enumerate(QUESTIONS * 2):
        pair = asst.compare("trainee", q, max_new_tokens=48, seed=i)
        asst.choose("trainee", pair.id, "a" if len(pair.a.text) < len(pair.b.text) else "b")

    phases: dict[str, dict[str, list[float]]] = {"idle": {}, "training": {}}

    def measure(phase: str) -> None:
        for i in range(opts.chats):
            ttft, total = chat_once(asst, "chatter", QUESTIONS[i % len(QUESTIONS)], opts.tokens)
            phases[phase].setdefault("ttft", []).append(ttft)
            phases[phase].setdefault("reply_seconds", []).append(total)

    measure("idle")
    stop = threading.Event()
    rounds: list[float] = []

    def train_loop() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            asst.train("trainee")
            rounds.append(time.perf_counter() - t)

    worker = threading.Thread(target=train_loop, daemon=True)
    worker.start()
    time.sleep(5)  # let the round get past its set-up into sampling and PPO
    measure("training")
    stop.set()
    worker.join()

    summary = {
        phase: {f"{k}_median": statistics.median(v) for k, v in values.items()}
        | {f"{k}_p95": report.percentile(v, 95) for k, v in values.items()}
        for phase, values in phases.items()
    }
    print(f"{'phase':<10}{'TTFT p50':>10}{'TTFT p95':>10}{'reply p50':>11}{'reply p95':>11}")
    for phase, s in summary.items():
        print(
            f"{phase:<10}{s['ttft_median']:>10.2f}{s['ttft_p95']:>10.2f}"
            f"{s['reply_seconds_median']:>11.2f}{s['reply_seconds_p95']:>11.2f}"
        )
    ratio = summary["training"]["ttft_p95"] / summary["idle"]["ttft_p95"]
    print(f"p95 TTFT while training / idle: {ratio:.2f}; rounds run meanwhile: {len(rounds)}")
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
                "round_seconds": rounds,
                "raw": phases,
            },
            indent=1,
        )
    )
    print(f"wrote {out}")
    asst.close()
    return 0
