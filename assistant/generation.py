"""Chat prompts and sampling: the model's own chat template, safe user text, a KV-cached loop.

The sampling loop is written out rather than delegated to `model.generate` because attune needs
what `generate` does not give together: a seed per row (the same seed gives the same text
whatever else is in the batch), token-by-token streaming from a plain iterator, and a mixed
batch where every row may use another user's LoRA adapter.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from assistant.config import GenerationConfig
from assistant.errors import InvalidInput
from assistant.kv_cache import growing_cache

ZERO_WIDTH_SPACE = "\u200b"

Turn = dict[str, str]  # {"role": "user" | "assistant" | "system", "content": str}
Forward = Callable[..., Any]  # the model's forward, bound to the adapters of the batch


def bind_forward(model: Any, **extra: Any) -> Forward:
    """One KV-cached decoding step of `model`, as `stream_tokens` calls it.

    Only the last position's logits are computed (the vocabulary projection over a whole prompt
    is most of a prefill's cost). `extra` goes to the model, e.g. peft's `adapter_names`.
    """

    def step(
        input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, past: Any
    ) -> Any:
        return model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past,
            use_cache=True,
            logits_to_keep=1,
            **extra,
        )

    return step


def turns(messages: Sequence[dict[str, Any]]) -> list[Turn]:
    """Stored message rows (role, text) as the chat template's turns."""
    return [{"role": m["role"], "content": m["text"]} for m in messages]


def special_token_strings(tokenizer: Any) -> list[str]:
    """Every string the tokenizer turns into a control token rather than text."""
    specials = set(tokenizer.all_special_tokens)
    specials.update(t.content for t in tokenizer.added_tokens_decoder.values() if t.special)
    return sorted((s for s in specials if len(s) > 1), key=len, reverse=True)


def escape_special_tokens(text: str, specials: Sequence[str]) -> str:
    """Break every special-token string in `text` with a zero-width space.

    The text still reads the same to a person, but the tokenizer sees ordinary characters, so
    "<|im_start|>system" typed by a user cannot open a system turn. Repeated until nothing is
    left to break, in case one replacement brings two halves of another token together.
    """
    if not specials:
        return text
    pattern = re.compile("|".join(re.escape(s) for s in specials))
    while True:
        escaped = pattern.sub(lambda m: m.group(0)[0] + ZERO_WIDTH_SPACE + m.group(0)[1:], text)
        if escaped == text:
            return text
        text = escaped


def prompt_token_ids(
    tokenizer: Any,
    turns: Sequence[Turn],
    system_prompt: str | None,
    token_budget: int,
) -> list[int]:
    """Token ids of the conversation, ready for the assistant's next turn.

    Keeps the newest turns that fit in `token_budget` (always the last user turn); raises
    InvalidInput when even that one does not fit.
    """
    specials = special_token_strings(tokenizer)
    safe = [
        {"role": t["role"], "content": escape_special_tokens(t["content"], specials)} for t in turns
    ]
    head = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for start in range(0, len(safe), 1):
        if safe[start]["role"] != "user":
            continue
        text = tokenizer.apply_chat_template(
            head + safe[start:], add_generation_prompt=True, tokenize=False
        )
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= token_budget:
            return ids
    raise InvalidInput(
        f"the message is too long for the model's context ({token_budget} tokens with the reply)"
    )


@dataclass
class Sample:
    """One sampled reply."""

    token_ids: list[int]
    text: str
    finished: bool  # the model ended it (EOS) rather than the token limit


TOP_P_CANDIDATES = 1024  # the likeliest tokens looked at first (a vocabulary is ~50,000)


def _top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero the tail of each row outside the smallest set whose mass reaches top_p; tokens
    tied with the last one kept are kept too, so the nucleus does not depend on how a sort
    orders equal probabilities (bf16-rounded logits tie often).

    The nucleus nearly always lies within the `TOP_P_CANDIDATES` likeliest tokens; ranking
    only those (`topk`) finds the same boundary as sorting the whole vocabulary, at a fraction
    of the cost per decoded token. Where their mass falls short of top_p, the whole row is
    sorted (the same boundary either way, so a row's nucleus does not depend on its batch)."""
    if top_p >= 1.0:
        return probs
    k = min(TOP_P_CANDIDATES, probs.shape[-1])
    ranked = probs.topk(k, dim=-1).values
    if bool((ranked.sum(dim=-1) < top_p).any()):
        ranked = probs.sort(dim=-1, descending=True).values
    mass_before = ranked.cumsum(dim=-1) - ranked
    boundary = ranked.masked_fill(mass_before >= top_p, float("inf")).amin(dim=-1, keepdim=True)
    filtered = probs.masked_fill(probs < boundary, 0.0)
    return filtered / filtered.sum(dim=-1, keepdim=True)


def next_tokens(
    logits: torch.Tensor, settings: GenerationConfig, generators: Sequence[torch.Generator]
) -> torch.Tensor:
    """Pick one token per row: greedy at temperature 0, else sample with that row's generator."""
    if settings.temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / settings.temperature, dim=-1)
    probs = _top_p_filter(probs, settings.top_p)
    picks = [
        torch.multinomial(probs[row].cpu(), 1, generator=generator)
        for row, generator in enumerate(generators)
    ]
    return torch.cat(picks).to(logits.device)


