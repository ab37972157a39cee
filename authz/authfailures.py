"""Failed client authentications per client_id and per source address, for the back-off of security.md
§4.1: "Rate-limit per client_id and per source. Lock out or delay after N failures."

The per-client limit is kept per (client_id, source address), not per client_id alone: client ids are
not secret (every access token carries one in ``cid``), so a global per-client lockout would let anyone
who can reach the token endpoint lock a real client out with a few wrong guesses. Guessing a client's
secret from many addresses is still bounded by each address's own limits, and secrets of 14 or more
characters are out of reach of online guessing anyway (spec §1.6).

A sliding window per key, in memory and bounded: at most ``size`` keys are tracked (least recently used
ones are forgotten first), each holding at most ``limit`` timestamps. Success never clears failures:
a legitimate client's successes must not buy an attacker more guesses at its secret.

Attempts in flight count against the limit too (``authz/failurewindow.py``, issue 8 item 10): a burst of
more than ``limit`` concurrent requests for one client from one address is answered 429 (Retry-After: 1)
beyond the limit.
"""

from __future__ import annotations

from authz.failurewindow import FailureWindows
from config.schema import CoreSettings


class ClientAuthFailures:
    def __init__(self, limit: int = 10, source_limit: int = 100, window: float = 60.0, size: int = 10_000) -> None:
        self.limit = limit
        self.source_limit = source_limit
        self.window = window
        self._windows = FailureWindows(window, size)

    @classmethod
    def from_settings(cls, settings: CoreSettings) -> ClientAuthFailures:
        return cls(settings.client_auth_failure_limit, settings.client_auth_failure_source_limit,
                   settings.client_auth_failure_window)

    def _keys(self, client_id: str | None, source: str | None) -> list[tuple[tuple[str, str], int]]:
        keys: list[tuple[tuple[str, str], int]] = []
        if client_id and self.limit > 0:
            keys.append((("client", f"{client_id}\0{source or ''}"), self.limit))
        if source and self.source_limit > 0:
            keys.append((("source", source), self.source_limit))
        return keys

    def reserve(self, client_id: str | None, source: str | None, now: float) -> float | None:
        """Take a slot for one authentication attempt: None when taken (call ``settle`` exactly once
        afterwards), else the seconds until this client_id and source may try again."""
        refused = self._windows.admit(self._keys(client_id, source), now)
        return max(r.wait for r in refused) if refused else None

    def locked_out(self, client_id: str | None, source: str | None, now: float) -> float | None:
        """The seconds until this client_id and source may try again if their failures reached a limit, else None.
        For an attempt that takes no slot (a recently verified secret): failures lock it out, attempts in flight
        do not."""
        refused = self._windows.locked(self._keys(client_id, source), now)
        return max(r.wait for r in refused) if refused else None

    def fail(self, client_id: str | None, source: str | None, now: float) -> None:
        """Count a failure of an attempt that took no slot."""
        self._windows.record(self._keys(client_id, source), now)

    def settle(self, client_id: str | None, source: str | None, now: float, *, failed: bool) -> None:
        """Give back the slot ``reserve`` took; a failed attempt stays counted as a failure until the window passes."""
        self._windows.settle(self._keys(client_id, source), now, failed=failed)


__all__ = ["ClientAuthFailures"]
