"""Sign-in attempts, limited: wrong passwords counted per account and per client address over
a sliding window (`SignInConfig`), so guessing a password costs hours, not seconds."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

from assistant.config import SignInConfig
from assistant.errors import TooManySignIns

MAX_TRACKED = 10_000  # keys kept before the ones with no recent failure are swept


class SignInLimiter:
    """Failure times per key ("account:NAME", "account:NAME@HOST", "address:HOST"), oldest
    first."""

    def __init__(self, config: SignInConfig, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.get(key, deque())
        while times and times[0] <= now - self.config.window_s:
            times.popleft()
        return times

    def _limits(self, name: str, address: str | None) -> list[tuple[str, int, str]]:
        """(key, limit, whose) of every count one attempt adds to."""
        c = self.config
        limits = [(f"account:{name}", c.failures_per_account, "this account")]
        if address:
            limits += [
                (f"account:{name}@{address}", c.failures_per_account_here, "this account"),
                (f"address:{address}", c.failures_per_address, "your address"),
            ]
        return limits

    def check(self, name: str, address: str | None) -> None:
        """Raise TooManySignIns, with when to try again, if any count of this attempt is at
        its limit; otherwise let the attempt go ahead."""
        now = self._clock()
        with self._lock:
            for key, limit, whose in self._limits(name, address):
                times = self._recent(key, now)
                if len(times) >= limit:
                    wait = times[len(times) - limit] + self.config.window_s - now
                    minutes = max(1, math.ceil(wait / 60))
                    raise TooManySignIns(
                        f"Too many wrong passwords for {whose}: sign-in is paused, try again in "
                        f"{minutes} minute{'s' if minutes > 1 else ''}.",
                        wait,
                    )

    def failed(self, name: str, address: str | None) -> None:
        now = self._clock()
        with self._lock:
            if len(self._failures) > MAX_TRACKED:
                self._failures = {k: t for k, t in self._failures.items() if self._recent(k, now)}
            for key, _, _ in self._limits(name, address):
                self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, name: str, address: str | None) -> None:
        """A right password: this account's failures from this address are forgiven (those
        from elsewhere, and the address's own count, stay)."""
        with self._lock:
            self._failures.pop(f"account:{name}@{address}" if address else f"account:{name}", None)
