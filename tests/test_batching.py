"""Continuous batching: users who chat at once share forward passes, and nobody's text changes.

Rows join a running batch between steps (their KV cache padded on the left and stacked), leave
as soon as they end, and each keeps its own adapter, settings and seed.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from assistant import Assistant
from assistant.batching import BatcherClosed, DecodeBatcher, keep_rows, merge_caches
from tests.test_adapters import publish_adapter

SAMPLED = {"max_new_tokens": 12, "temperature": 0.8}


def prompt_ids(asst: Assistant, text: str) -> list[int]:
    return asst._prompt_ids([{"role": "user", "content": text}], asst._settings({}))


def alone(asst: Assistant, user: str, text: str, seed: int, **gen: object) -> list[int]:
    """A reply's tokens generated with nothing else in the batch (the reference)."""
    settings = asst._settings({**SAMPLED, **gen, "seed": seed})
    rows, _, _ = list(
        asst._stream([asst.user(user).id], [prompt_ids(asst, text)], settings, [seed])
    )[-1]
    return list(rows[0])


class CountingForward:
    """Counts the batcher's forward passes and the rows in each."""

    def __init__(self, batcher: DecodeBatcher):
        self.rows: list[int] = []
        inner = batcher._forward

        def forward(names: list[str], **inputs: object):
            self.rows.append(len(names))
            return inner(names, **inputs)

        batcher._forward = forward  # type: ignore[method-assign]


def test_joined_and_merged_caches_give_the_same_next_token_as_separate_ones(
    asst: Assistant,
) -> None:
    model = asst.base.model
    a = prompt_ids(asst, "hello")
    b = prompt_ids(asst, "a much longer question about the weather tomorrow")

    device = asst.base.device

    def prefill(ids: list[int]):
        x = torch.tensor([ids], device=device)
        out = model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=True)
        return out.past_key_values, torch.ones_like(x)

    with torch.no_grad():
        cache_a, mask_a = prefill(a)
        cache_b, mask_b = prefill(b)
        cache, mask = merge_caches(cache_a, mask_a, cache_b, mask_b)
        assert mask.shape == (2, len(b)) and int(mask[0].sum()) == len(a)
        nxt = torch.tensor([[5], [7]], device=device)
        mask1 = torch.cat([mask, torch.ones_like(nxt)], -1)
        positions = torch.tensor([[len(a)], [len(b)]], device=device)
        both = model(
            input_ids=nxt,
            attention_mask=mask1,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        ).logits[:, -1]
        separate = []
        for ids, token in ((a, 5), (b, 7)):
            x = torch.tensor([ids + [token]], device=device)
            separate.append(model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, -1])
        # exact up to float noise in fp32; NF4 weights (the CUDA default) round more
        tol = 1e-2 if asst.base.quantized else 1e-4
        torch.testing.assert_close(both, torch.stack(separate), atol=tol, rtol=tol)
        # the short row leaves: the columns only the long one needed go, the cache shrinks
        mask2 = keep_rows(both_cache := cache, mask1, torch.tensor([0], device=device))
        assert mask2.shape == (1, len(a) + 1) and bool(mask2.all())
        assert both_cache.layers[0].keys.shape[0] == 1
        assert both_cache.layers[0].keys.shape[2] == len(a) + 1


