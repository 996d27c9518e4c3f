"""`attune serve` for real: a subprocess with the background scheduler in it, the first
accounts printed once, sign-in with them, and "train now" queued on that scheduler; and
`gradio ui/main.py` (reload mode) keeping one facade and scheduler across reloads."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import gradio as gr
import pytest
from gradio_client import Client

from assistant import ModelConfig
from tests.ui_support import PASSWORDS, as_user, free_port
from ui.app import build_app
from ui.config import ServeConfig
from ui.serve import FIRST_ACCOUNTS, open_assistant

START_TIMEOUT_S = 180  # imports torch, transformers and gradio on a busy 2-core machine
ROUND_TIMEOUT_S = 120
SUMMARY = 6  # operator_data: picker, 3 plots, volume, versions, then the summary
CREDENTIALS = re.compile(r"^\s+(user|operator)\s+name: (\S+)\s+password: (\S+)$")
ROOT = Path(__file__).resolve().parent.parent
RELOAD_MAIN = ROOT / "ui" / "main.py"


def read_lines(stream, into: queue.Queue) -> None:
    for line in stream:
        into.put(line.rstrip("\n"))


def wait_for(lines: queue.Queue, seen: list[str], pattern: str) -> re.Match:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        seen.append(line)
        if match := re.search(pattern, line):
            return match
    raise AssertionError(f"no line matching {pattern!r}; output so far:\n" + "\n".join(seen))


def test_attune_serve_signs_in_first_accounts_and_trains_in_background(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    port = free_port()
    command = [
        *(sys.executable, "-m", "assistant.cli", "serve"),
        *("--port", str(port), "--data-dir", str(tmp_path / "data")),
        *("--model", str(tiny_model_dir), "--max-new-tokens", "8", "--demo-accounts"),
    ]
    server = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=read_lines, args=(server.stdout, lines), daemon=True).start()
    seen: list[str] = []
    try:
        url = wait_for(lines, seen, r"Running on local URL:\s+(\S+)").group(1)
        accounts = {m.group(2): m.group(3) for line in seen if (m := CREDENTIALS.match(line))}
        assert set(accounts) == {name for name, _ in FIRST_ACCOUNTS}, seen
        assert any("Background training is on" in line for line in seen)

        demo = Client(url, auth=("demo", accounts["demo"]), verbose=False)
        *_, reply = demo.predict("hello server", "", api_name="/chat")
        assert reply["adapter_version"] == 0 and reply["message_id"]
        operator = Client(url, auth=("operator", accounts["operator"]), verbose=False)
        assert "is queued" in operator.predict("demo", api_name="/train_now")
        deadline = time.monotonic() + ROUND_TIMEOUT_S
        summary = ""
        while time.monotonic() < deadline and "1 skipped" not in summary:
            time.sleep(1)
            summary = operator.predict("demo", api_name="/operator_data")[SUMMARY]
        assert "1 skipped" in summary, summary  # the scheduler ran the round: too few clicks
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_building_the_app_again_reuses_the_one_scheduler(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Gradio's reload mode runs the app module again: the scheduler must not start twice."""
    config = ServeConfig(data_dir=tmp_path / "data", model=ModelConfig(name=str(tiny_model_dir)))
    first = open_assistant(config)
    second = open_assistant(config)
    try:
        assert first.scheduler is not None and first.scheduler is second.scheduler
        assert first.scheduler.scheduler.running
        build_app(second, config)
        assert second.background
    finally:
        second.close()
        first.close()


def project_modules() -> list[str]:
    """What Gradio's reload drops before running the app file again: every loaded module
    from the watched folders (the tests' own modules aside: pytest holds them)."""
    return [
        name
        for name, module in sys.modules.items()
        if (file := getattr(module, "__file__", None))
        and Path(file).resolve().is_relative_to(ROOT)
        and not Path(file).resolve().is_relative_to(ROOT / ".venv")
        and name.split(".")[0] != "tests"
    ]


def run_app_file(namespace: dict[str, Any]) -> None:
    exec(compile(RELOAD_MAIN.read_text(), RELOAD_MAIN, "exec"), namespace)


def test_reload_mode_keeps_one_facade_and_scheduler(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`gradio ui/main.py` as Gradio runs it: the file once, then, on a change, again in the
    same globals with gr.NO_RELOAD false after the project's modules were dropped."""
    monkeypatch.setenv("ATTUNE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ATTUNE_MODEL", str(tiny_model_dir))
    saved: dict[str, ModuleType] = dict(sys.modules)
    namespace: dict[str, Any] = {"__name__": "attune_reload_test", "__file__": str(RELOAD_MAIN)}
    try:
        run_app_file(namespace)
        asst, first_demo = namespace["asst"], namespace["demo"]
        scheduler = asst.scheduler
        assert scheduler is not None and scheduler.scheduler.running
        asst.add_user("alice", password=PASSWORDS["alice"])

        gr.NO_RELOAD.set(False)
        for name in project_modules():
            del sys.modules[name]
        run_app_file(namespace)

        assert namespace["asst"] is asst and namespace["demo"] is not first_demo
        assert asst.scheduler is scheduler and scheduler.scheduler.running
        registry = sys.modules["online_rl.scheduler"]._started  # one scheduler per data folder
        assert list(registry.values()) == [scheduler]
        send = next(fn.fn for fn in namespace["demo"].fns.values() if fn.api_name == "chat")
        *_, final = send("hello after a reload", "", as_user("alice"))  # the rebuilt app
        stored = asst.messages("alice", final[-1]["conversation_id"])
        assert [m["text"] for m in stored] == ["hello after a reload", final[-1]["text"]]
    finally:
        gr.NO_RELOAD.set(True)
        if "asst" in namespace:
            namespace["asst"].close()
        for name in set(sys.modules) - set(saved):
            del sys.modules[name]
        sys.modules.update(saved)
