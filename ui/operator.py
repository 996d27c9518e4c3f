"""Operator tab handlers: per-user training trends, feedback volume, versions, rollback, train now,
and the safety floor's view (offensive rates per user, flagged replies).

Every handler checks the operator role server-side on every call (`identity.operator`), so a
non-operator calling these endpoints through the API gets an error, not data. The tab itself
is only made visible to operators.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from assistant import Assistant
from ui.config import ServeConfig
from ui.errors import readable_errors
from ui.identity import is_operator, operator
from ui.panel import live_version, when

REWARD_SERIES = {
    "reward_before": "reward before (live)",
    "reward_after": "reward after (candidate)",
}
VERSION_COLUMNS = ["version", "parent", "status", "reason", "created", "pruned"]
VOLUME_KINDS = {"thumbs_up": "thumbs up", "thumbs_down": "thumbs down", "choices": "A/B choices"}
SAFETY_COLUMNS = {
    "user": "user",
    "replies": "replies",
    "offensive_rate": "offensive share of replies",
    "flagged_harmful": "flagged harmful by the user",
    "live_red_team_rate": "live version: offensive share on red-team prompts",
}
FLAGGED_COLUMNS = ["user", "created", "version", "classifier", "flagged_by_user", "text"]
DASHBOARD_OUTPUTS = 9
NO_VERSION = "Give the version to bring back (0 = the bare base model)."


def _empty(value_column: str, with_series: bool) -> pd.DataFrame:
    columns: dict[str, pd.Series] = {
        "started": pd.Series(dtype="datetime64[ns, UTC]"),
        value_column: pd.Series(dtype="float64"),
    }
    if with_series:
        columns["series"] = pd.Series(dtype="str")
    return pd.DataFrame(columns)


def metric_frame(trends: list[dict[str, Any]], key: str) -> pd.DataFrame:
    """One row per training run that measured `key`: (started, key)."""
    rows = [
        {"started": t["started"], key: float(t[key])}
        for t in trends
        if isinstance(t.get(key), int | float)
    ]
    if not rows:
        return _empty(key, with_series=False)
    frame = pd.DataFrame(rows)
    frame["started"] = pd.to_datetime(frame["started"], utc=True, format="ISO8601")
    return frame


def reward_frame(trends: list[dict[str, Any]]) -> pd.DataFrame:
    """Long form for one line per series: reward of live before and of the candidate after."""
    rows = [
        {"started": t["started"], "reward": float(t[key]), "series": label}
        for t in trends
        for key, label in REWARD_SERIES.items()
        if isinstance(t.get(key), int | float)
    ]
    if not rows:
        return _empty("reward", with_series=True)
    frame = pd.DataFrame(rows)
    frame["started"] = pd.to_datetime(frame["started"], utc=True, format="ISO8601")
    return frame


def volume_frame(asst: Assistant) -> pd.DataFrame:
    """Feedback per user and kind (standing thumbs, decided A/B choices)."""
    rows = [
        {"user": u.name, "clicks": n, "kind": VOLUME_KINDS[kind]}
        for u in asst.users()
        for kind, n in asst.feedback_counts(u.name).items()
    ]
    return pd.DataFrame(rows, columns=["user", "clicks", "kind"]).astype({"clicks": "int64"})


def versions_frame(versions: list[dict[str, Any]]) -> pd.DataFrame:
    rows = [
        {
            **{k: v[k] for k in VERSION_COLUMNS},
            "created": when(v["created"]),
            "pruned": when(v["pruned"]) if v["pruned"] else "",  # files gone: cannot come back
        }
        for v in versions
    ]
    return pd.DataFrame(rows, columns=VERSION_COLUMNS)


def summary(user: str, trends: list[dict[str, Any]], versions: list[dict[str, Any]]) -> str:
    outcomes: dict[str, int] = {}
    for t in trends:
        outcomes[t["outcome"]] = outcomes.get(t["outcome"], 0) + 1
    counted = ", ".join(f"{n} {o}" for o, n in sorted(outcomes.items())) or "none yet"
    live = live_version(versions)
    return (
        f"**{user}**: training runs: {counted}. Live: "
        f"{f'version {live}' if live else 'the bare base model'}."
    )


def safety_frames(report: dict[str, list[dict[str, Any]]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-user offensive rates, flagged replies) from `Assistant.safety_report`."""
    users = pd.DataFrame(
        [{label: u[key] for key, label in SAFETY_COLUMNS.items()} for u in report["users"]],
        columns=list(SAFETY_COLUMNS.values()),
    )
    flagged = pd.DataFrame(
        [{**f, "created": when(f["created"])} for f in report["flagged"]], columns=FLAGGED_COLUMNS
    )
    return users, flagged


