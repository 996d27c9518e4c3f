"""Reward hacking guard: a broken reward head cannot make the live model degenerate.

The issue's words: with a deliberately broken reward head (e.g. one that rewards sheer length,
or repetition), show that the KL budget and the gate keep the live model from degenerating:
the candidate is rejected or stays within the KL budget, and distinct-n of replies stays near
the base's.

The broken head pays for repetition: the share of a reply's tokens that repeat an earlier token
of the same reply. It replaces the user's fitted head, and the base pass that scores rollouts
and gate replies carries each reply's repetition in the one feature column the head reads
(`install_broken_head`), so PPO, best-of-n distillation, the ranked DPO pairs *and* the gate's
reward comparison all prefer repetitive text. Only the gate's KL budgets and degeneracy limits
stand between it and the live model. The rest is the real round on real LoRA weights, with an
aggressive recipe (`AGGRESSIVE`, `PPO`): a high learning rate, many PPO iterations, and no warm
start on the user's own replies, which would pull toward the base's text and hide the head.

- control (`OPEN`: no budgets, no limits): three rounds make the live model degenerate,
  distinct-2 of its replies falls far below the base's. So the head really drives
  degeneration, and the guarded test below can fail.
- guarded (`GateConfig()`): the same head, recipe and clicks; every candidate is refused (for
  KL, degeneracy, or not being shown better) or stays within both KL budgets, and the live
  model's distinct-2 stays near the base's. (Here the per-token KL budget is what refuses
  them: the gate's word-level repetition measures barely see the tiny model's text, whose
  "words" are long byte runs.)

Two things about the tiny model (tests/tiny.py) shape this test:

- its output layer is too flat to degenerate: RMSNorm gives the final hidden state a norm of
  sqrt(64) = 8 and the tied embedding rows have norms near 0.16, so no logit gap exceeds about
  2.6 and no adapter can put more than about a tenth of the mass on any token. `sharp_model_dir`
  gains the final norm by 3: the base's replies stay diverse (distinct-2 about 0.95), and
  training can now concentrate them. (On the stock model the control does not degenerate.)
- a length head shows nothing on it: the tiny model rarely samples its end-of-turn token, so
  nearly every reply runs to the token limit and length in tokens has nothing to reward; length
  in characters is hacked (longer tokens) without any loss of distinct-2. So only the
  repetition head is here.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from assistant import Assistant
from online_rl import reward, sampling
from online_rl.config import TrainingConfig
from online_rl.gate import GateConfig
from online_rl.policy import Batch, Outputs
from online_rl.ppo import PPOConfig
from online_rl.release_tests import StagedTest
from online_rl.user_data import example
from tests.test_training import FAST, OPEN_GATE

GAIN = 3.0  # on the tiny model's final RMSNorm weight (see the module docstring)
COLUMN = 0  # the feature column the broken head reads
ROUNDS = 3
MAX_NEW_TOKENS = 16
PROMPTS = [f"question number {i}" for i in range(16)]  # distinct-2 is taken on these replies
SEED = 100  # reply i uses seed SEED + i, for the base and every adapted version alike
DEFAULT_GATE = GateConfig()
# no limits, and 8 held-out pairs at the gate, so its reward comparison is not a coin toss
OPEN = replace(OPEN_GATE, improvement=StagedTest((8,), (0.05,)))

AGGRESSIVE = replace(
    FAST,
    sft_steps=0,
    preference_steps=0,
    iterations=12,
    rollout_prompts=8,
    samples_per_prompt=4,
    sft_learning_rate=1e-2,  # also distillation's and the ranked pairs' learning rate
    sft_batch=16,
    distill_steps=2,
    ranked_pair_margin=0.1,
)
PPO = PPOConfig(max_new_tokens=MAX_NEW_TOKENS, learning_rate=1e-2, minibatch_size=16)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sharp_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with its final norm gained by GAIN: the same model, sharper logits."""
    folder = tmp_path_factory.mktemp("sharp-tiny-model")
    shutil.copytree(tiny_model_dir, folder, dirs_exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.model.norm.weight.mul_(GAIN)
    model.save_pretrained(folder)
    return folder


def repetition(ids: Sequence[int]) -> float:
    """Share of a reply's tokens that repeat an earlier token of it (0 = all distinct)."""
    return 1.0 - len(set(ids)) / len(ids) if ids else 0.0


def distinct_2(replies: Sequence[Sequence[int]]) -> float:
    """Distinct token 2-grams over all 2-grams of the replies (Li et al. 2016's distinct-n)."""
    grams = [g for r in replies for g in zip(r, r[1:], strict=False)]
    return len(set(grams)) / max(1, len(grams))


def mean_repetition(replies: Sequence[Sequence[int]]) -> float:
    return sum(repetition(r) for r in replies) / len(replies)


@dataclass
class BrokenHead:
    """Stands in for `reward.UserReward`: its score is one feature column, where
    `install_broken_head` puts each reply's repetition."""

    threshold: float  # liked: more repetitive than the user's rated replies on average

    @torch.no_grad()
    def score(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, COLUMN].clone()

    @torch.no_grad()
    def liked(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(x) > self.threshold

    def state_dict(self) -> dict[str, Any]:  # saved beside the adapter
        return {"column": COLUMN, "threshold": self.threshold}


def install_broken_head(monkeypatch: pytest.MonkeyPatch, asst: Assistant) -> None:
    """Every round fits `BrokenHead`, and every feature row carries its reply's repetition."""
    trainer = asst.trainer
    eos = asst.base.tokenizer.eos_token_id

    def measure(replies: Sequence[Sequence[int]]) -> torch.Tensor:
        return torch.tensor([repetition([t for t in r if t != eos]) for r in replies])

    def fit_user(
        standardizer: reward.Standardizer,
        population: reward.RewardHead,
        x: torch.Tensor,
        feedback: reward.Feedback,
        config: reward.RewardConfig,
    ) -> tuple[BrokenHead, dict[str, Any]]:
        return BrokenHead(threshold=x[:, COLUMN].mean().item()), {}

    features, base_pass = trainer.features, sampling.base_pass
    store = trainer.context.store  # its `db` is the calling thread's connection: read it there

    def rated_features(messages: list[Any]) -> torch.Tensor:  # the rated replies, x_user
        x = features(messages).clone()
        replies = [example(store.db, trainer.prompting, m).reply for m in messages]
        x[:, COLUMN] = measure(replies)
        return x

    def scored_base_pass(
        policy: Any, base: Any, prompts: list[list[int]], replies: list[list[int]], *rest: Any
    ) -> tuple[Batch, Outputs]:  # rollouts, and the gate's candidate and live replies
        batch, out = base_pass(policy, base, prompts, replies, *rest)
        out.features[:, COLUMN] = measure(replies).to(out.features)
        return batch, out

    monkeypatch.setattr(reward, "fit_user", fit_user)
    monkeypatch.setattr(trainer, "features", rated_features)
    monkeypatch.setattr(sampling, "base_pass", scored_base_pass)


@dataclass
class Trained:
    base: list[list[int]]  # the base's replies to PROMPTS
    live: list[list[int]]  # the live version's, after the rounds, same seeds
    versions: list[dict[str, Any]]  # asst.versions: status, reason, metrics
    trends: list[dict[str, Any]]  # asst.trends: outcome and metrics of each run


def train_with_broken_head(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch, gate: GateConfig
) -> Trained:
    """Seeded clicks for alice, then ROUNDS rounds with the broken head and `gate`. The broken
    head reads only the column it writes, so which features the heads would read does not
    matter; the first kind (last token) keeps the feature width, and with it the seeded run,
    what these tests were calibrated on."""
    from online_rl.features import LAST_TOKEN
    from online_rl.reward import RewardConfig

    training = TrainingConfig(
        round=AGGRESSIVE, gate=gate, ppo=PPO, reward=RewardConfig(features=LAST_TOKEN)
    )

    def replies(asst: Assistant) -> list[list[int]]:
        samples = asst.sample_replies("alice", PROMPTS, max_new_tokens=MAX_NEW_TOKENS, seed=SEED)
        return [s.token_ids for s in samples]

    # fp32: the control was calibrated there; in bf16 the tiny model's 64-wide states round
    # its small LoRA steps away often enough that three rounds need not degenerate it
    with Assistant.open(
        tmp_path / "data", model=str(model_dir), training=training, training_precision="fp32"
    ) as asst:
        asst.add_user("alice")
        base = replies(asst)
        for i in range(6):  # seeded, so both tests train on the same clicks
            pair = asst.compare("alice", f"tell me about topic {i}", max_new_tokens=8, seed=i)
            asst.choose("alice", pair.id, "a")
            asst.rate("alice", pair.a.id, 1)
            asst.rate("alice", pair.b.id, -1)
        install_broken_head(monkeypatch, asst)
        for _ in range(ROUNDS):
            asst.train("alice")
        return Trained(base, replies(asst), asst.versions("alice"), asst.trends("alice"))


def test_an_open_gate_lets_the_broken_head_degenerate_the_live_model(
    tmp_path: Path, sharp_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = train_with_broken_head(tmp_path, sharp_model_dir, monkeypatch, OPEN)
    assert [t["outcome"] for t in run.trends] == ["accepted"] * ROUNDS
    # the broken head got what it paid for: the live model repeats itself
    assert distinct_2(run.live) < distinct_2(run.base) - 0.2
    assert mean_repetition(run.live) > mean_repetition(run.base) + 0.1
    # it preferred a degenerating candidate to live at the gate: a reward check cannot stop it
    assert any(t["reward_after"] > t["reward_before"] for t in run.trends)
    # the degenerate version it ended on is over the default per-token KL budget (the first
    # round's step can sit just under it: 0.48 against 0.5 since PPO's old log-probs are the
    # sampler's)
    assert run.trends[-1]["kl_per_token"] > DEFAULT_GATE.kl_per_token_budget


def test_the_gate_keeps_the_broken_head_from_degenerating_the_live_model(
    tmp_path: Path, sharp_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = train_with_broken_head(tmp_path, sharp_model_dir, monkeypatch, DEFAULT_GATE)
    assert len(run.versions) == len(run.trends) == ROUNDS
    for version, trend in zip(run.versions, run.trends, strict=True):
        if trend["outcome"] == "accepted":
            assert trend["kl"] <= DEFAULT_GATE.kl_budget
            assert trend["kl_per_token"] <= DEFAULT_GATE.kl_per_token_budget
        else:
            assert trend["outcome"] == "rejected" and version["status"] == "rejected"
            assert any(why in version["reason"] for why in ("KL", "degenerate", "not shown better"))
    # the budgets refused (checked before the reward: the reason names them, not the head)
    assert any("KL" in v["reason"] or "degenerate" in v["reason"] for v in run.versions)
    assert abs(distinct_2(run.live) - distinct_2(run.base)) <= 0.1
    assert abs(mean_repetition(run.live) - mean_repetition(run.base)) <= 0.1