@pytest.mark.parametrize(
    "shared_adapters, rows",
    [
        (2, ["alice", "bob", "alice", None]),
        (0, ["alice", "bob", "alice", None]),
        (2, ["alice"] * 2),
    ],
)
def test_stacked_lora_matches_peft_mixed_batch(
    asst: Assistant,
    alice: str,
    bob: str,
    tiny_model_dir: Path,
    shared_adapters: int,
    rows: list[str | None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The batched-matmul LoRA gives what peft's own per-row routing gives, with the two
    adapters' factors side by side (the default for two), copied per row, and one adapter
    for every row (a single user's stream: no column mask)."""
    monkeypatch.setattr("assistant.stacked_lora.SHARED_ADAPTERS", shared_adapters)
    publish_adapter(asst, tiny_model_dir, alice, 1, seed=1)
    publish_adapter(asst, tiny_model_dir, bob, 1, seed=2)
    ids = [asst.user(n).id if n else "nobody" for n in rows]
    prompt = prompt_ids(asst, "what is new")
    x = torch.tensor([prompt] * len(rows), device=asst.base.device)
    inputs = {"input_ids": x, "attention_mask": torch.ones_like(x)}
    with asst.adapters.lease(ids) as binding, torch.no_grad():
        names = binding.adapter_names
        stacked = asst.batcher._forward(names, **inputs).logits
        if shared_adapters:  # side by side: a column mask unless one adapter has every row
            masks = [m for *_, m in asst.batcher._lora._stacks.values()]
            assert all(m is None for m in masks) == (len(set(rows)) == 1)
        peft = asst.adapters.peft
        asst.batcher._lora.use(["__base__"] * len(rows))  # our hooks add nothing now ...
        peft.base_model.enable_adapter_layers()  # ... and peft's own path runs, to compare
        routed = peft(**inputs, adapter_names=names, logits_to_keep=1).logits
        bare = peft(**inputs, adapter_names=["__base__"] * len(rows), logits_to_keep=1).logits
        asst.batcher._lora.refresh()
    torch.testing.assert_close(stacked, routed, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(stacked[0], bare[0])  # the adapter does change the output
    if len(set(rows)) > 1:
        assert names[3] == "__base__" and names[0] == names[2] != names[1]
        assert not torch.allclose(stacked[0], stacked[1])  # the adapters do differ
        torch.testing.assert_close(stacked[3], bare[3], atol=1e-4, rtol=1e-4)


def test_concurrent_users_share_steps_and_each_gets_the_text_it_gets_alone(
    asst: Assistant, tiny_model_dir: Path
) -> None:
    users = [f"user{i}" for i in range(4)]
    for i, user in enumerate(users):
        asst.add_user(user, password="correct horse battery")
        if i % 2 == 0:  # two with their own adapter, two on the bare base
            publish_adapter(asst, tiny_model_dir, user, 1, seed=i + 1)
    questions = ["hi", "what is the weather like today", "tell me a joke", "why"]
    expected = [
        alone(asst, u, q, seed=10 + i)
        for i, (u, q) in enumerate(zip(users, questions, strict=True))
    ]
    assert len({tuple(e) for e in expected}) == len(expected)

    counter = CountingForward(asst.batcher)
    got: dict[int, list[int]] = {}
    start = threading.Barrier(len(users))

    def chat(i: int) -> None:
        start.wait()
        got[i] = alone(asst, users[i], questions[i], seed=10 + i)

    threads = [threading.Thread(target=chat, args=(i,)) for i in range(len(users))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(len(users))] == expected
    # they really ran together: some forward served several users, and far fewer forwards ran
    # than the replies' tokens added up
    assert max(counter.rows) > 1
    assert len(counter.rows) < sum(len(e) + 1 for e in expected)


def test_a_reply_that_joins_mid_way_and_one_that_leaves_early_keep_their_text(
    asst: Assistant, alice: str, bob: str, tiny_model_dir: Path
) -> None:
    publish_adapter(asst, tiny_model_dir, alice, 1, seed=3)
    long_ref = alone(asst, alice, "tell me everything", seed=1, max_new_tokens=24)
    short_ref = alone(asst, bob, "hi", seed=2, max_new_tokens=3)
    settings_long = asst._settings({**SAMPLED, "max_new_tokens": 24, "seed": 1})
    settings_short = asst._settings({**SAMPLED, "max_new_tokens": 3, "seed": 2})
    long_stream = asst._stream(
        [asst.user(alice).id], [prompt_ids(asst, "tell me everything")], settings_long, [1]
    )
    for _ in range(5):  # the long reply is under way ...
        next(long_stream)
    # ... when the short one joins, runs its three steps beside it and leaves
    short = list(asst._stream([asst.user(bob).id], [prompt_ids(asst, "hi")], settings_short, [2]))[
        -1
    ]
    rows, _, versions = list(long_stream)[-1]
    assert short[0][0] == short_ref and short[2] == [0]
    assert rows[0] == long_ref and versions == [1]


def test_an_abandoned_stream_leaves_the_batch_and_releases_its_adapter(
    asst: Assistant, alice: str, tiny_model_dir: Path
) -> None:
    publish_adapter(asst, tiny_model_dir, alice, 1, seed=3)
    settings = asst._settings({**SAMPLED, "max_new_tokens": 50, "seed": 0})
    stream = asst._stream([asst.user(alice).id], [prompt_ids(asst, "go on")], settings, [0])
    next(stream)
    assert sum(asst.adapters._leases.values()) == 1
    stream.close()  # the caller went away (a closed browser tab)
    asst.chat(alice, "still there?", **SAMPLED)  # the batcher is not stuck on the dead reply
    assert sum(asst.adapters._leases.values()) == 0


def test_closing_ends_a_reply_in_progress_with_a_clear_error(asst: Assistant, alice: str) -> None:
    stream = asst.chat_stream(alice, "a long story please", max_new_tokens=200, temperature=0.8)
    next(stream)
    asst.batcher.close()
    with pytest.raises(BatcherClosed):
        list(stream)
    with pytest.raises(BatcherClosed):
        asst.chat(alice, "anyone?")
    assert asst.conversations(alice) == []  # no half reply was stored


def test_rows_beyond_the_limit_wait_for_a_free_slot(asst: Assistant, alice: str) -> None:
    asst.batcher.max_rows = 2
    questions = ["one", "two things", "three more things"]
    expected = [alone(asst, alice, q, seed=i) for i, q in enumerate(questions)]
    counter = CountingForward(asst.batcher)
    got: dict[int, list[int]] = {}
    start = threading.Barrier(len(questions))

    def chat(i: int) -> None:
        start.wait()
        got[i] = alone(asst, alice, questions[i], seed=i)

    threads = [threading.Thread(target=chat, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(len(questions))] == expected
    assert max(counter.rows) == 2  # never more than the limit, and the limit was used


def test_a_reply_that_cannot_join_fails_alone(
    asst: Assistant, alice: str, bob: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A joining reply's error (its adapter vanished, its prefill ran out of memory) ends that
    reply only; the ones already running go on untouched."""
    reference = alone(asst, alice, "tell me everything", seed=1, max_new_tokens=20)
    settings = asst._settings({**SAMPLED, "max_new_tokens": 20, "seed": 1})
    running = asst._stream(
        [asst.user(alice).id], [prompt_ids(asst, "tell me everything")], settings, [1]
    )
    next(running)
    lease = asst.adapters.lease
    bob_id = asst.user(bob).id

    def failing_lease(user_ids):
        if bob_id in user_ids:
            raise OSError("adapter folder vanished")
        return lease(user_ids)

    monkeypatch.setattr(asst.adapters, "lease", failing_lease)
    with pytest.raises(OSError, match="vanished"):
        asst.chat(bob, "hi", **SAMPLED)
    rows, _, _ = list(running)[-1]
    assert rows[0] == reference


def test_a_round_between_its_steps_waits_while_a_reply_is_written(
    asst: Assistant, alice: str
) -> None:
    """Chat first: `_chat_first` (a round's `between_steps`) returns at once when nothing is
    being written, and waits while a reply is, until it ends or the bound passes."""
    asst.chat(alice, "warm up", max_new_tokens=2)  # the batcher exists, idle again
    assert asst.batcher.wait_until_idle(0.0)
    stream = asst.chat_stream(alice, "a long story please", max_new_tokens=200, temperature=0.8)
    next(stream)  # a reply is being written
    assert not asst.batcher.wait_until_idle(0.0)
    waited: list[bool] = []
    round_step = threading.Thread(target=lambda: waited.append(asst.batcher.wait_until_idle(60)))
    round_step.start()
    list(stream)  # the reply ends...
    round_step.join(timeout=60)
    assert waited == [True]  # ...and the waiting step goes on
    assert asst.batcher.wait_until_idle(0.0)
