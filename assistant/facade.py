"""`Assistant`: the one API that the UI, the CLI, training and outside evaluation call.

It checks every argument and every ownership before anything runs, turns bad input into the
errors of `assistant.errors`, and leaves the algorithms to the modules it calls.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from assistant import generation
from assistant import model as base_model
from assistant.adapters import AdapterRegistry
from assistant.config import (
    DEFAULT_MODEL,
    HARMFUL_REASON,
    AssistantConfig,
    ChatConfig,
    GenerationConfig,
    ModelConfig,
)
from assistant.errors import (
    AlreadyChosen,
    InvalidInput,
    NotFound,
    PermissionDenied,
    UnknownConversation,
    UnknownMessage,
    UnknownPair,
    UnknownUser,
    UserExists,
)
from assistant.passwords import MIN_PASSWORD_CHARS, hash_password, verify_password
from storage import adapters as adapter_files
from storage import export as feedback_export
from storage import records, user_export
from storage.db import Store, writing

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # online_rl imports assistant; the facade reaches it only at call time
    from assistant.batching import DecodeBatcher
    from online_rl.config import TrainingConfig
    from online_rl.rounds import Trainer, TrainReport
    from online_rl.scheduler import SchedulerConfig, TrainingScheduler

USER_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-@")
MAX_USER_NAME = 64
THUMBS = (1, -1, 0)
WINNERS = ("a", "b", "tie", "both_bad")
SEED_RANGE = 2**31


@dataclass(frozen=True)
class User:
    id: str
    name: str
    role: str
    created: str

    @property
    def is_operator(self) -> bool:
        return self.role == "operator"


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


def _user(row: records.Row) -> User:
    return User(row["id"], row["name"], row["role"], row["created"])


def _check_password(password: Any) -> None:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_CHARS:
        raise InvalidInput(f"password must be text of at least {MIN_PASSWORD_CHARS} characters")


def clean_text(text: Any, what: str, limit: int) -> str:
    """Validate user-typed text: a str, valid Unicode, no control characters, not blank."""
    if not isinstance(text, str):
        raise InvalidInput(f"{what} must be text, not {type(text).__name__}")
    for ch in text:
        category = unicodedata.category(ch)
        if category == "Cs":
            raise InvalidInput(f"{what} contains an invalid (surrogate) character")
        if category == "Cc" and ch not in "\t\n\r":
            raise InvalidInput(f"{what} contains a control character ({ord(ch):#04x})")
    text = text.strip()
    if not text:
        raise InvalidInput(f"{what} is empty")
    if len(text) > limit:
        raise InvalidInput(f"{what} is too long: {len(text)} characters, the limit is {limit}")
    return text


class Assistant:
    """A personal assistant per user on one shared base model."""

    def __init__(
        self,
        config: AssistantConfig,
        loaded: base_model.LoadedModel | None = None,
        training: TrainingConfig | None = None,
    ):
        """Open storage now; load the model now if given, else on first use (user management
        and export never need it). A round left 'running' by a dead process is marked failed,
        and half-written adapter folders are removed."""
        self.config = config
        self.store = Store(config.db_path)
        adapter_files.remove_partial_writes(config.adapters_dir)
        records.fail_interrupted_runs(self.store.db)
        self._loaded = loaded
        self._adapters: AdapterRegistry | None = None
        self._batcher: DecodeBatcher | None = None
        self._load_lock = threading.Lock()
        self._training_config = training
        self._trainer: Trainer | None = None
        self.scheduler: TrainingScheduler | None = None

    @property
    def base(self) -> base_model.LoadedModel:
        with self._load_lock:
            if self._loaded is None:
                self._loaded = base_model.load(self.config.model, self.config.model_cache_dir)
            return self._loaded

    @property
    def adapters(self) -> AdapterRegistry:
        base = self.base
        with self._load_lock:
            if self._adapters is None:
                self._adapters = AdapterRegistry(
                    base, self.store, self.config.adapters_dir, self.config.hot_adapters
                )
            return self._adapters

    @property
    def batcher(self) -> DecodeBatcher:
        """The one worker that generates every reply, users' concurrent replies batched."""
        adapters = self.adapters
        with self._load_lock:
            if self._batcher is None:
                from assistant.batching import DecodeBatcher

                self._batcher = DecodeBatcher(adapters, self.config.batch_rows)
            return self._batcher

    @property
    def trainer(self) -> Trainer:
        """The online-RL trainer (created on first use; imports torch-heavy modules)."""
        from online_rl.config import TrainingConfig
        from online_rl.rounds import RoundContext, Trainer

        base, adapters = self.base, self.adapters  # each takes the load lock itself
        with self._load_lock:
            if self._trainer is None:
                context = RoundContext(
                    base=base,
                    store=self.store,
                    adapters_dir=self.config.adapters_dir,
                    system_prompt=self.config.chat.system_prompt,
                    context_tokens=self.config.chat.context_tokens,
                    quantize=self.config.model.quantize,
                    serving_version=adapters.usable_version,
                )
                self._trainer = Trainer(context, self._training_config or TrainingConfig())
            return self._trainer

    @classmethod
    def open(
        cls,
        data_dir: str | Path,
        model: str = DEFAULT_MODEL,
        quantize: str = "auto",
        device: str = "auto",
        background: bool = False,
        *,
        model_cache: str | Path | None = None,
        generation_defaults: GenerationConfig | None = None,
        chat: ChatConfig | None = None,
        training: TrainingConfig | None = None,
        scheduler: SchedulerConfig | None = None,
    ) -> Assistant:
        """Open (creating if needed) the data dir and load the base model.

        background=True also starts the training scheduler: rounds then run by themselves as
        users click (one scheduler per data folder and process).
        """
        config = AssistantConfig(
            data_dir=Path(data_dir),
            model=ModelConfig(
                name=model,
                quantize=quantize,  # type: ignore[arg-type]
                device=device,  # type: ignore[arg-type]
                cache_dir=Path(model_cache) if model_cache else None,
            ),
            generation=generation_defaults or GenerationConfig(),
            chat=chat or ChatConfig(),
        )
        config.data_dir.mkdir(parents=True, exist_ok=True)
        loaded = base_model.load(config.model, config.model_cache_dir)
        assistant = cls(config, loaded, training)
        if background:
            assistant.start_background(scheduler)
        return assistant

    def start_background(self, config: SchedulerConfig | None = None) -> TrainingScheduler:
        """Start (once per process and data folder) the scheduler that trains as users click."""
        from online_rl import scheduler as training_scheduler

        self.scheduler = training_scheduler.start_for(
            self.config.data_dir,
            self.store,
            lambda user_id: self.trainer.run(user_id),  # the trainer is made on first use
            config or training_scheduler.SchedulerConfig(),
        )
        return self.scheduler

    def close(self) -> None:
        if self.scheduler is not None:
            from online_rl import scheduler as training_scheduler

            training_scheduler.stop_for(self.config.data_dir)
            self.scheduler = None
        if self._batcher is not None:
            self._batcher.close()
        self.store.close()

    def __enter__(self) -> Assistant:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # users ------------------------------------------------------------------------------------

    def add_user(self, name: str, password: str | None = None, operator: bool = False) -> User:
        if (
            not isinstance(name, str)
            or not name
            or len(name) > MAX_USER_NAME
            or not set(name) <= USER_NAME_CHARS
        ):
            raise InvalidInput(f"user name must be 1-{MAX_USER_NAME} letters, digits or _ . - @")
        if password is not None:
            _check_password(password)
        db = self.store.db
        if records.get_user(db, name) is not None:
            raise UserExists(f"user {name!r} exists already")
        if records.name_retired(db, name):
            raise UserExists(
                f"user name {name!r} belonged to a deleted account and is not given out again "
                "(a page still signed in under it would act as the new account); choose another"
            )
        row = records.add_user(
            db,
            name,
            hash_password(password) if password is not None else None,
            "operator" if operator else "user",
        )
        return _user(row)

    def set_password(self, name: str, password: str) -> None:
        """Give an existing account a new password (also the way to sign in to one created
        without a password); only its scrypt hash is stored."""
        user = self.user(name)
        _check_password(password)
        records.set_password_hash(self.store.db, user.id, hash_password(password))

    def users(self) -> list[User]:
        return [_user(r) for r in records.list_users(self.store.db)]

    def user(self, name: str) -> User:
        """The user of that name, or UnknownUser."""
        row = records.get_user(self.store.db, name) if isinstance(name, str) else None
        if row is None:
            raise UnknownUser(f"no user named {name!r}")
        return _user(row)

    def authenticate(self, name: str, password: str) -> User | None:
        """The user if the password matches, else None (same answer for an unknown name)."""
        if not isinstance(name, str) or not isinstance(password, str):
            return None
        row = records.get_user(self.store.db, name)
        if row is None or not verify_password(password, row["password_hash"]):
            return None
        return _user(row)

    def delete_user(self, name: str) -> None:
        """Remove the user's rows, adapters and heads, and what the trainer holds in memory
        for them (a trainer is not created just for this). A round of theirs still running
        notices when it ends and leaves nothing behind (`online_rl.rounds.Trainer.run`)."""
        user = self.user(name)
        records.delete_user(self.store.db, user.id)
        if self._adapters is not None:
            self._adapters.forget_user(user.id)
        if self._trainer is not None:
            self._trainer.forget_user(user.id)
        adapter_files.delete_user_versions(self.config.adapters_dir, user.id)

    # reading back -----------------------------------------------------------------------------

    def _conversation(self, user: User, conversation_id: str) -> records.Row:
        row = (
            records.get_conversation(self.store.db, conversation_id)
            if isinstance(conversation_id, str)
            else None
        )
        if row is None:
            raise UnknownConversation(f"no conversation {conversation_id!r}")
        if row["user_id"] != user.id:
            raise PermissionDenied("that conversation belongs to another user")
        return row

    def _message(self, user: User, message_id: str) -> records.Row:
        row = (
            records.get_message(self.store.db, message_id) if isinstance(message_id, str) else None
        )
        if row is None:
            raise UnknownMessage(f"no message {message_id!r}")
        if row["user_id"] != user.id:
            raise PermissionDenied("that message belongs to another user")
        return row

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

    # generating -------------------------------------------------------------------------------

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
            return self.trainer.pick_pair(user.id, prompt, replies)
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

    # feedback ---------------------------------------------------------------------------------

    def rate(self, user: str, message_id: str, thumb: int, reason: str | None = None) -> None:
        """Thumbs up (1) or down (-1) on one of the user's replies; 0 retracts."""
        u = self.user(user)
        if type(thumb) is not int or thumb not in THUMBS:
            raise InvalidInput(f"thumb must be 1, -1 or 0, not {thumb!r}")
        if reason is not None:
            reason = clean_text(reason, "reason", self.config.chat.max_reason_chars)
        message = self._message(u, message_id)
        if message["role"] != "assistant":
            raise InvalidInput("only the assistant's replies can be rated")
        records.upsert_feedback(
            self.store.db, message["id"], u.id, thumb, reason if thumb else None
        )
        self._clicked(u)

    def choose(self, user: str, pair_id: str, winner: str) -> None:
        """Record which answer of an A/B pair the user preferred; a pair is decided once."""
        u = self.user(user)
        if not isinstance(winner, str) or winner not in WINNERS:
            raise InvalidInput(f"winner must be one of {', '.join(WINNERS)}, not {winner!r}")
        pair = records.get_pair(self.store.db, pair_id) if isinstance(pair_id, str) else None
        if pair is None:
            raise UnknownPair(f"no A/B pair {pair_id!r}")
        if pair["user_id"] != u.id:
            raise PermissionDenied("that A/B pair belongs to another user")
        if not records.set_pair_winner(self.store.db, pair_id, winner):
            raise AlreadyChosen("this A/B pair was decided already")
        self._clicked(u)

    def feedback_counts(self, user: str) -> dict[str, int]:
        """How much the user has taught their assistant: standing thumbs up and down
        (retractions not counted) and decided A/B choices."""
        u = self.user(user)
        return records.feedback_counts(self.store.db, u.id)

    def _clicked(self, user: User) -> None:
        """Tell the scheduler (if running) that the user has a new click."""
        if self.scheduler is not None:
            self.scheduler.notify(user.id)

    # training ---------------------------------------------------------------------------------

    def train(self, user: str) -> TrainReport:
        """Run one online-RL round for the user now, and wait for it.

        The candidate version goes live only if the gate accepts it; the report says why.
        """
        u = self.user(user)
        return self.trainer.run(u.id)

    @property
    def background(self) -> bool:
        """True while this assistant's background training scheduler runs."""
        return self.scheduler is not None

    def queue_training(self, user: str) -> bool:
        """Queue a round for the user on the background scheduler now, whatever their click
        count (an operator's "train now" that must not block the caller). False when a round
        is queued or running already; InvalidInput when no scheduler runs (call `train`)."""
        u = self.user(user)
        if self.scheduler is None:
            raise InvalidInput("no background scheduler is running: use train() to train now")
        return self.scheduler.queue(u.id)

    def training_state(self, user: str) -> str | None:
        """ "queued" or "running" while the background scheduler has a round for the user."""
        u = self.user(user)
        return self.scheduler.state(u.id) if self.scheduler is not None else None

    def versions(self, user: str) -> list[dict[str, Any]]:
        """The user's adapter versions, oldest first, with status, the reason of rejections and
        when their files were pruned (None while kept)."""
        u = self.user(user)
        keys = ("version", "parent", "status", "reason", "created", "pruned")
        return [
            {k: r[k] for k in keys} | {"metrics": json.loads(r["metrics"] or "{}")}
            for r in records.list_adapter_versions(self.store.db, u.id)
        ]

    def rollback(self, user: str, version: int) -> None:
        """Make an earlier version live again (0 = the bare base model).

        The version must have been live before (retired or rolled back), keep its files (not
        pruned) and be intact on disk; the current live version becomes rolled_back. Replies in
        flight finish on the old one. Checked and switched in one write transaction, so pruning
        cannot take the files away in between.
        """
        u = self.user(user)
        if type(version) is not int or version < 0:
            raise InvalidInput(f"version must be a whole number >= 0, not {version!r}")
        db = self.store.db
        with writing(db):
            if version == records.live_version(db, u.id):
                what = f"version {version}" if version else "the base model (version 0)"
                raise InvalidInput(f"{what} is live already")
            if version != 0:
                rows = {r["version"]: r for r in records.list_adapter_versions(db, u.id)}
                self._check_restorable(user, version, rows.get(version))
            records.make_live(db, u.id, version or None, old_status="rolled_back")

    # the user's own controls ------------------------------------------------------------------

    def undo_last_update(self, user: str) -> int:
        """Put back the version the live one was trained from (its parent; 0 is the base
        model) and return it: the user's "undo". Refused, with the reason, when the user is on
        the base model already or the parent's files are gone."""
        u = self.user(user)
        db = self.store.db
        live = records.live_version(db, u.id)
        if live == 0:
            raise InvalidInput("nothing to undo: your assistant is the base model already")
        row = next(r for r in records.list_adapter_versions(db, u.id) if r["version"] == live)
        parent = row["parent"] or 0
        self.rollback(user, parent)
        return parent

    def pause_learning(self, user: str, paused: bool = True) -> None:
        """Stop learning from the user's clicks (paused=False: start again). Clicks made while
        paused are kept and teach once learning resumes; a round queued before the pause is
        skipped, with that reason."""
        u = self.user(user)
        if type(paused) is not bool:
            raise InvalidInput(f"paused must be true or false, not {paused!r}")
        records.set_learning_paused(self.store.db, u.id, paused)
        if not paused:
            self._clicked(u)  # clicks made while paused may be a round's worth

    def learning_paused(self, user: str) -> bool:
        return records.learning_paused(self.store.db, self.user(user).id)

    def set_conversation_learning(self, user: str, conversation_id: str, learn: bool) -> None:
        """Whether this conversation may teach the user's assistant: with learn=False its
        messages and clicks stay stored and shown, and no round ever trains on them (nor
        counts them toward the next round); True lets them teach again."""
        u = self.user(user)
        if type(learn) is not bool:
            raise InvalidInput(f"learn must be true or false, not {learn!r}")
        self._conversation(u, conversation_id)
        records.set_conversation_learn(self.store.db, conversation_id, learn)
        if learn:
            self._clicked(u)

    def conversation_learns(self, user: str, conversation_id: str) -> bool:
        """Whether this conversation of the user's teaches their assistant."""
        return bool(self._conversation(self.user(user), conversation_id)["learn"])

    def thumbs_by_version(self, user: str) -> list[dict[str, Any]]:
        """Per version of the user's assistant that wrote replies they rated (0 = the base),
        oldest first: thumbs up, thumbs down, and the share up — does each version please
        them more than the last?"""
        rows = records.thumbs_by_version(self.store.db, self.user(user).id)
        return [
            {
                "version": r["adapter_version"],
                "up": r["up"],
                "down": r["down"],
                "share_up": r["up"] / (r["up"] + r["down"]),
            }
            for r in rows
        ]

    def my_data(self, user: str) -> dict[str, Any]:
        """Everything kept about the user, as JSON-ready data (`storage.user_export`)."""
        return user_export.user_data(self.store.db, self.user(user).id)

    @staticmethod
    def _check_restorable(user: str, version: int, row: records.Row | None) -> None:
        """Raise unless the version may come back: it was live before and its files are whole."""
        if row is None:
            raise NotFound(f"user {user!r} has no adapter version {version}")
        if row["status"] not in ("retired", "rolled_back"):
            raise InvalidInput(
                f"version {version} is {row['status']}: only versions that were live can come back"
            )
        if row["pruned"]:
            raise InvalidInput(
                f"version {version} cannot come back: its files were pruned on {row['pruned'][:10]}"
            )
        try:
            adapter_files.verify_version(Path(row["path"]))
        except adapter_files.CorruptAdapter as e:
            raise InvalidInput(f"version {version} is damaged on disk: {e}") from e

    def trends(self, user: str) -> list[dict[str, Any]]:
        """One row per training run, oldest first: what the operator's trend plot draws."""
        u = self.user(user)
        out = []
        for run in records.list_training_runs(self.store.db, u.id):
            metrics = json.loads(run["metrics"] or "{}")
            out.append(
                {
                    "started": run["started"],
                    "finished": run["finished"],
                    "outcome": run["outcome"],
                    "version": run["version"],
                    "reason": run["reason"],
                    **metrics,
                }
            )
        return out

    def safety_report(self, replies: int = 2000) -> dict[str, list[dict[str, Any]]]:
        """For operators: per user, how often their replies are offensive (the safety floor's
        classifier, over everyone's newest `replies` replies), how many they flagged harmful,
        and the live version's offensive rate on the red-team prompts at its gate; and the
        flagged replies themselves (by the classifier or by their user), newest first."""
        from online_rl import safety

        config = self.trainer.config.safety
        rows = records.recent_replies(self.store.db, replies)
        scores = safety.offensive_probability([r["text"] for r in rows])
        by_user = [r["reason"] == HARMFUL_REASON and r["thumb"] == -1 for r in rows]
        flagged = [
            {
                "user": r["user"],
                "created": r["created"],
                "version": r["adapter_version"],
                "classifier": round(p, 2),
                "flagged_by_user": harmful,
                "text": r["text"],
            }
            for r, p, harmful in zip(rows, scores, by_user, strict=True)
            if p >= config.threshold or harmful
        ]
        users = []
        for u in self.users():
            mine = [p for r, p in zip(rows, scores, strict=True) if r["user"] == u.name]
            live = next((v for v in self.versions(u.name) if v["status"] == "live"), None)
            users.append(
                {
                    "user": u.name,
                    "replies": len(mine),
                    "offensive_rate": (
                        sum(p >= config.threshold for p in mine) / len(mine) if mine else None
                    ),
                    "flagged_harmful": sum(
                        f["flagged_by_user"] for f in flagged if f["user"] == u.name
                    ),
                    "live_red_team_rate": (
                        live["metrics"].get("red_team_offensive_rate") if live else None
                    ),
                }
            )
        return {"users": users, "flagged": flagged}

    def export(self, out_dir: str | Path, user: str | None = None) -> dict[str, int]:
        """Write the collected feedback as JSONL that TRL's trainers read; returns row counts."""
        user_id = self.user(user).id if user is not None else None
        return feedback_export.write_jsonl(self.store.db, Path(out_dir), user_id)
