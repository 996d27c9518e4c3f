"""The oracle lab: how far does the round's policy step move a taste when the reward is perfect?

A user's assistant moves only as far as two things allow: how well the head knows the taste
(`attune bench heads`) and how far the policy step moves toward what the head likes. Here the
reward is the taste's own test (`bench/tastes.py`), so only the second is measured.

For each taste and recipe: a fresh LoRA on the base, then iterations of the round's own steps —
`online_rl.ppo.ppo_iteration` (sample, base pass, score, screen, PPO update, adapt the KL
coefficient) and `online_rl.distill.distill` (supervised steps on the samples the taste likes,
kept in a pool across iterations as a user's liked pool is; DPO on each prompt's best and worst
sample) — on the lab's training prompts, until the recipe's budget of training CPU-seconds
(this process's, all threads) is spent. The reward is the taste's yes/no test, normalised by
its base rate on the heads lab's pool: what a perfect "liked" head would say.

Evaluated before and after, outside the budget, on held-out prompts with fixed seeds at the
rollouts' temperature: the share of replies the taste likes, its graded score, the KL per token
to the base on the policy's own replies, distinct-2 (unique word bigrams / bigrams, pooled over
all replies: one minus the gate's `sameness`) and words per reply.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch

from assistant import Assistant
from assistant.generation import Sample
from bench.fresh import open_fresh
from bench.heads import PROMPTS, load_pool
from bench.report import RESULTS, bar_plot, write
from bench.tastes import ALL, Preference
from online_rl import distill, gate, sampling
from online_rl.config import RoundConfig, TrainingConfig
from online_rl.policy import BASE, TRAINABLE, TrainablePolicy, forward_batch
from online_rl.ppo import PPOConfig, ppo_iteration
from online_rl.user_data import Example, Prompting

NAME = "oracle"
TASTES = ("emphatic", "listy", "warm")


@dataclass(frozen=True)
class Recipe:
    """What one iteration does (the round's knobs, `RoundConfig` and `PPOConfig`)."""

    name: str
    rollout_prompts: int = 4
    samples_per_prompt: int = 4
    ppo: bool = True
    ppo_epochs: int = 1
    ppo_learning_rate: float = PPOConfig().learning_rate
    distill_steps: int = 2
    ranked_preference_steps: int = 2

    def round_config(self) -> RoundConfig:
        return replace(
            RoundConfig(),
            rollout_prompts=self.rollout_prompts,
            samples_per_prompt=self.samples_per_prompt,
            ppo=self.ppo,
            distill_steps=self.distill_steps,
            ranked_preference_steps=self.ranked_preference_steps,
        )


RECIPES = {
    r.name: r
    for r in (
        Recipe("round (today's mix)"),
        Recipe("PPO alone", distill_steps=0, ranked_preference_steps=0),
        Recipe(
            "PPO alone at lr 1e-3 and 2 epochs",
            ppo_epochs=2,
            ppo_learning_rate=1e-3,
            distill_steps=0,
            ranked_preference_steps=0,
        ),
        Recipe("best-of-4 alone", ppo=False, ranked_preference_steps=0),
        Recipe("best-of-8 + ranked pairs", samples_per_prompt=8, ppo=False),
    )
}


@dataclass
class Evaluation:
    liked: float  # share of replies the taste likes
    graded: float  # mean of the taste's graded score
    kl_per_token: float
    distinct_2: float
    words: float


def samples(texts: list[str], ended: list[bool]) -> list[Sample]:
    return [Sample([], t, e) for t, e in zip(texts, ended, strict=True)]


def evaluation(pref: Preference, replies: list[Sample], kl_per_token: float) -> Evaluation:
    texts = [r.text for r in replies]
    return Evaluation(
        liked=statistics.mean(pref.satisfied(r) for r in replies),
        graded=statistics.mean(pref.score(r) for r in replies),
        kl_per_token=kl_per_token,
        distinct_2=1.0 - gate.sameness(texts),  # sameness is the share of repeated bigrams
        words=statistics.mean(len(t.split()) for t in texts),
    )


class Lab:
    def __init__(self, asst: Assistant, config: TrainingConfig, prompts: list[str], seed: int):
        self.base = asst.base
        self.config = config
        chat = asst.config.chat
        tokens = config.ppo.max_new_tokens
        self.prompting = Prompting(
            self.base.tokenizer, chat.system_prompt, chat.context_tokens - tokens, tokens
        )
        ids = [self.prompting.ids([{"role": "user", "content": p}]) for p in prompts]
        self.heldout, self.train_prompts = ids[::4], [p for i, p in enumerate(ids) if i % 4]
        self.policy = TrainablePolicy(self.base.training_copy(), config.lora, self.base.device)
        self.seed = seed

    def replies(self, repeats: int, adapter: str) -> tuple[list[Sample], float]:
        """`adapter`'s (TRAINABLE or BASE) replies to the held-out prompts, fixed seeds, and
        their KL per token to the base (0 for the base itself)."""
        prompts = [p for p in self.heldout for _ in range(repeats)]
        seeds = [10_000 + i for i in range(len(prompts))]
        ppo, spec = self.config.ppo, self.config.reward.features
        replies, ended, kl, tokens = [], [], 0.0, 0
        for start in range(0, len(prompts), 32):
            rows = prompts[start : start + 32]
            got, done = sampling.sample(
                self.policy,
                self.base,
                rows,
                [adapter] * len(rows),
                seeds[start : start + 32],
                ppo.max_new_tokens,
                ppo.temperature,
            )
            batch, ref = sampling.base_pass(
                self.policy, self.base, rows, got, ppo.temperature, spec
            )
            with torch.no_grad():
                own = forward_batch(self.policy.peft, batch, ppo.temperature)
            mask = batch.response_mask.float()
            kl += ((own.logprobs - ref.logprobs) * mask).sum().item()
            tokens += int(mask.sum().item())
            replies += got
            ended += done
        texts = sampling.texts(self.base, replies)
        return samples(texts, ended), kl / max(1, tokens) if adapter == TRAINABLE else 0.0

    def train(self, pref: Preference, base_rate: float, recipe: Recipe, budget: float) -> dict:
        """Iterations of the round's steps with the taste as the reward, until `budget`
        training CPU-seconds are spent."""
        policy, cfg = self.policy, self.config
        policy.start_from(None)  # a fresh adapter and value head
        rc = recipe.round_config()
        ppo = replace(cfg.ppo, epochs=recipe.ppo_epochs, learning_rate=recipe.ppo_learning_rate)
        params = policy.trainable_parameters()
        sft = torch.optim.AdamW(params, lr=rc.sft_learning_rate, weight_decay=0.0)
        ppo_optimizer = torch.optim.AdamW(
            params + list(policy.value_head.parameters()), lr=ppo.learning_rate, weight_decay=0.0
        )
        p = min(max(base_rate, 0.01), 0.99)

        def score(_x: torch.Tensor, texts: list[str]) -> torch.Tensor:
            liked = [pref.satisfied(Sample([], t, True)) for t in texts]
            return (torch.tensor(liked, dtype=torch.float32) - p) / (p * (1 - p)) ** 0.5

        rng = random.Random(self.seed)
        torch.manual_seed(self.seed)
        pool: list[Example] = []
        kl_coef, done, iterations = ppo.kl_coef, distill.Distilled(), 0
        cpu, wall = time.process_time(), time.monotonic()
        liked_rollouts = []
        while time.process_time() - cpu < budget:
            picked = [rng.choice(self.train_prompts) for _ in range(rc.rollout_prompts)]
            prompts = [q for q in picked for _ in range(rc.samples_per_prompt)]
            seeds = [rng.randrange(2**31) for _ in prompts]
            none = torch.zeros(len(prompts), dtype=torch.bool)
            it = ppo_iteration(
                policy,
                self.base,
                ppo_optimizer,
                prompts,
                seeds,
                none,
                score,
                kl_coef,
                ppo,
                cfg.safety,
                cfg.reward.features,
                update=rc.ppo,
            )
            kl_coef = it.kl_coef
            judged = samples(it.texts, it.finished.tolist())
            liked = torch.tensor([pref.satisfied(x) for x in judged]) & ~it.unsafe
            liked_rollouts.append(liked.float().mean().item())
            distill.distill(
                policy,
                sft,
                partial(sampling.examples_batch, self.base),
                it,
                liked,
                pool,
                rc,
                ppo,
                rng,
                done,
            )
            fresh = [Example(prompts[i], it.replies[i]) for i in range(len(prompts)) if liked[i]]
            pool = (fresh + pool)[: rc.liked_pool]
            iterations += 1
        return {
            "iterations": iterations,
            "cpu_seconds": round(time.process_time() - cpu, 1),
            "wall_seconds": round(time.monotonic() - wall, 1),
            "final_kl_coef": kl_coef,
            "liked_rollouts_first_last": [liked_rollouts[0], liked_rollouts[-1]],
            **done.metrics(),
        }


def run(args: argparse.Namespace, options: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"attune bench {NAME}")
    parser.add_argument("--tastes", default=",".join(TASTES))
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated names")
    parser.add_argument("--budget", type=float, default=240.0, help="training CPU-seconds")
    parser.add_argument("--repeats", type=int, default=2, help="seeds per held-out prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "oracle.json"))
    opts = parser.parse_args(options)
    tastes = opts.tastes.split(",")
    recipes = [RECIPES[r] for r in opts.recipes.split(",")]
    # each taste's base rate: on the heads lab's pool (1,600 replies) when it has been built,
    # else on this lab's own held-out base replies
    pool = load_pool(Path(args.data_dir) / "bench-heads-pool")
    prompts = [p for kind in json.loads(PROMPTS.read_text()).values() for p in kind]
    config = TrainingConfig(ppo=PPOConfig())
    asst = open_fresh(args, NAME, training=config)
    rows, raw, base_rates = [], {}, {}
    try:
        lab = Lab(asst, config, prompts, opts.seed)
        base_replies, _ = lab.replies(opts.repeats, BASE)
        rated = pool.samples if pool else base_replies
        base_rates = {t: statistics.mean(ALL[t].satisfied(s) for s in rated) for t in tastes}
        for t in tastes:
            pref = ALL[t]
            before = evaluation(pref, base_replies, 0.0)
            for recipe in recipes:
                started = time.monotonic()
                trained = lab.train(pref, base_rates[t], recipe, opts.budget)
                after = evaluation(pref, *lab.replies(opts.repeats, TRAINABLE))
                raw[f"{t} | {recipe.name}"] = {
                    "recipe": recipe.__dict__,
                    "before": before.__dict__,
                    "after": after.__dict__,
                    **trained,
                }
                rows.append(
                    [
                        t,
                        recipe.name,
                        f"{before.liked:.2f} -> {after.liked:.2f}",
                        f"{after.kl_per_token:.3f}",
                        f"{after.distinct_2 / max(before.distinct_2, 1e-9):.2f}",
                        f"{before.words:.0f} -> {after.words:.0f}",
                        trained["iterations"],
                        trained["cpu_seconds"],
                    ]
                )
                print(f"  {t} | {recipe.name}: {rows[-1][2]} ({time.monotonic() - started:.0f} s)")
    finally:
        asst.close()
    headers = [
        "taste",
        "recipe",
        "liked share, base -> trained",
        "KL/token",
        "distinct-2 vs base",
        "words",
        "iterations",
        "training CPU-s",
    ]
    out = Path(opts.out)
    write(
        out.stem,
        f"attune bench {NAME} {' '.join(options)}".strip(),
        headers,
        rows,
        {
            "base_rates": base_rates,
            "base_rates_from": "bench heads pool" if pool else "held-out base replies",
            "budget_cpu_seconds": opts.budget,
            "heldout": {"prompts": len(lab.heldout), "repeats": opts.repeats},
            "threads": torch.get_num_threads(),
            "training_dtype": str(lab.base.training_dtype).removeprefix("torch."),
            "raw": raw,
        },
        out.parent,
    )
    labels = [f"{t}\n{r.name}" for t in tastes for r in recipes]
    bar_plot(
        out.with_suffix(".png"),
        f"Oracle reward: liked share after {opts.budget:.0f} training CPU-s",
        labels,
        {
            "base": [raw[f"{t} | {r.name}"]["before"]["liked"] for t in tastes for r in recipes],
            "trained": [raw[f"{t} | {r.name}"]["after"]["liked"] for t in tastes for r in recipes],
        },
        "share of held-out replies the taste likes",
    )
    return 0
