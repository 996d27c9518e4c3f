"""The gate's measurements: sampling in stages until the release tests decide.

`online_rl.gate` holds the pure decision (`decide`) and the tests' settings; this module feeds
it. First the gain: each stage adds held-out pairs (candidate and live on the same prompt and
the same fresh seed, scored by the user's reward), until the improvement test decides. Only a
candidate shown better goes on to safety: stages of fresh red-team replies of the candidate,
each minus the base's share on the same prompt, until the non-inferiority test decides. A
candidate that is not better is refused anyway, so it costs no red-team replies. Seeds are new
every round, so no lucky draw of live's outlives its round.

The base's per-prompt red-team rates (the safety reference) are sampled once per everything
they depend on (`red_team_baseline_key`) and stored by the serving node.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from assistant import traits
from assistant.model import LoadedModel
from online_rl import gate, release_tests, safety, sampling
from online_rl.config import TrainingConfig
from online_rl.policy import BASE, TRAINABLE, TrainablePolicy, forward_batch
from online_rl.release_tests import Look, StagedTest
from online_rl.user_data import Prompting, hash_text


@dataclass(frozen=True)
class GateMeasure:
    """What the gate measured: the two tests' last looks and the checks on the text."""

    gain: Look
    red_team: gate.RedTeamLooks | None
    kl: float  # mean over the candidate's held-out replies, summed over tokens
    kl_per_token: float
    candidate_text: gate.TextStats
    live_text: gate.TextStats
    reward_before: float  # live's mean score on the held-out pairs
    reward_after: float  # the candidate's
    pairs: HeldOutPairs  # the texts the two versions wrote on the same questions and seeds

    def metrics(self) -> dict[str, Any]:
        red = self.red_team
        return {
            "reward_before": self.reward_before,
            "reward_after": self.reward_after,
            "gain": self.gain.mean,
            "gain_lower_bound": self.gain.lower,
            "gate_pairs": self.gain.n,
            "kl": self.kl,
            "kl_per_token": self.kl_per_token,
            "red_team_replies": red.rate.n if red else 0,
            "red_team_offensive_rate": red.candidate_rate if red else None,
            "base_red_team_offensive_rate": red.base_rate if red else None,
            "red_team_rate_rise_upper_bound": red.rate.upper if red else None,
            "red_team_offensive_probability": red.candidate_probability if red else None,
            "base_red_team_offensive_probability": red.base_probability if red else None,
            "red_team_edginess_rise_upper_bound": red.edginess.upper if red else None,
            "candidate_truncated_share": self.candidate_text.truncated_share,
            "candidate_repetition": self.candidate_text.repetition,
            "candidate_sameness": self.candidate_text.sameness,
            "live_sameness": self.live_text.sameness,
            "live_truncated_share": self.live_text.truncated_share,
        }


@dataclass(frozen=True)
class HeldOutPairs:
    """The gate's held-out pairs as text: per pair, the question it was asked (an index into
    the round's held-out prompts), the candidate's and live's replies, and the reward gain."""

    questions: list[int]
    seeds: list[int]
    candidate: list[str]
    live: list[str]
    gains: list[float]

    def change(
        self, question_texts: Sequence[str], base_texts: Sequence[str] | None = None
    ) -> VersionChange:
        """What the candidate does differently, measured on these pairs (`assistant.traits`),
        and the pair it gained most on as an example (a pair with two different replies).
        `base_texts`: the base model's replies to the first pairs' questions and seeds, for
        the candidate against the base (None: live is the base, the pairs say it already)."""
        before, after = traits.measure(self.live), traits.measure(self.candidate)
        differ = [i for i in range(len(self.gains)) if self.candidate[i] != self.live[i]]
        example = None
        if differ:
            best = max(differ, key=lambda i: self.gains[i])
            question = question_texts[self.questions[best]]
            example = (question, self.live[best], self.candidate[best])
        measured = {name: (before[name], after[name]) for name in before}
        against_base = measured
        if base_texts is not None:
            base = traits.measure(base_texts)
            mine = traits.measure(self.candidate[: len(base_texts)])
            against_base = {name: (base[name], mine[name]) for name in base}
        return VersionChange(len(self.gains), measured, example, against_base)


@dataclass(frozen=True)
class VersionChange:
    pairs: int
    traits: dict[str, tuple[float, float]]  # trait -> (live's mean, the candidate's)
    example: tuple[str, str, str] | None  # (question, live's reply, the candidate's)
    against_base: dict[str, tuple[float, float]]  # trait -> (the base's mean, the candidate's)


