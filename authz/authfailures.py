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

Attempts in flight count against the limit too (``reserve`` … ``settle``): checking the failures and
recording one are separated by the secret check, so 40 concurrent wrong secrets against a limit of 10
all passed the check before the first failure was recorded (issue 8 item 10). A reserved slot is taken
under the lock before the secret is looked at and given back, or turned into a failure, after. So at
most ``limit`` checks run per key and window, whatever the concurrency; a burst of more than ``limit``
concurrent requests for one client from one address is answered 429 (Retry-After: 1) beyond the limit.
"""

from __future__ import annotations

import threading
from collections import deque

from cachetools import LRUCache

from config.schema import CoreSettings

IN_FLIGHT_RETRY = 1.0
"""Seconds to wait when only attempts still in flight fill the limit: they end within a check's time."""


class ClientAuthFailures:
    def __init__(self, limit: int = 10, source_limit: int = 100, window: float = 60.0, size: int = 10_000) -> None:
        self.limit = limit
        self.source_limit = source_limit
        self.window = window
        self._failures: LRUCache[tuple[str, str], deque[float]] = LRUCache(maxsize=size)
        self._in_flight: dict[tuple[str, str], int] = {}
        """Reserved, unsettled attempts per key; a key leaves when its count drops to 0, so the dict holds at
        most two keys per request in flight."""
        self._lock = threading.Lock()

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
        afterwards), else the seconds until this client_id and source may try again. Recorded failures
        and attempts in flight together stay within each limit."""
        wait = 0.0
        with self._lock:
            keys = self._keys(client_id, source)
            for key, limit in keys:
                times = self._failures.get(key)
                if times is not None:
                    while times and times[0] <= now - self.window:
                        times.popleft()
                failed = len(times) if times is not None else 0
                if failed + self._in_flight.get(key, 0) >= limit:
                    soonest = times[0] + self.window - now if times and failed >= limit else IN_FLIGHT_RETRY
                    wait = max(wait, soonest)
            if wait > 0:
                return wait
            for key, _ in keys:
                self._in_flight[key] = self._in_flight.get(key, 0) + 1
        return None

    def settle(self, client_id: str | None, source: str | None, now: float, *, failed: bool) -> None:
        """Give back the slot ``reserve`` took; a failed attempt stays counted as a failure until the window passes."""
        with self._lock:
            for key, _ in self._keys(client_id, source):
                count = self._in_flight.get(key, 0) - 1
                if count > 0:
                    self._in_flight[key] = count
                else:
                    self._in_flight.pop(key, None)
            if failed:
                self._record(client_id, source, now)

    def _record(self, client_id: str | None, source: str | None, now: float) -> None:
        for key, limit in self._keys(client_id, source):
            times = self._failures.get(key)
            if times is None or times.maxlen != limit:
                times = deque(times or (), maxlen=limit)
            self._failures[key] = times
            times.append(now)


__all__ = ["ClientAuthFailures"]
