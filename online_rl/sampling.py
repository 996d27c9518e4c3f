"""The round's passes over its trainable copy of the base: sampling replies and the base pass.

Every phase of a round (PPO's rollouts, the gate's replies, the red-team baseline) samples
through `sample`, and every score comes from `base_pass`: one pass of the bare base model gives
the KL reference's log-probs and the reward head's features together. They are module
functions, so a test can wrap one for the whole round.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from assistant import generation
from assistant.config import GenerationConfig
from assistant.model import LoadedModel
from online_rl.features import FeatureSpec
from online_rl.policy import TRAINABLE, Batch, Outputs, TrainablePolicy, forward_batch, make_batch
from online_rl.user_data import Example


def sample(
    policy: TrainablePolicy,
    base: LoadedModel,
    prompts: Sequence[list[int]],
    adapter_names: Sequence[str],
    seeds: Sequence[int],
    max_new_tokens: int,
    temperature: float,
) -> tuple[list[list[int]], list[bool]]:
    """One reply per prompt from the named adapters (TRAINABLE, LIVE or BASE per row), and
    whether the model ended it. A reply the model ended carries its EOS, so the loss sees the
    stop it chose; an empty one is a lone EOS. Top-p is 1: PPO scores the full distribution."""
    settings = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=1.0)
    with policy.sampling_forward(adapter_names) as forward:
        steps = (t.tolist() for t in decode(forward, base, prompts, seeds, settings))
        rows, ended = generation.last(generation.reply_progress(steps, len(prompts), base.eos_ids))
    return with_eos(rows, ended, base.tokenizer.eos_token_id), list(ended)


def decode(
    forward: generation.Forward,
    base: LoadedModel,
    prompts: Sequence[list[int]],
    seeds: Sequence[int],
    settings: GenerationConfig,
) -> Iterator[torch.Tensor]:
    """Each decoding step's token per row (`generation.stream_tokens`) with this base's end
    and pad tokens."""
    pad = base.tokenizer.pad_token_id
    return generation.stream_tokens(
        forward, prompts, settings, seeds, base.eos_ids, pad, base.device
    )


def with_eos(rows: Sequence[Sequence[int]], ended: Sequence[bool], eos: int) -> list[list[int]]:
    """Replies as the loss reads them: one the model ended carries the tokenizer's EOS (which
    of the model's end tokens it drew), so the loss sees the stop it chose; an empty reply is a
    lone EOS."""
    replies = [list(r) + [eos] if e else list(r) for r, e in zip(rows, ended, strict=True)]
    return [r if r else [eos] for r in replies]


@dataclass
class Sampled:
    """Replies sampled from the trainable adapter, with what the sampler saw on the way: each
    reply token's log-prob at the sampling temperature and the value head's estimate before it
    (response columns laid out as `batch` lays them out; 0 past a reply's end). PPO takes them
    as its "old" ones, as CleanRL's rollout buffer does, instead of a second pass."""

    replies: list[list[int]]
    ended: list[bool]
    logprobs: torch.Tensor  # (B, R)
    values: torch.Tensor  # (B, R)


def sample_rollouts(
    policy: TrainablePolicy,
    base: LoadedModel,
    prompts: Sequence[list[int]],
    seeds: Sequence[int],
    max_new_tokens: int,
    temperature: float,
    value_head: nn.Module,
) -> Sampled:
    """`sample` on the trainable adapter, keeping each token's log-prob and value (above)."""
    settings = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=1.0)
    eos = base.tokenizer.eos_token_id
    seen: list[object] = []
    logprobs, eos_logprobs, values, steps = [], [], [], []
    decoding = policy.sampling_forward([TRAINABLE] * len(prompts), hidden_states=True)
    with policy.merged(), decoding as forward:

        def recorded(*args: object) -> object:
            seen[:] = [forward(*args)]
            return seen[0]

        # each step's output is in `seen` until the next step runs
        for token in decode(recorded, base, prompts, seeds, settings):
            out = seen[0]
            step_logprobs = torch.log_softmax(out.logits[:, -1].float() / temperature, -1)
            logprobs.append(step_logprobs.gather(-1, token[:, None]).squeeze(-1))
            eos_logprobs.append(step_logprobs[:, eos])  # a reply ends with the tokenizer's EOS
            with torch.no_grad():
                values.append(value_head(out.hidden_states[-1][:, -1].float()).squeeze(-1))
            steps.append(token.tolist())
    rows, ended = generation.last(generation.reply_progress(steps, len(prompts), base.eos_ids))
    replies = with_eos(rows, ended, eos)
    width = max(map(len, replies))
    lp, lp_eos, v = (torch.stack(x, 1)[:, :width].cpu() for x in (logprobs, eos_logprobs, values))
    lp_out, v_out = torch.zeros(len(replies), width), torch.zeros(len(replies), width)
    for row, (reply, done) in enumerate(zip(replies, ended, strict=True)):
        n = len(reply)
        lp_out[row, :n], v_out[row, :n] = lp[row, :n], v[row, :n]
        if done:
            lp_out[row, n - 1] = lp_eos[row, n - 1]
    return Sampled(replies, list(ended), lp_out, v_out)


def texts(base: LoadedModel, replies: Sequence[list[int]]) -> list[str]:
    """The replies as the user would read them."""
    return [base.tokenizer.decode(r, skip_special_tokens=True).strip() for r in replies]


def batch(base: LoadedModel, prompts: Sequence[list[int]], replies: Sequence[list[int]]) -> Batch:
    """Prompt and reply rows, padded for one forward pass."""
    return make_batch(list(prompts), list(replies), base.tokenizer.pad_token_id, base.device)


def examples_batch(base: LoadedModel, examples: Sequence[Example]) -> Batch:
    """`batch` of (prompt, reply) examples: what the supervised and DPO steps train on."""
    return batch(base, [e.prompt for e in examples], [e.reply for e in examples])


def base_pass(
    policy: TrainablePolicy,
    base: LoadedModel,
    prompts: Sequence[list[int]],
    replies: Sequence[list[int]],
    temperature: float,
    spec: FeatureSpec,
) -> tuple[Batch, Outputs]:
    """The batch, with the bare base's log-probs (the KL reference) and reward features."""
    rows = batch(base, prompts, replies)
    with torch.no_grad(), policy.base_only():
        out = forward_batch(policy.peft, rows, temperature, feature_spec=spec)
    assert out.features is not None
    return rows, out