@dataclass
class GateSamples:
    """Everything the gate has sampled so far in a round, in order."""

    gains: list[float] = field(default_factory=list)  # candidate - live, per held-out pair
    candidate_scores: list[float] = field(default_factory=list)
    live_scores: list[float] = field(default_factory=list)
    kl_sums: list[float] = field(default_factory=list)  # per candidate reply
    reply_tokens: int = 0
    candidate_texts: list[str] = field(default_factory=list)
    live_texts: list[str] = field(default_factory=list)
    candidate_ended: list[bool] = field(default_factory=list)
    live_ended: list[bool] = field(default_factory=list)
    red_prompt: list[int] = field(default_factory=list)  # which red-team prompt, per reply
    red_flagged: list[bool] = field(default_factory=list)
    red_probability: list[float] = field(default_factory=list)
    questions: list[int] = field(default_factory=list)  # which held-out prompt, per pair
    seeds: list[int] = field(default_factory=list)  # the seed both replies of a pair used

    def gain_look(self, config: gate.GateConfig) -> Look:
        """The improvement test on the pairs so far (their signs, or the gains themselves)."""
        gains = self.gains
        if config.gain_by_sign:
            gains = [float((d > 0) - (d < 0)) for d in gains]
        return release_tests.superiority(gains, config.min_reward_gain, config.improvement)

    def red_team_looks(
        self, config: gate.GateConfig, baseline: list[tuple[float, float]]
    ) -> gate.RedTeamLooks:
        """The safety test on the red-team replies so far: each reply minus the base's share
        (probability) on the same prompt, against the margins. The base's per-prompt means come
        from `base_red_team_seeds` replies each: their sampling variance (at most m(1-m)/seeds
        for a mean m of numbers in [0, 1]) is shared by every difference, so it is added."""
        rate = [f - baseline[p][0] for f, p in zip(self.red_flagged, self.red_prompt, strict=True)]
        edge = [
            x - baseline[p][1] for x, p in zip(self.red_probability, self.red_prompt, strict=True)
        ]
        n, seeds = len(self.red_prompt), config.base_red_team_seeds
        weight = {p: self.red_prompt.count(p) / n for p in set(self.red_prompt)}

        def shared(column: int) -> float:
            # a base share of 0 or 1 on a prompt is still an estimate: shrunk toward 1/2
            def variance(b: float) -> float:
                b = (b * seeds + 0.5) / (seeds + 1)
                return b * (1 - b) / seeds

            return sum(w**2 * variance(baseline[p][column]) for p, w in weight.items())

        return gate.RedTeamLooks(
            release_tests.non_inferiority(
                rate, config.red_team_rate_margin, config.red_team, shared(0)
            ),
            release_tests.non_inferiority(
                edge, config.red_team_edginess_margin, config.red_team, shared(1)
            ),
            candidate_rate=sum(self.red_flagged) / len(self.red_flagged),
            base_rate=sum(baseline[p][0] for p in self.red_prompt) / len(self.red_prompt),
            candidate_probability=sum(self.red_probability) / len(self.red_probability),
            base_probability=sum(baseline[p][1] for p in self.red_prompt) / len(self.red_prompt),
        )

    def measure(self, gain: Look, red_team: gate.RedTeamLooks | None) -> GateMeasure:
        n = len(self.gains)
        return GateMeasure(
            gain,
            red_team,
            kl=sum(self.kl_sums) / n,
            kl_per_token=sum(self.kl_sums) / max(1, self.reply_tokens),
            candidate_text=gate.text_stats(self.candidate_texts, self.candidate_ended),
            live_text=gate.text_stats(self.live_texts, self.live_ended),
            reward_before=sum(self.live_scores) / n,
            reward_after=sum(self.candidate_scores) / n,
            pairs=HeldOutPairs(
                list(self.questions),
                list(self.seeds),
                list(self.candidate_texts),
                list(self.live_texts),
                list(self.gains),
            ),
        )


def still_needed(look: Look | gate.RedTeamLooks | None, test: StagedTest, have: int) -> int:
    """How many more samples the test's next look needs (0 once it has decided)."""
    if look is None:
        return test.stages[0] - have
    if look.verdict != "more":
        return 0
    return (release_tests.next_count(test, have) or have) - have


def gate_replies(
    policy: TrainablePolicy,
    base: LoadedModel,
    prompts: Sequence[list[int]],
    adapter_names: Sequence[str],
    seeds: Sequence[int],
    max_new_tokens: int,
    temperature: float,
) -> tuple[list[list[int]], list[bool]]:
    """One stage of the gate's replies (its own name, so a test can find the gate's)."""
    return sampling.sample(policy, base, prompts, adapter_names, seeds, max_new_tokens, temperature)


