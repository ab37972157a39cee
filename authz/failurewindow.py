"""Sliding windows of failures per key, with attempts in flight counted against the limit.

The one mechanism behind the client-authentication back-off (``authz/authfailures.py``) and the sign-in
throttle (``authz/lockout.py``): each keeps failures per key (a client id and address, a username, an
address), refuses a key once its failures in the window reach its limit, and forgets them as they age out.

Attempts in flight count too (``admit`` … ``settle``): checking the failures and recording one are
separated by the credential check, so with a plain check-then-act 40 concurrent wrong secrets against a
limit of 10 all passed the check before the first failure was recorded (issue 8 item 10). A slot is taken
under the lock before the credential is looked at and given back, or turned into a failure, after; so at
most ``limit`` checks run per key and window, whatever the concurrency.

Bounded: at most ``size`` keys keep failures (the least recently used are forgotten first). Attempts in
flight are kept apart from that cache, so that touching many other keys cannot evict a key's in-flight
count and let a burst through; a key leaves that table when its count drops to 0, so it holds at most a
few keys per request in flight. A success never clears failures: it must not buy a guesser more attempts.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from cachetools import LRUCache

IN_FLIGHT_WAIT = 1.0
"""Seconds to wait when only attempts still in flight fill a limit: they end within a check's time."""


@dataclass(frozen=True)
class Refused:
    key: Hashable
    wait: float
    """Seconds until the key may try again (> 0)."""


class FailureWindows:
    def __init__(self, window: float, size: int = 10_000) -> None:
        self.window = window
        self._failures: LRUCache[Hashable, deque[float]] = LRUCache(maxsize=size)
        self._in_flight: dict[Hashable, int] = {}
        self._lock = threading.Lock()

    def _recent(self, key: Hashable, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is not None:
            while times and times[0] <= now - self.window:
                times.popleft()
        return times

    def admit(self, limits: Sequence[tuple[Hashable, int]], now: float) -> list[Refused]:
        """Take a slot on every key for one attempt, or none: empty when taken (call ``settle`` with the same
        keys exactly once afterwards), else each key that refuses, in order, with its wait. A key's recorded
        failures and attempts in flight together stay within its limit."""
        refused: list[Refused] = []
        with self._lock:
            for key, limit in limits:
                times = self._recent(key, now)
                failed = len(times) if times else 0
                if failed + self._in_flight.get(key, 0) >= limit:
                    # The failure that must age out for a slot to free is the limit-th most recent one.
                    wait = times[failed - limit] + self.window - now if times and failed >= limit else IN_FLIGHT_WAIT
                    refused.append(Refused(key, max(wait, 1e-3)))
            if not refused:
                for key, _ in limits:
                    self._in_flight[key] = self._in_flight.get(key, 0) + 1
        return refused

    def locked(self, limits: Sequence[tuple[Hashable, int]], now: float) -> list[Refused]:
        """The keys whose recorded failures alone reach their limit (attempts in flight not counted), with waits."""
        refused: list[Refused] = []
        with self._lock:
            for key, limit in limits:
                times = self._recent(key, now)
                failed = len(times) if times else 0
                if times and failed >= limit:
                    refused.append(Refused(key, max(times[failed - limit] + self.window - now, 1e-3)))
        return refused

    def settle(self, limits: Sequence[tuple[Hashable, int]], now: float, *, failed: bool) -> list[Hashable]:
        """Give back the slots ``admit`` took; a failed attempt stays counted until the window passes. Returns
        the keys whose failures this attempt brought exactly to their limit (the moment of a lockout)."""
        with self._lock:
            for key, _ in limits:
                count = self._in_flight.get(key, 0) - 1
                if count > 0:
                    self._in_flight[key] = count
                else:
                    self._in_flight.pop(key, None)
            return self._record(limits, now) if failed else []

    def record(self, limits: Sequence[tuple[Hashable, int]], now: float) -> list[Hashable]:
        """Count a failure of an attempt that took no slot (``settle``'s return value)."""
        with self._lock:
            return self._record(limits, now)

    def _record(self, limits: Sequence[tuple[Hashable, int]], now: float) -> list[Hashable]:
        reached: list[Hashable] = []
        for key, limit in limits:
            times = self._recent(key, now)
            if times is None:
                times = deque()
            self._failures[key] = times
            times.append(now)
            while len(times) > limit:  # only the last ``limit`` failures can ever decide a wait
                times.popleft()
            if len(times) == limit:
                reached.append(key)
        return reached


__all__ = ["IN_FLIGHT_WAIT", "FailureWindows", "Refused"]
