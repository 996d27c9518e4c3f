"""Who is asking: sign-in against the users table, and the identity of every event.

The identity is always `request.username`, set by Gradio from the signed-in session; no
handler takes a user name from the browser, so nobody can act as someone else. A session
lives while its account's credentials stamp is unchanged (`Sessions`): a new password or a
deleted account ends every page signed in to it, whichever process made the change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gradio as gr
from fastapi import HTTPException, status

from assistant import Assistant, TooManySignIns, UnknownUser
from ui.sign_in import client_address

log = logging.getLogger(__name__)

NOT_SIGNED_IN = "Please sign in first."
NOT_OPERATOR = "Only operator accounts can use the operator dashboard."


def authenticator(asst: Assistant) -> Callable[[str, str], bool]:
    """The `auth=` callable for `launch`: the facade checks the scrypt hash and the sign-in
    limits; over a limit, the sign-in answers HTTP 429 with the sentence saying how long to
    wait (the page shows it: `ui.sign_in`)."""

    def check(name: str, password: str) -> bool:
        address = client_address.get()
        try:
            return asst.authenticate(name, password, address) is not None
        except TooManySignIns as e:
            log.warning("sign-in refused for %r from %s: %s", name, address, e)
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS,
                detail=str(e),
                headers={"Retry-After": str(int(e.retry_after_s) + 1)},
            ) from e

    return check


class Sessions(dict):
    """Gradio's session tokens (token -> user name), each kept with the credentials stamp of
    its account at sign-in. A token whose account's stamp has changed since (a new password,
    a deleted account) is dropped when it is next used: that page is signed out."""

    def __init__(self, stamp: Callable[[str], str | None]):
        super().__init__()
        self._stamp = stamp
        self._stamps: dict[str, str | None] = {}

    def __setitem__(self, token: str, name: str) -> None:
        self._stamps[token] = self._stamp(name)
        super().__setitem__(token, name)

    def update_from(self, tokens: dict[str, str]) -> None:
        for token, name in list(tokens.items()):
            self[token] = name

    def __delitem__(self, token: str) -> None:
        self._stamps.pop(token, None)
        super().__delitem__(token)

    def get(self, token: Any, default: Any = None) -> Any:
        name = super().get(token)
        if name is None:
            return default
        opened_with = self._stamps.get(token)
        if opened_with is None or self._stamp(name) != opened_with:
            self.pop(token, None)
            self._stamps.pop(token, None)
            return default
        return name


def signed_in(request: gr.Request | None) -> str:
    """The signed-in user's name, or a readable error."""
    name = getattr(request, "username", None)
    if not isinstance(name, str) or not name:
        raise gr.Error(NOT_SIGNED_IN, print_exception=False)
    return name


def is_operator(asst: Assistant, request: gr.Request | None) -> bool:
    """Whether the request comes from a signed-in operator (no error either way: page loads
    use it to show or skip the Operator tab)."""
    name = getattr(request, "username", None)
    if not isinstance(name, str) or not name:
        return False
    try:
        return asst.user(name).is_operator
    except UnknownUser:
        return False


def operator(asst: Assistant, request: gr.Request | None) -> str:
    """The signed-in operator's name; checked on every operator call, server-side."""
    name = signed_in(request)
    if not is_operator(asst, request):
        raise gr.Error(NOT_OPERATOR, print_exception=False)
    return name
