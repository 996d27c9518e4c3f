"""Who is asking: sign-in against the users table, and the identity of every event.

The identity is always `request.username`, set by Gradio from the signed-in session; no
handler takes a user name from the browser, so nobody can act as someone else.
"""

from __future__ import annotations

from collections.abc import Callable

import gradio as gr

from assistant import Assistant, UnknownUser

NOT_SIGNED_IN = "Please sign in first."
NOT_OPERATOR = "Only operator accounts can use the operator dashboard."


def authenticator(asst: Assistant) -> Callable[[str, str], bool]:
    """The `auth=` callable for `launch`: the facade checks the scrypt hash."""

    def check(name: str, password: str) -> bool:
        return asst.authenticate(name, password) is not None

    return check


def signed_in(request: gr.Request | None) -> str:
    """The signed-in user's name, or a readable error."""
    name = getattr(request, "username", None)
    if not isinstance(name, str) or not name:
        raise gr.Error(NOT_SIGNED_IN, print_exception=False)
    return name


def is_operator(asst: Assistant, name: str) -> bool:
    try:
        return asst.user(name).is_operator
    except UnknownUser:
        return False


def operator(asst: Assistant, request: gr.Request | None) -> str:
    """The signed-in operator's name; checked on every operator call, server-side."""
    name = signed_in(request)
    if not is_operator(asst, name):
        raise gr.Error(NOT_OPERATOR, print_exception=False)
    return name
