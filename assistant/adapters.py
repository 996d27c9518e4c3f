"""Per-user LoRA adapters on one shared, frozen base model.

Every user's live adapter version is looked up in storage and loaded under the name
"<user_id>-v<version>", so a new version loads beside the old one: a reply that started on the
old version finishes on it (its lease pins it), the next reply gets the new one. Hot adapters
stay in memory (LRU, `capacity`); cold ones wait on disk. A damaged version on disk is skipped
with a warning and the user falls back to the last good one, or to the bare base.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assistant.model import LoadedModel
from storage import adapters as adapter_files
from storage import records
from storage.db import Store

log = logging.getLogger(__name__)

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


@dataclass(frozen=True)
class Binding:
    """The adapters one batch runs with: one name and version per row (version 0 = base)."""

    adapter_names: list[str]
    versions: list[int]


class AdapterRegistry:
    def __init__(self, base: LoadedModel, store: Store, root: Path, capacity: int):
        self.base = base
        self.store = store
        self.root = Path(root)
        self.capacity = max(1, capacity)
        self.peft: Any = None  # the PeftModel wrapping the base, once any adapter is loaded
        self._hot: OrderedDict[str, None] = OrderedDict()
        self._leases: Counter[str] = Counter()
        self._lock = threading.RLock()
        # held by every forward of the serving model (assistant.batching) and while an adapter
        # is removed from it: a forward must not see a layer half-changed
        self.forward_lock = threading.Lock()

    @property
    def hot_count(self) -> int:
        """Adapters held in memory now (at most `capacity`, plus any still leased)."""
        return len(self._hot)

    @staticmethod
    def adapter_name(user_id: str, version: int) -> str:
        return f"{user_id}-v{version}"

    def usable_version(self, user_id: str) -> tuple[int, Path | None]:
        """The user's live version, or the newest older retired one if it is damaged (one
        whose files were pruned is no candidate: `storage.retention`).

        No live version means the bare base (version 0, after a rollback to the base or before
        any accepted round). Files are checked against their manifest when a version is loaded,
        not on every reply: one already in memory was checked then.
        """
        with self._lock:
            return self._usable_version(user_id)

    def _usable_version(self, user_id: str) -> tuple[int, Path | None]:
        rows = records.list_adapter_versions(self.store.db, user_id)
        live = [r for r in rows if r["status"] == "live"]
        if not live:
            return 0, None
        fallbacks = [
            r
            for r in reversed(rows)
            if r["status"] == "retired" and r["version"] < live[0]["version"] and not r["pruned"]
        ]
        for row in live + fallbacks:
            path = Path(row["path"])
            if self.adapter_name(user_id, row["version"]) in self._hot:
                return row["version"], path
            try:
                adapter_files.verify_version(path)
            except adapter_files.CorruptAdapter as e:
                log.warning("user %s: skipping adapter v%s: %s", user_id, row["version"], e)
                continue
            return row["version"], path
        return 0, None

    def _load(self, name: str, path: Path) -> None:
        from peft import PeftModel

        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.base.model, str(path), adapter_name=name)
            self.peft.eval()
        else:
            self.peft.load_adapter(str(path), adapter_name=name)
        self.peft.requires_grad_(False)

    def _evict_cold(self) -> None:
        for name in list(self._hot):
            if len(self._hot) <= self.capacity:
                return
            if self._leases[name] == 0:
                del self._hot[name]
                self.peft.delete_adapter(name)

    @contextmanager
    def lease(self, user_ids: Sequence[str]) -> Iterator[Binding]:
        """Pin each user's usable adapter in memory while a batch generates with it."""
        with self._lock:
            names, versions = [], []
            for user_id in user_ids:
                version, path = self.usable_version(user_id)
                name = BASE if path is None else self.adapter_name(user_id, version)
                if path is not None and name not in self._hot:
                    self._load(name, path)
                    self._hot[name] = None
                if path is not None:
                    self._hot.move_to_end(name)
                    self._leases[name] += 1
                names.append(name)
                versions.append(version)
            self._evict_cold()
        try:
            yield Binding(names, versions)
        finally:
            with self._lock:
                for name in names:
                    if name != BASE:
                        self._leases[name] -= 1

    def forget_user(self, user_id: str) -> None:
        """Drop a deleted user's adapters from memory."""
        with self._lock, self.forward_lock:
            for name in [n for n in self._hot if n.startswith(f"{user_id}-v")]:
                del self._hot[name]
                self.peft.delete_adapter(name)
