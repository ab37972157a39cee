"""RFC 7662 token introspection against a remote issuer, to learn revocation the JWT cannot tell.

A remote issuer's revocations never reach this process's change feed, so a proxy that must honour them
asks the issuer. Results are cached by ``(iss, jti)`` (never by the token string: a re-padded signature
is the same token, security.md J14) for no longer than ``cacheTTL`` and never past the token's ``exp``.
A token whose state cannot be learned is denied (fail closed, security.md §3.8).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote

import httpx
from cachetools import TLRUCache

from authz.errors import BearerError, GateError
from proxy.remote import RemoteFetchError, fetch_json

log = logging.getLogger("scopegate.introspection")

DEFAULT_MAX_ENTRIES = 100_000


@dataclass(frozen=True)
class IntrospectionResult:
    active: bool
    expires: float
    """Wall-clock time after which this result must not be used."""


def basic_credentials(client_id: str, client_secret: str) -> str:
    """RFC 6749 §2.3.1: the client identifier and secret "are encoded using the
    application/x-www-form-urlencoded encoding algorithm" before Basic's base64."""
    pair = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


class Introspector:
    """Asks one issuer's introspection endpoint whether a token is active, with a bounded cache.

    ``now`` is the wall clock (it is compared with ``exp``). Concurrent checks of one token share one
    call.
    """

    def __init__(self, *, issuer: str, endpoint: str | None, client_id: str, client_secret: str, cache_ttl: float,
                 client: httpx.AsyncClient, timeout: float, realm: str, now: Callable[[], float] = time.time,
                 find_endpoint: Callable[[], Awaitable[str | None]] | None = None,
                 max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        """``endpoint`` None: ask ``find_endpoint`` (the issuer's discovered metadata) on first use."""
        self.issuer = issuer
        self.endpoint = endpoint
        self._find_endpoint = find_endpoint
        self.cache_ttl = cache_ttl
        self.timeout = timeout
        self.realm = realm
        self._client = client
        self._now = now
        self._authorization = basic_credentials(client_id, client_secret)
        self._cache: TLRUCache[tuple[str, str], IntrospectionResult] = TLRUCache(
            maxsize=max_entries, ttu=lambda _key, value, _now: value.expires, timer=now)
        self._in_flight: dict[tuple[str, str], asyncio.Task[IntrospectionResult]] = {}
        self.calls = 0
        """Introspection requests sent (for tests and metrics)."""

    def cached(self, jti: str) -> IntrospectionResult | None:
        return self._cache.get((self.issuer, jti))

    async def validate_active(self, token: str, *, jti: str, exp: float) -> None:
        """Return if the issuer says the token is active; raise BearerError (401 ``revoked``) if it says
        it is not, GateError (503 ``introspection_unavailable``) if it cannot be asked."""
        key = (self.issuer, jti)
        result = self._cache.get(key)
        if result is None:
            task = self._in_flight.get(key)
            if task is None:
                task = asyncio.get_running_loop().create_task(self._introspect(token, key, exp))
                self._in_flight[key] = task
                task.add_done_callback(lambda _t: self._in_flight.pop(key, None))
            result = await asyncio.shield(task)
        if not result.active:
            # RFC 7662 §2.2: an inactive answer carries no reason; the token may be revoked or expired.
            raise BearerError("invalid_token", "The access token is not active.", realm=self.realm,
                              reason="revoked")

    async def _introspect(self, token: str, key: tuple[str, str], exp: float) -> IntrospectionResult:
        if self.endpoint is None and self._find_endpoint is not None:
            self.endpoint = await self._find_endpoint()
        if self.endpoint is None:
            log.warning("introspection for %s: the issuer's metadata names no introspection_endpoint", self.issuer)
            raise self._unavailable()
        self.calls += 1
        try:
            status, document = await fetch_json(
                self._client, "POST", self.endpoint, seconds=self.timeout,
                data={"token": token, "token_type_hint": "access_token"},
                headers={"Authorization": self._authorization, "Accept": "application/json"},
            )
        except RemoteFetchError as exc:
            log.warning("introspection at %s failed: %s", self.endpoint, exc)
            raise self._unavailable() from None
        if status != 200 or not isinstance(document, dict) or not isinstance(document.get("active"), bool):
            # A 401 here means our own client credentials are wrong: still nothing learned about the token.
            log.warning("introspection at %s answered HTTP %s without a boolean 'active'", self.endpoint, status)
            raise self._unavailable()
        now = self._now()
        result = IntrospectionResult(active=document["active"], expires=min(now + self.cache_ttl, exp))
        if result.expires > now:
            self._cache[key] = result
        return result

    def _unavailable(self) -> GateError:
        return GateError(503, "introspection_unavailable",
                         "The token's revocation state cannot be checked right now; try again later.")
