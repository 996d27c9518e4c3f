"""Row functions: each reads or writes one kind of record.

They take a `Database` and return plain dicts, so callers never see SQL. Ownership and input
rules are the facade's job; these functions trust their arguments. Ids are random hex strings,
never sequential integers, so a client cannot walk through other people's rows.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlite_utils import Database
from sqlite_utils.db import NotFoundError

from storage.db import writing

Row = dict[str, Any]

USER_TABLES_BY_DEPENDENCY = (
    "version_changes",
    "liked_samples",
    "features",
    "feedback",
    "pairs",
    "messages",
    "conversations",
    "adapter_versions",
    "training_runs",
)


def now() -> str:
    """UTC timestamp with microseconds: sortable as text and unambiguous across machines."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def new_id() -> str:
    return uuid.uuid4().hex


def _first(db: Database, sql: str, params: Iterable[Any]) -> Row | None:
    return next(iter(db.query(sql, list(params))), None)


# What teaches a user's assistant: rows of conversations the user has not excluded
# (`conversations.learn`). Every query that feeds or triggers training reads through these.
IN_TEACHING_CONVERSATION = "join conversations c on c.id = {}.conversation_id and c.learn"
TEACHING_MESSAGES = "messages m " + IN_TEACHING_CONVERSATION.format("m")
TEACHING_THUMBS = "feedback f join messages m on m.id = f.message_id " + (
    IN_TEACHING_CONVERSATION.format("m")
)
TEACHING_PAIRS = "pairs p " + IN_TEACHING_CONVERSATION.format("p")


# users ------------------------------------------------------------------------------------------


def add_user(db: Database, name: str, password_hash: str | None, role: str) -> Row:
    row = {
        "id": new_id(),
        "name": name,
        "password_hash": password_hash,
        "role": role,
        "created": now(),
    }
    db["users"].insert(row)
    return row


def get_user(db: Database, name: str) -> Row | None:
    return _first(db, "select * from users where name = ?", [name])


def user_exists(db: Database, user_id: str) -> bool:
    """Whether the account is still there: a round checks it before it writes, since the user
    may have been deleted while it ran."""
    return _first(db, "select id from users where id = ?", [user_id]) is not None


def set_password_hash(db: Database, user_id: str, password_hash: str) -> None:
    db["users"].update(user_id, {"password_hash": password_hash})


def list_users(db: Database) -> list[Row]:
    return list(db.query("select * from users order by created"))


def delete_user(db: Database, user_id: str) -> None:
    """Remove every row that belongs to the user, in one transaction; the name stays retired
    (`name_retired`)."""
    with writing(db):
        for table in USER_TABLES_BY_DEPENDENCY:
            db.execute(f"delete from {table} where user_id = ?", [user_id])
        db.execute(
            "insert or replace into retired_names (name, retired)"
            " select name, ? from users where id = ?",
            [now(), user_id],
        )
        db.execute("delete from users where id = ?", [user_id])


def set_learning_paused(db: Database, user_id: str, paused: bool) -> None:
    db["users"].update(user_id, {"learning_paused": int(paused)})


def learning_paused(db: Database, user_id: str) -> bool:
    row = _first(db, "select learning_paused from users where id = ?", [user_id])
    return bool(row and row["learning_paused"])


def name_retired(db: Database, name: str) -> bool:
    """Whether a deleted account used this name (it is never given out again)."""
    return _first(db, "select name from retired_names where name = ?", [name]) is not None


# conversations and messages -------------------------------------------------------------------


def add_conversation(db: Database, user_id: str, title: str) -> Row:
    row = {"id": new_id(), "user_id": user_id, "title": title[:80], "created": now()}
    db["conversations"].insert(row)
    return row


def get_conversation(db: Database, conversation_id: str) -> Row | None:
    return _first(db, "select * from conversations where id = ?", [conversation_id])


def list_conversations(db: Database, user_id: str) -> list[Row]:
    return list(
        db.query("select * from conversations where user_id = ? order by created desc", [user_id])
    )


