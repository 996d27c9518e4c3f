"""Conversations: chat (streamed or whole), A/B compares, batched generation, reading back."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from assistant import generation
from assistant.config import (
    GenerationConfig,
)
from assistant.core import AssistantCore, User, clean_text
from assistant.errors import (
    InvalidInput,
)
from assistant.threads import in_work_thread
from storage import records
from storage.db import writing

log = logging.getLogger(__name__)


SEED_RANGE = 2**31


@dataclass(frozen=True)
class Reply:
    id: str
    conversation_id: str
    text: str
    adapter_version: int  # 0 = the bare base model
    ended_by_model: bool = True  # False when the token limit cut the reply off


@dataclass(frozen=True)
class Pair:
    id: str
    a: Reply
    b: Reply


@dataclass(frozen=True)
class Delta:
    """Text a streaming reply has added since the last Delta."""

    text: str


class Conversations(AssistantCore):
    """The `Assistant`'s chat and reading-back methods."""

    def conversations(self, user: str) -> list[dict[str, Any]]:
        """The user's conversations, newest first; `learn`: whether it teaches their assistant."""
        u = self.user(user)
        return [
            {"id": r["id"], "title": r["title"], "created": r["created"], "learn": bool(r["learn"])}
            for r in records.list_conversations(self.store.db, u.id)
        ]

    def messages(self, user: str, conversation_id: str) -> list[dict[str, Any]]:
        """A conversation as stored, with each reply's standing thumb."""
        u = self.user(user)
        self._conversation(u, conversation_id)
        keys = ("id", "role", "text", "adapter_version", "pair_id", "thumb")
        return [
            {k: r[k] for k in keys}
            for r in records.conversation_with_thumbs(self.store.db, conversation_id)
        ]

    def _settings(self, gen: dict[str, Any]) -> GenerationConfig:
        settings = self.config.generation.with_overrides(gen, self.config.chat.max_new_tokens_limit)
        if settings.seed is None:
            return replace(settings, seed=secrets.randbelow(SEED_RANGE))
        return settings

    def _prompt_ids(self, turns: list[dict[str, str]], settings: GenerationConfig) -> list[int]:
        budget = self.config.chat.context_tokens - settings.max_new_tokens
        return generation.prompt_token_ids(
            self.base.tokenizer, turns, self.config.chat.system_prompt, budget
        )

    def _turns(self, conversation_id: str | None, text: str) -> list[dict[str, str]]:
        seen = records.context_before(self.store.db, conversation_id) if conversation_id else []
        return generation.turns(seen) + [{"role": "user", "content": text}]

    def _stream(
        self,
        user_ids: Sequence[str],
        prompts: Sequence[list[int]],
        settings: GenerationConfig,
        seeds: Sequence[int],
    ) -> Iterator[tuple[list[list[int]], list[bool], list[int]]]:
        """Sample one reply per prompt with each user's live adapter, batched with whatever
        else is being generated; yields progress and the adapter version of each row."""
        versions: list[int] = []

        def steps() -> Iterator[list[int]]:
            for tokens, row_versions in self.batcher.stream(user_ids, prompts, settings, seeds):
                versions[:] = row_versions
                yield tokens

        for rows, ended in generation.reply_progress(steps(), len(prompts), self.base.eos_ids):
            yield rows, ended, versions

    def _complete(
        self,
        user_ids: Sequence[str],
        prompts: Sequence[list[int]],
        settings: GenerationConfig,
        seeds: Sequence[int],
    ) -> tuple[list[generation.Sample], list[int]]:
        """Whole replies, with the adapter version each row ran on."""
        rows, ended, versions = generation.last(self._stream(user_ids, prompts, settings, seeds))
        return generation.to_samples(self.base.tokenizer, rows, ended), versions

    def _prepare(self, user: str, message: str, conversation_id: str | None, gen: dict[str, Any]):
        u = self.user(user)
        text = clean_text(message, "message", self.config.chat.max_message_chars)
        settings = self._settings(gen)
        if conversation_id is not None:
            self._conversation(u, conversation_id)
        prompt = self._prompt_ids(self._turns(conversation_id, text), settings)
        return u, text, settings, prompt

    def _save(
        self,
        user: User,
        conversation_id: str | None,
        text: str,
        answers: list[dict[str, Any]],
        pair: bool,
    ) -> tuple[str, list[records.Row]]:
        """Store the prompt and its answer(s), and the pair if any, in one transaction."""
        db = self.store.db
        pair_id = records.new_id() if pair else None
        with writing(db):
            if conversation_id is None:
                conversation_id = records.add_conversation(db, user.id, text)["id"]
            rows = records.add_messages(
                db,
                conversation_id,
                user.id,
                [{"role": "user", "text": text, "pair_id": pair_id}]
                + [{"role": "assistant", "pair_id": pair_id, **a} for a in answers],
            )
            if pair_id is not None:
                records.add_pair(
                    db,
                    pair_id,
                    user.id,
                    conversation_id,
                    rows[0]["id"],
                    rows[1]["id"],
                    rows[2]["id"],
                )
        return conversation_id, rows

    @staticmethod
    def _answer(
        sample: generation.Sample,
        version: int,
        settings: GenerationConfig,
        compare: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        generated = {
            "max_new_tokens": settings.max_new_tokens,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "seed": settings.seed,
            "ended_by_model": sample.finished,
        }
        if compare is not None:
            generated["compare"] = compare
        return {"text": sample.text, "adapter_version": version, "generation": generated}

    def chat_stream(
        self, user: str, message: str, conversation_id: str | None = None, **gen: Any
    ) -> Iterator[Delta | Reply]:
        """Like `chat`, but yields `Delta`s as tokens arrive, then the stored `Reply`.

        Arguments are checked before this returns; nothing is stored until the reply is whole,
        so an abandoned stream leaves no half reply behind.
        """
        u, text, settings, prompt = self._prepare(user, message, conversation_id, gen)

        def run() -> Iterator[Delta | Reply]:
            tokenizer = self.base.tokenizer
            shown = ""
            progress = None
            for progress in self._stream([u.id], [prompt], settings, [settings.seed]):
                so_far = tokenizer.decode(progress[0][0], skip_special_tokens=True).lstrip()
                if len(so_far) > len(shown) and not so_far.endswith("\ufffd"):
                    yield Delta(so_far[len(shown) :])
                    shown = so_far
            assert progress is not None  # max_new_tokens >= 1: at least one step ran
            rows, ended, versions = progress
            sample = generation.to_samples(tokenizer, rows, ended)[0]
            # held back above: text ending in half a character, which the token limit may
            # leave for good ("\ufffd" in the stored text too); the deltas still add up to it
            if len(sample.text) > len(shown):
                yield Delta(sample.text[len(shown) :])
            conv_id, stored = self._save(
                u, conversation_id, text, [self._answer(sample, versions[0], settings)], pair=False
            )
            yield Reply(stored[1]["id"], conv_id, sample.text, versions[0], sample.finished)

        return run()

    def chat(
        self, user: str, message: str, conversation_id: str | None = None, **gen: Any
    ) -> Reply:
        """Answer `message` with the user's live adapter and store both turns."""
        *_, reply = self.chat_stream(user, message, conversation_id, **gen)
        assert isinstance(reply, Reply)
        return reply

    def compare(
        self, user: str, message: str, conversation_id: str | None = None, **gen: Any
    ) -> Pair:
        """Two answers of the user's live adapter for an A/B choice: `compare_candidates`
        samples (seeds s, s+1, ...) in one batched call, of which the two whose choice teaches
        the user's reward head the most are shown (`online_rl.pairs`). Each shown answer
        stores its own seed and, under "compare", every candidate's seed, which two were shown
        and why, so the pair can be replayed."""
        u, text, settings, prompt = self._prepare(user, message, conversation_id, gen)
        k = self.config.chat.compare_candidates
        seeds = [(settings.seed + i) % SEED_RANGE for i in range(k)]
        samples, versions = self._complete([u.id] * k, [prompt] * k, settings, seeds)
        i, j, why = self._pick_pair(u, prompt, samples)
        drawn = {"seeds": seeds, "shown": [i, j], "why": why}
        answers = [
            self._answer(samples[n], versions[n], replace(settings, seed=seeds[n]), drawn)
            for n in (i, j)
        ]
        conv_id, stored = self._save(u, conversation_id, text, answers, pair=True)
        a, b = (
            Reply(r["id"], conv_id, r["text"], r["adapter_version"], samples[n].finished)
            for r, n in zip(stored[1:], (i, j), strict=True)
        )
        return Pair(stored[0]["pair_id"], a, b)

    def regenerate(self, user: str, message_id: str, **gen: Any) -> Pair:
        """A new reply to the same turn as the conversation's last reply (same context, a new
        seed); the earlier reply (a, with its thumb) and the new one (b) become an A/B pair the
        user may decide with `choose`. Until decided, the conversation continues with the new
        one. Refused for a reply that is not the last, or already one of a pair."""
        u = self.user(user)
        reply = self._message(u, message_id)
        if reply["role"] != "assistant":
            raise InvalidInput("only the assistant's replies can be regenerated")
        if reply["pair_id"] is not None:
            raise InvalidInput("this reply is one of two already: pick the better one instead")
        db = self.store.db
        stored = records.conversation_messages(db, reply["conversation_id"])
        if stored[-1]["id"] != reply["id"]:
            raise InvalidInput("only the last reply of a conversation can be regenerated")
        prompt = stored[-2]
        settings = self._settings(gen)
        seen = records.context_before(db, reply["conversation_id"], prompt)
        turns = generation.turns(seen) + [{"role": "user", "content": prompt["text"]}]
        ids = self._prompt_ids(turns, settings)
        samples, versions = self._complete([u.id], [ids], settings, [settings.seed])
        pair_id = records.new_id()
        with writing(db):
            now_last = records.conversation_messages(db, reply["conversation_id"])[-1]
            if now_last["id"] != reply["id"]:  # the conversation went on meanwhile
                raise InvalidInput("the conversation went on meanwhile; nothing was stored")
            answer = self._answer(samples[0], versions[0], settings)
            (new,) = records.add_messages(
                db, reply["conversation_id"], u.id, [{"role": "assistant", **answer}]
            )
            records.add_pair(
                db,
                pair_id,
                u.id,
                reply["conversation_id"],
                prompt["id"],
                reply["id"],
                new["id"],
                kind="regenerate",
            )
            records.join_pair(db, pair_id, [prompt["id"], reply["id"], new["id"]])
        ended = records.message_generation(reply).get("ended_by_model", True)
        return Pair(
            pair_id,
            Reply(
                reply["id"],
                reply["conversation_id"],
                reply["text"],
                reply["adapter_version"],
                ended,
            ),
            Reply(new["id"], new["conversation_id"], new["text"], versions[0], samples[0].finished),
        )

    def branch(self, user: str, message_id: str, edited: str | None = None) -> str:
        """Start a new conversation from one of the user's own messages, to continue with an
        edited version of it: the new conversation holds what the model saw before that
        message (copies; an A/B comparison's prompt and kept answer only), and the original
        conversation, with its thumbs and choices, stays as it is. Returns the new id.
        `edited`, the text that will be sent in it, is checked first: refused, nothing is made."""
        u = self.user(user)
        if edited is not None:
            clean_text(edited, "message", self.config.chat.max_message_chars)
        message = self._message(u, message_id)
        if message["role"] != "user":
            raise InvalidInput("only your own messages can be edited")
        db = self.store.db
        original = records.get_conversation(db, message["conversation_id"])
        seen = records.context_before(db, message["conversation_id"], message)
        with writing(db):
            title = f"{original['title']} (edited)"
            conversation_id = records.add_conversation(db, u.id, title)["id"]
            records.set_conversation_learn(db, conversation_id, bool(original["learn"]))
            copies = [
                {"role": m["role"], "text": m["text"], "adapter_version": m["adapter_version"]}
                | ({"generation": records.message_generation(m)} if m["generation"] else {})
                for m in seen
            ]
            if copies:
                records.add_messages(db, conversation_id, u.id, copies)
        return conversation_id

    def _pick_pair(
        self, user: User, prompt: list[int], samples: list[generation.Sample]
    ) -> tuple[int, int, str]:
        """Which two candidates to show; the first two when there are only two, or when the
        picker fails (the Compare still works; the failure is logged)."""
        if len(samples) == 2:
            return 0, 1, "as drawn"
        eos = self.base.tokenizer.eos_token_id
        replies = [s.token_ids + ([eos] if s.finished else []) or [eos] for s in samples]
        try:
            return in_work_thread(
                self.store, lambda: self.trainer.pick_pair(user.id, prompt, replies)
            )
        except Exception as e:  # a broken picker must not take Compare down with it
            log.exception("picking a Compare's pair failed; showing the first two")
            return 0, 1, f"as drawn (picker failed: {type(e).__name__})"

    def generate(self, user: str, prompts: Sequence[str], **gen: Any) -> list[str]:
        """Batched single-turn replies with the user's live adapter; stores nothing."""
        return [s.text for s in self.sample_replies(user, prompts, **gen)]

    def sample_replies(
        self, user: str, prompts: Sequence[str], **gen: Any
    ) -> list[generation.Sample]:
        """Like `generate`, with each reply's tokens and whether the model ended it (EOS).

        Row i uses seed `seed + i`, so two models asked with the same seed are compared on
        the same random draws (what evaluations want).
        """
        u = self.user(user)
        if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
            raise InvalidInput("prompts must be a non-empty list of strings")
        texts = [clean_text(p, "prompt", self.config.chat.max_message_chars) for p in prompts]
        settings = self._settings(gen)
        ids = [self._prompt_ids([{"role": "user", "content": t}], settings) for t in texts]
        seeds = [(settings.seed + i) % SEED_RANGE for i in range(len(ids))]
        samples, _ = self._complete([u.id] * len(ids), ids, settings, seeds)
        return samples
