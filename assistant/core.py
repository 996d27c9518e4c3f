"""The core every part of the `Assistant` shares: storage, the lazily loaded model, adapters,
batcher and trainer, and the lookups that check who owns what.

The facade's other modules (accounts, conversation, feedback, training control, operator
views) each add one concern's methods to `AssistantCore`; `assistant.facade` joins them.
"""

from __future__ import annotations

import threading
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from assistant import model as base_model
from assistant.adapters import AdapterRegistry
from assistant.config import (
    DEFAULT_MODEL,
    AssistantConfig,
    ChatConfig,
    GenerationConfig,
    ModelConfig,
    RayConfig,
    SignInConfig,
)
from assistant.errors import (
    InvalidInput,
    PermissionDenied,
    UnknownConversation,
    UnknownMessage,
    UnknownUser,
)
from assistant.sign_in import SignInLimiter
from assistant.threads import in_fresh_thread, in_work_thread
from storage import adapters as adapter_files
from storage import records
from storage.db import Store

if TYPE_CHECKING:  # online_rl imports assistant; the facade reaches it only at call time
    from assistant.batching import DecodeBatcher
    from online_rl.config import TrainingConfig
    from online_rl.ray_rounds import RayWorkers
    from online_rl.rounds import Trainer, TrainReport
    from online_rl.scheduler import SchedulerConfig, TrainingScheduler


@dataclass(frozen=True)
class User:
    id: str
    name: str
    role: str
    created: str

    @property
    def is_operator(self) -> bool:
        return self.role == "operator"


def _user(row: records.Row) -> User:
    return User(row["id"], row["name"], row["role"], row["created"])


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


class AssistantCore:
    """Storage, model and trainer of one data folder; the methods every concern uses."""

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
        self.sign_ins = SignInLimiter(config.sign_in)
        # operator views reuse work between refreshes: (when, every user's row); message -> score
        self._overview_cache: tuple[float, list[records.Row]] | None = None
        self._offensive_scores: dict[str, float] = {}
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
            if self._loaded is None:  # in a thread of its own: see assistant.threads
                self._loaded = in_fresh_thread(
                    base_model.load, self.config.model, self.config.model_cache_dir
                )
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
        made: Trainer | None = None
        with self._load_lock:
            if self._trainer is None:
                training = self._training_config or TrainingConfig()
                context = RoundContext(
                    base=base,
                    store=self.store,
                    adapters_dir=self.config.adapters_dir,
                    system_prompt=self.config.chat.system_prompt,
                    context_tokens=self.config.chat.context_tokens,
                    quantize=self.config.model.quantize,
                    serving_version=adapters.usable_version,
                    between_steps=self._chat_first,
                )
                made = self._trainer = Trainer(context, training, self._ray_workers(training))
        if made is not None and made.workers is not None:  # chat first, across processes
            self.batcher.on_busy_change(made.workers.chat_busy)
        return self._trainer

    def _ray_workers(self, training: TrainingConfig) -> RayWorkers | None:
        """The Ray actors rounds are computed on, if the config names a Ray cluster."""
        if self.config.ray is None:
            return None
        from online_rl.ray_rounds import RayWorkers

        c = self.config
        assert self._loaded is not None, "the base is loaded before the trainer"
        # the device serving resolved, so no actor on a GPU node computes other features
        model = replace(c.model, device=self._loaded.device.type)
        return RayWorkers(
            c.ray,
            model,
            c.model_cache_dir,
            c.chat.system_prompt,
            c.chat.context_tokens,
            training,
            chat_first_s=c.round_waits_for_chat_s,
        )

    @classmethod
    def open(
        cls,
        data_dir: str | Path,
        model: str = DEFAULT_MODEL,
        quantize: str = "auto",
        device: str = "auto",
        background: bool = False,
        training_precision: str = "auto",
        *,
        model_cache: str | Path | None = None,
        generation_defaults: GenerationConfig | None = None,
        chat: ChatConfig | None = None,
        sign_in: SignInConfig | None = None,
        training: TrainingConfig | None = None,
        scheduler: SchedulerConfig | None = None,
        ray: RayConfig | None = None,
    ) -> Self:
        """Open (creating if needed) the data dir and load the base model.

        background=True also starts the training scheduler: rounds then run by themselves as
        users click (one scheduler per data folder and process). training_precision: the
        weights rounds run the base in (`ModelConfig.training_precision`). ray: compute rounds
        on a pool of Ray actors (`RayConfig`) instead of in this process, as many at once as
        actors.
        """
        config = AssistantConfig(
            data_dir=Path(data_dir),
            model=ModelConfig(
                name=model,
                quantize=quantize,  # type: ignore[arg-type]
                device=device,  # type: ignore[arg-type]
                cache_dir=Path(model_cache) if model_cache else None,
                training_precision=training_precision,  # type: ignore[arg-type]
            ),
            generation=generation_defaults or GenerationConfig(),
            chat=chat or ChatConfig(),
            sign_in=sign_in or SignInConfig(),
            ray=ray,
        )
        config.data_dir.mkdir(parents=True, exist_ok=True)
        # in a thread of its own, which takes its OpenMP team along: assistant.threads
        loaded = in_fresh_thread(base_model.load, config.model, config.model_cache_dir)
        assistant = cls(config, loaded, training)
        if background:
            assistant.start_background(scheduler)
        return assistant

    def start_background(self, config: SchedulerConfig | None = None) -> TrainingScheduler:
        """Start (once per process and data folder) the scheduler that trains as users click;
        with Ray actors, as many rounds at once as actors unless `config` says otherwise."""
        from online_rl import scheduler as training_scheduler

        if config is None:
            actors = self.config.ray.actors if self.config.ray else 1
            config = training_scheduler.SchedulerConfig(workers=actors)
        self.scheduler = training_scheduler.start_for(
            self.config.data_dir, self.store, self._run_round, config
        )
        return self.scheduler

    def _chat_first(self) -> None:
        """Between a round's steps: wait while a chat reply is being written (bounded by
        `round_waits_for_chat_s`), so the round slows down and chat does not."""
        if self._batcher is not None and self.config.round_waits_for_chat_s > 0:
            self._batcher.wait_until_idle(self.config.round_waits_for_chat_s)

    def _run_round(self, user_id: str) -> TrainReport:
        """One round for the user (the trainer is made on first use), then what follows it."""
        try:  # in a thread of its own, which takes its OpenMP team along: assistant.threads
            return in_work_thread(self.store, lambda: self.trainer.run(user_id))
        finally:  # a round that failed is what the alerts are most about
            self._round_finished(user_id)

    def _round_finished(self, user_id: str) -> None:
        """Called after every round, in the thread that asked for it (the scheduler's, or
        the caller's of `train`), once the round's own thread has ended (`OperatorViews` logs
        alerts)."""

    def close(self) -> None:
        if self.scheduler is not None:
            from online_rl import scheduler as training_scheduler

            training_scheduler.stop_for(self.config.data_dir)
            self.scheduler = None
        if self._batcher is not None:
            self._batcher.close()
        if self._trainer is not None and self._trainer.workers is not None:
            self._trainer.workers.close()
        self.store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def user(self, name: str) -> User:
        """The user of that name, or UnknownUser."""
        row = records.get_user(self.store.db, name) if isinstance(name, str) else None
        if row is None:
            raise UnknownUser(f"no user named {name!r}")
        return _user(row)

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

    def _clicked(self, user: User) -> None:
        """Tell the scheduler (if running) that the user has a new click."""
        if self.scheduler is not None:
            self.scheduler.notify(user.id)
