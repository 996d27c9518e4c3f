"""Start the web app: open the facade with its background scheduler, create the first accounts
on an empty database, launch Gradio with sign-in.

The scheduler is started through `Assistant.open(background=True)`, which keeps one per data
folder and process (`online_rl.scheduler.start_for`): opening the facade a second time in the
same process reuses it. That alone does not cover Gradio's reload mode, which drops every
project module and executes the app file again; `ui/main.py` handles that case.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import gradio as gr
from starlette.middleware import Middleware

from assistant import Assistant, ChatConfig, random_password
from ui.app import build_app
from ui.config import ServeConfig
from ui.identity import Sessions, authenticator
from ui.sign_in import SignInPage

FIRST_ACCOUNTS = (("demo", False), ("operator", True))  # (name, operator?)
SIGN_IN_MESSAGE = (
    "Sign in with your attune account (created with `attune user add NAME`; "
    "a new password is set with `attune user passwd NAME`). After several wrong passwords "
    "sign-in pauses for a while."
)


def open_assistant(config: ServeConfig) -> Assistant:
    """The facade for the app: the message limit is the app's, so UI and API agree."""
    return Assistant.open(
        config.data_dir,
        model=config.model.name,
        quantize=config.model.quantize,
        device=config.model.device,
        training_precision=config.model.training_precision,
        model_cache=config.model.cache_dir,
        chat=ChatConfig(max_message_chars=config.max_message_chars),
        background=config.background,
        ray=config.ray,
    )


def first_accounts(asst: Assistant) -> list[tuple[str, str, str]]:
    """On an empty users table only: a demo user and an operator with random passwords.

    Returns (name, password, role) for printing once; only scrypt hashes are stored, so the
    passwords cannot be shown again.
    """
    if asst.users():
        return []
    created = []
    for name, is_operator in FIRST_ACCOUNTS:
        password = random_password()
        user = asst.add_user(name, password=password, operator=is_operator)
        created.append((user.name, password, user.role))
    return created


def free_port() -> int:
    """A TCP port free on this machine now (tests and benchmarks serve on one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(app: gr.Blocks, asst: Assistant, config: ServeConfig, block: bool) -> str:
    """Serve `app` with sign-in against the users table; returns the local URL.

    block=False returns once the server is up (tests, embedding); close it with `app.close()`.
    """
    app.launch(
        server_name=config.host,
        server_port=config.port,
        auth=authenticator(asst),
        auth_message=SIGN_IN_MESSAGE,
        prevent_thread_lock=True,
        share=False,
        ssr_mode=False,
        show_error=False,  # errors reach the browser as their gr.Error sentence only
        app_kwargs={"middleware": [Middleware(SignInPage)]},
    )
    sessions = Sessions(asst.credentials_stamp)  # Gradio's plain dict of tokens, replaced;
    sessions.update_from(app.server_app.tokens)  # a sign-in made in between is kept
    app.server_app.tokens = sessions
    if block:
        app.block_thread()
    return str(app.local_url)


def _say(line: str) -> None:
    print(line, flush=True)  # flushed: make and test harnesses read it through a pipe


def serve(config: ServeConfig, say: Callable[[str], None] = _say) -> int:
    """`attune serve`: run the app until interrupted."""
    asst = open_assistant(config)
    try:
        credentials = first_accounts(asst) if config.demo_accounts else []
        if credentials:
            say("First start: created these accounts (shown only this once; stored hashed):")
            for name, password, role in credentials:
                say(f"  {role:<9} name: {name:<10} password: {password}")
        if config.background:
            say("Background training is on: rounds start as users give feedback.")
        launch(build_app(asst, config), asst, config, block=True)
    finally:
        asst.close()
    return 0