def set_conversation_learn(db: Database, conversation_id: str, learn: bool) -> None:
    """Whether the conversation's messages and clicks may train its user's assistant."""
    db["conversations"].update(conversation_id, {"learn": int(learn)})


def conversation_messages(db: Database, conversation_id: str) -> list[Row]:
    return list(
        db.query("select * from messages where conversation_id = ? order by seq", [conversation_id])
    )


def add_messages(
    db: Database, conversation_id: str, user_id: str, messages: list[Row]
) -> list[Row]:
    """Append messages to a conversation in order; fills id, seq and created.

    Each message dict holds role and text, and optionally adapter_version, generation (a dict)
    and pair_id. Call inside `storage.db.writing(db)` when other rows must land together with these.
    """
    last = _first(
        db, "select max(seq) as seq from messages where conversation_id = ?", [conversation_id]
    )
    seq = (last["seq"] if last and last["seq"] is not None else -1) + 1
    stamp = now()
    rows = []
    for offset, message in enumerate(messages):
        generation = message.get("generation")
        rows.append(
            {
                "id": message.get("id") or new_id(),
                "user_id": user_id,
                "conversation_id": conversation_id,
                "seq": seq + offset,
                "role": message["role"],
                "text": message["text"],
                "adapter_version": message.get("adapter_version"),
                "generation": json.dumps(generation) if generation is not None else None,
                "pair_id": message.get("pair_id"),
                "created": stamp,
            }
        )
    db["messages"].insert_all(rows)
    return rows


def conversation_with_thumbs(db: Database, conversation_id: str) -> list[Row]:
    """The conversation's messages in order, each with its standing thumb (0 if none)."""
    return list(
        db.query(
            "select m.*, coalesce(f.thumb, 0) as thumb from messages m "
            "left join feedback f on f.message_id = m.id "
            "where m.conversation_id = ? order by m.seq",
            [conversation_id],
        )
    )


def get_message(db: Database, message_id: str) -> Row | None:
    return _first(db, "select * from messages where id = ?", [message_id])


def message_generation(message: Row) -> dict[str, Any]:
    """The generation settings stored with a reply ({} for a user's message)."""
    return json.loads(message["generation"] or "{}")


# feedback ---------------------------------------------------------------------------------------


def upsert_feedback(
    db: Database, message_id: str, user_id: str, thumb: int, reason: str | None
) -> Row:
    """One row per message: a new click, a change of mind or a retraction (0) overwrites it."""
    row = {
        "message_id": message_id,
        "user_id": user_id,
        "thumb": thumb,
        "reason": reason,
        "updated": now(),
    }
    db["feedback"].upsert(row, pk="message_id")
    return row


def set_feedback_reason(db: Database, message_id: str, reason: str | None) -> bool:
    """Attach (or clear) the reason of a standing thumb; False when the reply has none. The
    thumb's time stays the click's: a reason explains a click, it is not a new one."""
    cursor = db.execute(
        "update feedback set reason = ? where message_id = ? and thumb != 0", [reason, message_id]
    )
    return cursor.rowcount == 1


def get_feedback(db: Database, message_id: str) -> Row | None:
    return _first(db, "select * from feedback where message_id = ?", [message_id])


def thumbs_by_version(db: Database, user_id: str) -> list[Row]:
    """The user's standing thumbs per version of their assistant that wrote the reply
    (0 = the base model), oldest version first: `adapter_version`, `up`, `down`."""
    return list(
        db.query(
            "select m.adapter_version, sum(f.thumb = 1) as up, sum(f.thumb = -1) as down "
            "from feedback f join messages m on m.id = f.message_id "
            "where f.user_id = ? and f.thumb != 0 group by m.adapter_version "
            "order by m.adapter_version",
            [user_id],
        )
    )


def feedback_counts(db: Database, user_id: str) -> dict[str, int]:
    """The user's standing thumbs (retractions not counted) and decided A/B choices."""
    thumbs = _first(
        db,
        "select coalesce(sum(thumb = 1), 0) as up, coalesce(sum(thumb = -1), 0) as down "
        "from feedback where user_id = ?",
        [user_id],
    )
    choices = _first(
        db, "select count(*) as n from pairs where user_id = ? and winner is not null", [user_id]
    )
    return {
        "thumbs_up": thumbs["up"] if thumbs else 0,
        "thumbs_down": thumbs["down"] if thumbs else 0,
        "choices": choices["n"] if choices else 0,
    }


