"""Step 7 of the gate: the verified-token cache.

A repeated token skips parsing and signature work (issue 5 step 7). It never skips the revocation or
scope steps: the app runs them on every request, hit or miss. Bounded in size; each entry expires at its
token's ``exp`` on the injected clock: a hit on a token that has since expired is a miss, and drops the
entry. Keyed by the AS and the exact token string: the same token presented under another resource is
validated again, for that resource's issuer and audience.

A cachetools ``LRUCache`` with the expiry checked on every read, rather than a ``TLRUCache``: the check is
the same comparison TLRUCache makes, and a hit costs a tenth as much (no timer context on the hot path).
Entries past ``exp`` that are never presented again are the least recently used, so they are the first
evicted when the cache is full.
"""

from __future__ import annotations

from collections.abc import Callable

from cachetools import LRUCache

from proxy.validate import VerifiedToken


class TokenCache:
    def __init__(self, maxsize: int, now: Callable[[], float]) -> None:
        self._now = now
        self._cache: LRUCache[tuple[str, str], VerifiedToken] | None = (
            LRUCache(maxsize=maxsize) if maxsize > 0 else None
        )

    def get(self, as_id: str, token: str) -> VerifiedToken | None:
        cache = self._cache
        if cache is None:
            return None
        key = (as_id, token)
        entry = cache.get(key)
        if entry is None:
            return None
        if self._now() >= entry.exp:
            cache.pop(key, None)
            return None
        return entry

    def put(self, token: str, verified: VerifiedToken) -> None:
        if self._cache is None or self._now() >= verified.exp:
            return
        self._cache[(verified.as_id, token)] = verified

    def clear(self) -> None:
        if self._cache is not None:
            self._cache.clear()

    def __len__(self) -> int:
        return 0 if self._cache is None else len(self._cache)
