"""The layers import in one direction: storage <- assistant <- online_rl, and ui uses only the
facade. Checked in a fresh interpreter, so what one test imported cannot hide what another
module pulls in."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FACADE_MODULES = (  # the facade and the modules its methods live in
    *("facade", "core", "accounts", "conversation"),
    *("feedback", "training_control", "operator_views"),
)


def loaded_after_importing(modules: list[str]) -> set[str]:
    """Every module loaded in a fresh interpreter by importing `modules`."""
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(json.loads(out.stdout))


def package_modules(package: str) -> list[str]:
    return [f"{package}.{p.stem}" for p in sorted((ROOT / package).glob("*.py"))]


def test_online_rl_does_not_import_the_facade_or_the_ui() -> None:
    loaded = loaded_after_importing(package_modules("online_rl"))
    assert "online_rl.rounds" in loaded
    assert not {f"assistant.{m}" for m in FACADE_MODULES} & loaded
    assert not {m for m in loaded if m == "ui" or m.startswith("ui.")}


def test_storage_imports_neither_assistant_nor_online_rl() -> None:
    loaded = loaded_after_importing(package_modules("storage"))
    assert not {m for m in loaded if m.split(".")[0] in ("assistant", "online_rl", "ui")}