def measure_gate(
    policy: TrainablePolicy,
    base: LoadedModel,
    heldout_prompts: list[list[int]],
    score: Callable[[torch.Tensor], torch.Tensor],
    red_team: RedTeam,
    config: TrainingConfig,
    rng: random.Random,
) -> GateMeasure:
    """Sample the gate's replies in stages until both release tests decide (module docstring)."""
    g = config.gate
    order = rng.sample(range(len(heldout_prompts)), len(heldout_prompts))  # question indices
    seen = GateSamples()
    gain: Look | None = None
    while need := still_needed(gain, g.improvement, len(seen.gains)):
        _sample_pairs(policy, base, seen, heldout_prompts, order, need, rng, score, config)
        gain = seen.gain_look(g)
    assert gain is not None, "the first stage always samples pairs"
    if gain.verdict == "pass" and len(seen.gains) < g.text_pairs:
        # decided early: the text and KL checks still read `text_pairs` pairs
        more = g.text_pairs - len(seen.gains)
        _sample_pairs(policy, base, seen, heldout_prompts, order, more, rng, score, config)
    looks: gate.RedTeamLooks | None = None
    if gain.verdict != "pass" or not red_team.prompts:
        return seen.measure(gain, looks)
    baseline = red_team.baseline()
    while need := still_needed(looks, g.red_team, len(seen.red_prompt)):
        ids = [(len(seen.red_prompt) + i) % len(red_team.prompts) for i in range(need)]
        replies, _ = gate_replies(
            policy,
            base,
            [red_team.prompts[i] for i in ids],
            [TRAINABLE] * need,
            [rng.randrange(2**31) for _ in range(need)],
            g.red_team_max_new_tokens,
            config.ppo.temperature,
        )
        screened = safety.screen(sampling.texts(base, replies), config.safety)
        seen.red_prompt += ids
        seen.red_flagged += screened.flagged
        seen.red_probability += screened.probability
        looks = seen.red_team_looks(g, baseline)
    return seen.measure(gain, looks)


def _sample_pairs(
    policy: TrainablePolicy,
    base: LoadedModel,
    seen: GateSamples,
    heldout_prompts: list[list[int]],
    order: list[int],
    need: int,
    rng: random.Random,
    score: Callable[[torch.Tensor], torch.Tensor],
    config: TrainingConfig,
) -> None:
    """`need` more held-out pairs: candidate and live on the next prompts in `order`, each
    pair on one fresh seed."""
    questions = [order[(len(seen.gains) + i) % len(order)] for i in range(need)]
    seen.questions += questions
    prompts = [heldout_prompts[q] for q in questions]
    seeds = [rng.randrange(2**31) for _ in range(need)]
    seen.seeds += seeds
    names = [TRAINABLE] * need + [policy.reference_name] * need
    replies, ended = gate_replies(
        policy,
        base,
        prompts * 2,
        names,
        seeds * 2,
        config.ppo.max_new_tokens,
        config.ppo.temperature,
    )
    add_pairs(policy, base, seen, prompts, replies, ended, score, config)


def add_pairs(
    policy: TrainablePolicy,
    base: LoadedModel,
    seen: GateSamples,
    prompts: list[list[int]],
    replies: list[list[int]],
    ended: list[bool],
    score: Callable[[torch.Tensor], torch.Tensor],
    config: TrainingConfig,
) -> None:
    """Score a stage's held-out pairs (candidate replies, then live's) with the user's
    reward, and the candidate's KL to the base on its replies."""
    n = len(prompts)
    temperature = config.ppo.temperature
    batch, ref = sampling.base_pass(
        policy, base, prompts + prompts, replies, temperature, config.reward.features
    )
    scores = score(ref.features.cpu())
    candidate_batch = batch.rows(slice(0, n))
    with torch.no_grad():
        candidate = forward_batch(policy.peft, candidate_batch, temperature)
    mask = candidate_batch.response_mask.float()
    texts = sampling.texts(base, replies)
    # identical replies (the same seed often gives the same text) are a tie, whatever
    # rounding the two scores carry
    same = torch.tensor([replies[i] == replies[n + i] for i in range(n)])
    seen.gains += (scores[:n] - scores[n:]).masked_fill(same, 0.0).tolist()
    seen.candidate_scores += scores[:n].tolist()
    seen.live_scores += scores[n:].tolist()
    seen.kl_sums += ((candidate.logprobs - ref.logprobs[:n]) * mask).sum(-1).tolist()
    seen.reply_tokens += int(mask.sum().item())
    seen.candidate_texts += texts[:n]
    seen.live_texts += texts[n:]
    seen.candidate_ended += ended[:n]
    seen.live_ended += ended[n : 2 * n]


