"""What a round reads about a user, assembled from storage: clicks, prompts, examples, features.

Plain functions over the database; nothing here trains or samples. The one rule applied on the
way in is the safety floor's: a click that rewarded offensive text teaches nothing, to no head.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from assistant import generation
from assistant.config import HARMFUL_REASON
from online_rl import reward, safety
from storage import records
from storage.db import Store, writing


@dataclass
class Example:
    """A prompt and a reply as token ids (the reply ends with EOS when the model ended it)."""

    prompt: list[int]
    reply: list[int]


@dataclass
class UserFeedback:
    replies: list[records.Row]  # every reply that was clicked on
    feedback: reward.Feedback  # the clicks, as indices into `replies`
    demonstrations: list[records.Row]  # liked replies and A/B winners not thumbed down
    preferences: list[tuple[records.Row, records.Row]]  # (winner, loser) of decided A/B pairs
    dropped: int  # clicks that rewarded offensive text: no head, demonstration or pair uses them

    def counts(self) -> dict[str, int]:
        """What the round had to learn from (kept in its metrics)."""
        return {
            "feedback_events": len(self.feedback),
            "thumbs": len(self.feedback.thumbs),
            "pairs": len(self.feedback.pairs),
            "demonstrations": len(self.demonstrations),
            "preferences": len(self.preferences),
            "clicks_rewarding_offensive_text": self.dropped,
        }


@dataclass(frozen=True)
class Prompting:
    """How the model saw a conversation: its tokenizer, the system prompt, the token budgets."""

    tokenizer: Any
    system_prompt: str
    prompt_tokens: int  # the context window less the room a reply needs
    reply_tokens: int  # stored replies are cut to this (plus EOS), the rollouts' length

    def ids(self, turns: list[dict[str, str]]) -> list[int]:
        return generation.prompt_token_ids(
            self.tokenizer, turns, self.system_prompt, self.prompt_tokens
        )


def prompting_for(
    tokenizer: Any, system_prompt: str, context_tokens: int, reply_tokens: int
) -> Prompting:
    """A round's view of conversations: the context window less the room a rollout needs."""
    return Prompting(tokenizer, system_prompt, context_tokens - reply_tokens, reply_tokens)


def example(db: Any, prompting: Prompting, message: records.Row) -> Example:
    """The prompt a stored reply answered, and the reply, as the model saw them."""
    tokenizer = prompting.tokenizer
    turns = generation.turns(records.context_before(db, message["conversation_id"], message))
    reply = tokenizer(message["text"], add_special_tokens=False)["input_ids"]
    if records.message_generation(message).get("ended_by_model", True):
        reply = [*reply, tokenizer.eos_token_id]
    return Example(prompting.ids(turns), reply[: prompting.reply_tokens + 1])


def user_feedback(db: Any, user_id: str | None, config: safety.SafetyConfig) -> UserFeedback:
    """One user's (or everyone's, for None) clicks, in the shapes the round needs."""
    rated = records.rated_replies(db, user_id)
    pairs = records.decided_pairs(db, user_id)
    replies: dict[str, records.Row] = {r["id"]: r for r in rated}
    for p in pairs:
        for key in ("answer_a_id", "answer_b_id"):
            if p[key] not in replies:
                message = records.get_message(db, p[key])
                if message is not None:
                    replies[message["id"]] = message
    pairs = [p for p in pairs if p["answer_a_id"] in replies and p["answer_b_id"] in replies]
    texts = [r["text"] for r in replies.values()]
    flagged = {m for m, bad in zip(replies, safety.offensive(texts, config), strict=True) if bad}
    flagged |= {r["id"] for r in rated if r["reason"] == HARMFUL_REASON}

    def rewards_flagged(p: records.Row) -> bool:
        sides = {"a": [p["answer_a_id"]], "b": [p["answer_b_id"]]}
        kept = sides.get(p["winner"], [p["answer_a_id"], p["answer_b_id"]])
        return p["winner"] != "both_bad" and any(m in flagged for m in kept)

    kept_rated = [r for r in rated if not (r["thumb"] > 0 and r["id"] in flagged)]
    kept_pairs = [p for p in pairs if not rewards_flagged(p)]
    index = {m: i for i, m in enumerate(replies)}
    feedback = reward.Feedback(
        pairs=[(index[p["answer_a_id"]], index[p["answer_b_id"]], p["winner"]) for p in kept_pairs],
        thumbs=[(index[r["id"]], r["thumb"]) for r in kept_rated],
    )
    thumbed_down = {r["id"] for r in rated if r["thumb"] < 0}
    decided = [p for p in kept_pairs if p["winner"] in ("a", "b")]
    ordered = [
        (p["answer_a_id"], p["answer_b_id"])
        if p["winner"] == "a"
        else (p["answer_b_id"], p["answer_a_id"])
        for p in decided
    ]
    liked = [r for r in kept_rated if r["thumb"] > 0]
    winners = [replies[w] for w, _ in ordered]
    demos = {m["id"]: m for m in liked + winners if m["id"] not in thumbed_down}
    dropped = len(rated) - len(kept_rated) + len(pairs) - len(kept_pairs)
    return UserFeedback(
        list(replies.values()),
        feedback,
        list(demos.values()),
        [(replies[w], replies[lo]) for w, lo in ordered],
        dropped,
    )


