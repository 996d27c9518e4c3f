"""Pruning old adapter version folders: what rollback and resuming need stays, rows stay."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from assistant import Assistant, InvalidInput
from assistant.adapters import AdapterRegistry
from assistant.config import AssistantConfig
from storage import adapters as adapter_files
from storage import records
from storage.db import Store
from storage.retention import RetentionConfig, prune_versions

# version -> status, oldest first: six once-live (retired or rolled back), one live, seven
# refused (rejected or stale)
HISTORY = {
    1: "retired",
    2: "retired",
    3: "retired",
    4: "rejected",
    5: "retired",
    6: "retired",
    7: "rejected",
    8: "retired",
    9: "rolled_back",
    10: "live",
    11: "rejected",
    12: "rejected",
    13: "stale",
    14: "rejected",
}


def add_history(db, root: Path, user_id: str, history: dict[int, str]) -> None:
    """A version folder (with its manifest) and a row for each version."""
    for version, status in history.items():

        def write(folder: Path, version: int = version) -> None:
            (folder / "adapter_model.safetensors").write_bytes(bytes([version]) * 100)

        path = adapter_files.write_version(root, user_id, version, write)
        records.add_adapter_version(db, user_id, version, str(path), None, status)


def folders(root: Path, user_id: str) -> list[str]:
    return sorted(p.name for p in (root / user_id).iterdir())


@pytest.fixture
def store(tmp_path: Path):
    store = Store(tmp_path / "data" / "attune.db")
    yield store
    store.close()


def test_prune_keeps_live_the_newest_once_live_and_refused_and_every_row(
    store: Store, tmp_path: Path
) -> None:
    root = tmp_path / "data" / "adapters"
    user_id = records.add_user(store.db, "alice", None, "user")["id"]
    other = records.add_user(store.db, "bob", None, "user")["id"]
    add_history(store.db, root, user_id, HISTORY)
    add_history(store.db, root, other, {1: "retired", 2: "retired", 3: "live"})

    pruned = prune_versions(store.db, root, user_id, RetentionConfig(once_live=5, refused=3))

    assert pruned == [1, 2, 4, 7, 11]
    kept = [3, 5, 6, 8, 9, 10, 12, 13, 14]
    assert folders(root, user_id) == [f"v{v:05d}" for v in kept]
    rows = records.list_adapter_versions(store.db, user_id)
    assert {r["version"]: r["status"] for r in rows} == HISTORY  # the history stays
    assert [r["version"] for r in rows if r["pruned"]] == pruned
    assert folders(root, other) == ["v00001", "v00002", "v00003"]  # only this user's
    assert prune_versions(store.db, root, user_id, RetentionConfig(once_live=5, refused=3)) == []


def test_a_crash_mid_delete_leaves_no_version_folder_only_a_temp_one_that_is_swept(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data" / "adapters"
    user_id = records.add_user(store.db, "alice", None, "user")["id"]
    add_history(store.db, root, user_id, {1: "retired", 2: "live"})
    rmtree = adapter_files.shutil.rmtree

    def power_cut(path: Path, *args, **kwargs) -> None:
        next(Path(path).iterdir()).unlink()  # one file gone, the rest still there
        raise RuntimeError("power cut")

    monkeypatch.setattr(adapter_files.shutil, "rmtree", power_cut)
    with pytest.raises(RuntimeError, match="power cut"):
        prune_versions(store.db, root, user_id, RetentionConfig(once_live=0, refused=0))
    monkeypatch.setattr(adapter_files.shutil, "rmtree", rmtree)
    # the half-deleted folder no longer has a version's name, so nothing can take it for one
    names = folders(root, user_id)
    assert "v00001" not in names and adapter_files.highest_version_on_disk(root, user_id) == 2
    assert [n for n in names if n.startswith(adapter_files.TEMP_PREFIX)]
    assert records.list_adapter_versions(store.db, user_id)[0]["pruned"]
    adapter_files.remove_partial_writes(root)  # what opening the data folder runs
    assert folders(root, user_id) == ["v00002"]


def test_a_pruned_version_cannot_be_rolled_back_to(tmp_path: Path) -> None:
    with Assistant(AssistantConfig(data_dir=tmp_path / "data")) as asst:
        user_id = asst.add_user("alice").id
        root = asst.config.adapters_dir
        add_history(asst.store.db, root, user_id, {1: "retired", 2: "retired", 3: "live"})
        prune_versions(asst.store.db, root, user_id, RetentionConfig(once_live=1))
        before = asst.versions("alice")
        with pytest.raises(InvalidInput, match="its files were pruned"):
            asst.rollback("alice", 1)
        assert asst.versions("alice") == before
        asst.rollback("alice", 2)  # the kept one still comes back
        assert [v["status"] for v in asst.versions("alice")] == ["retired", "live", "rolled_back"]


def test_the_fallback_from_a_damaged_live_version_skips_pruned_ones_quietly(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "data" / "adapters"
    user_id = records.add_user(store.db, "alice", None, "user")["id"]
    add_history(store.db, root, user_id, {1: "retired", 2: "retired", 3: "retired", 4: "live"})
    records.mark_pruned(store.db, user_id, [3])
    adapter_files.delete_version(root, user_id, 3)
    (adapter_files.version_dir(root, user_id, 4) / "adapter_model.safetensors").write_bytes(b"rot")
    registry = AdapterRegistry(None, store, root, capacity=1)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING):
        version, path = registry.usable_version(user_id)
    assert (version, path) == (2, adapter_files.version_dir(root, user_id, 2))
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "v4" in warned[0]  # the damaged live one, not the pruned v3