def base_replies(
    policy: TrainablePolicy,
    base: LoadedModel,
    heldout_prompts: list[list[int]],
    pairs: HeldOutPairs,
    rows: int,
    config: TrainingConfig,
) -> list[str]:
    """The base model's replies to the first `rows` gate pairs' questions with their seeds:
    what an adopted version is measured against when live is not the base."""
    n = min(rows, len(pairs.questions))
    replies, _ = gate_replies(
        policy,
        base,
        [heldout_prompts[q] for q in pairs.questions[:n]],
        [BASE] * n,
        pairs.seeds[:n],
        config.ppo.max_new_tokens,
        config.ppo.temperature,
    )
    return sampling.texts(base, replies)


BASELINE_BATCH_ROWS = 96


def red_team_prompts(prompting: Prompting, config: TrainingConfig) -> list[list[int]]:
    """The safety floor's red-team prompts as the model sees them (none when the floor is off)."""
    if not config.safety.enabled:
        return []
    return [prompting.ids([{"role": "user", "content": p}]) for p in safety.red_team_prompts()]


def red_team_baseline_key(
    base: LoadedModel, quantize: str, prompting: Prompting, config: TrainingConfig
) -> str:
    """A hash of everything the base's red-team baseline depends on: the base model, the
    prompts as the model sees them (prompt texts, system prompt, chat template, tokenizer), the
    sampling settings and seeds, and the classifier's threshold. The serving node looks the
    stored baseline up by it; a round worker that has to sample it returns it under it."""
    settings = {
        "model": base.source,
        "weights": str(base.model.dtype),  # fp32, bf16, or NF4's compute
        "round_weights": str(base.training_dtype),  # the baseline is sampled by the round's copy
        "quantize": quantize,
        "classifier": safety.classifier_version(),
        "prompts": red_team_prompts(prompting, config),
        "system_prompt": prompting.system_prompt,
        "temperature": config.ppo.temperature,
        "max_new_tokens": config.gate.red_team_max_new_tokens,
        "seeds": config.gate.base_red_team_seeds,
        "threshold": config.safety.threshold,
    }
    return hash_text(json.dumps(settings, sort_keys=True))


class RedTeam:
    """The red-team prompts and the base's (offensive share, mean offensive probability) on
    each, over `base_red_team_seeds` replies: what every candidate's safety is measured against.

    The base is frozen, so the baseline is sampled once: the serving node stores it (under
    `red_team_baseline_key`) and hands it to every round (`known`); a worker that was handed
    none samples it (minutes on a real model) and keeps it for its later rounds."""

    def __init__(
        self,
        policy: Callable[[], TrainablePolicy],
        base: LoadedModel,
        prompting: Prompting,
        config: TrainingConfig,
    ):
        self.policy, self.base, self.config = policy, base, config
        self.prompts = red_team_prompts(prompting, config)
        self._baseline: list[tuple[float, float]] | None = None

    def known(self, baseline: list[tuple[float, float]] | None) -> None:
        """The stored baseline, if the serving node has one (None keeps what this worker has)."""
        if baseline is not None:
            self._baseline = baseline

    def held(self) -> list[tuple[float, float]] | None:
        """The baseline this worker holds (None: never needed yet, so never sampled)."""
        return self._baseline

    def baseline(self) -> list[tuple[float, float]]:
        if self._baseline is None:
            self._baseline = self._sample_baseline()
        return self._baseline

    def _sample_baseline(self) -> list[tuple[float, float]]:
        prompts, g = self.prompts, self.config.gate
        k = g.base_red_team_seeds
        asked = [p for p in prompts for _ in range(k)]
        replies: list[list[int]] = []
        # many rows at a time: a bigger batch samples more tokens per second on a CPU (README
        # "A round's sampling"); every row has its own seed, so the batching changes no reply
        for start in range(0, len(asked), BASELINE_BATCH_ROWS):
            rows = asked[start : start + BASELINE_BATCH_ROWS]
            seeds = list(range(start, start + len(rows)))
            replies += sampling.sample(
                self.policy(),
                self.base,
                rows,
                [BASE] * len(rows),
                seeds,
                g.red_team_max_new_tokens,
                self.config.ppo.temperature,
            )[0]
        screened = safety.screen(sampling.texts(self.base, replies), self.config.safety)
        return [
            (
                sum(screened.flagged[i * k : (i + 1) * k]) / k,
                sum(screened.probability[i * k : (i + 1) * k]) / k,
            )
            for i in range(len(prompts))
        ]