# A/B pairs --------------------------------------------------------------------------------------


def add_pair(
    db: Database,
    pair_id: str,
    user_id: str,
    conversation_id: str,
    prompt_message_id: str,
    answer_a_id: str,
    answer_b_id: str,
    kind: str = "compare",
) -> Row:
    """An A/B pair; its messages carry `pair_id` (`join_pair` for messages stored before)."""
    row = {
        "kind": kind,
        "id": pair_id,
        "user_id": user_id,
        "conversation_id": conversation_id,
        "prompt_message_id": prompt_message_id,
        "answer_a_id": answer_a_id,
        "answer_b_id": answer_b_id,
        "winner": None,
        "created": now(),
        "chosen_at": None,
    }
    db["pairs"].insert(row)
    return row


def join_pair(db: Database, pair_id: str, message_ids: Sequence[str]) -> None:
    """Make stored messages members of a pair (a regenerated reply's prompt and first reply)."""
    marks = ", ".join("?" for _ in message_ids)
    db.execute(f"update messages set pair_id = ? where id in ({marks})", [pair_id, *message_ids])


def get_pair(db: Database, pair_id: str) -> Row | None:
    return _first(db, "select * from pairs where id = ?", [pair_id])


def set_pair_winner(db: Database, pair_id: str, winner: str) -> bool:
    """Record the choice once; False when the pair was already decided (nothing changes)."""
    cursor = db.execute(
        "update pairs set winner = ?, chosen_at = ? where id = ? and winner is null",
        [winner, now(), pair_id],
    )
    db.conn.commit()
    return cursor.rowcount == 1


# training history -----------------------------------------------------------------------------


def data_folder(db: Database) -> Path | None:
    """The folder of the database file (the data folder; None for a database in memory)."""
    for _seq, name, file in db.execute("pragma database_list").fetchall():
        if name == "main" and file:
            return Path(file).parent
    return None


def _stored_path(db: Database, path: str) -> str:
    """A version folder's path as stored: relative to the data folder when it lies inside it,
    so a data folder that is moved or restored elsewhere still finds its versions."""
    folder = data_folder(db)
    if folder is None:
        return path
    try:
        return Path(path).resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:  # outside the data folder: only an absolute path can say where
        return str(Path(path).resolve())


def list_adapter_versions(db: Database, user_id: str) -> list[Row]:
    """The user's versions, oldest first; `path` is resolved against where the data folder
    is now (the one place stored paths are read)."""
    folder = data_folder(db) or Path()
    rows = db.query("select * from adapter_versions where user_id = ? order by version", [user_id])
    return [r | {"path": str(folder / r["path"]) if r["path"] else r["path"]} for r in rows]


def version_kl_coef(db: Database, user_id: str, version: int) -> float | None:
    """The KL coefficient the version's round ended with (None: unknown, e.g. no such row)."""
    row = _first(
        db,
        "select kl_coef from adapter_versions where user_id = ? and version = ?",
        [user_id, version],
    )
    return row["kl_coef"] if row else None


def next_version(db: Database, user_id: str) -> int:
    last = _first(db, "select max(version) as v from adapter_versions where user_id = ?", [user_id])
    return (last["v"] if last and last["v"] is not None else 0) + 1


def live_version(db: Database, user_id: str) -> int:
    """The user's live version as the database says now (0: the bare base). A round compares
    it with the one it started from before its candidate may replace it."""
    row = _first(
        db,
        "select version from adapter_versions where user_id = ? and status = 'live'",
        [user_id],
    )
    return row["version"] if row else 0


def make_live(db: Database, user_id: str, version: int | None, old_status: str) -> None:
    """Switch the user's live version in one transaction: the current live one gets
    `old_status` (retired after a newer one is accepted, rolled_back on a rollback); None
    leaves the user on the bare base."""
    with writing(db):
        db.execute(
            "update adapter_versions set status = ? where user_id = ? and status = 'live'",
            [old_status, user_id],
        )
        if version is not None:
            db.execute(
                "update adapter_versions set status = 'live' where user_id = ? and version = ?",
                [user_id, version],
            )


