"""Crashes: a training worker killed mid-round, adapter files damaged on disk, NaN in a loss.

The issue's words: kill the training worker with SIGKILL at random points of a round (at least
10 trials, including during the adapter write): after restart the live version loads and
answers, no half-written version is live, and the run is recorded as failed. A corrupted adapter
file on disk: the user falls back to the last good version with a logged warning. NaN injected
into the loss: the round is rejected, nothing changes.

Every kill happens in a child process (`CHILD`, a training worker) that opens its own copy of
a prepared data folder and runs one round for alice; the parent kills it with SIGKILL, then
restarts the assistant on that folder and checks what a restart must find. The worker announces
each phase of the round on stdout: random kills are aimed at a random point of each phase in
turn, and each trial knows where its kill landed (`-s` prints them). A kill that comes after
the round committed its version is no failure: that version is live and its run accepted.
"""

from __future__ import annotations

import math
import queue
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
import torch

from assistant import Assistant
from online_rl import safety
from storage import adapters as adapter_files
from storage import records
from tests.conftest import SHORT, keyword_offensive_probability
from tests.test_training import OPEN_GATE, give_feedback, open_with

REPO = Path(__file__).resolve().parents[2]
STARTUP_SECONDS = 180.0  # a child imports torch and loads the model before its round starts
RANDOM_TRIALS = 10
ATTEMPTS = 3  # a kill after the round ended: tried again twice as early, then at phase entry

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# the data every test starts from -------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """Data folders to copy: alice with v1 live and clicks since (`one`), and the same after
    a second accepted round, v2 live and v1 retired (`two`)."""

    one: Path
    two: Path
    one_versions: list[dict[str, Any]]  # alice's versions in `one`


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Prepared:
    root = tmp_path_factory.mktemp("prepared")
    with pytest.MonkeyPatch.context() as mp:  # the suite's classifier stand-in is per test
        mp.setattr(safety, "offensive_probability", keyword_offensive_probability)
        with open_with(root / "one", tiny_model_dir, OPEN_GATE) as asst:
            asst.add_user("alice")
            give_feedback(asst, "alice")
            assert asst.train("alice").accepted
            give_feedback(asst, "alice", prompts=2)
            one_versions = asst.versions("alice")
        copy_of(root / "one", root / "two")
        with open_with(root / "two", tiny_model_dir, OPEN_GATE) as asst:
            report = asst.train("alice")
            assert report.accepted and report.version == 2, report.reason
    return Prepared(root / "one", root / "two", one_versions)


def copy_of(template: Path, to: Path) -> Path:
    """A copy of a prepared folder (version paths are stored relative to the data folder, so
    the copy's rows point at the copy's own folders)."""
    shutil.copytree(template, to)
    return to


def user_dir(asst: Assistant) -> Path:
    return asst.config.adapters_dir / asst.user("alice").id


# a damaged adapter on disk ---------------------------------------------------------------------


def truncate(folder: Path) -> None:
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def random_bytes(folder: Path) -> None:
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(random.Random(0).randbytes(weights.stat().st_size))


def flip_one_byte(folder: Path) -> None:
    """Bit rot inside a tensor: still a valid safetensors file that peft would load."""
    weights = folder / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-9] ^= 0x40
    weights.write_bytes(bytes(data))


def empty(folder: Path) -> None:
    (folder / "adapter_model.safetensors").write_bytes(b"")


def delete_weights(folder: Path) -> None:
    (folder / "adapter_model.safetensors").unlink()


def bad_config(folder: Path) -> None:
    (folder / "adapter_config.json").write_text('{"r": 4, "lora_alpha"')


def delete_manifest(folder: Path) -> None:
    (folder / adapter_files.MANIFEST).unlink()


@pytest.mark.parametrize(
    "damage",
    [truncate, random_bytes, flip_one_byte, empty, delete_weights, bad_config, delete_manifest],
)
def test_a_damaged_live_version_falls_back_to_the_last_good_one_with_a_warning(
    damage: Any,
    prepared: Prepared,
    tiny_model_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """v2 is live and v1 retired; v2's files are damaged while the app is down. After the
    restart alice is served by v1 (v2 is never loaded), a warning says why, and the next round
    trains from v1, not from the damaged files."""
    root = copy_of(prepared.two, tmp_path / "run")
    (v2,) = (root / "data" / "adapters").glob("*/v00002")
    damage(v2)
    with open_with(root, tiny_model_dir, OPEN_GATE) as asst, caplog.at_level("WARNING"):
        assert asst.chat("alice", "hello there", **SHORT).adapter_version == 1
        assert list(asst.adapters._hot) == [asst.adapters.adapter_name(asst.user("alice").id, 1)]
        warnings = [r for r in caplog.records if r.name == "assistant.adapters"]
        assert warnings and all(r.levelname == "WARNING" for r in warnings)
        assert "skipping adapter v2" in warnings[0].getMessage()
        report = asst.train("alice")
        assert report.accepted, report.reason
        assert report.metrics["live_version"] == report.metrics["parent_version"] == 1
        assert asst.chat("alice", "and now?", **SHORT).adapter_version == report.version


def test_when_every_version_is_damaged_the_base_answers(
    prepared: Prepared, tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With no good version left, the last good one is the bare base: a warning per version."""
    root = copy_of(prepared.two, tmp_path / "run")
    for folder in (root / "data" / "adapters").glob("*/v*"):
        truncate(folder)
    with open_with(root, tiny_model_dir, OPEN_GATE) as asst, caplog.at_level("WARNING"):
        assert asst.chat("alice", "hello there", **SHORT).adapter_version == 0
        assert "skipping adapter v2" in caplog.text and "skipping adapter v1" in caplog.text


