"""Every user at a glance, for operators: one row per user from indexed per-user lookups
(the latest run through `training_runs(user_id, started)`, the live version through
`adapter_versions(user_id, version)`, clicks through `feedback(user_id, updated)`); the facade
sorts, filters and pages the rows it keeps for a few seconds. Nothing here classifies text:
flagged replies are the ones users flagged.

Also the feedback browser's query: every thumb with its reason, reply, version and
conversation, filtered and paged.
"""

from __future__ import annotations

from typing import Any

from sqlite_utils import Database

from storage.records import TEACHING_PAIRS, TEACHING_THUMBS, Row

RECENT_RUNS = 3  # "refused_recently": refused or failed among the last three measured rounds

# thumbs per user and version that wrote the reply, once over the whole table
_THUMBS_BY_VERSION = """(select f.user_id, m.adapter_version as version, count(*) as n,
    avg(f.thumb = 1) as share_up from feedback f join messages m on m.id = f.message_id
    where f.thumb != 0 group by f.user_id, m.adapter_version)"""

_OVERVIEW = f"""
with thumbs as {_THUMBS_BY_VERSION}
select * from (
  select
    u.name as user,
    u.id as user_id,
    u.learning_paused as paused,
    coalesce(v.version, 0) as live_version,
    v.created as live_since,
    coalesce(v.parent, 0) as live_parent,
    r.finished as last_round,
    r.outcome as last_outcome,
    r.reason as last_reason,
    json_extract(r.metrics, '$.kl') as kl,
    json_extract(r.metrics, '$.heldout_accuracy') as head_accuracy,
    tl.share_up as share_up_live,
    coalesce(tl.n, 0) as thumbs_live,
    tb.share_up as share_up_before,
    coalesce(tb.n, 0) as thumbs_before,
    json_extract(v.metrics, '$.red_team_offensive_rate') as red_team_live,
    coalesce(json_extract(pv.metrics, '$.red_team_offensive_rate'),
             json_extract(v.metrics, '$.base_red_team_offensive_rate')) as red_team_before,
    (select count(*) from {TEACHING_THUMBS}
       where f.user_id = u.id and f.updated > coalesce(latest.started, ''))
    + (select count(*) from {TEACHING_PAIRS}
       where p.user_id = u.id and p.chosen_at > coalesce(latest.started, '')) as clicks_waiting,
    (select count(*) from feedback f
       where f.user_id = u.id and f.thumb = -1 and f.reason = :harmful) as flagged,
    (select count(*) from (select outcome from training_runs
       where user_id = u.id and outcome in ('accepted', 'rejected', 'failed')
       order by started desc limit {RECENT_RUNS})
       where outcome in ('rejected', 'failed')) as refused_recently
  from users u
  left join adapter_versions v on v.user_id = u.id and v.status = 'live'
  left join adapter_versions pv on pv.user_id = u.id and pv.version = v.parent
  left join thumbs tl on tl.user_id = u.id and tl.version = coalesce(v.version, 0)
  left join thumbs tb on tb.user_id = u.id and v.version is not null
    and tb.version = coalesce(v.parent, 0)
  left join training_runs r on r.id = (  -- the latest round that measured something
    select id from training_runs where user_id = u.id
    and outcome in ('accepted', 'rejected', 'failed') order by started desc limit 1)
  left join training_runs latest on latest.id = (  -- what the scheduler counts clicks from
    select id from training_runs where user_id = u.id order by started desc limit 1)
  where :user_id is null or u.id = :user_id
)
"""


def user_overview(db: Database, harmful_reason: str, user_id: str | None = None) -> list[Row]:
    """Every user's row (`user_id`: that user's only), by name: the live version and when it
    was made; the latest round that measured a candidate (outcome, reason, KL, head accuracy;
    skipped rounds measure nothing); the share of thumbs up on replies of the live version
    and of its parent; the red-team offensive rate of both (the base's, from the live
    version's own gate, when the parent is the base); clicks since the latest round started
    (as the scheduler counts them); replies flagged harmful; and how many of the last three
    measured rounds were refused or failed."""
    params = {"harmful": harmful_reason, "user_id": user_id}
    return list(db.query(f"{_OVERVIEW} order by user", params))


def _like(text: str) -> str:
    """A LIKE pattern that finds `text` anywhere, its own % and _ taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def feedback_rows(
    db: Database,
    user: str = "",
    thumb: int | None = None,
    reason_contains: str = "",
    version: int | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Row], int]:
    """(one page of thumbs, newest first, how many match): each standing thumb (retractions
    left out) with its reason, the reply's text and version, and its conversation's id and
    title. Filters: the user's exact name, the thumb (1 / -1), words in the reason, the
    version that wrote the reply."""
    where = ["f.thumb != 0"]
    params: dict[str, Any] = {}
    if user:
        where.append("u.name = :user")
        params["user"] = user
    if thumb is not None:
        where.append("f.thumb = :thumb")
        params["thumb"] = thumb
    if reason_contains:
        where.append("f.reason like :reason escape '\\'")
        params["reason"] = _like(reason_contains)
    if version is not None:
        where.append("m.adapter_version = :version")
        params["version"] = version
    source = (
        "feedback f join messages m on m.id = f.message_id join users u on u.id = f.user_id "
        "join conversations c on c.id = m.conversation_id where " + " and ".join(where)
    )
    rows = list(
        db.query(
            "select u.name as user, f.updated as clicked, f.thumb, f.reason, "
            "m.adapter_version as version, m.text as reply, m.id as message_id, "
            "c.id as conversation_id, c.title as conversation, c.learn as teaches "
            f"from {source} order by f.updated desc limit {int(limit)} offset {int(offset)}",
            params,
        )
    )
    total = next(db.query(f"select count(*) as n from {source}", params))["n"]
    return rows, total