def mark_pruned(db: Database, user_id: str, versions: Iterable[int]) -> list[int]:
    """Record that these versions' folders are going away; the live one is never marked, even
    if it became live since the caller looked. Returns the versions marked now. Call before
    deleting the folders: a crash in between leaves a marked row whose folder the next prune
    deletes, never a row that looks restorable without its files."""
    marked = []
    with writing(db):
        for version in versions:
            cursor = db.execute(
                "update adapter_versions set pruned = ? where user_id = ? and version = ? "
                "and status != 'live' and pruned is null",
                [now(), user_id, version],
            )
            if cursor.rowcount:
                marked.append(version)
    return marked


def start_training_run(db: Database, user_id: str) -> Row:
    row = {
        "id": new_id(),
        "user_id": user_id,
        "started": now(),
        "finished": None,
        "outcome": "running",
        "version": None,
        "metrics": "{}",
        "reason": None,
    }
    db["training_runs"].insert(row)
    return row


def finish_training_run(
    db: Database,
    run_id: str,
    outcome: str,
    version: int | None,
    reason: str | None,
    metrics: dict[str, Any],
) -> None:
    """Record how a run ended; nothing when the run is gone (its user was deleted while it
    ran, and their runs with them)."""
    with contextlib.suppress(NotFoundError):
        db["training_runs"].update(
            run_id,
            {
                "finished": now(),
                "outcome": outcome,
                "version": version,
                "reason": reason,
                "metrics": json.dumps(metrics),
            },
        )


def fail_interrupted_runs(db: Database) -> int:
    """Runs still 'running' when the process starts died with it: record them as failed."""
    with writing(db):
        cursor = db.execute(
            "update training_runs set outcome = 'failed', finished = ?, "
            "reason = 'interrupted: the process stopped during the round' "
            "where outcome = 'running'",
            [now()],
        )
    return cursor.rowcount


def list_training_runs(db: Database, user_id: str) -> list[Row]:
    return list(
        db.query("select * from training_runs where user_id = ? order by started", [user_id])
    )


def last_training_run(db: Database, user_id: str) -> Row | None:
    return _first(
        db,
        "select * from training_runs where user_id = ? order by started desc limit 1",
        [user_id],
    )


# a failed run whose reason starts so uses up its clicks: retrying would fail the same way
INTERRUPTED = "interrupted"  # the process died during the round (it may be what killed it)
GAVE_UP = "gave up"  # the latest of FAILURES_IN_A_ROW failed runs
FAILURES_IN_A_ROW = 3
COUNTED = f"(outcome != 'failed' or reason like '{INTERRUPTED}%' or reason like '{GAVE_UP}%')"


def last_counted_run(db: Database, user_id: str) -> Row | None:
    """The user's latest run that used up the clicks before it (running, ended with an
    outcome, or a failure not worth retrying, `COUNTED`): clicks after its start are new. A
    failed run (an error, a lost Ray actor) learned nothing, so the clicks before it stay new
    for the next round, until FAILURES_IN_A_ROW runs failed in a row."""
    return _first(
        db,
        f"select * from training_runs where user_id = ? and {COUNTED} "
        "order by started desc limit 1",
        [user_id],
    )


def failure_reason(db: Database, user_id: str, run_id: str, error: str) -> str:
    """The reason to record for run `run_id` failing with `error`: as it is, or marked
    `GAVE_UP` when it is the FAILURES_IN_A_ROW-th failure in a row (then its clicks count as
    used, and the next click or sweep does not retry what keeps failing)."""
    if failures_in_a_row(db, user_id, run_id) + 1 < FAILURES_IN_A_ROW:
        return error
    return f"{GAVE_UP} after {FAILURES_IN_A_ROW} failed rounds in a row: {error}"


