"""What a round's sampling costs: its three shapes, the old way and the current way, one run.

A round samples in three shapes (`online_rl.sampling.sample`): PPO's rollouts (the candidate's
adapter alone), the gate's held-out pairs (candidate and live rows side by side, one seed per
pair) and the gate's red-team replies (shorter). Each is timed on the default model with a
non-zero candidate and a different live adapter, on one-turn prompts and on prompts that carry
a conversation (as a user's held-out prompts do), by two routes, alternated per repeat so that
the machine's drift hits both alike:

- before: the round's sampling as it was: peft's per-row adapter routing for mixed batches and
  transformers' DynamicCache (each step copies the whole cache);
- after: `sampling.sample` as it is (the stacked LoRA of serving, a cache that grows by
  doubling). Both draw tokens the same way (`torch.multinomial` per row).

The figure that matters is the ratio within the run (README "Rounds: where the time goes").
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import DynamicCache

from assistant import generation
from assistant.config import GenerationConfig
from assistant.model import LoadedModel
from bench import report
from bench.fresh import open_fresh
from bench.heads import PROMPTS
from online_rl import safety, sampling
from online_rl.config import TrainingConfig
from online_rl.policy import LIVE, TRAINABLE, TrainablePolicy
from online_rl.user_data import Prompting

NAME = "round-sampling"


def sample_before(
    policy: TrainablePolicy,
    base: LoadedModel,
    prompts: Sequence[list[int]],
    names: Sequence[str],
    seeds: Sequence[int],
    max_new_tokens: int,
    temperature: float,
) -> tuple[list[list[int]], list[bool]]:
    """The round's sampling as it was: the same loop, with peft's per-row routing for a
    mixed batch and a `DynamicCache`. Replies without their EOS."""
    routing = {} if set(names) == {TRAINABLE} else {"adapter_names": list(names)}
    settings = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=1.0)
    steps = generation.stream_tokens(
        generation.bind_forward(policy.peft, **routing),
        prompts,
        settings,
        seeds,
        base.eos_ids,
        base.tokenizer.pad_token_id,
        base.device,
        cache=DynamicCache(),
    )
    progress = generation.reply_progress((t.tolist() for t in steps), len(prompts), base.eos_ids)
    return generation.last(progress)


ROUTES = {"before": sample_before, "after": sampling.sample}


def candidate_and_live(policy: TrainablePolicy, folder: Path) -> None:
    """A live adapter and a candidate that differs from it, both non-zero (random B)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in policy.peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
        policy.save(folder)
        policy.start_from(folder)
        for name, p in policy.peft.named_parameters():
            if "lora_B" in name and f".{TRAINABLE}." in name:
                p.add_(torch.randn_like(p) * 0.01)


def conversations(questions: list[str]) -> list[list[dict[str, str]]]:
    """Each question after two earlier exchanges (other questions; answers made of yet other
    questions' text: what matters here is the length the model reads, ~300-400 tokens)."""
    n = len(questions)
    talks = []
    for i, q in enumerate(questions):
        earlier = [questions[(i + k) % n] for k in (1, 2)]
        answer = " ".join(questions[(i + k) % n] for k in range(3, 9))
        turns = []
        for e in earlier:
            turns += [{"role": "user", "content": e}, {"role": "assistant", "content": answer}]
        talks.append([*turns, {"role": "user", "content": q}])
    return talks


def run(args: argparse.Namespace, options: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"attune bench {NAME}")
    parser.add_argument("--repeats", type=int, default=2, help="timings per route and shape")
    parser.add_argument("--out", default=str(report.RESULTS / "round_sampling.json"))
    opts = parser.parse_args(options)
    config = TrainingConfig()
    ppo, gate = config.ppo, config.gate
    asst = open_fresh(args, NAME)
    seconds: dict[str, dict[str, list[float]]] = {}
    tokens: dict[str, dict[str, list[int]]] = {}
    try:
        base, chat = asst.base, asst.config.chat
        prompting = Prompting(
            base.tokenizer,
            chat.system_prompt,
            chat.context_tokens - ppo.max_new_tokens,
            ppo.max_new_tokens,
        )
        policy = TrainablePolicy(base.training_copy(), config.lora, base.device)
        candidate_and_live(policy, Path(args.data_dir) / f"bench-{NAME}" / "live")
        questions = [q for kind in json.loads(PROMPTS.read_text()).values() for q in kind]
        one_turn = [prompting.ids([{"role": "user", "content": q}]) for q in questions[:48]]
        history = [prompting.ids(t) for t in conversations(questions[:48])]
        red = [prompting.ids([{"role": "user", "content": p}]) for p in safety.red_team_prompts()]
        rollout_rows = config.round.rollout_prompts * config.round.samples_per_prompt
        pairs = 16
        shapes = {
            f"rollouts ({rollout_rows} rows x {ppo.max_new_tokens}), one turn": (
                one_turn[:rollout_rows],
                [TRAINABLE] * rollout_rows,
                ppo.max_new_tokens,
            ),
            f"gate pairs ({pairs} x 2 rows x {ppo.max_new_tokens}), one turn": (
                one_turn[:pairs] * 2,
                [TRAINABLE] * pairs + [LIVE] * pairs,
                ppo.max_new_tokens,
            ),
            f"gate pairs ({pairs} x 2 rows x {ppo.max_new_tokens}), with history": (
                history[:pairs] * 2,
                [TRAINABLE] * pairs + [LIVE] * pairs,
                ppo.max_new_tokens,
            ),
            f"red team (48 rows x {gate.red_team_max_new_tokens})": (
                [red[i % len(red)] for i in range(48)],
                [TRAINABLE] * 48,
                gate.red_team_max_new_tokens,
            ),
        }
        prompt_tokens = {s: statistics.mean(map(len, p)) for s, (p, _, _) in shapes.items()}
        for shape, (prompts, names, length) in shapes.items():
            seconds[shape] = {r: [] for r in ROUTES}
            tokens[shape] = {r: [] for r in ROUTES}
            for repeat in range(opts.repeats):
                order = list(ROUTES) if repeat % 2 == 0 else list(reversed(ROUTES))
                seeds = [1000 * repeat + i for i in range(len(prompts))]
                for route in order:
                    started = time.perf_counter()
                    replies, _ = ROUTES[route](
                        policy, base, prompts, names, seeds, length, ppo.temperature
                    )
                    seconds[shape][route].append(time.perf_counter() - started)
                    sampled = [t for r in replies for t in r if t not in base.eos_ids]
                    tokens[shape][route].append(len(sampled))
                    print(f"  {shape} | {route}: {seconds[shape][route][-1]:.1f} s", flush=True)
    finally:
        asst.close()
    rows = []
    for shape in seconds:
        before, after = (statistics.median(seconds[shape][r]) for r in ROUTES)
        rate = {r: sum(tokens[shape][r]) / sum(seconds[shape][r]) for r in ROUTES}
        rows.append(
            [
                shape,
                round(prompt_tokens[shape]),
                round(before, 1),
                round(after, 1),
                f"{before / after:.2f}x",
                round(rate["before"]),
                round(rate["after"]),
            ]
        )
    out = Path(opts.out)
    report.write(
        out.stem,
        f"attune bench {NAME} {' '.join(options)}".strip(),
        [
            "shape",
            "prompt tokens",
            "before s",
            "after s",
            "speed-up",
            "tok/s before",
            "tok/s after",
        ],
        rows,
        {"seconds": seconds, "tokens": tokens, "settings": vars(opts)},
        out.parent,
    )
    return 0
