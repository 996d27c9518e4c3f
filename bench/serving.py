"""Serving speed: tokens/s and time to first token, one user and many, against llama.cpp.

Modes, alternated A B C ... per repeat (median of the repeats):
- llama.cpp: the same GGUF (the embedded Q4_1 SmolLM2) through llama-cpp-python, one stream:
  the CPU ceiling. Benchmark environment only (`make bench-env`).
- attune base / attune adapter: one user's reply through the serving path (the facade's
  continuous batcher), a user on the bare base, then a user with their own LoRA adapter.
- N users batched: N users, each with their own adapter, ask at the same moment; the batcher
  decodes their rows together (one forward per step, each row's LoRA stacked:
  `assistant.stacked_lora`).
- N users one at a time: the same, with the batcher limited to one row: each request waits for
  the one before, and each forward runs one user's adapter (switching adapters per request).
- attune adapter, 1 user, beside an idle torch thread: the adapter mode while another thread
  that ran a torch kernel stays alive (what `assistant.threads` keeps from happening).

Every reply samples up to `new_tokens` tokens (it may end earlier at EOS; tokens/s counts the
tokens actually produced). Time to first token is from the call to the first token's arrival.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from assistant import Assistant
from assistant.model import gguf_file
from assistant.threads import in_fresh_thread
from bench import report
from bench.fresh import open_fresh
from online_rl.policy import LoraSettings
from storage import adapters as adapter_files
from storage import records

QUESTIONS = [
    "Write a long story about a dragon who learns to bake bread.",
    "Explain in detail how a bicycle works, part by part.",
    "Describe a whole day in the life of a lighthouse keeper.",
    "Tell me everything you know about the history of tea.",
]


@dataclass(frozen=True)
class ServingSettings:
    """users: concurrent users in the batched and one-at-a-time modes.
    new_tokens: tokens per reply at most; temperature, top_p: the app's sampling defaults.
    repeats: rounds of all modes, alternated; lora_init_std: the bench adapters' B weights
    (non-zero, so an adapter really changes the output; its cost does not depend on them).
    targets: the issue's (single >= 50% of llama.cpp; N users >= 4x single; adapter <= 10%)."""

    users: int = 8
    new_tokens: int = 64
    temperature: float = 0.7
    top_p: float = 0.95
    repeats: int = 3
    lora_init_std: float = 0.02
    lora: LoraSettings = field(default_factory=LoraSettings)
    target_share_of_llama: float = 0.5
    target_batched_speedup: float = 4.0
    target_adapter_cost: float = 0.10


@dataclass
class Run:
    """One mode once: tokens produced, wall seconds, and each request's time to first token."""

    tokens: int
    seconds: float
    ttft: list[float]

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds


def publish_random_adapter(asst: Assistant, user: str, s: ServingSettings, seed: int) -> None:
    """A real adapter version (attune's LoRA shape) as the user's live one, as a round writes
    it, with random weights: serving cost does not depend on what an adapter learned. Made in
    a thread of its own, as the app does its torch work outside decoding (assistant.threads)."""
    in_fresh_thread(_publish_random_adapter, asst, user, s, seed)


def _publish_random_adapter(asst: Assistant, user: str, s: ServingSettings, seed: int) -> None:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(
        asst.base.training_copy(),
        LoraConfig(
            r=s.lora.r,
            lora_alpha=s.lora.alpha,
            target_modules=list(s.lora.target_modules),
            init_lora_weights=False,
        ),
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, s.lora_init_std)
    user_id = asst.user(user).id
    path = adapter_files.write_version(asst.config.adapters_dir, user_id, 1, model.save_pretrained)
    records.add_adapter_version(asst.store.db, user_id, 1, str(path), None, "live")


def prompt_ids(asst: Assistant, question: str, s: ServingSettings) -> list[int]:
    settings = asst._settings({"max_new_tokens": s.new_tokens})
    return asst._prompt_ids([{"role": "user", "content": question}], settings)


def attune_reply(
    asst: Assistant, user: str, question: str, seed: int, s: ServingSettings
) -> tuple[int, float, float, float]:
    """(tokens, start, first-token time, end) of one reply through the serving path."""
    settings = asst._settings(
        {"max_new_tokens": s.new_tokens, "temperature": s.temperature, "top_p": s.top_p}
    )
    ids = prompt_ids(asst, question, s)
    start = time.perf_counter()
    first, steps = None, 0
    for _ in asst._stream([asst.user(user).id], [ids], settings, [seed]):
        steps += 1
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    assert first is not None
    return steps, start, first, end


def attune_concurrent(asst: Assistant, users: list[str], max_rows: int, s: ServingSettings) -> Run:
    """All users ask at once (one thread each), with the batcher allowing `max_rows` rows."""
    asst.batcher.max_rows = max_rows
    results: list[tuple[int, float, float, float]] = [(0, 0.0, 0.0, 0.0)] * len(users)
    barrier = threading.Barrier(len(users))

    def ask(i: int) -> None:
        barrier.wait()
        results[i] = attune_reply(asst, users[i], QUESTIONS[i % len(QUESTIONS)], i, s)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(users))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    start = min(r[1] for r in results)
    end = max(r[3] for r in results)
    return Run(sum(r[0] for r in results), end - start, [r[2] - r[1] for r in results])


def beside_an_idle_torch_thread(measure: Callable[[], Run]) -> Run:
    """`measure` while another thread that ran a parallel torch kernel stays alive, idle: as
    the model-loading thread and the scheduler's pool thread did before `assistant.threads`.
    Its OpenMP team outlives the kernel; the mode shows what such a team costs decoding."""
    done = threading.Event()
    ready = threading.Event()

    def hold() -> None:
        x = torch.randn(512, 512)
        _ = x @ x  # a parallel kernel: this thread now has its own OpenMP team
        ready.set()
        done.wait()

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    ready.wait()
    try:
        return measure()
    finally:
        done.set()
        holder.join()


