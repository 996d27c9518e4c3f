"""Publishing a round's candidate: its folder written atomically, then one transaction that
records it and, if the gate accepted it, makes it live.

A candidate may only replace the live version its round compared it with: a rollback made while
the round ran stands, and the candidate is recorded `stale`. A user deleted while the round ran
gets no row (the folder is deleted by the trainer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage import adapters as adapter_files
from storage import records
from storage.db import writing


@dataclass(frozen=True)
class Published:
    """How the candidate ended: live or not, and why."""

    accepted: bool
    reason: str


def write_candidate(
    db: Any, adapters_dir: Path, user_id: str, write: Callable[[Path], None]
) -> tuple[int, Path]:
    """The candidate's number (past every row and folder the user has) and its folder,
    written atomically by `write`."""
    version = max(
        records.next_version(db, user_id),
        adapter_files.highest_version_on_disk(adapters_dir, user_id) + 1,
    )
    return version, adapter_files.write_version(adapters_dir, user_id, version, write)


def publish(
    db: Any,
    user_id: str,
    version: int,
    path: Path,
    compared_with: int,
    parent: int,
    accept: bool,
    reason: str,
    metrics: dict[str, Any],
    kl_coef: float,
    serving: Callable[[str], tuple[int, Path | None]],
    finish: Callable[[Published], Any],
) -> Any:
    """Record the candidate (with the KL coefficient its round ended with, which a round
    starting from it carries on with) and, if accepted, live is still `compared_with` and the
    user has not paused learning meanwhile, make it live;
    `finish` records the round's outcome in the same transaction (a crash after the commit
    must not leave the run 'running' beside the version it made live). Returns `finish`'s
    result, or None when the user was deleted meanwhile (nothing is recorded).

    `serving(user_id)` is the version serving really uses: a damaged live version the round
    fell back from is no change, serving never moved."""
    with writing(db):
        if not records.user_exists(db, user_id):
            return None
        now_live = records.live_version(db, user_id)
        stale = now_live != compared_with and serving(user_id)[0] != compared_with
        paused = records.learning_paused(db, user_id)
        accepted = accept and not stale and not paused
        if stale:
            reason = f"stale: live changed from v{compared_with} to v{now_live} while the round ran"
        elif paused and accept:
            reason = "not adopted: learning was paused while the round ran"
        status = "stale" if stale else "retired" if accepted else "rejected"
        records.add_adapter_version(
            db,
            user_id,
            version,
            str(path),
            parent or None,
            status,
            None if accepted else reason,
            metrics,
            kl_coef,
        )
        if accepted:
            records.make_live(db, user_id, version, old_status="retired")
        return finish(Published(accepted, reason))