# NaN in a loss ---------------------------------------------------------------------------------


def nan_like(x: torch.Tensor) -> torch.Tensor:
    """NaN everywhere, still attached to the graph (a loss built on it can backpropagate)."""
    return x * float("nan")


def nan_reward(mp: pytest.MonkeyPatch) -> None:
    from online_rl import reward

    mp.setattr(reward.UserReward, "score", lambda self, x: torch.full((len(x),), float("nan")))


def nan_in_training_forwards(module: Any, field: str):
    """Make `module.forward_batch` return NaN in `field` whenever it runs with gradients,
    i.e. in the forwards the update learns from (not the no-grad rollout passes)."""

    def inject(mp: pytest.MonkeyPatch) -> None:
        real = module.forward_batch

        def forward_batch(*args: Any, **kwargs: Any) -> Any:
            out = real(*args, **kwargs)
            if torch.is_grad_enabled():
                setattr(out, field, nan_like(getattr(out, field)))
            return out

        mp.setattr(module, "forward_batch", forward_batch)

    return inject


def nan_ppo_values(mp: pytest.MonkeyPatch) -> None:
    from online_rl import ppo

    nan_in_training_forwards(ppo, "values")(mp)


def nan_ppo_logprobs(mp: pytest.MonkeyPatch) -> None:
    from online_rl import ppo

    nan_in_training_forwards(ppo, "logprobs")(mp)


def nan_sft(mp: pytest.MonkeyPatch) -> None:
    from online_rl import warm_start

    nan_in_training_forwards(warm_start, "logprobs")(mp)


def nan_dpo(mp: pytest.MonkeyPatch) -> None:
    """Only the DPO step's rejected side (the supervised steps before it stay finite)."""
    from online_rl import warm_start

    real = warm_start.sequence_logprob
    mp.setattr(warm_start, "sequence_logprob", lambda p, b: nan_like(real(p, b)))


def snapshot(asst: Assistant) -> dict[str, list[dict[str, Any]]]:
    db = asst.store.db
    return {t: list(db[t].rows) for t in db.table_names()}


