"""The round's passes over its trainable copy of the base: sampling replies and the base pass.

Every phase of a round (PPO's rollouts, the gate's replies, the red-team baseline) samples
through `sample`, and every score comes from `base_pass`: one pass of the bare base model gives
the KL reference's log-probs and the reward head's features together. They are module
functions, so a test can wrap one for the whole round.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from assistant import generation
from assistant.config import GenerationConfig
from assistant.model import LoadedModel
from online_rl.features import FeatureSpec
from online_rl.policy import Batch, Outputs, TrainablePolicy, forward_batch, make_batch
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
        rows, ended = generation.last(
            generation.stream_reply_tokens(
                forward,
                prompts,
                settings,
                seeds,
                base.eos_ids,
                base.tokenizer.pad_token_id,
                base.device,
            )
        )
    eos = base.tokenizer.eos_token_id
    replies = [list(r) + [eos] if e else list(r) for r, e in zip(rows, ended, strict=True)]
    return [r if r else [eos] for r in replies], list(ended)


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
