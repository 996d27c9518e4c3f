"""The `attune` command. Settings come from flags (and ATTUNE_DATA_DIR), read here only."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from assistant.config import DEFAULT_MODEL, AssistantConfig, ModelConfig, RayConfig
from assistant.errors import AttuneError, InvalidInput, NotAvailableYet
from assistant.facade import Assistant, Delta, Reply
from assistant.passwords import random_password

EXIT_ERROR = 1
EXIT_NOT_YET = 3
EXIT_NOT_ACCEPTED = 4  # `attune train`: the round ran, the candidate did not go live

# `attune serve` flags that are ServeConfig fields of the same name; a flag left out keeps
# ServeConfig's default, so the CLI needs no copy of them and imports ui/ only to serve
SERVE_FIELDS = (
    "host",
    "port",
    "max_message_chars",
    "concurrency",
    "max_new_tokens",
    "temperature",
    "refresh_seconds",
)

CHAT_HELP = """Type a message and press Enter. Commands:
  /up [reason]    thumbs up on the last reply      /down [reason]  thumbs down
  /why REASON     add a reason to that thumb       /undo           retract your rating
  /retry          the last reply again: A (earlier) and B (new) to choose between
  /choose W       decide it: a, b, tie or both_bad /new            start a new conversation
  /quit           leave (Ctrl-D works too)"""


def _model_config(args: argparse.Namespace) -> ModelConfig:
    """The base model the common flags name."""
    return ModelConfig(
        name=args.model,
        quantize=args.quantize,
        device=args.device,
        cache_dir=Path(args.model_cache) if args.model_cache else None,
        training_precision=args.training_precision,
    )


def _assistant(args: argparse.Namespace) -> Assistant:
    config = AssistantConfig(
        data_dir=Path(args.data_dir),
        model=_model_config(args),
    )
    config.data_dir.mkdir(parents=True, exist_ok=True)
    return Assistant(config)


def cmd_provision(args: argparse.Namespace) -> int:
    asst = _assistant(args)
    started = time.perf_counter()
    loaded = asst.base
    seconds = time.perf_counter() - started
    trains = str(loaded.training_dtype).removeprefix("torch.")
    precision = "4bit" if loaded.quantized else f"trains in {trains}"
    if loaded.serving_weights:
        kinds = ", ".join(f"{n} {k}" for k, n in loaded.serving_weights.items())
        precision = f"trains in {trains}, serves from {kinds} layers"
    print(f"model ready in {seconds:.1f} s: {loaded.source} on {loaded.device} ({precision})")
    return 0


def _read_password(name: str, from_stdin: bool, ask: bool) -> str | None:
    """The password from one line of stdin, or asked twice at the terminal, else None."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    if not ask:
        return None
    password = getpass.getpass(f"password for {name}: ")
    if getpass.getpass("again: ") != password:
        raise InvalidInput("the two passwords differ; nothing was changed")
    return password


def cmd_user_add(args: argparse.Namespace) -> int:
    """Create an account; without a password option one is generated and printed once, so
    every account can sign in to the web app."""
    asst = _assistant(args)
    if args.if_missing and any(u.name == args.name for u in asst.users()):
        print(f"user {args.name} exists")
        return 0
    password = _read_password(args.name, args.password_stdin, args.password)
    generated = password is None
    if generated:
        password = random_password()
    user = asst.add_user(args.name, password=password, operator=args.operator)
    print(f"added {user.role} {user.name}")
    if generated:
        print(f"password: {password}")
        print("(shown only this once; stored hashed; change it with: attune user passwd NAME)")
    return 0


def cmd_user_passwd(args: argparse.Namespace) -> int:
    """Set a new password (asked twice, or one line of stdin with --password-stdin)."""
    asst = _assistant(args)
    asst.user(args.name)  # an unknown name fails before the prompt
    password = _read_password(args.name, args.password_stdin, ask=True)
    assert password is not None  # from stdin or the prompt
    asst.set_password(args.name, password)
    print(f"password of {args.name} changed")
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    for user in _assistant(args).users():
        print(f"{user.name}\t{user.role}\t{user.created}")
    return 0


def cmd_user_delete(args: argparse.Namespace) -> int:
    _assistant(args).delete_user(args.name)
    print(f"deleted {args.name} with their conversations, feedback and adapters")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """The web app (ui/), with the background scheduler in this process."""
    from ui.config import ServeConfig  # ui/ only when serving: assistant/ never needs it

    ray = None
    if hasattr(args, "ray"):  # rounds on Ray actors
        ray = RayConfig(args.ray, getattr(args, "ray_actors", RayConfig.actors))
    elif hasattr(args, "ray_actors"):
        raise InvalidInput("--ray-actors needs --ray ADDRESS (or --ray local)")
    config = ServeConfig(
        data_dir=Path(args.data_dir),
        model=_model_config(args),
        background=args.training,
        ray=ray,
        demo_accounts=args.demo_accounts,
        **{name: getattr(args, name) for name in SERVE_FIELDS if hasattr(args, name)},
    )  # checked before gradio and the model load: a bad setting stops here, readably
    from ui.serve import serve  # imports gradio

    return serve(config)


