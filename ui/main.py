"""The app for Gradio's reload mode: `gradio ui/main.py` serves `demo` and rebuilds it whenever
a file changes, without opening the facade (model, database, background scheduler) again.

On every change Gradio drops all project modules from `sys.modules` and executes this file
again with `gr.NO_RELOAD` false. The facade is opened once, under `if gr.NO_RELOAD:`; each rerun
first puts back the modules it was built from (assistant/, storage/, online_rl/), so the
rebuilt app shares its classes (the `Delta`s and `Reply`s it streams, the errors it raises) and
its one scheduler. Edits to ui/ show at once; edits to those packages need a restart.

Settings: ATTUNE_DATA_DIR, ATTUNE_MODEL, ATTUNE_PORT (`ServeConfig.from_env`); accounts come
from `attune user add`. `attune serve` remains the way to run the app.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType
from typing import TYPE_CHECKING

import gradio as gr

if TYPE_CHECKING:
    from assistant import Assistant
    from ui.config import ServeConfig

CORE_PACKAGES = ("assistant", "storage", "online_rl")  # what the open facade is made of


def core_modules() -> dict[str, ModuleType]:
    """The loaded modules of the facade's packages, to put back before each rerun's imports."""
    return {
        name: module for name, module in sys.modules.items() if name.split(".")[0] in CORE_PACKAGES
    }


def open_once() -> tuple[Assistant, ServeConfig, dict[str, ModuleType]]:
    """The facade with its scheduler, its settings, and the modules it was built from."""
    from ui.config import ServeConfig
    from ui.serve import open_assistant

    config = ServeConfig.from_env(os.environ)
    return open_assistant(config), config, core_modules()


def build(asst: Assistant, config: ServeConfig) -> gr.Blocks:
    from ui.app import build_app  # imported here: after a rerun has put the core back

    return build_app(asst, config)


def serve_forever(app: gr.Blocks, asst: Assistant, config: ServeConfig) -> None:
    from ui.serve import launch

    try:
        launch(app, asst, config, block=True)
    finally:
        asst.close()


if gr.NO_RELOAD:
    asst, config, kept = open_once()
else:  # a rerun: this file's globals are still there, the project's modules are not
    sys.modules.update(kept)
demo = build(asst, config)

if __name__ == "__main__" and gr.NO_RELOAD:  # a rerun must neither launch nor close
    serve_forever(demo, asst, config)
