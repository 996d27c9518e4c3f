"""Accounts: creating users, passwords, signing in, deleting an account and all of it."""

from __future__ import annotations

import hashlib
from typing import Any

from assistant.core import AssistantCore, User, _user
from assistant.errors import (
    InvalidInput,
    UserExists,
)
from assistant.passwords import MIN_PASSWORD_CHARS, hash_password, verify_password
from storage import adapters as adapter_files
from storage import records

USER_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-@")
MAX_USER_NAME = 64


def _check_password(password: Any) -> None:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_CHARS:
        raise InvalidInput(f"password must be text of at least {MIN_PASSWORD_CHARS} characters")


class Accounts(AssistantCore):
    """The `Assistant`'s account methods."""

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

    def authenticate(self, name: str, password: str, address: str | None = None) -> User | None:
        """The user if the password matches, else None (same answer for an unknown name).

        Wrong passwords are counted per account and per client `address` (`SignInConfig`):
        at the limit, TooManySignIns says when to try again, and the password is not even
        checked, so guessing on cannot succeed early."""
        if not isinstance(name, str) or not isinstance(password, str):
            return None
        self.sign_ins.check(name, address)
        row = records.get_user(self.store.db, name)
        if row is None or not verify_password(password, row["password_hash"]):
            self.sign_ins.failed(name, address)
            return None
        self.sign_ins.succeeded(name, address)
        return _user(row)

    def credentials_stamp(self, name: str) -> str | None:
        """A short fingerprint of the account's identity and password hash, or None once the
        account is gone. A signed-in session keeps the stamp it was opened with and ends when
        the stamp changes: a new password or a deleted account signs out every open page."""
        row = records.get_user(self.store.db, name) if isinstance(name, str) else None
        if row is None:
            return None
        seen = f"{row['id']}\n{row['password_hash'] or ''}".encode()
        return hashlib.sha256(seen).hexdigest()[:32]

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
