"""Errors the way a person should see them: a readable Gradio error, never a stack trace."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import gradio as gr

from assistant import AttuneError

log = logging.getLogger(__name__)

UNEXPECTED = "Something went wrong on the server (it has been logged). Please try again."


@contextmanager
def readable_errors() -> Iterator[None]:
    """Turn the facade's refusals into `gr.Error` with their own sentence, and anything else
    (a bug) into a generic one: the traceback goes to the server log, not to the browser."""
    try:
        yield
    except gr.Error:
        raise
    except AttuneError as e:
        raise gr.Error(str(e), print_exception=False) from None
    except Exception:
        log.exception("unexpected error in a web app handler")
        raise gr.Error(UNEXPECTED, print_exception=False) from None
