"""`ServeConfig`: every setting of the web app in one frozen dataclass, built once by the CLI
(or, for Gradio's reload mode, from a few environment variables by `ui/main.py`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from assistant import (
    HARMFUL_REASON,
    MAX_TEMPERATURE,
    ChatConfig,
    InvalidInput,
    ModelConfig,
    RayConfig,
)

DEFAULT_REASONS = (
    "helpful",
    "accurate",
    "clear",
    "too long",
    "too short",
    "wrong",
    "off topic",
    HARMFUL_REASON,
)
MAX_NEW_TOKENS_LIMIT = ChatConfig().max_new_tokens_limit  # the facade's ceiling for every reply


@dataclass(frozen=True)
class ServeConfig:
    """How the web app runs.

    host, port: where it listens (127.0.0.1:7860: only this machine, Gradio's usual port).
    data_dir: the database, adapters and models (`attune-data`).
    model: which base model and how it is held (see `ModelConfig`).
    max_message_chars: longer chat messages are refused with a message, nothing stored; the
        facade gets the same limit, so the UI and the API agree.
    concurrency: replies (chat and compare) generated at once; Gradio's
        `queue(default_concurrency_limit=...)`. Replies in flight are decoded together, one
        forward pass per step for all of them (`assistant.batching`; 8 replies get 2.9x one
        reply's throughput, README "Serving"): the default matches the batcher's `batch_rows` (16;
        a comparison takes two rows, so with many at once some wait inside the batcher).
        Everything beyond waits in the queue, which has no size limit: requests are queued,
        never dropped.
    max_new_tokens, temperature: sampling settings of every reply the app asks for, checked
        at start-up against the facade's limits (max_new_tokens at most ChatConfig's
        max_new_tokens_limit; temperature above 0, as greedy decoding would make both answers
        of a comparison the same), so a bad value stops the server instead of every chat.
    refresh_seconds: how often the "Your assistant" panel and the operator dashboard refresh.
    background: run the training scheduler in this process (rounds start as users click).
    ray: compute the rounds on a pool of Ray actors (`RayConfig`: a cluster's address or
        "local", how many actors) instead of in this process; None: in this process.
    demo_accounts: on first start with an empty database, create `demo` and `operator` with
        random passwords and print them once (what `make run` does).
    reasons: the preset reasons offered next to thumbs (free text is accepted too).
    """

    host: str = "127.0.0.1"
    port: int = 7860
    data_dir: Path = Path("attune-data")
    model: ModelConfig = field(default_factory=ModelConfig)
    max_message_chars: int = 4000
    concurrency: int = 16
    max_new_tokens: int = 256
    temperature: float = 0.7
    refresh_seconds: float = 5.0
    background: bool = True
    ray: RayConfig | None = None
    demo_accounts: bool = False
    reasons: tuple[str, ...] = DEFAULT_REASONS

    def __post_init__(self) -> None:
        for name in ("port", "max_message_chars", "concurrency", "max_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInput(f"{name} must be a whole number >= 1, not {value!r}")
        if not self.refresh_seconds > 0:
            raise InvalidInput(f"refresh_seconds must be > 0, not {self.refresh_seconds!r}")
        if self.max_new_tokens > MAX_NEW_TOKENS_LIMIT:
            raise InvalidInput(
                f"max_new_tokens must be at most {MAX_NEW_TOKENS_LIMIT} (the facade's limit), "
                f"not {self.max_new_tokens}"
            )
        if isinstance(self.temperature, bool) or not 0 < self.temperature <= MAX_TEMPERATURE:
            raise InvalidInput(
                f"temperature must be above 0 and at most {MAX_TEMPERATURE:g}, "
                f"not {self.temperature!r}"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ServeConfig:
        """The settings of `gradio ui/main.py` (reload mode, which takes no flags):
        ATTUNE_DATA_DIR, ATTUNE_MODEL and ATTUNE_PORT; the rest keep their defaults.
        `attune serve` is the way to set everything."""
        defaults = cls()
        port = env.get("ATTUNE_PORT", str(defaults.port))
        if not port.isdigit():
            raise InvalidInput(f"ATTUNE_PORT must be a port number, not {port!r}")
        return cls(
            port=int(port),
            data_dir=Path(env.get("ATTUNE_DATA_DIR", defaults.data_dir)),
            model=ModelConfig(name=env.get("ATTUNE_MODEL", defaults.model.name)),
        )
