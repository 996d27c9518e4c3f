"""The `attune` command: help everywhere, user management, honest refusals."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from assistant import Assistant, AssistantConfig
from assistant.cli import EXIT_ERROR, EXIT_NOT_ACCEPTED, EXIT_NOT_YET, main, parser

PRINTED_PASSWORD = re.compile(r"^password: (\S+)$", re.MULTILINE)

SUBCOMMANDS = [
    ["serve"],
    ["chat"],
    ["user"],
    ["user", "add"],
    ["user", "passwd"],
    ["user", "list"],
    ["user", "delete"],
    ["train"],
    ["versions"],
    ["rollback"],
    ["undo"],
    ["learning"],
    ["my-data"],
    ["learned"],
    ["overview"],
    ["export"],
    ["bench"],
    ["provision"],
]


@pytest.mark.parametrize("words", SUBCOMMANDS)
def test_every_subcommand_has_help(words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args([*words, "--help"])
    assert exit_info.value.code == 0
    assert "usage: attune" in capsys.readouterr().out


def test_console_script_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "assistant.cli", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "serve" in result.stdout


def test_user_management(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = ["--data-dir", str(tmp_path)]
    assert main(["user", "add", "dana", *data]) == 0
    assert main(["user", "add", "dana", "--if-missing", *data]) == 0
    assert main(["user", "add", "dana", *data]) == 1  # exists: a clear error, not a traceback
    assert "exists already" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret-password\n"))
    assert main(["user", "add", "otto", "--operator", "--password-stdin", *data]) == 0
    capsys.readouterr()
    assert main(["user", "list", *data]) == 0
    listing = capsys.readouterr().out
    assert "dana\tuser" in listing and "otto\toperator" in listing
    assert main(["user", "delete", "dana", *data]) == 0
    assert main(["user", "delete", "dana", *data]) == 1
    assert "no user named" in capsys.readouterr().err


def signs_in(data_dir: Path, name: str, password: str) -> bool:
    with Assistant(AssistantConfig(data_dir=data_dir)) as asst:  # no model needed
        return asst.authenticate(name, password) is not None


def test_an_account_added_without_a_password_gets_one_printed_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["user", "add", "eve", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    (password,) = PRINTED_PASSWORD.findall(out)
    assert "shown only this once" in out and "attune user passwd" in out
    assert signs_in(tmp_path, "eve", password)


def test_passwd_sets_a_new_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = ["--data-dir", str(tmp_path)]
    main(["user", "add", "hal", *data])
    (first,) = PRINTED_PASSWORD.findall(capsys.readouterr().out)
    monkeypatch.setattr("sys.stdin", io.StringIO("a-new-password\n"))
    assert main(["user", "passwd", "hal", "--password-stdin", *data]) == 0
    assert "password of hal changed" in capsys.readouterr().out
    assert signs_in(tmp_path, "hal", "a-new-password") and not signs_in(tmp_path, "hal", first)

    typed = iter(["typed-password", "typed-password"])  # asked twice at the terminal
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(typed))
    assert main(["user", "passwd", "hal", *data]) == 0
    assert signs_in(tmp_path, "hal", "typed-password")

    mistyped = iter(["one-password", "another-one"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(mistyped))
    assert main(["user", "passwd", "hal", *data]) == EXIT_ERROR
    assert "the two passwords differ" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["user", "passwd", "hal", "--password-stdin", *data]) == EXIT_ERROR
    assert "at least 8 characters" in capsys.readouterr().err
    assert signs_in(tmp_path, "hal", "typed-password")  # the refused ones changed nothing
    assert main(["user", "passwd", "nobody", "--password-stdin", *data]) == EXIT_ERROR
    assert "no user named 'nobody'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--max-new-tokens", "2000"], "max_new_tokens must be at most"),
        (["--temperature", "0"], "temperature must be above 0"),
        (["--refresh-seconds", "0"], "refresh_seconds must be > 0"),
        (["--ray-actors", "2"], "--ray-actors needs --ray ADDRESS"),
        (["--ray", "local", "--ray-actors", "0"], "at least one actor"),
    ],
)
def test_serve_refuses_bad_settings_before_it_starts(
    flags: list[str],
    says: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started = []
    monkeypatch.setattr("ui.serve.serve", started.append)  # never serve for real here
    assert main(["serve", *flags, "--data-dir", str(tmp_path)]) == EXIT_ERROR
    assert says in capsys.readouterr().err and not started


def test_serve_flags_reach_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ui.config import ServeConfig

    started: list[ServeConfig] = []
    monkeypatch.setattr("ui.serve.serve", lambda config: started.append(config) or 0)
    flags = ["--port", "8123", "--refresh-seconds", "9.5", "--no-training"]
    assert main(["serve", *flags, "--data-dir", str(tmp_path)]) == 0
    (config,) = started
    assert (config.port, config.refresh_seconds, config.background) == (8123, 9.5, False)
    assert config.max_new_tokens == ServeConfig().max_new_tokens  # left out: the default
    assert config.ray is None  # rounds in the serving process unless --ray is given
    assert main(["serve", "--ray", "local", "--ray-actors", "2", "--data-dir", str(tmp_path)]) == 0
    assert (started[-1].ray.address, started[-1].ray.actors) == ("local", 2)


def test_the_core_cli_does_not_import_the_web_app() -> None:
    probe = "import sys, assistant.cli; sys.exit(any(m.split('.')[0] == 'ui' for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", probe]).returncode == 0


def test_not_yet_landed_commands_say_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data-dir", str(tmp_path)]
    assert main(["bench", "no-such-bench", *data]) == EXIT_NOT_YET
    assert "not implemented yet" in capsys.readouterr().err


def test_train_versions_and_rollback_commands(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from assistant import Assistant
    from tests.test_training import give_feedback

    data = ["--data-dir", str(tmp_path), "--model", str(tiny_model_dir)]
    main(["user", "add", "ida", *data])
    assert main(["train", "--user", "ida", *data]) == EXIT_NOT_ACCEPTED
    assert "not enough feedback" in capsys.readouterr().out
    with Assistant.open(tmp_path, model=str(tiny_model_dir)) as asst:
        give_feedback(asst, "ida")
    code = main(["train", "--user", "ida", *data])
    out = capsys.readouterr().out
    assert code in (0, EXIT_NOT_ACCEPTED) and "v1" in out and "reward_after" in out
    assert main(["versions", "--user", "ida", *data]) == 0
    assert "v1" in capsys.readouterr().out
    if code == 0:  # accepted: v1 is live and the base can come back
        assert main(["rollback", "--user", "ida", "--version", "0", *data]) == 0
        assert "the base model" in capsys.readouterr().out
    else:  # rejected: the base is still live
        assert main(["rollback", "--user", "ida", "--version", "0", *data]) == EXIT_ERROR
        assert "live already" in capsys.readouterr().err
    assert main(["rollback", "--user", "ida", "--version", "9", *data]) == EXIT_ERROR
    assert "no adapter version 9" in capsys.readouterr().err


def test_export_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data-dir", str(tmp_path / "d")]
    main(["user", "add", "fay", *data])
    assert main(["export", "--out", str(tmp_path / "out"), *data]) == 0
    assert "wrote 0 preference rows and 0 unpaired rows" in capsys.readouterr().out
    assert (tmp_path / "out" / "preference.jsonl").exists()


def test_terminal_chat(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = ["--data-dir", str(tmp_path), "--model", str(tiny_model_dir)]
    main(["user", "add", "gus", *data])
    script = (
        "hello\n/up nice\n/down\n/why too vague\n/undo\n/retry\n/choose b\n/choose a\n"
        "/new\nagain\n/quit\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "assistant.cli",
            "chat",
            "--user",
            "gus",
            "--max-new-tokens",
            "5",
            *data,
        ],
        input=script,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert (
        "(thumbs up saved)" in out and "(thumbs down saved)" in out and "(rating retracted)" in out
    )
    assert "(reason added to your thumb)" in out
    assert "A (earlier)> " in out and "B (new)> " in out and "(choice saved: b)" in out
    assert "(nothing to choose between: /retry first)" in out  # decided once
    assert "(new conversation)" in out and out.count("attune> ") == 2


def test_learning_undo_and_my_data_commands(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = ["--data-dir", str(tmp_path), "--model", str(tiny_model_dir)]
    main(["user", "add", "joe", *data])
    assert main(["learning", "pause", "--user", "joe", *data]) == 0
    assert "paused" in capsys.readouterr().out
    assert main(["learning", "status", "--user", "joe", *data]) == 0
    assert "paused" in capsys.readouterr().out
    assert main(["learning", "resume", "--user", "joe", *data]) == 0
    assert ": on" in capsys.readouterr().out
    assert main(["undo", "--user", "joe", *data]) == EXIT_ERROR
    assert "nothing to undo" in capsys.readouterr().err
    out = tmp_path / "joe.json"
    assert main(["my-data", "--user", "joe", "--out", str(out), *data]) == 0
    assert json.loads(out.read_text())["user"]["name"] == "joe"
    assert main(["my-data", "--user", "nobody", "--out", str(out), *data]) == EXIT_ERROR


def test_learned_and_overview_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data-dir", str(tmp_path)]
    main(["user", "add", "kim", *data])
    main(["user", "add", "lee", *data])
    capsys.readouterr()
    assert main(["learned", "--user", "kim", *data]) == 0
    assert "no version adopted yet" in capsys.readouterr().out
    assert main(["overview", "--sort", "flagged", "--descending", *data]) == 0
    out = capsys.readouterr().out
    assert "kim" in out and "lee" in out and "page 1 of 1, 2 users" in out
    assert main(["overview", "--sort", "password_hash", *data]) == EXIT_ERROR
    assert "sort must be one of" in capsys.readouterr().err
