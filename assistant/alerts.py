"""Alerts for operators: plain rules over one user's row of the all-users overview
(`storage.overview.user_overview`), each a sentence that says what is wrong and by how much.

Pure functions of the row and the thresholds (`AlertConfig`), so the dashboard and the server
log say the same thing, and a test can check each rule on a row written by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from assistant.config import AlertConfig

Row = dict[str, Any]


def _pct(share: float) -> str:
    return f"{share:.0%}"


def offensive_rising(row: Row, kl_budget: float, c: AlertConfig) -> str | None:
    live, red_live, red_before = row["live_version"], row["red_team_live"], row["red_team_before"]
    if not live or red_live is None or red_before is None:
        return None
    if red_live - red_before < c.offensive_rise:
        return None
    return (
        f"offensive share on the red-team prompts rose from {_pct(red_before)} to "
        f"{_pct(red_live)} with version {live}"
    )


def thumbs_falling(row: Row, kl_budget: float, c: AlertConfig) -> str | None:
    live, share_live, share_before = (
        row["live_version"],
        row["share_up_live"],
        row["share_up_before"],
    )
    if not live or share_live is None or share_before is None:
        return None
    if min(row["thumbs_live"], row["thumbs_before"]) < c.min_thumbs:
        return None  # too few thumbs on one side to tell
    if share_before - share_live < c.share_drop:
        return None
    before = f"version {row['live_parent']}" if row["live_parent"] else "the base model"
    return (
        f"thumbs-up share fell from {_pct(share_before)} ({before}) to {_pct(share_live)} "
        f"after version {live} went live"
    )


def rounds_refused(row: Row, kl_budget: float, c: AlertConfig) -> str | None:
    if row["refused_recently"] < c.refused_rounds:
        return None
    return (
        f"{row['refused_recently']} of the last 3 rounds were refused or failed "
        f"(latest: {row['last_reason'] or row['last_outcome']})"
    )


def kl_near_budget(row: Row, kl_budget: float, c: AlertConfig) -> str | None:
    kl = row["kl"]
    if kl is None or kl < c.kl_near_budget * kl_budget:
        return None
    share = kl / kl_budget
    return f"KL to the base {kl:.1f} nats is {share:.0%} of the gate's budget ({kl_budget:.0f})"


def head_near_chance(row: Row, kl_budget: float, c: AlertConfig) -> str | None:
    accuracy = row["head_accuracy"]
    if accuracy is None or accuracy > c.chance_accuracy:
        return None
    return f"reward head near chance: held-out accuracy {accuracy:.2f}"


RULES: list[Callable[[Row, float, AlertConfig], str | None]] = [  # most urgent first
    offensive_rising,
    thumbs_falling,
    rounds_refused,
    kl_near_budget,
    head_near_chance,
]


def alerts_for(row: Row, kl_budget: float, config: AlertConfig) -> list[str]:
    """Every alert one overview row raises, most urgent first (empty: nothing to look at)."""
    return [said for rule in RULES if (said := rule(row, kl_budget, config))]
