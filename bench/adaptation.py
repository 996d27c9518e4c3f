"""Feedback-to-adaptation latency: from the click that queues a round to the new version live.

A simulated user ("trainee", the concise taste of `bench.personalize`) asks questions, gets two
answers (`Assistant.compare`) and clicks the way that taste says: an A/B choice and a thumb on
each answer. The background scheduler (`Assistant.start_background`, the app's own trigger)
queues a round once `events_per_round` new clicks have come in. Clicks come in bursts: the
clicks of one round, then nothing until that round's outcome is recorded, so every round trains
on the same number of new clicks and no click of the next round waits behind it.

The clock starts just before the call that delivers the click after which the scheduler holds a
round for the user (the Nth click; the answers' generation happened earlier and is not counted),
and the round is polled (its `training_runs` row; the facade's `versions`) until its outcome is
recorded ("decision") and, for an accepted round, the new version is live ("live"). A round the
gate refuses makes nothing live: it has a decision latency only. Each round's own phase seconds
(from its recorded metrics) say where the time goes.

The first `rounds` rounds run with nothing else on the machine: their latencies are the
headline. Then a second user ("chatter") streams replies back to back while `chat_rounds` more
rounds run; only replies that started and ended inside one running round count, and their time
to first token is compared with the same user's replies before any training (idle). Those
rounds' latencies are reported apart: they share the cores with the chat.

Targets (issue): median and p95 click-to-live <= 60 s on 2 CPU cores; p95 TTFT during a round
<= 2x idle. This benchmark reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from assistant import Assistant
from bench import report
from bench.chat_during_training import QUESTIONS, chat_once
from bench.fresh import open_fresh
from bench.personalize import PROMPTS, as_sample
from bench.tastes import CONCISE, Preference, clicks
from online_rl.scheduler import SchedulerConfig
from storage import records

NAME = "adaptation"
TRAINEE = "trainee"
CHATTER = "chatter"
PHASES = ("reward", "warm_start", "rollouts", "ppo", "distill", "gate")
TARGET_SECONDS = 60.0
TARGET_TTFT_RATIO = 2.0


@dataclass(frozen=True)
class Settings:
    """Every number the benchmark uses; each is also a command-line option."""

    rounds: int = field(default=5, metadata={"help": "rounds timed with nothing else running"})
    chat_rounds: int = field(
        default=2, metadata={"help": "further rounds while another user chats"}
    )
    events_per_round: int = field(
        default=SchedulerConfig().events_per_round,
        metadata={"help": "clicks that queue a round (the scheduler's default)"},
    )
    sweep_minutes: float = field(
        default=24 * 60.0,
        metadata={"help": "the scheduler's straggler sweep: kept out of the way"},
    )
    max_new_tokens: int = field(default=160, metadata={"help": "tokens per A/B answer"})
    temperature: float = field(default=0.7, metadata={"help": "A/B answers' temperature"})
    idle_chats: int = field(default=12, metadata={"help": "chatter replies before training"})
    chat_tokens: int = field(default=32, metadata={"help": "new tokens per chatter reply"})
    poll_seconds: float = field(default=0.2, metadata={"help": "how often the outcome is read"})
    round_timeout: float = field(
        default=900.0, metadata={"help": "seconds to wait for one round's outcome"}
    )
    seed: int = field(default=0, metadata={"help": "seeds the answers and the clicks"})
    out_dir: str = field(default=str(report.RESULTS), metadata={"help": "where JSON and PNGs go"})


@dataclass
class Round:
    """One round as the trainee saw it (perf_counter seconds from the triggering click)."""

    index: int
    with_chat: bool
    clicks_total: int  # the trainee's clicks so far, the triggering one included
    clicks_in_burst: int
    decision_seconds: float | None = None
    live_seconds: float | None = None
    queue_seconds: float | None = None  # click -> the run's recorded start (database clocks)
    outcome: str = "timeout"
    version: int | None = None
    reason: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class Chat:
    """One chatter reply: its time to first token, whole time, and whether it counts as
    'during a round' (it began and ended inside the same running round)."""

    ttft: float
    seconds: float
    during_round: bool


class Trainee:
    """The simulated user: pairs of answers, then clicks with one consistent taste."""

    def __init__(self, asst: Assistant, settings: Settings, pref: Preference = CONCISE):
        self.asst = asst
        self.settings = settings
        self.pref = pref
        self.rng = random.Random(settings.seed)
        self.prompts: list[str] = json.loads(PROMPTS.read_text())["train"]
        self.asked = 0
        self.clicks = 0
        self.pending: list[tuple[str, Any]] = []  # ("choose", (pair id, winner)) / ("rate", ...)

    def _new_pair(self) -> None:
        """Ask one question, get two answers, and line up the three clicks they earn."""
        s = self.settings
        prompt = self.prompts[self.asked % len(self.prompts)]
        self.asked += 1
        pair = self.asst.compare(
            TRAINEE,
            prompt,
            max_new_tokens=s.max_new_tokens,
            temperature=s.temperature,
            seed=self.rng.randrange(2**31),
        )
        a, b = (as_sample(r.text, r.ended_by_model) for r in (pair.a, pair.b))
        winner, thumb_a, thumb_b = clicks(self.pref, a, b, self.rng)
        self.pending += [
            ("choose", (pair.id, winner)),
            ("rate", (pair.a.id, thumb_a)),
            ("rate", (pair.b.id, thumb_b)),
        ]

    def next_click(self) -> tuple[str, Any]:
        """The next click to give, generating a pair first when none is lined up (so the
        generation happens before the clock of the click that may trigger a round)."""
        if not self.pending:
            self._new_pair()
        return self.pending.pop(0)

    def give(self, click: tuple[str, Any]) -> None:
        kind, (target, value) = click
        if kind == "choose":
            self.asst.choose(TRAINEE, target, value)
        else:
            self.asst.rate(TRAINEE, target, value)
        self.clicks += 1


def live_version(asst: Assistant, user: str) -> int:
    """The user's live adapter version (0: the bare base)."""
    return next((v["version"] for v in asst.versions(user) if v["status"] == "live"), 0)