def user_prompts(
    db: Any, prompting: Prompting, user_id: str, pool: int, heldout_share: float
) -> tuple[list[list[int]], list[list[int]], list[str]]:
    """(rollout prompts, held-out prompts, the held-out prompts' texts) from the user's `pool`
    most recent messages, deduplicated. The split is by a hash of the text, so a prompt stays
    on its side."""
    seen: dict[str, list[int]] = {}
    for m in records.user_prompts(db, user_id, pool):
        if m["text"] in seen:
            continue
        turns = generation.turns(records.context_before(db, m["conversation_id"], m) + [m])
        seen[m["text"]] = prompting.ids(turns)
    ordered = sorted(seen.items(), key=lambda kv: hash_text(kv[0]))
    n_heldout = max(1, round(len(ordered) * heldout_share))
    held_out = [ids for _, ids in ordered[:n_heldout]]
    train = [ids for _, ids in ordered[n_heldout:]] or held_out
    return train, held_out, [text for text, _ in ordered[:n_heldout]]


def cached_features(
    db: Any,
    prompting: Prompting,
    messages: Sequence[records.Row],
    model_key: str,
    kind: str,
    compute: Callable[[list[tuple[list[int], list[int]]]], torch.Tensor],
) -> torch.Tensor:
    """The reward features of these stored replies: from the cache, or computed (`compute` on
    their (prompt, reply) ids) and cached, per message, model and feature kind
    (`FeatureSpec.stored_kind`)."""
    cached = records.get_features(db, (m["id"] for m in messages), model_key, kind)
    missing = [m for m in messages if m["id"] not in cached]
    if missing:
        examples = [example(db, prompting, m) for m in missing]
        x = compute([(e.prompt, e.reply) for e in examples])
        rows = [
            (m["id"], m["user_id"], x[i].numpy().astype("<f4").tobytes())
            for i, m in enumerate(missing)
        ]
        records.put_features(db, model_key, kind, rows)
        cached.update({m: v for m, _, v in rows})
    return torch.stack(
        [torch.frombuffer(bytearray(cached[m["id"]]), dtype=torch.float32) for m in messages]
    )


@dataclass(frozen=True)
class LikedPool:
    """A user's liked rollout samples, the newest `keep`, stored per base model with their
    reward features; a sample whose features are of another kind than the head now reads is
    re-featured (`compute`) when the pool is read."""

    store: Store
    model_key: str
    kind: str  # the features' `FeatureSpec.stored_kind`
    keep: int
    compute: Callable[[list[tuple[list[int], list[int]]]], torch.Tensor]

    def read(self, user_id: str) -> list[tuple[Example, torch.Tensor]]:
        db = self.store.db
        rows = records.list_liked_samples(db, user_id, self.model_key, self.keep)
        stale = [r for r in rows if r["kind"] != self.kind]
        if stale:
            x = self.compute([(r["prompt"], r["reply"]) for r in stale])
            fresh = {r["id"]: x[i].numpy().astype("<f4").tobytes() for i, r in enumerate(stale)}
            records.set_liked_vectors(db, self.kind, fresh)
            rows = [r | {"vector": fresh.get(r["id"], r["vector"])} for r in rows]
        return [
            (
                Example(r["prompt"], r["reply"]),
                torch.frombuffer(bytearray(r["vector"]), dtype=torch.float32),
            )
            for r in rows
        ]

    def add(self, user_id: str, samples: list[tuple[Example, torch.Tensor]]) -> None:
        """Store newly liked samples and trim to the newest `keep`; a user deleted while the
        round ran gets nothing (checked under the write lock)."""
        rows = [(e.prompt, e.reply, x.numpy().astype("<f4").tobytes()) for e, x in samples]
        db = self.store.db
        with writing(db):
            if records.user_exists(db, user_id):
                records.add_liked_samples(db, user_id, self.model_key, self.kind, rows)
                records.trim_liked_samples(db, user_id, self.keep)

    def count(self, user_id: str) -> int:
        return records.liked_sample_count(self.store.db, user_id, self.model_key)


def hash_text(text: str) -> str:
    """A stable digest (Python's hash() changes between runs): prompt order, settings keys."""
    return hashlib.sha256(text.encode()).hexdigest()
