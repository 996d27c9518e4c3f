"""The serving side of attune: the base model, generation, per-user adapters, the facade."""

from assistant.config import AssistantConfig, ChatConfig, GenerationConfig, ModelConfig
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

__all__ = [
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
]