def seconds_between(click_wall: float, stamp: str | None) -> float | None:
    """Seconds from a time.time() reading to one of the database's UTC ISO timestamps."""
    return None if stamp is None else datetime.fromisoformat(stamp).timestamp() - click_wall


def trigger_round(asst: Assistant, trainee: Trainee) -> tuple[float, float, int]:
    """Click until the scheduler holds a round for the trainee; (perf_counter and wall time
    just before the triggering click, clicks given in this burst)."""
    given = 0
    while True:
        click = trainee.next_click()
        start, wall = time.perf_counter(), time.time()
        trainee.give(click)
        given += 1
        if asst.training_state(TRAINEE) is not None:
            return start, wall, given


def training_runs(asst: Assistant) -> list[records.Row]:
    """The trainee's rounds, oldest first, with their reason (the facade's `trends` has none)."""
    return records.list_training_runs(asst.store.db, asst.user(TRAINEE).id)


def await_outcome(
    asst: Assistant, settings: Settings, rnd: Round, start: float, wall: float, runs_before: int
) -> None:
    """Poll until the round's outcome is recorded and, if accepted, its version is live (the
    two commit together; both are read, so each latency is what a client would see)."""
    live_before = live_version(asst, TRAINEE)
    deadline = start + settings.round_timeout
    while time.perf_counter() < deadline:
        time.sleep(settings.poll_seconds)
        now = time.perf_counter()
        runs = training_runs(asst)
        run = runs[-1] if len(runs) > runs_before else None
        if rnd.decision_seconds is None and run is not None and run["outcome"] != "running":
            rnd.decision_seconds = now - start
            rnd.outcome, rnd.version, rnd.reason = run["outcome"], run["version"], run["reason"]
            rnd.queue_seconds = seconds_between(wall, run["started"])
            rnd.metrics = json.loads(run["metrics"] or "{}")
        if rnd.live_seconds is None and live_version(asst, TRAINEE) != live_before:
            rnd.live_seconds = now - start
        if rnd.decision_seconds is not None and (
            rnd.outcome != "accepted" or rnd.live_seconds is not None
        ):
            return


