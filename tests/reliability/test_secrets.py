"""Secrets: passwords exist only as salted scrypt hashes, nowhere in plain text on disk, and
the app listens on this machine only unless told otherwise. (Every operator endpoint checking
the role server-side: `tests/test_ui_api.py::test_no_event_gives_operator_data_to_a_non_operator`
and the isolation suite here.)"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from urllib.parse import urlsplit

from assistant import Assistant
from assistant.cli import parser
from tests.ui_support import FAST, serving
from ui.config import ServeConfig

SCRYPT_HASH = re.compile(r"scrypt\$16384\$8\$1\$[0-9a-f]{32}\$[0-9a-f]{64}")
PASSWORD = "correct horse battery staple"


def test_passwords_are_stored_only_as_salted_scrypt_hashes(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    data = tmp_path / "data"
    with Assistant.open(data, model=str(tiny_model_dir)) as asst:
        asst.add_user("alice", password=PASSWORD)
        asst.add_user("bob", password=PASSWORD)  # the same password...
        asst.add_user("olga", password="another-password", operator=True)
        asst.set_password("olga", PASSWORD + "!")
        assert asst.authenticate("alice", PASSWORD) and not asst.authenticate("alice", "nope")
    with sqlite3.connect(next(data.glob("*.db"))) as db:
        stored = dict(db.execute("select name, password_hash from users"))
    assert all(SCRYPT_HASH.fullmatch(h) for h in stored.values()), stored
    assert stored["alice"] != stored["bob"]  # ...salted differently
    # no file of the data folder (database, its WAL, adapters, logs) holds a password in clear
    for path in data.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            for secret in (PASSWORD, "another-password"):
                assert secret.encode() not in content, path
                assert secret.encode("utf-16-le") not in content, path


def test_the_app_listens_on_loopback_by_default(tmp_path: Path, tiny_model_dir: Path) -> None:
    assert ServeConfig().host == "127.0.0.1"
    flags = parser().parse_args(["serve"])
    assert getattr(flags, "host", None) in (None, "127.0.0.1")  # unset: the config's default
    assert FAST.host == ServeConfig().host  # the served test app below keeps the default
    with (
        Assistant.open(tmp_path / "data", model=str(tiny_model_dir)) as asst,
        serving(asst, FAST) as url,
    ):
        assert listening_addresses(urlsplit(url).port) == {"127.0.0.1"}


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a listening TCP socket on `port` (Linux's /proc/net/tcp*)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                found.add(decode_address(address, width))
    return found


def decode_address(hex_address: str, width: int) -> str:
    if width == 8:  # IPv4, little-endian
        return ".".join(str(int(hex_address[i : i + 2], 16)) for i in (6, 4, 2, 0))
    return "ipv6:" + hex_address