def failures_in_a_row(db: Database, user_id: str, before: str) -> int:
    """How many of the user's runs before run `before` failed one after another, newest first,
    since the last counted one."""
    n = 0
    for row in db.query(
        "select outcome, reason, id from training_runs where user_id = ? order by started desc",
        [user_id],
    ):
        if row["id"] == before:
            continue
        if row["outcome"] != "failed" or (row["reason"] or "").startswith((INTERRUPTED, GAVE_UP)):
            break
        n += 1
    return n


def feedback_events_since(db: Database, user_id: str, since: str | None) -> int:
    """Clicks (thumbs, changes of mind, A/B choices) the user made after `since`, in
    conversations that teach."""
    since = since or ""
    thumbs = _first(
        db,
        f"select count(*) as n from {TEACHING_THUMBS} where f.user_id = ? and f.updated > ?",
        [user_id, since],
    )
    choices = _first(
        db,
        f"select count(*) as n from {TEACHING_PAIRS} where p.user_id = ? and p.chosen_at > ?",
        [user_id, since],
    )
    return (thumbs["n"] if thumbs else 0) + (choices["n"] if choices else 0)


def users_with_feedback_since_last_run(db: Database) -> list[str]:
    """Ids of users, learning not paused, who clicked anything in a conversation that teaches
    after the start of their latest counted training run (`last_counted_run`)."""
    sql = f"""
    with last as (select user_id, max(started) as started from training_runs
                  where {COUNTED} group by user_id)
    select u.id from users u left join last on last.user_id = u.id
    where not u.learning_paused and (
        exists (select 1 from {TEACHING_THUMBS}
                where f.user_id = u.id and f.updated > coalesce(last.started, ''))
        or exists (select 1 from {TEACHING_PAIRS}
                   where p.user_id = u.id and p.chosen_at > coalesce(last.started, '')))
    """
    return [r["id"] for r in db.query(sql)]


# training data ----------------------------------------------------------------------------------


def user_prompts(db: Database, user_id: str, limit: int) -> list[Row]:
    """The user's most recent messages (role user) in conversations that teach, newest first:
    what rollouts sample from."""
    return list(
        db.query(
            f"select m.* from {TEACHING_MESSAGES} where m.user_id = ? and m.role = 'user' "
            "order by m.created desc, m.seq desc limit ?",
            [user_id, limit],
        )
    )


def get_features(
    db: Database, message_ids: Iterable[str], model: str, kind: str
) -> dict[str, bytes]:
    """The stored feature vectors of these messages computed by `model`, of this `kind`."""
    ids = list(message_ids)
    out: dict[str, bytes] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        for r in db.query(
            "select message_id, vector from features where model = ? and kind = ? "
            f"and message_id in ({marks})",
            [model, kind, *chunk],
        ):
            out[r["message_id"]] = r["vector"]
    return out


def put_features(
    db: Database, model: str, kind: str, rows: Iterable[tuple[str, str, bytes]]
) -> None:
    """Store (message_id, user_id, float32 bytes) feature vectors of `kind` computed with
    `model`."""
    db["features"].upsert_all(
        [
            {"message_id": m, "model": model, "kind": kind, "user_id": u, "vector": v}
            for m, u, v in rows
        ],
        pk=("message_id", "model", "kind"),
    )


def add_liked_samples(
    db: Database,
    user_id: str,
    model: str,
    kind: str,
    samples: Iterable[tuple[list[int], list[int], bytes]],
) -> None:
    """Add (prompt ids, reply ids, float32 feature bytes of `kind`) rollout samples to the
    user's liked pool for `model`, newest last."""
    stamp = now()
    db["liked_samples"].insert_all(
        [
            {
                "id": new_id(),
                "user_id": user_id,
                "model": model,
                "prompt": json.dumps(prompt),
                "reply": json.dumps(reply),
                "vector": vector,
                "kind": kind,
                "created": stamp,
            }
            for prompt, reply, vector in samples
        ]
    )


def list_liked_samples(db: Database, user_id: str, model: str, limit: int) -> list[Row]:
    """The user's newest `limit` liked samples of `model`, oldest of them first, with prompt
    and reply as token id lists. Rows added together share a timestamp: rowid orders them."""
    rows = db.query(
        "select * from liked_samples where user_id = ? and model = ? "
        "order by created desc, rowid desc limit ?",
        [user_id, model, limit],
    )
    return [
        r | {"prompt": json.loads(r["prompt"]), "reply": json.loads(r["reply"])}
        for r in reversed(list(rows))
    ]