def wait_idle(asst: Assistant, settings: Settings) -> None:
    """The scheduler forgets a round just after recording its outcome: wait for that, so the
    next burst's trigger is read from its own click."""
    deadline = time.perf_counter() + settings.round_timeout
    while asst.training_state(TRAINEE) is not None and time.perf_counter() < deadline:
        time.sleep(settings.poll_seconds)


def run_round(
    asst: Assistant, trainee: Trainee, settings: Settings, index: int, with_chat: bool
) -> Round:
    """One burst of clicks, then wait for the round it queued."""
    wait_idle(asst, settings)
    runs_before = len(training_runs(asst))
    start, wall, given = trigger_round(asst, trainee)
    rnd = Round(index, with_chat, trainee.clicks, given)
    await_outcome(asst, settings, rnd, start, wall, runs_before)
    return rnd


class Chatter:
    """Another user streaming replies back to back in a thread while rounds run."""

    def __init__(self, asst: Assistant, settings: Settings):
        self.asst = asst
        self.settings = settings
        self.round_index = 0  # set by the main thread when it triggers a round
        self.chats: list[Chat] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _running(self) -> bool:
        return self.asst.training_state(TRAINEE) == "running"

    def _loop(self) -> None:
        i = 0
        try:
            while not self._stop.is_set():
                before = (self._running(), self.round_index)
                ttft, seconds = chat_once(
                    self.asst, CHATTER, QUESTIONS[i % len(QUESTIONS)], self.settings.chat_tokens
                )
                after = (self._running(), self.round_index)
                self.chats.append(Chat(ttft, seconds, before[0] and after == before))
                i += 1
        except BaseException as e:  # re-raised in the main thread by stop()
            self.error = e

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        if self.error is not None:
            raise self.error


def idle_chats(asst: Assistant, settings: Settings) -> list[Chat]:
    """The chatter's replies with nothing else running (one unrecorded reply first)."""
    chat_once(asst, CHATTER, QUESTIONS[0], settings.chat_tokens)
    return [
        Chat(*chat_once(asst, CHATTER, QUESTIONS[i % len(QUESTIONS)], settings.chat_tokens), False)
        for i in range(settings.idle_chats)
    ]


def phase_seconds(rnd: Round) -> list[float | None]:
    """The round's recorded phase seconds, then the rest of its total (set-up before the
    reward phase, writing the version): 'other'."""
    phases = [rnd.metrics.get(f"seconds_{p}") for p in PHASES]
    total = rnd.metrics.get("seconds")
    other = None if total is None else total - sum(x or 0.0 for x in phases)
    return [*phases, other]


def round_rows(rounds: list[Round]) -> tuple[list[str], list[list[Any]]]:
    """The per-round table: latencies, outcome, and where the round's time went."""
    headers = [
        "round",
        "chat",
        "clicks",
        "outcome",
        "click→decision s",
        "click→live s",
        "queued s",
        "round s",
        *(f"{p} s" for p in PHASES),
        "other s",
        "PPO iterations",
    ]

    def cell(x: float | None, digits: int = 1) -> Any:
        return "-" if x is None else round(x, digits)

    rows = [
        [
            r.index,
            "yes" if r.with_chat else "no",
            r.clicks_total,
            f"{r.outcome} v{r.version}" if r.version else r.outcome,
            cell(r.decision_seconds),
            cell(r.live_seconds),
            cell(r.queue_seconds, 3),
            cell(r.metrics.get("seconds")),
            *(cell(x) for x in phase_seconds(r)),
            r.metrics.get("ppo_iterations", "-"),
        ]
        for r in rounds
    ]
    return headers, rows


