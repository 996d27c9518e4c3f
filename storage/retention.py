"""Which adapter version folders a user keeps on disk, and pruning the rest.

Every round writes a version folder, refused candidates included, so without pruning the
adapters folder only grows. What stays is what something may still read: the live version,
the newest versions that were live before (what rollback brings back), and the newest refused
candidates (the newest rejected one may be where the next round goes on from). Rows are never
deleted: they are the history the operator reads; a pruned row records when its files went.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlite_utils import Database

from storage import adapters as adapter_files
from storage import records
from storage.db import writing

ONCE_LIVE = ("retired", "rolled_back")
REFUSED = ("rejected", "stale")


@dataclass(frozen=True)
class RetentionConfig:
    """How many version folders of each kind a user keeps, newest first (by version number).

    once_live: versions that were live before (retired or rolled back): rollback targets.
    refused: rejected or stale candidates; keep at least 1 so that the next round can go on
        from a candidate refused only for not beating live (`RoundConfig.resume_refused`).
    """

    once_live: int = 5
    refused: int = 3


def versions_to_prune(rows: list[records.Row], config: RetentionConfig) -> list[int]:
    """The versions among `rows` (one user's, oldest first) whose folders may go: neither
    live, nor among the newest kept of their kind, nor of a status this module does not know."""
    newest_first = list(reversed(rows))
    keep = {r["version"] for r in rows if r["status"] not in ONCE_LIVE + REFUSED}
    for statuses, count in ((ONCE_LIVE, config.once_live), (REFUSED, config.refused)):
        kind = [r["version"] for r in newest_first if r["status"] in statuses]
        keep.update(kind[: max(0, count)])
    return [r["version"] for r in rows if r["version"] not in keep and not r["pruned"]]


def prune_versions(db: Database, root: Path, user_id: str, config: RetentionConfig) -> list[int]:
    """Delete the folders of the user's versions that `config` does not keep; returns the
    versions pruned now.

    Rows are marked pruned in one transaction with the choice (so a rollback either happens
    before and is seen, or after and refuses), and only then are folders deleted, each through
    a temporary name. A folder left by a crash after the marking is deleted by the next call.
    """
    with writing(db):
        rows = records.list_adapter_versions(db, user_id)
        pruned = records.mark_pruned(db, user_id, versions_to_prune(rows, config))
    gone = {r["version"] for r in rows if r["pruned"]} | set(pruned)
    for version in sorted(gone):
        adapter_files.delete_version(root, user_id, version)
    return pruned