def set_liked_vectors(db: Database, kind: str, vectors: dict[str, bytes]) -> None:
    """Replace liked samples' vectors (by sample id) with ones of `kind`."""
    with writing(db):
        for sample_id, vector in vectors.items():
            db.execute(
                "update liked_samples set vector = ?, kind = ? where id = ?",
                [vector, kind, sample_id],
            )


def liked_sample_count(db: Database, user_id: str, model: str) -> int:
    row = _first(
        db,
        "select count(*) as n from liked_samples where user_id = ? and model = ?",
        [user_id, model],
    )
    return row["n"] if row else 0


def trim_liked_samples(db: Database, user_id: str, keep: int) -> None:
    """Keep only the user's newest `keep` liked samples, whatever their model: the table stays
    bounded even when the base model changes (other models' rows are never read again)."""
    with writing(db):
        db.execute(
            "delete from liked_samples where user_id = ? and id not in (select id from "
            "liked_samples where user_id = ? order by created desc, rowid desc limit ?)",
            [user_id, user_id, keep],
        )


def get_red_team_baseline(db: Database, key: str) -> list[tuple[float, float]] | None:
    """The base's stored (offensive share, mean probability) per red-team prompt, if sampled
    under exactly these settings (`key`) before."""
    row = _first(db, "select baseline from red_team_baselines where key = ?", [key])
    return (
        [(share, probability) for share, probability in json.loads(row["baseline"])]
        if row
        else None
    )


def put_red_team_baseline(
    db: Database, key: str, model: str, baseline: list[tuple[float, float]]
) -> None:
    db["red_team_baselines"].upsert(
        {"key": key, "model": model, "baseline": json.dumps(baseline), "created": now()}, pk="key"
    )


# export ---------------------------------------------------------------------------------------


def rated_replies(db: Database, user_id: str | None = None) -> list[Row]:
    """Replies with a standing thumb (retractions excluded) in conversations that teach,
    oldest first."""
    sql = f"select m.*, f.thumb, f.reason from {TEACHING_THUMBS} where f.thumb != 0"
    params: list[Any] = []
    if user_id is not None:
        sql += " and f.user_id = ?"
        params.append(user_id)
    return list(db.query(sql + " order by f.updated", params))


def live_red_team_rates(db: Database) -> dict[str, float | None]:
    """Per user name, the live version's offensive share on the red-team prompts at its gate
    (users on the base model are absent)."""
    rows = db.query(
        "select u.name, json_extract(v.metrics, '$.red_team_offensive_rate') as rate "
        "from users u join adapter_versions v on v.user_id = u.id and v.status = 'live'"
    )
    return {r["name"]: r["rate"] for r in rows}


def recent_replies(db: Database, limit: int) -> list[Row]:
    """Everyone's newest replies, newest first, with the author's name and any standing thumb
    and its reason (what the operator's safety view reads)."""
    return list(
        db.query(
            "select m.id, m.text, m.created, m.adapter_version, u.name as user, f.thumb, "
            "f.reason from messages m join users u on u.id = m.user_id "
            "left join feedback f on f.message_id = m.id "
            "where m.role = 'assistant' order by m.created desc limit ?",
            [limit],
        )
    )


def decided_pairs(db: Database, user_id: str | None = None) -> list[Row]:
    """A/B pairs that have a winner, in conversations that teach, oldest first."""
    sql = f"select p.* from {TEACHING_PAIRS} where p.winner is not null"
    params: list[Any] = []
    if user_id is not None:
        sql += " and p.user_id = ?"
        params.append(user_id)
    return list(db.query(sql + " order by p.chosen_at", params))


# what the model sees ----------------------------------------------------------------------------