def latency_summary(rounds: list[Round]) -> dict[str, Any]:
    """Median and p95 of both latencies over the given rounds, and how many were accepted."""
    decided = [r.decision_seconds for r in rounds if r.decision_seconds is not None]
    live = [r.live_seconds for r in rounds if r.live_seconds is not None]
    return {
        "rounds": len(rounds),
        "accepted": sum(r.outcome == "accepted" for r in rounds),
        "decision_median": report.median(decided),
        "decision_p95": report.percentile(decided, 95),
        "live_median": report.median(live),
        "live_p95": report.percentile(live, 95),
    }


def ttft_summary(idle: list[Chat], busy: list[Chat]) -> dict[str, Any]:
    during = [c for c in busy if c.during_round]
    idle_t, during_t = [c.ttft for c in idle], [c.ttft for c in during]
    summary = {
        "idle_replies": len(idle_t),
        "during_replies": len(during_t),
        "replies_not_counted": len(busy) - len(during),
        "idle_median": report.median(idle_t),
        "idle_p95": report.percentile(idle_t, 95),
        "during_median": report.median(during_t),
        "during_p95": report.percentile(during_t, 95),
        "idle_reply_seconds_median": report.median([c.seconds for c in idle]),
        "during_reply_seconds_median": report.median([c.seconds for c in during]),
    }
    summary["p95_ratio"] = summary["during_p95"] / summary["idle_p95"]
    return summary


def print_summary(quiet: dict[str, Any], loaded: dict[str, Any], ttft: dict[str, Any]) -> None:
    """The headline figures as a second table (the per-round one follows)."""
    headers = ["figure", "median", "p95", "n", "target"]
    rows = [
        [
            "click→live s, no other load (accepted rounds)",
            quiet["live_median"],
            quiet["live_p95"],
            f"{quiet['accepted']} of {quiet['rounds']} accepted",
            f"≤ {TARGET_SECONDS:.0f}",
        ],
        [
            "click→decision s, no other load (all rounds)",
            quiet["decision_median"],
            quiet["decision_p95"],
            quiet["rounds"],
            "",
        ],
        [
            "click→decision s, another user chatting",
            loaded["decision_median"],
            loaded["decision_p95"],
            f"{loaded['rounds']} ({loaded['accepted']} accepted)",
            "",
        ],
        ["chat TTFT s, idle", ttft["idle_median"], ttft["idle_p95"], ttft["idle_replies"], ""],
        [
            "chat TTFT s, during a round",
            ttft["during_median"],
            ttft["during_p95"],
            ttft["during_replies"],
            f"p95 ≤ {TARGET_TTFT_RATIO:.0f}× idle (now {ttft['p95_ratio']:.2f}×)",
        ],
    ]
    print(report.table(headers, rows))
    print()


def plots(out_dir: Path, rounds: list[Round], ttft: dict[str, Any]) -> None:
    """Per-round latency against the target, and TTFT idle vs during a round."""
    labels = [
        f"{r.index} {r.outcome}{' +chat' if r.with_chat else ''}"
        for r in rounds
        if r.decision_seconds is not None
    ]
    decided = [r for r in rounds if r.decision_seconds is not None]
    if decided:
        report.bar_plot(
            out_dir / f"{NAME}.png",
            "Click that queues a round → outcome recorded (accepted: version live)",
            labels,
            {"click → outcome (accepted: live)": [r.decision_seconds or 0.0 for r in decided]},
            "seconds",
            target=TARGET_SECONDS,
            target_label=f"target {TARGET_SECONDS:.0f} s",
        )
    if ttft["during_replies"]:
        report.bar_plot(
            out_dir / f"{NAME}-ttft.png",
            "Another user's time to first token",
            ["median", "p95"],
            {
                "idle": [ttft["idle_median"], ttft["idle_p95"]],
                "during a round": [ttft["during_median"], ttft["during_p95"]],
            },
            "seconds",
            target=TARGET_TTFT_RATIO * ttft["idle_p95"],
            target_label=f"{TARGET_TTFT_RATIO:.0f}× idle p95 (target for p95)",
        )