def llama_reply(gguf: Path, ids: list[int], seed: int, s: ServingSettings) -> Run:
    """One stream through llama.cpp (`bench.llama_stream`, its own process): the same prompt
    tokens and sampling settings."""
    command = [
        sys.executable,
        "-m",
        "bench.llama_stream",
        str(gguf),
        f"--prompt-ids={json.dumps(ids)}",
        f"--new-tokens={s.new_tokens}",
        f"--temperature={s.temperature}",
        f"--top-p={s.top_p}",
        f"--seed={seed}",
        f"--threads={torch.get_num_threads()}",
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"llama.cpp failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return Run(result["tokens"], result["seconds"], result["ttft"])


def llama_gguf(asst: Assistant, args: argparse.Namespace) -> Path:
    try:
        import llama_cpp  # noqa: F401
    except ImportError as e:
        raise SystemExit("llama-cpp-python is missing: run `make bench-env`") from e
    cache = asst.config.model_cache_dir
    return gguf_file(args.model, cache, cache / "gguf" / f"{Path(args.model).stem}.gguf")


def run(args: argparse.Namespace, options: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="attune bench serving")
    defaults = ServingSettings()
    parser.add_argument("--users", type=int, default=defaults.users)
    parser.add_argument("--new-tokens", type=int, default=defaults.new_tokens)
    parser.add_argument("--repeats", type=int, default=defaults.repeats)
    parser.add_argument("--no-llama", action="store_true", help="skip llama.cpp")
    opts = parser.parse_args(options)
    s = ServingSettings(users=opts.users, new_tokens=opts.new_tokens, repeats=opts.repeats)

    asst = open_fresh(args, "serving")
    try:
        asst.add_user("plain", password="serving-bench-pw")
        users = [f"user{i}" for i in range(s.users)]
        for i, user in enumerate(users):
            asst.add_user(user, password="serving-bench-pw")
            publish_random_adapter(asst, user, s, seed=i)
        gguf = None if opts.no_llama else llama_gguf(asst, args)
        single_ids = prompt_ids(asst, QUESTIONS[0], s)
        n = s.users
        modes = {
            "attune base, 1 user": lambda: attune_concurrent(asst, ["plain"], 1, s),
            "attune adapter, 1 user": lambda: attune_concurrent(asst, users[:1], 1, s),
            f"attune {n} users batched": lambda: attune_concurrent(asst, users, n, s),
            f"attune {n} users one at a time": lambda: attune_concurrent(asst, users, 1, s),
            "attune adapter, 1 user, beside an idle torch thread": lambda: (
                beside_an_idle_torch_thread(lambda: attune_concurrent(asst, users[:1], 1, s))
            ),
        }
        if gguf is not None:
            modes = {"llama.cpp, 1 stream": lambda: llama_reply(gguf, single_ids, 0, s), **modes}
        # warm-up: every adapter loaded, every code path run once
        for measure in modes.values():
            measure()
        runs: dict[str, list[Run]] = {name: [] for name in modes}
        for _ in range(s.repeats):
            for name, measure in modes.items():
                runs[name].append(measure())
                print(f"  {name}: {runs[name][-1].tok_s:.1f} tok/s", flush=True)
    finally:
        asst.close()

    def tok_s(name: str) -> float:
        return statistics.median(r.tok_s for r in runs[name])

    rows = []
    llama = tok_s("llama.cpp, 1 stream") if gguf is not None else float("nan")
    for name, rs in runs.items():
        ttfts = [t for r in rs for t in r.ttft]
        users_in = s.users if "users" in name else 1
        rows.append(
            [
                name,
                round(tok_s(name), 1),
                round(tok_s(name) / users_in, 1),
                round(report.median(ttfts), 3),
                round(report.percentile(ttfts, 95), 3),
                round(tok_s(name) / llama, 2) if gguf is not None else "-",
            ]
        )
    single = tok_s("attune adapter, 1 user")
    base = tok_s("attune base, 1 user")
    batched = tok_s(f"attune {n} users batched")
    targets = {
        "single_share_of_llama": round(single / llama, 3) if gguf is not None else None,
        "batched_speedup_over_single": round(batched / single, 2),
        "adapter_cost": round(1 - single / base, 3),
    }
    print(f"targets: {targets}")
    name = "serving" if args.quantize == "auto" else f"serving-{args.quantize}"
    command = (
        f"attune bench --quantize {args.quantize} serving --users {s.users} "
        f"--new-tokens {s.new_tokens} --repeats {s.repeats}"
        + (" --no-llama" if opts.no_llama else "")
    )
    report.write(
        name,
        command,
        [
            "mode",
            "tok/s (all users)",
            "tok/s per user",
            "TTFT median s",
            "TTFT p95 s",
            "x llama.cpp",
        ],
        rows,
        {
            "settings": asdict(s),
            "targets": targets,
            "repeats": {k: [asdict(r) for r in v] for k, v in runs.items()},
        },
    )
    report.bar_plot(
        report.RESULTS / f"{name}.png",
        f"Serving tokens/s, --quantize {args.quantize} "
        f"({s.new_tokens} new tokens per reply, median of {s.repeats})",
        [r[0] for r in rows],
        {"tok/s (all users)": [r[1] for r in rows]},
        "tokens / s",
        target=s.target_share_of_llama * llama if gguf is not None else None,
        target_label="50% of llama.cpp",
    )
    return 0
