"""The exceptions attune raises on purpose. Each carries a sentence meant for a person.

Every one derives from `AttuneError`, so a caller (the UI, the CLI) can tell a refusal of bad
input from a bug.
"""


class AttuneError(Exception):
    """Base of every error attune raises deliberately."""


class InvalidInput(AttuneError, ValueError):
    """An argument is malformed: empty or over-long text, a bad thumb or winner, a bad setting."""


class NotFound(AttuneError, LookupError):
    """Something named by id or name does not exist."""


class UnknownUser(NotFound):
    pass


class UnknownConversation(NotFound):
    pass


class UnknownMessage(NotFound):
    pass


class UnknownPair(NotFound):
    pass


class PermissionDenied(AttuneError):
    """The object exists but belongs to someone else, or needs the operator role."""


class UserExists(InvalidInput):
    pass


class AlreadyChosen(InvalidInput):
    """An A/B pair is decided once; a second choice changes nothing."""


class TooManySignIns(AttuneError):
    """Too many wrong passwords lately for this account or from this address; wait."""

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ModelUnavailable(AttuneError):
    """The base model could not be found, fetched or loaded."""


class NotAvailableYet(AttuneError):
    """A feature whose implementation has not landed; said plainly rather than faked."""