def parse(options: list[str]) -> Settings:
    """Settings from the command line: one option per field, typed like its default."""
    parser = argparse.ArgumentParser(prog=f"attune bench {NAME}")
    defaults = Settings()
    for f in fields(Settings):
        default = getattr(defaults, f.name)
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            type=type(default),
            default=default,
            help=f"{f.metadata.get('help', '')} (default: %(default)s)",
        )
    return Settings(**vars(parser.parse_args(options)))


def measure(asst: Assistant, settings: Settings) -> tuple[list[Round], list[Chat], list[Chat]]:
    """Idle chats, then the quiet rounds, then the rounds with the chatter running."""
    asst.add_user(TRAINEE)
    asst.add_user(CHATTER)
    asst.start_background(
        SchedulerConfig(
            events_per_round=settings.events_per_round, sweep_minutes=settings.sweep_minutes
        )
    )
    idle = idle_chats(asst, settings)
    trainee = Trainee(asst, settings)
    rounds: list[Round] = []
    for i in range(settings.rounds):
        rounds.append(run_round(asst, trainee, settings, i + 1, with_chat=False))
        print_round(rounds[-1])
    chatter = Chatter(asst, settings)
    if settings.chat_rounds:
        chatter.start()
        try:
            for i in range(settings.rounds, settings.rounds + settings.chat_rounds):
                chatter.round_index = i + 1
                rounds.append(run_round(asst, trainee, settings, i + 1, with_chat=True))
                print_round(rounds[-1])
        finally:
            chatter.stop()
    return rounds, idle, chatter.chats


def print_round(r: Round) -> None:
    """One line per round as it ends: long runs show progress."""
    live = "-" if r.live_seconds is None else f"{r.live_seconds:.1f}"
    decided = "-" if r.decision_seconds is None else f"{r.decision_seconds:.1f}"
    print(
        f"round {r.index}{' (chat)' if r.with_chat else ''}: {r.outcome} after {r.clicks_total} "
        f"clicks; decision {decided} s, live {live} s; {r.reason or ''}",
        flush=True,
    )


def run(args: argparse.Namespace, options: list[str]) -> int:
    settings = parse(options)
    load_before = os.getloadavg()  # another job on the machine shows here (2 cores: >2 = busy)
    asst = open_fresh(args, NAME)
    try:
        rounds, idle, busy = measure(asst, settings)
    finally:
        asst.close()
    load_after = os.getloadavg()
    shared = max(load_before[0], load_after[0]) > (os.cpu_count() or 1)
    print(
        f"load average (1 min) before {load_before[0]:.1f}, after {load_after[0]:.1f} on "
        f"{os.cpu_count()} cores{': other work shared the machine' if shared else ''}"
    )
    quiet = latency_summary([r for r in rounds if not r.with_chat])
    loaded = latency_summary([r for r in rounds if r.with_chat])
    ttft = ttft_summary(idle, busy)
    print_summary(quiet, loaded, ttft)
    headers, rows = round_rows(rounds)
    out_dir = Path(settings.out_dir)
    report.write(
        NAME,
        f"attune bench {NAME} " + " ".join(options),
        headers,
        rows,
        {
            "model": args.model,
            "load_average_1_5_15_min": {"before": load_before, "after": load_after},
            "settings": asdict(settings),
            "targets": {
                "click_to_live_seconds": TARGET_SECONDS,
                "ttft_p95_ratio": TARGET_TTFT_RATIO,
            },
            "summary": {"quiet_rounds": quiet, "chat_rounds": loaded, "ttft": ttft},
            "rounds": [asdict(r) for r in rounds],
            "chats": {
                "idle": [asdict(c) for c in idle],
                "chat_rounds": [asdict(c) for c in busy],  # during_round: counted
            },
        },
        out_dir=out_dir,
    )
    plots(out_dir, rounds, ttft)
    return 0
