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
Attempts in flight count as failures until they are decided, a success never clears failures, and memory
is bounded: the windows of ``authz/failurewindow.py``, per process, shared in mechanism with the
client-authentication back-off (``authz/authfailures.py``).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from authz.failurewindow import FailureWindows
from config.schema import CoreSettings


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

    keys: list[tuple[tuple[str, str], int]]
    done: bool = False


class SignInThrottle:
    def __init__(self, limit: int = 10, source_limit: int = 100, window: float = 900.0, size: int = 10_000) -> None:
        self.limit = limit
        self.source_limit = source_limit
        self.window = window
        self._windows = FailureWindows(window, size)

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

    def begin(self, username: str, source: str | None, now: float) -> Attempt | Refusal:
        """Admit an attempt (counted as a failure until ``finish``) or say why it is refused."""
        limits = self._limits(username, source)
        refused = self._windows.admit(limits, now)
        if refused:
            first = refused[0]
            assert isinstance(first.key, tuple)
            return Refusal(str(first.key[0]), max(1, math.ceil(first.wait)))
        return Attempt(limits)

    def finish(self, attempt: Attempt, *, failed: bool, now: float) -> bool:
        """Record the outcome; True when this failure reached the username's limit (the account locks)."""
        if attempt.done:
            return False
        attempt.done = True
        reached = self._windows.settle(attempt.keys, now, failed=failed)
        return any(key[0] == "user" for key in reached if isinstance(key, tuple))


__all__ = ["Attempt", "Refusal", "SignInThrottle"]
