"""Torch work outside decoding runs in a thread that ends with it (assistant.threads), so no
idle OpenMP team is left behind to slow the decoding thread's kernels."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from assistant import Assistant, model
from assistant.threads import in_fresh_thread
from online_rl.rounds import Trainer
from storage.db import Store


def test_in_fresh_thread_returns_and_raises_across_the_thread() -> None:
    here = threading.current_thread()
    there = in_fresh_thread(threading.current_thread)
    assert there is not here and not there.is_alive()  # it has ended: its team went with it
    assert in_fresh_thread(divmod, 17, 5) == (3, 2)
    with pytest.raises(ZeroDivisionError):
        in_fresh_thread(divmod, 1, 0)


def test_the_model_loads_and_rounds_run_outside_the_callers_thread(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: dict[str, threading.Thread] = {}
    real_load = model.load

    def load(*args, **kwargs):
        threads["load"] = threading.current_thread()
        return real_load(*args, **kwargs)

    def run(self, user_id: str) -> str:
        threads["round"] = threading.current_thread()
        return f"round of {user_id}"

    closed_in: list[threading.Thread] = []
    real_close = Store.close

    def close(self: Store) -> None:
        closed_in.append(threading.current_thread())
        real_close(self)

    monkeypatch.setattr(model, "load", load)
    monkeypatch.setattr(Trainer, "run", run)
    monkeypatch.setattr(Store, "close", close)
    with Assistant.open(tmp_path / "data", model=str(tiny_model_dir)) as asst:
        user = asst.add_user("alice", password="alice-password")
        assert asst.train("alice") == f"round of {user.id}"
    here = threading.current_thread()
    assert threads["load"] is not here and not threads["load"].is_alive()
    assert threads["round"] is not here and not threads["round"].is_alive()
    assert threads["round"] in closed_in  # the round's thread closed its own connection