@pytest.mark.parametrize(
    ("inject", "reason"),
    [
        (nan_reward, "reward is not finite"),
        (nan_ppo_values, "loss is not finite"),
        (nan_ppo_logprobs, "policy log-prob is not finite"),
        (nan_sft, "warm-start loss is not finite"),
        (nan_dpo, "warm-start loss is not finite"),
    ],
    ids=["reward", "ppo-value", "ppo-logprob", "sft", "dpo"],
)
def test_nan_in_a_loss_rejects_the_round_and_changes_nothing(
    inject: Any, reason: str, prepared: Prepared, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """NaN reaching the reward, the PPO loss (through the value head or the policy's
    log-probs) or a warm-start loss (supervised or DPO): the round is rejected with the
    reason, no version is written, the live version's files and every row but the run's own
    record stay as they were; the next clean round works."""
    root = copy_of(prepared.one, tmp_path / "run")
    with open_with(root, tiny_model_dir, OPEN_GATE) as asst:
        folder = user_dir(asst)
        files_before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        rows_before = snapshot(asst)
        with pytest.MonkeyPatch.context() as mp:
            inject(mp)
            report = asst.train("alice")
        assert not report.accepted and report.version is None
        assert reason in report.reason and report.reason.startswith("aborted")
        rows_after = snapshot(asst)
        run = records.last_training_run(asst.store.db, asst.user("alice").id)
        assert run is not None and run["outcome"] == "rejected" and reason in run["reason"]
        assert rows_after["training_runs"] == [*rows_before["training_runs"], run]
        # features are a cache of base-model outputs: the round may add to it, never change it
        assert all(row in rows_after["features"] for row in rows_before["features"])
        for table in rows_before.keys() - {"training_runs", "features"}:
            assert rows_after[table] == rows_before[table], table
        assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == files_before
        assert [p.name for p in folder.iterdir()] == ["v00001"]
        assert asst.chat("alice", "still v1?", **SHORT).adapter_version == 1
        clean = asst.train("alice")
        assert clean.accepted and clean.version == 2, clean.reason
        assert clean.kl is not None and math.isfinite(clean.kl)  # nothing NaN was left behind


# SIGKILL during a round -------------------------------------------------------------------------

# The training worker. argv: the folder holding data/ and the model. It opens the assistant,
# says READY, reads from stdin where to hang ("nowhere" for a plain round), says STARTED just
# before the round, PHASE <name> as the round enters each phase, HANG <where> when it stops at
# that point, DONE after the round; then it waits to be killed (or for stdin to close: a
# worker whose parent died exits instead of lingering).
CHILD = r"""
import os, sys
from pathlib import Path

import torch

torch.set_num_threads(1)

from online_rl import distill, gate_measure, ppo, rounds, safety, sampling
from storage import adapters as adapter_files
from storage import records
from tests.conftest import keyword_offensive_probability
from tests.test_training import OPEN_GATE, open_with

root, model_dir = sys.argv[1:]
safety.offensive_probability = keyword_offensive_probability
asst = open_with(Path(root), Path(model_dir), OPEN_GATE)
trainer = asst.trainer
policy = trainer.worker.policy  # the trainable copy exists before the round's clock starts
phase = ["start"]


def say(*words):
    print(*words, flush=True)


def enter(name):
    if phase[0] != name:
        phase[0] = name
        say("PHASE", name)


def wait_to_be_killed():
    sys.stdin.read()
    os._exit(1)


def hang(where):
    say("HANG", where)
    wait_to_be_killed()


def wrap(owner, name, before=None, after=None):
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        if before:
            before(*args)
        out = real(*args, **kwargs)
        if after:
            after(*args)
        return out

    setattr(owner, name, wrapper)


wrap(rounds, "user_feedback", before=lambda *a: enter("reward"))
wrap(policy, "start_from", before=lambda *a: enter("warm_start"))
wrap(sampling, "sample", before=lambda *a: phase[0] != "gate" and enter("rollouts"))
wrap(sampling, "sample_rollouts", before=lambda *a: enter("rollouts"))
wrap(ppo, "ppo_update", before=lambda *a: enter("ppo"))
wrap(distill, "shaped_scores", before=lambda *a: enter("distill"))
wrap(gate_measure, "gate_replies", before=lambda *a: enter("gate"))
wrap(adapter_files, "write_version", before=lambda *a: enter("write"))
wrap(records, "add_adapter_version", before=lambda *a: enter("record"))
wrap(trainer, "_round", after=lambda *a: enter("finish"))
say("READY")
hang_at = sys.stdin.readline().strip()
if not hang_at:
    sys.exit(1)
if hang_at == "weights_saved":  # inside the write: the files are in, nothing fsynced or renamed
    temp = adapter_files.TEMP_PREFIX
    wrap(adapter_files, "put_files", after=lambda f, p: p.name.startswith(temp) and hang(hang_at))
elif hang_at == "before_rename":  # every file and the manifest fsynced, not yet renamed
    temp = adapter_files.TEMP_PREFIX
    wrap(adapter_files, "_fsync", after=lambda p: Path(p).name.startswith(temp) and hang(hang_at))
elif hang_at == "before_record":  # the version folder is in place, the database not told
    wrap(records, "add_adapter_version", before=lambda *a: hang(hang_at))
elif hang_at == "after_commit":  # the version and the live swap are committed
    wrap(trainer, "_round", after=lambda *a: hang(hang_at))
elif hang_at.startswith("enter:"):  # the moment the round enters a phase
    announce = enter

    def enter(name):  # noqa: F811 (the wrappers look `enter` up when they run)
        announce(name)
        if name == hang_at.removeprefix("enter:"):
            hang(hang_at)
say("STARTED")
asst.train("alice")
say("DONE")
wait_to_be_killed()  # a kill that comes after the round lands here
"""


class ChildOutput:
    """A child's stdout lines with the time each arrived, read on a thread."""

    def __init__(self, stream: IO[str], stderr: Path):
        self.lines: list[tuple[float, str]] = []
        self._stderr = stderr
        self._queue: queue.Queue[tuple[float, str] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put((time.monotonic(), line.strip()))
        self._queue.put(None)

    def wait_for(self, said: str, timeout: float = STARTUP_SECONDS) -> float:
        """When the child said a line that starts with the words `said` (blocks until then)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                item = None
            if item is None:
                tail = self._stderr.read_text()[-3000:]
                raise AssertionError(f"the child never said {said}: {self.lines}\n{tail}")
            self.lines.append(item)
            if f"{item[1]} ".startswith(f"{said} "):
                return item[0]

    def finish(self) -> None:
        """Collect what the (dead) child wrote before it died."""
        self._thread.join(timeout=30)
        while not self._queue.empty():
            item = self._queue.get()
            if item is not None:
                self.lines.append(item)

    def said(self, word: str) -> list[str]:
        """The rest of every line that starts with `word`, in order."""
        return [line.partition(" ")[2] for _, line in self.lines if line.split()[:1] == [word]]


@dataclass
class Worker:
    root: Path  # its own copy of the prepared folder
    child: subprocess.Popen[str]
    out: ChildOutput

    def kill(self) -> None:
        self.child.send_signal(signal.SIGKILL)
        self.child.wait()
        assert self.child.stdin is not None and self.child.stdout is not None
        self.child.stdin.close()
        self.out.finish()
        self.child.stdout.close()


class Workers:
    """Training workers, each on its own copy of `prepared.one`, started `ahead` at a time: a
    worker's start (imports, model load: most of a trial's time) overlaps the checks of the
    trials before it."""

    def __init__(self, template: Path, model_dir: Path, folder: Path, ahead: int = 2):
        self.template, self.model_dir, self.folder, self.ahead = template, model_dir, folder, ahead
        self._started = 0
        self._waiting: deque[Worker] = deque()

    def start_next(self) -> None:
        while len(self._waiting) < self.ahead:
            root = copy_of(self.template, self.folder / f"worker-{self._started}")
            self._started += 1
            stderr = root / "stderr.txt"
            with open(stderr, "w") as err:
                child = subprocess.Popen(
                    [sys.executable, "-c", CHILD, str(root), str(self.model_dir)],
                    cwd=REPO,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    text=True,
                )
            assert child.stdout is not None
            self._waiting.append(Worker(root, child, ChildOutput(child.stdout, stderr)))

    def take(self) -> Worker:
        """A worker that has opened the assistant and waits for the word to start."""
        self.start_next()
        worker = self._waiting.popleft()
        worker.out.wait_for("READY")
        return worker

    def close(self) -> None:
        while self._waiting:
            self._waiting.popleft().kill()


@pytest.fixture(scope="module")
def workers(
    prepared: Prepared, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Workers]:
    pool = Workers(prepared.one, tiny_model_dir, tmp_path_factory.mktemp("workers"))
    yield pool
    pool.close()


@dataclass(frozen=True)
class Killed:
    """Where one SIGKILL landed, as found before the assistant restarts."""

    root: Path  # the folder the killed worker trained in
    after: float  # seconds from STARTED to the kill
    phase: str  # the last phase of the round the child announced
    interrupted: bool  # its training run was still 'running': the process died mid-round
    half_written: bool  # a temporary version folder was left beside the versions
    versions_on_disk: list[str]  # the version folders after the kill


def kill_a_round(
    workers: Workers, *, phase: str = "", delay: float = 0.0, hang_at: str = "nowhere"
) -> Killed:
    """Start a round in a worker and SIGKILL it `delay` seconds after it enters `phase`, or
    once it hangs at `hang_at`."""
    worker = workers.take()
    assert worker.child.stdin is not None
    try:
        worker.child.stdin.write(f"{hang_at}\n")
        worker.child.stdin.flush()
        started = worker.out.wait_for("STARTED")
        if hang_at != "nowhere":
            worker.out.wait_for("HANG")
        else:
            entered = worker.out.wait_for(f"PHASE {phase}")
            time.sleep(max(0.0, entered + delay - time.monotonic()))
    finally:
        killed_at = time.monotonic()
        worker.kill()
    workers.start_next()  # they start while this trial checks the restart
    data = worker.root / "data"
    with closing(sqlite3.connect(data / "attune.db")) as db:
        (outcome,) = db.execute(
            "select outcome from training_runs order by started desc limit 1"
        ).fetchone()
    (folder,) = (data / "adapters").iterdir()
    names = sorted(p.name for p in folder.iterdir())
    temp = adapter_files.TEMP_PREFIX
    return Killed(
        root=worker.root,
        after=killed_at - started,
        phase=(worker.out.said("PHASE") or ["start"])[-1],
        interrupted=outcome == "running",
        half_written=any(n.startswith(temp) for n in names),
        versions_on_disk=[n for n in names if not n.startswith(temp)],
    )


PHASES = ["reward", "warm_start", "rollouts", "ppo", "distill", "gate", "write", "record"]


@dataclass(frozen=True)
class RoundTiming:
    phases: dict[str, float]  # when each phase of an undisturbed round began, after STARTED

    def length(self, phase: str) -> float:
        """How long the phase lasted (until the next one began)."""
        starts = list(self.phases.values())
        i = list(self.phases).index(phase)
        return starts[i + 1] - starts[i]


@pytest.fixture(scope="module")
def round_timing(workers: Workers) -> RoundTiming:
    """One undisturbed round in a worker, timed phase by phase: random kills are aimed at a
    random point within each phase's length."""
    worker = workers.take()
    assert worker.child.stdin is not None
    try:
        worker.child.stdin.write("nowhere\n")
        worker.child.stdin.flush()
        started = worker.out.wait_for("STARTED")
        done = worker.out.wait_for("DONE")
    finally:
        worker.kill()
    workers.start_next()
    phases = {
        line.split()[1]: round(t - started, 3) for t, line in worker.out.lines if "PHASE" in line
    }
    print(f"an undisturbed round: {done - started:.3f} s, phases from {phases}")
    assert list(phases) == [*PHASES, "finish"]
    return RoundTiming(phases)


def assert_recovered(
    killed: Killed, tiny_model_dir: Path, versions_before: list[dict[str, Any]]
) -> int:
    """Restart on the folder a killed round left and check everything a restart promises;
    returns the live version after the restart."""
    with open_with(killed.root, tiny_model_dir, OPEN_GATE) as asst:
        folder = user_dir(asst)
        assert not [p for p in folder.iterdir() if p.name.startswith(adapter_files.TEMP_PREFIX)]
        versions = asst.versions("alice")
        (live,) = [v["version"] for v in versions if v["status"] == "live"]
        # no half-written version is live: the live row's folder is complete and intact
        for row in records.list_adapter_versions(asst.store.db, asst.user("alice").id):
            if row["status"] == "live":
                assert Path(row["path"]) == folder / f"v{live:05d}"
                adapter_files.verify_version(Path(row["path"]))
        run = records.last_training_run(asst.store.db, asst.user("alice").id)
        assert run is not None
        if killed.interrupted:
            assert versions == versions_before  # the dead round added no version row
            assert run["outcome"] == "failed" and "interrupted" in run["reason"]
        else:  # the round had committed its version before the kill: it counts
            assert run["outcome"] == "accepted", run["reason"]
            assert live == run["version"] == versions_before[-1]["version"] + 1
        assert asst.trends("alice")[-1]["outcome"] == run["outcome"]
        (check,) = asst.store.db.execute("PRAGMA integrity_check").fetchone()
        assert check == "ok"
        assert asst.chat("alice", "alive?", **SHORT).adapter_version == live
        used = {v["version"] for v in versions} | {int(n[1:]) for n in killed.versions_on_disk}
        report = asst.train("alice")  # the next round carries on, with a number never used
        assert report.accepted, report.reason
        assert report.version == max(used) + 1
    return live


@pytest.mark.parametrize("trial", range(RANDOM_TRIALS))
def test_sigkill_at_a_random_point_of_a_round_leaves_the_live_version_serving(
    trial: int,
    prepared: Prepared,
    workers: Workers,
    round_timing: RoundTiming,
    tiny_model_dir: Path,
) -> None:
    """Trial k kills at a seeded random point of phase k mod 7 (reward ... write), as long as
    that phase lasted in an undisturbed round, then restarts. Aiming per phase spreads the
    kills: most phases last milliseconds, so plain random times would nearly all fall in the
    two long ones. A kill that came after the round had ended proves nothing about a mid-round
    crash: it is checked all the same, and the trial tries again twice as early; the last try
    stops the worker as it enters the phase, so no trial depends on the machine's speed."""
    phase = PHASES[trial % (len(PHASES) - 1)]
    delay = random.Random(trial).random() * round_timing.length(phase)
    kills = []
    for attempt in range(ATTEMPTS):
        if attempt == ATTEMPTS - 1:
            killed = kill_a_round(workers, hang_at=f"enter:{phase}")
        else:
            killed = kill_a_round(workers, phase=phase, delay=delay)
        kills.append(killed)
        assert_recovered(killed, tiny_model_dir, prepared.one_versions)
        if killed.interrupted:
            break
        delay /= 2
    print(
        f"trial {trial}: aimed {delay * 1000:.0f} ms into {phase}, killed {killed.after:.3f} s"
        f" into the round in phase {killed.phase}, mid-round: {killed.interrupted},"
        f" half-written folder: {killed.half_written}, attempts: {len(kills)}"
    )
    assert killed.interrupted, f"every kill came after the round had ended: {kills}"


@pytest.mark.parametrize(
    "hang_at", ["weights_saved", "before_rename", "before_record", "after_commit"]
)
def test_sigkill_at_each_step_of_the_version_write(
    hang_at: str, prepared: Prepared, workers: Workers, tiny_model_dir: Path
) -> None:
    """The write is where a crash could leave a half version: the worker stops at each of its
    steps and is killed there. Inside the write (weights saved; all fsynced but not renamed)
    a temporary folder is left and swept on restart; after the rename but before the database
    knew, a complete folder is left unrecorded and its number is never reused; after the
    commit the new version is live and its run counts as accepted."""
    killed = kill_a_round(workers, hang_at=hang_at)
    print(f"{hang_at}: phase {killed.phase}, left on disk {killed.versions_on_disk}")
    inside_the_write = hang_at in ("weights_saved", "before_rename")
    assert killed.half_written == inside_the_write
    assert killed.versions_on_disk == ["v00001"] + ([] if inside_the_write else ["v00002"])
    assert killed.interrupted == (hang_at != "after_commit")
    live = assert_recovered(killed, tiny_model_dir, prepared.one_versions)
    assert live == (2 if hang_at == "after_commit" else 1)