def _pair_keeps(pair: Row | None) -> str | None:
    """Which answer of an A/B pair continues the conversation: the winner, `a` on a tie; of a
    regenerated reply undecided or both bad, the new one (`b`)."""
    if pair is None:
        return None
    if pair["kind"] == "regenerate" and pair["winner"] in (None, "both_bad"):
        return pair["answer_b_id"]  # the turn was part of the conversation: it stays
    return {"a": pair["answer_a_id"], "b": pair["answer_b_id"], "tie": pair["answer_a_id"]}.get(
        pair["winner"] or ""
    )


def context_before(db: Database, conversation_id: str, message: Row | None = None) -> list[Row]:
    """The turns the model sees before `message` (or after the whole conversation if None).

    An A/B comparison joins the conversation only once decided: its prompt and the winning
    answer (answer a on a tie) stay, the other answer goes; an undecided or both-bad comparison
    leaves no trace. A regenerated reply's pair keeps its prompt and the new reply unless the
    earlier one is chosen (a tie keeps the earlier too): the turn was part of the conversation.
    The comparison that `message` itself belongs to contributes its prompt.
    """
    pairs = {
        p["id"]: p
        for p in db.query("select * from pairs where conversation_id = ?", [conversation_id])
    }
    own_pair = message["pair_id"] if message else None
    seen = []
    for m in conversation_messages(db, conversation_id):
        if message is not None and m["seq"] >= message["seq"]:
            break
        if m["pair_id"] is None:
            seen.append(m)
        elif m["pair_id"] == own_pair:
            if m["role"] == "user":
                seen.append(m)
        else:
            keep = _pair_keeps(pairs.get(m["pair_id"]))
            if keep is not None and (m["role"] == "user" or m["id"] == keep):
                seen.append(m)
    return seen


Traits = dict[str, tuple[float, float]]  # trait -> (before, after)


def add_version_change(
    db: Database,
    user_id: str,
    version: int,
    compared_with: int,
    pairs: int,
    traits: Traits,
    base_traits: Traits,
    example: tuple[str, str, str] | None,
) -> Row:
    """What an accepted version changed: its traits' means against the version it was
    compared with (`traits`) and against the base (`base_traits`), measured on `pairs`
    question-and-seed pairs, and one (question, before, after) example or None."""
    question, before, after = example or (None, None, None)
    row = {
        "id": new_id(),
        "user_id": user_id,
        "version": version,
        "compared_with": compared_with,
        "pairs": pairs,
        "traits": json.dumps(traits),
        "base_traits": json.dumps(base_traits),
        "question": question,
        "before_text": before,
        "after_text": after,
        "created": now(),
    }
    db["version_changes"].insert(row)
    return row


def version_changes(db: Database, user_id: str) -> list[Row]:
    """The user's version changes, newest version first, traits decoded."""
    rows = db.query(
        "select * from version_changes where user_id = ? order by version desc", [user_id]
    )
    return [
        {**r, "traits": json.loads(r["traits"]), "base_traits": json.loads(r["base_traits"])}
        for r in rows
    ]


def reason_tally(db: Database, user_id: str) -> list[Row]:
    """The reasons the user gave with their standing thumbs, most given first: `reason`,
    `thumb`, `n`."""
    return list(
        db.query(
            "select reason, thumb, count(*) as n from feedback where user_id = ? "
            "and thumb != 0 and reason is not null group by reason, thumb "
            "order by n desc, reason",
            [user_id],
        )
    )


def add_adapter_version(
    db: Database,
    user_id: str,
    version: int,
    path: str,
    parent: int | None,
    status: str,
    reason: str | None = None,
    metrics: dict[str, Any] | None = None,
    kl_coef: float | None = None,
) -> Row:
    """Record a version whose folder is `path` (stored relative to the data folder, so a
    moved data folder keeps its versions; `list_adapter_versions` gives it back whole), and
    the KL coefficient a round starting from it carries on with."""
    row = {
        "id": new_id(),
        "user_id": user_id,
        "version": version,
        "path": _stored_path(db, path),
        "parent": parent,
        "status": status,
        "reason": reason,
        "metrics": json.dumps(metrics or {}),
        "created": now(),
        "kl_coef": kl_coef,
    }
    db["adapter_versions"].insert(row)
    return row
