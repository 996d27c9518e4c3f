"""Where torch work runs, so that chat's decoding keeps the cores it is given.

torch's CPU kernels run on OpenMP (libgomp). A thread that runs a parallel kernel gets a team
of helper threads, which stays, idle, for as long as that thread lives. Once a process holds
more OpenMP threads than the machine has cores, libgomp stops spin-waiting between kernels and
puts helpers to sleep instead, so every parallel kernel of every team pays a wake-up: many
small kernels per decoded token (the served base's integer matmuls most of all) then cost
several times what they cost alone. One team left behind by the thread that loaded the model,
or by the pool thread that ran a training round, slowed every later served token so
(README "Speed").

So the serving process keeps one lasting team, the decoding thread's, and runs other torch
work (loading the model, a training round, a Compare's pair choice, a Ray round's gather) in a
thread of its own that ends with the work (`in_fresh_thread`, or `in_work_thread` for work
that reads the database), taking its team with it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from storage.db import Store

T = TypeVar("T")


def in_fresh_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` in a new thread, waited for: its result, or its exception raised
    here. Thread-local state (torch's grad mode, a per-thread database connection) starts
    fresh in that thread, as in any new thread."""
    outcome: list[Any] = []

    def target() -> None:
        try:
            outcome.append((True, fn(*args, **kwargs)))
        except BaseException as e:  # handed to the caller, which raises it
            outcome.append((False, e))

    name = getattr(fn, "__name__", "work")
    thread = threading.Thread(target=target, name=f"torch-{name}", daemon=True)
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def in_work_thread(store: Store, work: Callable[[], T]) -> T:
    """`work()` in a fresh thread (`in_fresh_thread`) that closes its own connection to
    `store` when the work ends, rather than leave it to the thread's teardown."""

    def then_close() -> T:
        try:
            return work()
        finally:
            store.close()

    return in_fresh_thread(then_close)
