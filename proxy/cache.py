"""Step 7 of the gate: the verified-token cache.

A repeated token skips parsing and signature work (issue 5 step 7). It never skips the revocation or
scope steps: the app runs them on every request, hit or miss. Bounded in size; each entry expires at its
token's ``exp`` on the injected clock, and a hit on a token that has since expired is a miss. Keyed by
the AS and the exact token string: the same token presented under another resource is validated again,
for that resource's issuer and audience.
"""

from __future__ import annotations

from collections.abc import Callable

from cachetools import TLRUCache

from proxy.validate import VerifiedToken


def _expires_at(_key: tuple[str, str], value: VerifiedToken, _now: float) -> float:
    return value.exp


class TokenCache:
    def __init__(self, maxsize: int, now: Callable[[], float]) -> None:
        self._now = now
        self._cache: TLRUCache[tuple[str, str], VerifiedToken] | None = (
            TLRUCache(maxsize=maxsize, ttu=_expires_at, timer=now) if maxsize > 0 else None
        )

    def get(self, as_id: str, token: str) -> VerifiedToken | None:
        if self._cache is None:
            return None
        entry = self._cache.get((as_id, token))
        if entry is None or self._now() >= entry.exp:
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
