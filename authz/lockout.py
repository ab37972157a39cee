"""Sign-in throttling at the /authorize form, per username and per source address (issue 8 item 5).

Okta's password policy locks an account out after a number of failed sign-ins ("lock out after 10
unsuccessful attempts" by default) and writes ``user.account.lock`` ("Max sign in attempts exceeded").
Here: after ``core.signInFailureLimit`` failures naming one username within ``core.signInFailureWindow``,
the form refuses that username without checking a password until the oldest failure leaves the window
(an automatic unlock); after ``core.signInFailureSourceLimit`` failures from one address, whatever the
username, it refuses that address. Every refused attempt costs no scrypt, so a flood of wrong passwords
cannot starve the hashing pool either.

Counted per username whether or not a user has it (the answer must not tell which usernames exist), keyed
by a digest so that memory holds neither long usernames nor passwords typed into the username field.
Attempts in flight count as failures until they are decided (issue 8 item 10's lesson: a check-then-act
limit lets a burst of concurrent guesses through). A success never clears failures: it must not buy a
guesser more attempts against the same account. In memory and bounded (least recently used keys are
forgotten first), per process, like the client-authentication back-off (``authz/authfailures.py``).
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import deque
from dataclasses import dataclass, field

from cachetools import LRUCache

from config.schema import CoreSettings


@dataclass
class _Window:
    failures: deque[float] = field(default_factory=deque)
    pending: int = 0


@dataclass(frozen=True)
class Refusal:
    """Why an attempt is refused without a password check, and for how long."""

    scope: str
    """``user`` (the username is locked out) or ``source`` (the address has failed too often)."""
    retry_after: int
    """Whole seconds, at least 1 (RFC 9110 §10.2.3 Retry-After)."""


@dataclass
class Attempt:
    """One admitted sign-in attempt; ``SignInThrottle.finish`` decides it exactly once."""

    keys: list[tuple[str, str]]
    done: bool = False


class SignInThrottle:
    def __init__(self, limit: int = 10, source_limit: int = 100, window: float = 900.0, size: int = 10_000) -> None:
        self.limit = limit
        self.source_limit = source_limit
        self.window = window
        self._windows: LRUCache[tuple[str, str], _Window] = LRUCache(maxsize=size)
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: CoreSettings) -> SignInThrottle:
        return cls(settings.sign_in_failure_limit, settings.sign_in_failure_source_limit,
                   settings.sign_in_failure_window)

    @staticmethod
    def username_key(username: str) -> str:
        return hashlib.sha256(username.strip().lower().encode()).hexdigest()

    def _limits(self, username: str, source: str | None) -> list[tuple[tuple[str, str], int]]:
        keys: list[tuple[tuple[str, str], int]] = []
        if self.limit > 0:
            keys.append((("user", self.username_key(username)), self.limit))
        if source and self.source_limit > 0:
            keys.append((("source", source), self.source_limit))
        return keys

    def _window(self, key: tuple[str, str], now: float) -> _Window:
        window = self._windows.get(key)
        if window is None:
            window = _Window()
            self._windows[key] = window
        while window.failures and window.failures[0] <= now - self.window:
            window.failures.popleft()
        return window

    def begin(self, username: str, source: str | None, now: float) -> Attempt | Refusal:
        """Admit an attempt (counted as a failure until ``finish``) or say why it is refused."""
        with self._lock:
            limits = self._limits(username, source)
            for key, limit in limits:
                window = self._window(key, now)
                if len(window.failures) + window.pending >= limit:
                    if len(window.failures) >= limit:
                        wait = window.failures[len(window.failures) - limit] + self.window - now
                    else:
                        wait = 1.0  # attempts in flight hold the last slots; they are decided in moments
                    return Refusal(key[0], max(1, math.ceil(wait)))
            for key, _ in limits:
                self._window(key, now).pending += 1
            return Attempt([key for key, _ in limits])

    def finish(self, attempt: Attempt, *, failed: bool, now: float) -> bool:
        """Record the outcome; True when this failure reached the username's limit (the account locks)."""
        locked = False
        with self._lock:
            if attempt.done:
                return False
            attempt.done = True
            for key in attempt.keys:
                window = self._window(key, now)
                window.pending = max(0, window.pending - 1)
                if failed:
                    window.failures.append(now)
                    if key[0] == "user" and len(window.failures) == self.limit:
                        locked = True
        return locked


__all__ = ["Attempt", "Refusal", "SignInThrottle"]
