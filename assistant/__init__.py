"""The serving side of attune: the base model, generation, per-user adapters, the facade.

The facade's names (`Assistant`, `Delta`, `Pair`, `Reply`, `User`) load on first use, not with
the package: `online_rl` imports `assistant.model` and `assistant.generation`, and the facade
imports `online_rl` (at call time), so importing the package must not import the facade.
"""

from typing import TYPE_CHECKING, Any

from assistant.config import (
    HARMFUL_REASON,
    MAX_TEMPERATURE,
    AssistantConfig,
    ChatConfig,
    GenerationConfig,
    ModelConfig,
    RayConfig,
    SignInConfig,
)
from assistant.errors import (
    AlreadyChosen,
    AttuneError,
    InvalidInput,
    ModelUnavailable,
    NotAvailableYet,
    NotFound,
    PermissionDenied,
    TooManySignIns,
    UnknownConversation,
    UnknownMessage,
    UnknownPair,
    UnknownUser,
    UserExists,
)
from assistant.passwords import random_password

if TYPE_CHECKING:
    from assistant.facade import Assistant, Delta, Pair, Reply, User

FACADE_NAMES = ("Assistant", "Delta", "Pair", "Reply", "User")


def __getattr__(name: str) -> Any:
    if name in FACADE_NAMES:
        from assistant import facade

        return getattr(facade, name)
    raise AttributeError(f"module 'assistant' has no attribute {name!r}")


__all__ = [
    "HARMFUL_REASON",
    "MAX_TEMPERATURE",
    "AlreadyChosen",
    "Assistant",
    "AssistantConfig",
    "AttuneError",
    "ChatConfig",
    "Delta",
    "GenerationConfig",
    "InvalidInput",
    "ModelConfig",
    "RayConfig",
    "ModelUnavailable",
    "NotAvailableYet",
    "NotFound",
    "Pair",
    "PermissionDenied",
    "Reply",
    "SignInConfig",
    "TooManySignIns",
    "UnknownConversation",
    "UnknownMessage",
    "UnknownPair",
    "UnknownUser",
    "User",
    "UserExists",
    "random_password",
]
