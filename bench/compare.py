"""What active pairs cost: a Compare's latency with k candidates against the two-sample Compare.

A user with some clicks (a concise-taste simulated user, so the picker has a head to fit) asks
the same questions through `Assistant.compare` with `compare_candidates` = 2 (the old Compare:
two samples, shown as drawn) and = k (k samples in one batched call, then the pair the user's
head learns most from), alternated per question so the machine's drift hits both alike. The
wall time of each call is the latency a user waits for the two answers.

Target (issue): k-candidate Compare latency <= 1.6x the two-sample Compare, on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from dataclasses import replace

from assistant import Assistant
from bench import report
from bench.fresh import open_fresh
from bench.personalize import PROMPTS, as_sample
from bench.tastes import CONCISE, clicks

USER = "comparer"
TARGET_RATIO = 1.6


def with_candidates(asst: Assistant, k: int) -> None:
    """Switch the facade's Compare to k candidates (the setting is read on every call)."""
    asst.config = replace(asst.config, chat=replace(asst.config.chat, compare_candidates=k))


def run(args: argparse.Namespace, options: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="attune bench compare")
    parser.add_argument("--candidates", type=int, default=4, help="k of the active Compare")
    parser.add_argument("--clicks", type=int, default=12, help="A/B choices before timing")
    parser.add_argument("--repeats", type=int, default=6, help="timed Compares per mode")
    parser.add_argument("--tokens", type=int, default=128, help="max new tokens per answer")
    parser.add_argument("--out", default=str(report.RESULTS / "compare.json"))
    opts = parser.parse_args(options)
    asst = open_fresh(args, "compare")
    try:
        asst.add_user(USER)
        questions = json.loads(PROMPTS.read_text())["train"]
        rng = random.Random(0)
        for i in range(opts.clicks):
            pair = asst.compare(USER, questions[i % len(questions)], max_new_tokens=opts.tokens)
            a, b = (as_sample(r.text, r.ended_by_model) for r in (pair.a, pair.b))
            winner, thumb_a, thumb_b = clicks(CONCISE, a, b, rng)
            asst.choose(USER, pair.id, winner)
            asst.rate(USER, pair.a.id, thumb_a)
            asst.rate(USER, pair.b.id, thumb_b)
        seconds: dict[int, list[float]] = {2: [], opts.candidates: []}
        for i in range(opts.repeats):
            question = questions[(opts.clicks + i) % len(questions)]
            for k in (2, opts.candidates) if i % 2 == 0 else (opts.candidates, 2):
                with_candidates(asst, k)
                started = time.perf_counter()
                asst.compare(USER, question, max_new_tokens=opts.tokens, seed=100 + i)
                seconds[k].append(time.perf_counter() - started)
                print(f"  k={k}: {seconds[k][-1]:.2f} s", flush=True)
    finally:
        asst.close()
    two, many = (statistics.median(seconds[k]) for k in (2, opts.candidates))
    rows = [
        ["2 samples, shown as drawn", two, 1.0],
        [f"{opts.candidates} samples, the informative pair shown", many, many / two],
    ]
    command = f"attune bench compare {' '.join(options)}".strip()
    report.write(
        "compare",
        command,
        ["Compare", "median seconds", "x two-sample"],
        rows,
        {
            "seconds": {str(k): v for k, v in seconds.items()},
            "ratio": many / two,
            "target_ratio": TARGET_RATIO,
            "settings": vars(opts),
        },
    )
    return 0
