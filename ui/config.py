"""`ServeConfig`: every setting of the web app in one frozen dataclass, built once by the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from assistant import InvalidInput, ModelConfig

DEFAULT_REASONS = (
    "helpful",
    "accurate",
    "clear",
    "too long",
    "too short",
    "wrong",
    "off topic",
    "harmful",
)


@dataclass(frozen=True)
class ServeConfig:
    """How the web app runs.

    host, port: where it listens (127.0.0.1:7860: only this machine, Gradio's usual port).
    data_dir: the database, adapters and models (`attune-data`).
    model: which base model and how it is held (see `ModelConfig`).
    max_message_chars: longer chat messages are refused with a message, nothing stored; the
        facade gets the same limit, so the UI and the API agree.
    concurrency: replies (chat and compare) generated at once; Gradio's
        `queue(default_concurrency_limit=...)`. Forward passes take one lock and torch already
        uses every core, so a higher number adds no throughput: 2 lets a second person's reply
        start while a long one streams (token by token, interleaved), and everything beyond
        waits in the queue, which has no size limit: requests are queued, never dropped.
    max_new_tokens, temperature: sampling settings of every reply the app asks for.
    refresh_seconds: how often the "Your assistant" panel and the operator dashboard refresh.
    background: run the training scheduler in this process (rounds start as users click).
    demo_accounts: on first start with an empty database, create `demo` and `operator` with
        random passwords and print them once (what `make run` does).
    reasons: the preset reasons offered next to thumbs (free text is accepted too).
    """

    host: str = "127.0.0.1"
    port: int = 7860
    data_dir: Path = Path("attune-data")
    model: ModelConfig = field(default_factory=ModelConfig)
    max_message_chars: int = 4000
    concurrency: int = 2
    max_new_tokens: int = 256
    temperature: float = 0.7
    refresh_seconds: float = 5.0
    background: bool = True
    demo_accounts: bool = False
    reasons: tuple[str, ...] = DEFAULT_REASONS

    def __post_init__(self) -> None:
        for name in ("port", "max_message_chars", "concurrency", "max_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInput(f"{name} must be a whole number >= 1, not {value!r}")
        if not self.refresh_seconds > 0:
            raise InvalidInput(f"refresh_seconds must be > 0, not {self.refresh_seconds!r}")