class Operator:
    def __init__(self, asst: Assistant, config: ServeConfig):
        self.asst = asst
        self.config = config

    def start(self, request: gr.Request) -> tuple[gr.Tab, gr.Timer]:
        """On page load: show the tab and start its refresh timer for operators only."""
        with readable_errors():
            allowed = is_operator(self.asst, request)
            return gr.Tab(visible=allowed), gr.Timer(active=allowed)

    def _pick(self, picked: str | None) -> str:
        """The user the dashboard shows: the picked one, else the first with training runs."""
        if picked:
            return self.asst.user(picked).name
        names = [u.name for u in self.asst.users()]
        if not names:
            raise gr.Error("There are no users yet.", print_exception=False)
        return next((n for n in names if self.asst.trends(n)), names[0])

    def dashboard(self, picked: str | None, request: gr.Request) -> tuple[Any, ...]:
        """(user picker, reward trend, KL, reward-head accuracy, feedback volume, versions,
        summary, per-user offensive rates, flagged replies) for the picked user."""
        with readable_errors():
            operator(self.asst, request)
            user = self._pick(picked)
            trends = self.asst.trends(user)
            versions = self.asst.versions(user)
            return (
                gr.Dropdown(choices=[u.name for u in self.asst.users()], value=user),
                reward_frame(trends),
                metric_frame(trends, "kl"),
                metric_frame(trends, "heldout_accuracy"),
                volume_frame(self.asst),
                versions_frame(versions),
                summary(user, trends, versions),
                *safety_frames(self.asst.safety_report()),
            )

    def first_view(self, picked: str | None, request: gr.Request) -> tuple[Any, ...]:
        """The dashboard on page load for operators; nothing (and no error) for others."""
        if not is_operator(self.asst, request):
            return (gr.skip(),) * DASHBOARD_OUTPUTS
        return self.dashboard(picked, request)

    def rollback(self, picked: str | None, version: float | None, request: gr.Request) -> str:
        """Make an earlier version of the picked user's adapter live again."""
        with readable_errors():
            operator(self.asst, request)
            user = self._pick(picked)
            if version is None or int(version) != version:
                raise gr.Error(NO_VERSION, print_exception=False)
            self.asst.rollback(user, int(version))
            where = f"version {int(version)}" if version else "the bare base model"
            gr.Info(f"{user} now answers with {where}.")
            return f"{user} now answers with {where}."

    def train_now(self, picked: str | None, request: gr.Request) -> str:
        """One round for the picked user: queued on the background scheduler when it runs
        (so the page does not wait), else run here and reported when done."""
        with readable_errors():
            operator(self.asst, request)
            user = self._pick(picked)
            if self.asst.background:
                queued = self.asst.queue_training(user)
                said = (
                    f"A round for {user} is queued; the plots show it when it ends."
                    if queued
                    else f"A round for {user} is queued or running already."
                )
            else:
                report = self.asst.train(user)
                version = f"version {report.version}" if report.version is not None else "none"
                verdict = "accepted" if report.accepted else "not accepted"
                said = f"Round for {user}: {verdict} (candidate {version}): {report.reason}"
            gr.Info(said)
            return said
