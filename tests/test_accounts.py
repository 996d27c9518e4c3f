"""Accounts: sign-in limits that make guessing slow, and the credentials stamp that ends a
session when its password changes or its account is deleted. The limits are real counts on a
clock the test moves; the facade is the one the web app calls."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from assistant import Assistant, AssistantConfig, SignInConfig, TooManySignIns
from assistant.sign_in import SignInLimiter
from tests.conftest import row_counts

LIMITS = SignInConfig(
    failures_per_account_here=3, failures_per_address=5, failures_per_account=8, window_s=600.0
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def accounts(tmp_path: Path) -> Iterator[Assistant]:
    """The facade without a model (accounts never load one), on a clock the test moves."""
    asst = Assistant(AssistantConfig(data_dir=tmp_path, sign_in=LIMITS))
    asst.sign_ins = SignInLimiter(LIMITS, clock=Clock())
    asst.add_user("alice", password="alice-password")
    asst.add_user("bob", password="bob-password")
    yield asst
    asst.close()


def test_a_guesser_is_paused_and_the_owner_elsewhere_is_not(accounts: Assistant) -> None:
    for _ in range(3):
        assert accounts.authenticate("alice", "guess", "10.6.6.6") is None
    before = row_counts(accounts)
    with pytest.raises(TooManySignIns, match="this account.*try again in 10 minutes") as refused:
        accounts.authenticate("alice", "alice-password", "10.6.6.6")  # right, but paused here
    assert 599 <= refused.value.retry_after_s <= 600
    assert row_counts(accounts) == before  # nothing stored, nothing lost
    assert accounts.authenticate("alice", "alice-password", "10.0.0.1").name == "alice"
    accounts.sign_ins._clock.now += 600  # the window passes
    assert accounts.authenticate("alice", "alice-password", "10.6.6.6").name == "alice"


def test_one_address_guessing_many_accounts_is_paused(accounts: Assistant) -> None:
    for name in ["alice", "bob", "carol", "dave", "erin"]:  # unknown names count too
        assert accounts.authenticate(name, "guess", "10.6.6.6") is None
    with pytest.raises(TooManySignIns, match="your address"):
        accounts.authenticate("bob", "bob-password", "10.6.6.6")
    assert accounts.authenticate("bob", "bob-password", "10.0.0.2").name == "bob"


def test_guessing_spread_over_addresses_pauses_the_account(accounts: Assistant) -> None:
    for n in range(8):  # one guess from each of eight addresses: no address is at a limit
        assert accounts.authenticate("alice", "guess", f"10.1.0.{n}") is None
    with pytest.raises(TooManySignIns, match="this account"):
        accounts.authenticate("alice", "alice-password", "10.0.0.1")
    assert accounts.authenticate("bob", "bob-password", "10.0.0.1").name == "bob"


def test_a_right_password_clears_the_count_from_that_address(accounts: Assistant) -> None:
    for _ in range(2):
        accounts.authenticate("alice", "typo", "10.0.0.1")
    assert accounts.authenticate("alice", "alice-password", "10.0.0.1") is not None
    for _ in range(2):  # two more typos: 2, not 4, count from this address
        accounts.authenticate("alice", "typo", "10.0.0.1")
    assert accounts.authenticate("alice", "alice-password", "10.0.0.1") is not None


def test_the_oldest_failure_leaving_the_window_lets_one_more_try(accounts: Assistant) -> None:
    clock = accounts.sign_ins._clock
    for step in range(3):
        accounts.authenticate("alice", "guess", "10.6.6.6")
        clock.now += 100 if step < 2 else 0
    with pytest.raises(TooManySignIns, match="try again in 7 minutes"):  # 400 s to go
        accounts.authenticate("alice", "guess", "10.6.6.6")
    clock.now += 400  # the first failure (at t=0) leaves; the two later ones still count
    assert accounts.authenticate("alice", "guess", "10.6.6.6") is None
    with pytest.raises(TooManySignIns):
        accounts.authenticate("alice", "alice-password", "10.6.6.6")


def test_the_credentials_stamp_changes_with_the_password_and_the_account(
    accounts: Assistant,
) -> None:
    first = accounts.credentials_stamp("alice")
    assert first and first == accounts.credentials_stamp("alice")
    assert first != accounts.credentials_stamp("bob")
    accounts.set_password("alice", "alice-password")  # the same password, a new salt
    assert accounts.credentials_stamp("alice") not in (None, first)
    accounts.delete_user("alice")
    assert accounts.credentials_stamp("alice") is None
    assert accounts.credentials_stamp(None) is None  # type: ignore[arg-type]


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        SignInConfig(failures_per_account_here=0)
    with pytest.raises(ValueError):
        SignInConfig(failures_per_account=0)
    with pytest.raises(ValueError):
        SignInConfig(window_s=0)