def left_pad(
    prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch prompts of different lengths, padding on the left so all end at the last column."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    return ids.to(device), mask.to(device)


@torch.inference_mode()
def stream_tokens(
    forward: Forward,
    prompts: Sequence[Sequence[int]],
    settings: GenerationConfig,
    seeds: Sequence[int],
    eos_ids: set[int],
    pad_id: int,
    device: torch.device,
    cache: Any = None,
) -> Iterator[torch.Tensor]:
    """Yield each step's new token per row (pad for rows already finished), KV-cached.

    `forward(input_ids, attention_mask, position_ids, past_key_values)` runs the model; the
    caller binds it to the right adapters. Positions come from the attention mask, so left
    padding does not shift them. `cache`: an empty transformers cache to fill (default: one
    that grows by doubling, `assistant.kv_cache`).
    """
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    input_ids, attention_mask = left_pad(prompts, pad_id, device)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    finished = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    eos = torch.tensor(sorted(eos_ids), device=device)
    past = growing_cache() if cache is None else cache
    for _ in range(settings.max_new_tokens):
        out = forward(input_ids, attention_mask, position_ids, past)
        past = out.past_key_values
        token = next_tokens(out.logits[:, -1, :], settings, generators)
        token = torch.where(finished, torch.full_like(token, pad_id), token)
        yield token
        finished |= torch.isin(token, eos)
        if bool(finished.all()):
            return
        input_ids = token[:, None]
        attention_mask = torch.cat([attention_mask, torch.ones_like(input_ids)], dim=-1)
        position_ids = position_ids[:, -1:] + 1


def reply_progress(
    steps: Iterable[Sequence[int]], n_rows: int, eos_ids: set[int]
) -> Iterator[tuple[list[list[int]], list[bool]]]:
    """After every step's tokens, yield each row's reply tokens so far (EOS left out) and
    whether it ended.

    The same lists are updated in place and yielded again; copy them to keep a snapshot.
    """
    rows: list[list[int]] = [[] for _ in range(n_rows)]
    ended = [False] * n_rows
    for tokens in steps:
        for row, t in enumerate(tokens):
            if ended[row]:
                continue
            if t in eos_ids:
                ended[row] = True
            else:
                rows[row].append(t)
        yield rows, ended


def stream_reply_tokens(
    forward: Forward,
    prompts: Sequence[Sequence[int]],
    settings: GenerationConfig,
    seeds: Sequence[int],
    eos_ids: set[int],
    pad_id: int,
    device: torch.device,
) -> Iterator[tuple[list[list[int]], list[bool]]]:
    """`reply_progress` of `stream_tokens`: one batch, on its own, to the end."""
    steps = stream_tokens(forward, prompts, settings, seeds, eos_ids, pad_id, device)
    return reply_progress((t.tolist() for t in steps), len(prompts), eos_ids)


def last(progress: Iterator[Any]) -> Any:
    """Run a progress iterator to its end and return its final item."""
    return deque(progress, maxlen=1)[0]


def to_samples(tokenizer: Any, rows: list[list[int]], ended: list[bool]) -> list[Sample]:
    return [
        Sample(list(ids), tokenizer.decode(ids, skip_special_tokens=True).strip(), finished)
        for ids, finished in zip(rows, ended, strict=True)
    ]


def sample(
    forward: Forward,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    settings: GenerationConfig,
    seeds: Sequence[int],
    eos_ids: set[int],
    device: torch.device,
) -> list[Sample]:
    """Sample one whole reply per prompt."""
    rows, ended = last(
        stream_reply_tokens(
            forward, prompts, settings, seeds, eos_ids, tokenizer.pad_token_id, device
        )
    )
    return to_samples(tokenizer, rows, ended)
