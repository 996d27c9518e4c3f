"""The SQLite file: connections, schema migrations.

One `sqlite_utils.Database` wraps one `sqlite3` connection, and those cannot cross threads, so
`Store` hands every thread its own connection to the same file. WAL lets readers run while a
training round writes; the busy timeout makes concurrent writers wait instead of failing.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

BUSY_TIMEOUT_MS = 10_000
VERSION_NAME = re.compile(r"v[0-9]+")  # a version folder's name (storage.adapters.version_dir)

migrations = Migrations("attune")


@migrations()
def m001_initial(db: Database) -> None:
    """The tables of the foundation: people, what they said, what they thought of it."""
    db["users"].create(
        {"id": str, "name": str, "password_hash": str, "role": str, "created": str},
        pk="id",
        not_null={"name", "role", "created"},
    )
    db["users"].create_index(["name"], unique=True)
    db["conversations"].create(
        {"id": str, "user_id": str, "title": str, "created": str},
        pk="id",
        foreign_keys=[("user_id", "users", "id")],
        not_null={"user_id", "created"},
    )
    db["conversations"].create_index(["user_id", "created"])
    db["pairs"].create(
        {
            "id": str,
            "user_id": str,
            "conversation_id": str,
            "prompt_message_id": str,
            "answer_a_id": str,
            "answer_b_id": str,
            "winner": str,  # a / b / tie / both_bad; NULL until chosen
            "created": str,
            "chosen_at": str,
        },
        pk="id",
        foreign_keys=[("user_id", "users", "id"), ("conversation_id", "conversations", "id")],
        not_null={"user_id", "conversation_id", "created"},
    )
    db["pairs"].create_index(["user_id", "created"])
    db["messages"].create(
        {
            "id": str,
            "user_id": str,
            "conversation_id": str,
            "seq": int,  # order within the conversation
            "role": str,  # user / assistant
            "text": str,
            "adapter_version": int,  # 0 = the bare base model
            "generation": str,  # JSON of the settings that produced it (seed included)
            "pair_id": str,  # set on the prompt and both answers of an A/B comparison
            "created": str,
        },
        pk="id",
        foreign_keys=[("user_id", "users", "id"), ("conversation_id", "conversations", "id")],
        not_null={"user_id", "conversation_id", "seq", "role", "text", "created"},
    )
    db["messages"].create_index(["conversation_id", "seq"], unique=True)
    db["messages"].create_index(["user_id", "created"])
    db["feedback"].create(
        {
            "message_id": str,
            "user_id": str,
            "thumb": int,  # +1 / -1; 0 once retracted
            "reason": str,
            "updated": str,
        },
        pk="message_id",
        foreign_keys=[("message_id", "messages", "id"), ("user_id", "users", "id")],
        not_null={"user_id", "thumb", "updated"},
    )
    db["feedback"].create_index(["user_id", "updated"])
    db["adapter_versions"].create(
        {
            "id": str,
            "user_id": str,
            "version": int,
            "path": str,
            "parent": int,
            "status": str,  # live / rejected / stale / rolled_back / retired
            "reason": str,
            "metrics": str,  # JSON
            "created": str,
        },
        pk="id",
        foreign_keys=[("user_id", "users", "id")],
        not_null={"user_id", "version", "status", "created"},
    )
    db["adapter_versions"].create_index(["user_id", "version"], unique=True)
    db["training_runs"].create(
        {
            "id": str,
            "user_id": str,
            "started": str,
            "finished": str,
            "outcome": str,  # running / accepted / rejected / failed
            "version": int,
            "metrics": str,  # JSON
        },
        pk="id",
        foreign_keys=[("user_id", "users", "id")],
        not_null={"user_id", "started", "outcome"},
    )
    db["training_runs"].create_index(["user_id", "started"])


@migrations()
def m002_training(db: Database) -> None:
    """Online RL: cached reward features per reply, and why a run ended as it did."""
    db["features"].create(
        {
            "message_id": str,
            "model": str,  # which base model computed it: features of two models do not mix
            "user_id": str,
            "vector": bytes,  # float32, little-endian
        },
        pk=("message_id", "model"),
        foreign_keys=[("message_id", "messages", "id"), ("user_id", "users", "id")],
        not_null={"user_id", "vector"},
    )
    db["training_runs"].add_column("reason", str)


@migrations()
def m003_retired_names(db: Database) -> None:
    """Names of deleted accounts. A signed-in web session holds only the user's name, so a new
    account under a deleted one's name would inherit that account's open sessions."""
    db["retired_names"].create({"name": str, "retired": str}, pk="name")


@migrations()
def m004_pruned_versions(db: Database) -> None:
    """When a version's folder was pruned (NULL while its files are kept): the row stays, as
    the history the operator reads, but the version can no longer come back."""
    db["adapter_versions"].add_column("pruned", str)


@migrations()
def m005_relative_version_paths(db: Database) -> None:
    """Version paths relative to the data folder (`storage.records.add_adapter_version`).
    Earlier rows hold absolute paths, perhaps of where the folder used to be, so each keeps
    just its tail when that has the shape every version folder has, adapters/<user>/v<N>;
    any other path is left as it is."""
    rows = db.execute("select id, user_id, path from adapter_versions").fetchall()
    for row_id, user_id, path in rows:
        if not path or not Path(path).is_absolute():
            continue
        tail = Path(path).parts[-3:]
        if len(tail) == 3 and tail[:2] == ("adapters", user_id) and VERSION_NAME.fullmatch(tail[2]):
            db.execute(
                "update adapter_versions set path = ? where id = ?", ["/".join(tail), row_id]
            )


@migrations()
def m006_trainer_state(db: Database) -> None:
    """What training keeps across rounds and restarts: each user's liked pool (rollout samples
    the reward head liked, re-judged and imitated by later rounds; per base model, since token
    ids and features of two models do not mix), and the base model's red-team baseline, keyed
    by a hash of everything it depends on (sampling it takes minutes on a real model)."""
    db["liked_samples"].create(
        {
            "id": str,
            "user_id": str,
            "model": str,  # the base model that sampled it and computed its features
            "prompt": str,  # JSON list of token ids
            "reply": str,  # JSON list of token ids
            "vector": bytes,  # float32, little-endian, like features.vector
            "created": str,
        },
        pk="id",
        foreign_keys=[("user_id", "users", "id")],
        not_null={"user_id", "model", "prompt", "reply", "vector", "created"},
    )
    db["liked_samples"].create_index(["user_id", "model", "created"])
    db["red_team_baselines"].create(
        {
            "key": str,  # `online_rl.gate_measure.RedTeam.baseline_key`
            "model": str,
            "baseline": str,  # JSON list of [offensive share, mean probability] per prompt
            "created": str,
        },
        pk="key",
        not_null={"model", "baseline", "created"},
    )


# the features every reply had before features had kinds (`online_rl.features.LAST_TOKEN.key`)
FIRST_FEATURE_KIND = "L-1:last"


@migrations()
def m007_feature_kinds(db: Database) -> None:
    """Reward features of several kinds (which layers, which pooling: `online_rl.features`):
    a reply may have a vector of each, so the kind joins the key. Existing vectors were all
    of the first kind and keep it; a reply lacking the kind a head now reads gets it computed
    when needed, so nothing is lost. Liked samples record the kind of their vector too."""
    db["features"].add_column("kind", str, not_null_default=FIRST_FEATURE_KIND)
    db["features"].transform(pk=("message_id", "model", "kind"))
    db["liked_samples"].add_column("kind", str, not_null_default=FIRST_FEATURE_KIND)


@migrations()
def m008_kl_coefficient(db: Database) -> None:
    """The KL coefficient a version's round ended with, which the next round that starts from
    that version carries on with (PPO's adaptive controller), as a column: it decides what a
    round does, so it is state, not a metric. Earlier rows kept it in their metrics JSON."""
    db["adapter_versions"].add_column("kl_coef", float)
    db.execute(
        "update adapter_versions set kl_coef = json_extract(metrics, '$.kl_coef') "
        "where json_valid(metrics)"
    )


@migrations()
def m009_learning_controls(db: Database) -> None:
    """What a user decides about their own learning: a pause (clicks are kept, no round runs)
    and conversations that do not teach (their messages and clicks are kept, never trained on)."""
    db["users"].add_column("learning_paused", int, not_null_default=0)
    db["conversations"].add_column("learn", int, not_null_default=1)


@migrations()
def m010_version_changes(db: Database) -> None:
    """What each accepted version changed, measured when the gate compared it with the
    version before it: trait means of both on the same questions and seeds (JSON), the same
    against the base model, and one of those questions with both replies (the user's before
    / after)."""
    db["version_changes"].create(
        {
            "id": str,
            "user_id": str,
            "version": int,
            "compared_with": int,  # 0 = the bare base model
            "pairs": int,  # question-and-seed pairs the traits were measured on
            "traits": str,  # JSON: {trait: [before, after]}
            "base_traits": str,  # JSON: {trait: [the base's, after]}
            "question": str,
            "before_text": str,
            "after_text": str,
            "created": str,
        },
        pk="id",
        foreign_keys=[("user_id", "users", "id")],
        not_null={"user_id", "version", "compared_with", "traits", "base_traits", "created"},
    )
    db["version_changes"].create_index(["user_id", "version"], unique=True)


@migrations()
def m011_pair_kinds(db: Database) -> None:
    """Where an A/B pair comes from: a Compare ("compare"), or a reply the user regenerated
    ("regenerate": the earlier reply is a, the new one b; until decided, b continues the
    conversation)."""
    db["pairs"].add_column("kind", str, not_null_default="compare")


def connect(path: Path | str) -> Database:
    """Open (and migrate) the database file with the settings every connection needs."""
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=True)
    db = Database(conn)
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    db.execute("PRAGMA foreign_keys = ON")
    db.enable_wal()
    migrations.apply(db)
    return db


@contextmanager
def writing(db: Database) -> Iterator[Database]:
    """A write transaction that takes the write lock up front (BEGIN IMMEDIATE).

    A plain BEGIN starts as a reader; upgrading to a writer after another connection committed
    fails at once with "database is locked", busy timeout or not. Taking the lock first makes
    concurrent writers queue under the busy timeout instead. Nested use becomes a savepoint.
    """
    if db.conn.in_transaction:
        with db.atomic():
            yield db
        return
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.conn.execute("ROLLBACK")
        raise
    db.conn.execute("COMMIT")


class Store:
    """One database file, one connection per thread that touches it."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        _ = self.db  # create and migrate the file now, so errors surface at open time

    @property
    def db(self) -> Database:
        """This thread's connection, opened on first use."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = connect(self.path)
            self._local.db = db
        return db

    def close(self) -> None:
        """Close the calling thread's connection (sqlite3 forbids closing another thread's)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