def cmd_chat(args: argparse.Namespace) -> int:
    """A terminal chat: streamed replies, thumbs with /up and /down."""
    asst = _assistant(args)
    user = asst.user(args.user).name
    print(f"attune: loading the model for {user} ...", flush=True)
    _ = asst.base
    if args.training:
        asst.start_background()  # rounds run in the background as you rate replies
    print(CHAT_HELP)
    conversation, last, pair = args.conversation, None, None
    gen = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature}
    while True:
        try:
            line = input("\nyou> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            asst.close()
            return 0
        if not line:
            continue
        command, _, rest = line.partition(" ")
        try:
            if command == "/quit":
                asst.close()
                return 0
            if command == "/new":
                conversation, last, pair = None, None, None
                print("(new conversation)")
            elif command in ("/up", "/down", "/undo"):
                if last is None:
                    print("(no reply to rate yet)")
                    continue
                thumb = {"/up": 1, "/down": -1, "/undo": 0}[command]
                asst.rate(user, last.id, thumb, rest.strip() or None)
                print(
                    {1: "(thumbs up saved)", -1: "(thumbs down saved)", 0: "(rating retracted)"}[
                        thumb
                    ]
                )
            elif command == "/why":
                if last is None:
                    print("(no reply to explain yet)")
                    continue
                asst.explain(user, last.id, rest)
                print("(reason added to your thumb)")
            elif command == "/retry":
                if last is None:
                    print("(no reply to regenerate yet)")
                    continue
                pair = asst.regenerate(user, last.id, **gen)
                print(f"A (earlier)> {pair.a.text}\nB (new)> {pair.b.text}")
                print("(/choose a, b, tie or both_bad; until then the conversation goes on with B)")
                last = pair.b
            elif command == "/choose":
                if pair is None:
                    print("(nothing to choose between: /retry first)")
                    continue
                winner = rest.strip()
                asst.choose(user, pair.id, winner)
                print(f"(choice saved: {winner})")
                if winner in ("a", "tie"):  # the earlier reply is the one that continues
                    last = pair.a
                pair = None
            else:
                print("attune> ", end="", flush=True)
                for event in asst.chat_stream(user, line, conversation, **gen):
                    if isinstance(event, Delta):
                        print(event.text, end="", flush=True)
                    elif isinstance(event, Reply):
                        last, conversation = event, event.conversation_id
                print()
        except AttuneError as e:
            print(f"(error: {e})")


def cmd_export(args: argparse.Namespace) -> int:
    counts = _assistant(args).export(args.out, user=args.user)
    preference, unpaired = counts["preference"], counts["unpaired"]
    print(f"wrote {preference} preference rows and {unpaired} unpaired rows to {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """One round now, in this process; prints the report."""
    report = _assistant(args).train(args.user)
    verdict = "accepted" if report.accepted else "not accepted"
    version = f"v{report.version}" if report.version is not None else "no candidate"
    print(f"{verdict}: {version}: {report.reason}")
    for key in ("reward_before", "reward_after", "kl", "heldout_accuracy", "seconds"):
        value = report.metrics.get(key)
        if value is not None:
            print(f"  {key:<18}{value:.3f}" if isinstance(value, float) else f"  {key:<18}{value}")
    return 0 if report.accepted else EXIT_NOT_ACCEPTED


def cmd_versions(args: argparse.Namespace) -> int:
    for v in _assistant(args).versions(args.user):
        print(f"v{v['version']:<4} {v['status']:<12} {v['created'][:19]}  {v['reason'] or ''}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    _assistant(args).rollback(args.user, args.version)
    where = f"v{args.version}" if args.version else "the base model"
    print(f"user {args.user} now answers with {where}")
    return 0


def cmd_undo(args: argparse.Namespace) -> int:
    version = _assistant(args).undo_last_update(args.user)
    where = f"v{version}" if version else "the base model"
    print(f"user {args.user} now answers with {where}")
    return 0


def cmd_learning(args: argparse.Namespace) -> int:
    asst = _assistant(args)
    if args.action != "status":
        asst.pause_learning(args.user, paused=args.action == "pause")
    state = "paused" if asst.learning_paused(args.user) else "on"
    print(f"learning for user {args.user}: {state}")
    return 0


def cmd_learned(args: argparse.Namespace) -> int:
    """What each adopted version changed, measured (the panel's "What it learned")."""
    changes = _assistant(args).what_changed(args.user)
    if not changes:
        print(f"user {args.user}: no version adopted yet")
    for c in changes:
        than = f"v{c['compared_with']}" if c["compared_with"] else "the base model"
        said = "; ".join(c["changes"]) or "no measurable change in length, format or tone"
        print(f"v{c['version']} against {than} ({c['pairs']} questions): {said}")
        if c["compared_with"]:
            against_base = "; ".join(c["against_base"]) or "no measurable change"
            print(f"v{c['version']} against the base model: {against_base}")
    return 0


def cmd_overview(args: argparse.Namespace) -> int:
    """Operators: every user at a glance, then every alert."""
    asst = _assistant(args)
    page = asst.users_overview(args.sort, args.descending, args.page, args.name or "")
    print(
        f"{'user':<20} {'live':>4} {'last round':<10} {'KL':>6} {'acc.':>5} {'up':>5} "
        f"{'waiting':>7} {'flagged':>7}  alerts"
    )
    for r in page["rows"]:
        kl = f"{r['kl']:.1f}" if r["kl"] is not None else "-"
        acc = f"{r['head_accuracy']:.2f}" if r["head_accuracy"] is not None else "-"
        up = f"{r['share_up_live']:.0%}" if r["share_up_live"] is not None else "-"
        print(
            f"{r['user'][:20]:<20} {r['live_version']:>4} {r['last_outcome'] or '-':<10} "
            f"{kl:>6} {acc:>5} {up:>5} {r['clicks_waiting']:>7} {r['flagged']:>7}  "
            f"{len(r['alerts'])}"
        )
    print(f"page {page['page']} of {page['pages']}, {page['total']} users")
    for a in asst.alerts():
        print(f"alert: {a['user']}: {a['alert']}")
    return 0


def cmd_my_data(args: argparse.Namespace) -> int:
    data = _assistant(args).my_data(args.user)
    out = Path(args.out)
    out.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    print(
        f"wrote {out}: {len(data['conversations'])} conversations, {len(data['feedback'])} thumbs"
    )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from bench import BENCHMARKS, runner

    if args.name not in BENCHMARKS:
        raise NotAvailableYet(
            f"benchmark {args.name!r} is not implemented yet; available: {', '.join(BENCHMARKS)}"
        )
    return runner(args.name)(args, args.options)


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir",
        default=os.environ.get("ATTUNE_DATA_DIR", "attune-data"),
        help="where the database, adapters and models live (default: %(default)s)",
    )
    common.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="embedded alias, local folder, .gguf file or hub id (default: %(default)s)",
    )
    common.add_argument(
        "--quantize",
        choices=["auto", "none", "4bit", "int8", "int4"],
        default="auto",
        help="4bit = bitsandbytes NF4 base (serving and training); int8 / int4 = weight-only "
        "integer weights for serving on a CPU (rounds: --training-precision); none = fp32 "
        "serving; "
        "auto = 4bit on CUDA, on a CPU int4 where a layer is already on the int4 grid (a Q4 "
        "GGUF) and int8 elsewhere",
    )
    common.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    common.add_argument(
        "--training-precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="the weights rounds sample, train and read reward features in: bf16 = a bfloat16 "
        "copy of the base (LoRA and value head stay fp32; faster on CPUs with AMX, but its "
        "rounding hides small policy changes); auto = fp32 on a CPU, bf16 on CUDA",
    )
    common.add_argument(
        "--model-cache",
        default=None,
        help="where converted models are cached (default: DATA_DIR/models)",
    )

    top = argparse.ArgumentParser(
        prog="attune", description="A chat assistant that learns from each of its users."
    )
    sub = top.add_subparsers(dest="command", required=True)

    def add(
        name: str, run: Callable[[argparse.Namespace], int], help: str, **kw
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help, description=help, **kw)
        p.set_defaults(run=run)
        return p

    serve = add(
        "serve",
        cmd_serve,
        "start the web app with background training",
        argument_default=argparse.SUPPRESS,  # a flag left out keeps ui.config.ServeConfig's
        epilog="A flag left out keeps its default from ui.config.ServeConfig (listed in the "
        "README's Configuration table).",
    )
    serve.add_argument("--host", help="where it listens")
    serve.add_argument("--port", type=int)
    serve.add_argument(
        "--max-message-chars", type=int, help="longer chat messages are refused, nothing stored"
    )
    serve.add_argument("--concurrency", type=int, help="replies generated at once; the rest queue")
    serve.add_argument("--max-new-tokens", type=int, help="reply length in tokens")
    serve.add_argument("--temperature", type=float, help="sampling temperature (above 0)")
    serve.add_argument(
        "--refresh-seconds",
        type=float,
        help="how often the 'Your assistant' panel and the operator dashboard refresh",
    )
    serve.add_argument(
        "--no-training",
        dest="training",
        action="store_false",
        default=True,
        help="do not run the background training scheduler",
    )
    serve.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="compute training rounds on Ray actors: a running cluster's address, or 'local' "
        "to start Ray on this machine (default: rounds in this process)",
    )
    serve.add_argument(
        "--ray-actors", type=int, help="round actors, each holding the base model (default 1)"
    )
    serve.add_argument(
        "--demo-accounts",
        action="store_true",
        default=False,
        help="on an empty database, create a demo user and an operator and print their "
        "passwords once (make run does)",
    )

    chat = add("chat", cmd_chat, "chat in the terminal as a user")
    chat.add_argument("--user", required=True)
    chat.add_argument("--conversation", default=None, help="continue this conversation id")
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=0.7)
    chat.add_argument(
        "--no-training",
        dest="training",
        action="store_false",
        help="do not learn from your ratings in the background",
    )

    user = sub.add_parser("user", help="manage accounts", description="manage accounts")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    user_add = user_sub.add_parser(
        "add",
        parents=[common],
        help="create an account",
        description="Create an account. Without --password or --password-stdin a random "
        "password is generated and printed once.",
    )
    user_add.add_argument("name")
    user_add.add_argument("--operator", action="store_true", help="may see the operator dashboard")
    user_add.add_argument("--password", action="store_true", help="ask for a password (twice)")
    user_add.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )
    user_add.add_argument("--if-missing", action="store_true", help="succeed quietly if it exists")
    user_add.set_defaults(run=cmd_user_add)
    user_passwd = user_sub.add_parser(
        "passwd",
        parents=[common],
        help="set a new password (asked twice)",
        description="Set a new password for an account (asked twice at the terminal).",
    )
    user_passwd.add_argument("name")
    user_passwd.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin instead"
    )
    user_passwd.set_defaults(run=cmd_user_passwd)
    user_sub.add_parser("list", parents=[common], help="list accounts").set_defaults(
        run=cmd_user_list
    )
    user_delete = user_sub.add_parser(
        "delete", parents=[common], help="delete an account and all its data"
    )
    user_delete.add_argument("name")
    user_delete.set_defaults(run=cmd_user_delete)

    train = add("train", cmd_train, "run one training round for a user now and print the report")
    train.add_argument("--user", required=True)
    versions = add("versions", cmd_versions, "list a user's adapter versions")
    versions.add_argument("--user", required=True)
    rollback = add("rollback", cmd_rollback, "make an earlier adapter version live again")
    rollback.add_argument("--user", required=True)
    rollback.add_argument("--version", type=int, required=True, help="0 = the bare base model")

    undo = add("undo", cmd_undo, "put back the version a user's live one was trained from")
    undo.add_argument("--user", required=True)
    learning = add("learning", cmd_learning, "pause or resume learning from a user's clicks")
    learning.add_argument("action", choices=["pause", "resume", "status"])
    learning.add_argument("--user", required=True)
    learned = add("learned", cmd_learned, "what each adopted version of a user's changed")
    learned.add_argument("--user", required=True)

    overview = add("overview", cmd_overview, "operators: every user at a glance, and alerts")
    overview.add_argument("--sort", default="user", help="user, kl, flagged, share_up_change, ...")
    overview.add_argument("--descending", action="store_true")
    overview.add_argument("--page", type=int, default=1)
    overview.add_argument("--name", default=None, help="only users whose name contains this")

    my_data = add("my-data", cmd_my_data, "write everything kept about a user as one JSON file")
    my_data.add_argument("--user", required=True)
    my_data.add_argument("--out", required=True, help="the JSON file to write")

    export = add("export", cmd_export, "write feedback as JSONL for TRL's trainers")
    export.add_argument("--user", default=None, help="only this user's feedback")
    export.add_argument("--out", required=True, help="output folder")

    bench = add("bench", cmd_bench, "run a benchmark (see bench/)")
    bench.add_argument(
        "name",
        help="which benchmark: quantize, personalize, chat-during-training, load, ppo-vs-trl, "
        "serving, decode-variants, adaptation, footprint, gate, heads, compare, oracle, "
        "round-sampling, overview",
    )
    bench.add_argument(
        "options", nargs=argparse.REMAINDER, help="the benchmark's own options (NAME --help)"
    )

    add("provision", cmd_provision, "fetch and convert the model now, so the first start is fast")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except NotAvailableYet as e:
        print(f"attune: {e}", file=sys.stderr)
        return EXIT_NOT_YET
    except AttuneError as e:
        print(f"attune: {e}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
