"""The SQLite file and the adapter folders, without a model."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from storage import adapters as adapter_files
from storage import records
from storage.db import Store, connect, migrations, writing


def test_schema_is_migrated_once_with_wal_and_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    db = connect(path)
    expected = {
        "users",
        "conversations",
        "messages",
        "feedback",
        "pairs",
        "adapter_versions",
        "training_runs",
        "features",
    }
    assert expected <= set(db.table_names())
    assert db.execute("pragma journal_mode").fetchone()[0] == "wal"
    assert db.execute("pragma busy_timeout").fetchone()[0] > 0
    again = connect(path)  # re-opening applies nothing twice
    assert [m.name for m in migrations.applied(again)] == [
        "m001_initial",
        "m002_training",
        "m003_retired_names",
        "m004_pruned_versions",
        "m005_relative_version_paths",
        "m006_trainer_state",
        "m007_feature_kinds",
        "m008_kl_coefficient",
        "m009_learning_controls",
        "m010_version_changes",
        "m011_pair_kinds",
    ]


def test_each_thread_gets_its_own_connection(tmp_path: Path) -> None:
    store = Store(tmp_path / "a.db")
    user = records.add_user(store.db, "u", None, "user")
    seen, errors = [], []

    def work(i: int) -> None:
        try:
            db = store.db
            seen.append(db)  # the object, not id(): ids of freed objects get reused
            with writing(db):
                conv = records.add_conversation(db, user["id"], f"c{i}")
                records.add_messages(db, conv["id"], user["id"], [{"role": "user", "text": str(i)}])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            store.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({id(db) for db in seen}) == 8 and all(db is not store.db for db in seen)
    assert store.db["messages"].count == 8


def test_feedback_is_one_row_per_message(tmp_path: Path) -> None:
    db = connect(tmp_path / "a.db")
    user = records.add_user(db, "u", None, "user")
    conv = records.add_conversation(db, user["id"], "t")
    rows = records.add_messages(
        db,
        conv["id"],
        user["id"],
        [{"role": "user", "text": "q"}, {"role": "assistant", "text": "a"}],
    )
    assert [r["seq"] for r in rows] == [0, 1]
    reply = rows[1]["id"]
    records.upsert_feedback(db, reply, user["id"], 1, "good")
    records.upsert_feedback(db, reply, user["id"], -1, None)
    assert db["feedback"].count == 1
    assert records.get_feedback(db, reply)["thumb"] == -1
    records.upsert_feedback(db, reply, user["id"], 0, None)
    assert records.rated_replies(db) == []


def test_pair_winner_is_set_once(tmp_path: Path) -> None:
    db = connect(tmp_path / "a.db")
    user = records.add_user(db, "u", None, "user")
    conv = records.add_conversation(db, user["id"], "t")
    q, a, b = records.add_messages(
        db,
        conv["id"],
        user["id"],
        [
            {"role": "user", "text": "q", "pair_id": "p"},
            {"role": "assistant", "text": "a", "pair_id": "p"},
            {"role": "assistant", "text": "b", "pair_id": "p"},
        ],
    )
    records.add_pair(db, "p", user["id"], conv["id"], q["id"], a["id"], b["id"])
    assert records.set_pair_winner(db, "p", "tie")
    assert not records.set_pair_winner(db, "p", "a")
    assert records.get_pair(db, "p")["winner"] == "tie"
    seen = records.context_before(db, conv["id"])
    assert [m["text"] for m in seen] == ["q", "a"]  # a tie continues with answer a
    assert [m["text"] for m in records.context_before(db, conv["id"], b)] == ["q"]


def test_adapter_versions_are_published_whole(tmp_path: Path) -> None:
    def write(folder: Path) -> None:
        (folder / "weights.bin").write_bytes(b"\x01" * 1000)
        (folder / "config.json").write_text("{}")

    path = adapter_files.write_version(tmp_path, "user1", 1, write)
    assert path == adapter_files.version_dir(tmp_path, "user1", 1)
    adapter_files.verify_version(path)
    with pytest.raises(FileExistsError):
        adapter_files.write_version(tmp_path, "user1", 1, write)

    def crash(folder: Path) -> None:
        (folder / "weights.bin").write_bytes(b"half")
        raise RuntimeError("power cut")

    with pytest.raises(RuntimeError):
        adapter_files.write_version(tmp_path, "user1", 2, crash)
    assert not adapter_files.version_dir(tmp_path, "user1", 2).exists()
    assert list((tmp_path / "user1").iterdir()) == [path]

    (path / "weights.bin").write_bytes(b"\x02" * 1000)  # damaged after the fact
    with pytest.raises(adapter_files.CorruptAdapter):
        adapter_files.verify_version(path)


def test_leftover_temp_folders_are_swept(tmp_path: Path) -> None:
    leftover = tmp_path / "user1" / f"{adapter_files.TEMP_PREFIX}v00003-abcd"
    leftover.mkdir(parents=True)
    (leftover / "half.bin").write_bytes(b"x")
    assert adapter_files.remove_partial_writes(tmp_path) == [leftover]
    assert not leftover.exists()


def test_absolute_version_paths_become_relative_to_the_data_folder(tmp_path: Path) -> None:
    path = tmp_path / "restored" / "attune.db"
    path.parent.mkdir()
    db = connect(path)
    user_id = records.add_user(db, "u", None, "user")["id"]
    # rows as earlier releases wrote them: absolute, here from where the folder used to be
    for version, stored in (
        (1, f"/old/place/data/adapters/{user_id}/v00001"),
        (2, "/somewhere/else/entirely"),
    ):
        db["adapter_versions"].insert(
            {
                "id": records.new_id(),
                "user_id": user_id,
                "version": version,
                "path": stored,
                "status": "retired",
                "metrics": "{}",
                "created": records.now(),
            }
        )
    db.execute("delete from _sqlite_migrations where name = 'm005_relative_version_paths'")
    db.conn.commit()
    db.close()
    db = connect(path)  # applies the migration again
    stored = [r[0] for r in db.execute("select path from adapter_versions order by version")]
    assert stored == [f"adapters/{user_id}/v00001", "/somewhere/else/entirely"]
    rows = records.list_adapter_versions(db, user_id)
    assert Path(rows[0]["path"]) == tmp_path / "restored" / "adapters" / user_id / "v00001"
    assert rows[1]["path"] == "/somewhere/else/entirely"  # not of the data folder's shape: kept


def test_feature_vectors_gain_kinds_and_keep_the_old_ones(tmp_path: Path) -> None:
    """m007: a reply's stored vector (all of one kind before) is kept under the first kind, and
    a vector of another kind can sit beside it."""
    from sqlite_utils import Database

    from storage.db import FIRST_FEATURE_KIND, migrations

    path = tmp_path / "attune.db"
    db = Database(path)
    migrations.apply(db, stop_before="m007_feature_kinds")
    user_id = records.add_user(db, "u", None, "user")["id"]
    conv = records.add_conversation(db, user_id, "hi")["id"]
    message = records.add_messages(db, conv, user_id, [{"role": "assistant", "text": "yo"}])[0]
    db["features"].insert(
        {"message_id": message["id"], "model": "m", "user_id": user_id, "vector": b"old"}
    )
    liked = {"id": "s", "user_id": user_id, "model": "m", "prompt": "[1]", "reply": "[2]"}
    db["liked_samples"].insert(liked | {"vector": b"old", "created": records.now()})
    db.close()
    db = connect(path)
    assert records.get_features(db, [message["id"]], "m", FIRST_FEATURE_KIND) == {
        message["id"]: b"old"
    }
    records.put_features(db, "m", "L12:mean", [(message["id"], user_id, b"new")])
    assert records.get_features(db, [message["id"]], "m", "L12:mean") == {message["id"]: b"new"}
    assert records.get_features(db, [message["id"]], "m", FIRST_FEATURE_KIND)[message["id"]] == (
        b"old"
    )
    [sample] = records.list_liked_samples(db, user_id, "m", 10)
    assert sample["kind"] == FIRST_FEATURE_KIND and sample["vector"] == b"old"
    records.set_liked_vectors(db, "L12:mean", {"s": b"new"})
    [sample] = records.list_liked_samples(db, user_id, "m", 10)
    assert (sample["kind"], sample["vector"]) == ("L12:mean", b"new")


def test_the_kl_coefficient_moves_from_the_metrics_to_a_column(tmp_path: Path) -> None:
    """m008: versions recorded before it kept the coefficient inside their metrics JSON; it
    becomes their column, and new versions write the column."""
    from sqlite_utils import Database

    from storage.db import migrations

    path = tmp_path / "attune.db"
    db = Database(path)
    migrations.apply(db, stop_before="m008_kl_coefficient")
    user_id = records.add_user(db, "u", None, "user")["id"]
    for version, metrics in ((1, '{"kl_coef": 0.07, "kl": 1.5}'), (2, "{}"), (3, "not json")):
        row = {"id": records.new_id(), "user_id": user_id, "version": version, "path": "p"}
        db["adapter_versions"].insert(
            row | {"status": "retired", "metrics": metrics, "created": records.now()}
        )
    db.close()
    db = connect(path)
    assert records.version_kl_coef(db, user_id, 1) == 0.07
    assert records.version_kl_coef(db, user_id, 2) is None
    assert records.version_kl_coef(db, user_id, 3) is None
    assert records.version_kl_coef(db, user_id, 9) is None
    records.add_adapter_version(db, user_id, 4, "p4", 1, "rejected", "why", {}, kl_coef=0.04)
    assert records.version_kl_coef(db, user_id, 4) == 0.04


def test_m009_keeps_everyone_learning_from_every_conversation(tmp_path: Path) -> None:
    """m009: accounts and conversations from before it keep learning (the defaults); the
    flags then switch one user and one conversation."""
    from sqlite_utils import Database

    from storage.db import migrations

    path = tmp_path / "attune.db"
    db = Database(path)
    migrations.apply(db, stop_before="m009_learning_controls")
    user_id = records.add_user(db, "u", None, "user")["id"]
    conversation = records.add_conversation(db, user_id, "before the controls")["id"]
    db.close()
    db = connect(path)
    assert not records.learning_paused(db, user_id)
    assert records.get_conversation(db, conversation)["learn"] == 1
    records.set_learning_paused(db, user_id, True)
    records.set_conversation_learn(db, conversation, False)
    assert records.learning_paused(db, user_id)
    assert records.get_conversation(db, conversation)["learn"] == 0
