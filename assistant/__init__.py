"""The serving side of attune: the base model, generation, per-user adapters, the facade."""

from assistant.config import (
    HARMFUL_REASON,
    MAX_TEMPERATURE,
    AssistantConfig,
    ChatConfig,
    GenerationConfig,
    ModelConfig,
)
from assistant.errors import (
    AlreadyChosen,
    AttuneError,
    InvalidInput,
    ModelUnavailable,
    NotAvailableYet,
    NotFound,
    PermissionDenied,
    UnknownConversation,
    UnknownMessage,
    UnknownPair,
    UnknownUser,
    UserExists,
)
from assistant.facade import Assistant, Delta, Pair, Reply, User
from assistant.passwords import random_password

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
    "ModelUnavailable",
    "NotAvailableYet",
    "NotFound",
    "Pair",
    "PermissionDenied",
    "Reply",
    "UnknownConversation",
    "UnknownMessage",
    "UnknownPair",
    "UnknownUser",
    "User",
    "UserExists",
    "random_password",
]
