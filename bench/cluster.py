"""Rounds per minute in the serving process and on Ray actors, and what Ray adds to a round.

Prepared once: `--users` users each make A/B choices (and a warm-up user's round stores the
base's red-team baseline and every reply's cached features, as a running app has). Each phase
then starts from a copy of that folder, with the same round seeds, and runs one round per user:

- in process: the default (`Assistant.open` without Ray), rounds one after another;
- Ray, 1 actor: a local Ray with this machine's cores, one actor holding all of them;
- Ray, N actors: the cores split between N actors, N rounds at once (as the scheduler runs
  them: one thread per actor, each taking the next user).

Per phase: rounds per minute (wall time from the first round's start to the last one's end,
actors already loaded), and per round the worker's own seconds and what the call around it
added (`seconds_compute` - `seconds_worker`: in process nothing; on Ray the trip of the inputs
and the candidate, and any wait for a free actor). The serialised size of a round's inputs and
of its candidate are measured on the first user.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import queue
import statistics
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from assistant import Assistant, RayConfig
from bench import report
from bench.fresh import open_fresh
from bench.questions import EVERYDAY
from online_rl.config import RoundConfig, TrainingConfig

TRAINING = TrainingConfig(round=replace(RoundConfig(), seed=0))  # the same rounds in every phase


def prepare(args: argparse.Namespace, users: int, choices: int) -> Path:
    """A data folder with `users` users who each made `choices` A/B choices, the red-team
    baseline stored and every reply's features cached (by a warm-up user's round)."""
    asst = open_fresh(args, "cluster", training=TRAINING)
    names = [f"user{i}" for i in range(users)] + ["warmup"]
    for n, name in enumerate(names):
        asst.add_user(name)
        for i in range(choices):
            q = EVERYDAY[(n * choices + i) % len(EVERYDAY)]
            pair = asst.compare(name, q, max_new_tokens=48, seed=i)
            # a taste for short answers, so the rounds have something to learn
            asst.choose(name, pair.id, "a" if len(pair.a.text) <= len(pair.b.text) else "b")
    asst.train("warmup")
    folder = asst.config.data_dir
    asst.close()
    return folder


def run_phase(
    args: argparse.Namespace, prepared: Path, name: str, ray: RayConfig | None, users: list[str]
) -> dict[str, Any]:
    folder = "cluster-" + name.replace(" ", "-").replace(",", "")
    asst = open_fresh(args, folder, copy_of=prepared, training=TRAINING, ray=ray)
    workers = asst.trainer.workers  # with Ray: starts the actors, which load the model
    if workers is not None:
        workers.ready()
    todo: queue.Queue[str] = queue.Queue()
    for user in users:
        todo.put(user)
    reports: list[Any] = []

    def rounds_of_one_worker() -> None:
        while True:
            try:
                user = todo.get_nowait()
            except queue.Empty:
                return
            reports.append(asst.train(user))

    started = time.perf_counter()
    threads = [
        threading.Thread(target=rounds_of_one_worker) for _ in range(ray.actors if ray else 1)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    sizes = measure_sizes(asst, users[0])
    asst.close()  # with Ray: kills the actors and stops the Ray it started
    m = [r.metrics for r in reports]
    return {
        "phase": name,
        "rounds": len(reports),
        "accepted": sum(r.accepted for r in reports),
        "wall_seconds": round(wall, 1),
        "rounds_per_minute": round(60 * len(reports) / wall, 2),
        "round_seconds": [x["seconds"] for x in m],
        "worker_seconds": [x["seconds_worker"] for x in m],
        "call_overhead_seconds": [round(x["seconds_compute"] - x["seconds_worker"], 2) for x in m],
        "gather_seconds": [x["seconds_gather"] for x in m],
        "computed_by": sorted({x["computed_by"] for x in m}),
        **sizes,
    }


def measure_sizes(asst: Assistant, user: str) -> dict[str, float]:
    """The pickled size of what a round of `user` is handed, and of its newest candidate."""
    inputs = asst.trainer.gather(asst.user(user).id)
    versions = asst.versions(user)
    folder = asst.config.adapters_dir / asst.user(user).id
    newest = sorted(folder.iterdir())[-1] if versions and folder.exists() else None
    candidate = sum(p.stat().st_size for p in newest.rglob("*") if p.is_file()) if newest else 0
    return {
        "inputs_mb": round(len(pickle.dumps(inputs, protocol=5)) / 2**20, 2),
        "candidate_mb": round(candidate / 2**20, 2),
    }


def run(args: argparse.Namespace, options: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="attune bench cluster")
    parser.add_argument("--users", type=int, default=4, help="users, one round each per phase")
    parser.add_argument("--choices", type=int, default=6, help="A/B choices per user")
    parser.add_argument("--actors", type=int, default=2, help="actors of the last phase")
    parser.add_argument("--out", default=str(report.RESULTS / "cluster.json"))
    opts = parser.parse_args(options)

    cores = os.cpu_count() or 1
    prepared = prepare(args, opts.users, opts.choices)
    users = [f"user{i}" for i in range(opts.users)]
    phases = [
        ("in process", None),
        ("Ray, 1 actor", RayConfig(actors=1, cpus_per_actor=cores)),
        (
            f"Ray, {opts.actors} actors",
            RayConfig(actors=opts.actors, cpus_per_actor=max(1, cores // opts.actors)),
        ),
    ]
    results = [run_phase(args, prepared, name, ray, users) for name, ray in phases]
    base = results[0]["rounds_per_minute"]
    headers = [
        "phase",
        "rounds",
        "rounds/min",
        "x in process",
        "round s (median)",
        "worker s (median)",
        "call overhead s (median)",
        "inputs MB",
        "candidate MB",
    ]
    rows = [
        [
            r["phase"],
            r["rounds"],
            r["rounds_per_minute"],
            round(r["rounds_per_minute"] / base, 2),
            statistics.median(r["round_seconds"]),
            statistics.median(r["worker_seconds"]),
            statistics.median(r["call_overhead_seconds"]),
            r["inputs_mb"],
            r["candidate_mb"],
        ]
        for r in results
    ]
    print(report.table(headers, rows))
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "command": "attune bench cluster " + " ".join(options),
                "machine": report.machine(),
                "settings": vars(opts),
                "headers": headers,
                "rows": rows,
                "phases": results,
            },
            indent=1,
        )
    )
    print(f"wrote {out}")
    return 0
