"""Keys of a remote issuer: another scopegate core, or a real Okta org (DESIGN §1, issue 5 "Remote issuers").

The proxy discovers the issuer's metadata (RFC 8414, falling back to OpenID Connect Discovery), fetches
its JWK Set with a timeout and keeps it in memory. An unknown ``kid`` refetches at most once per
cooldown, with concurrent misses sharing one fetch. The key set is replaced only by a successful fetch,
so an outage of the keys endpoint keeps the keys already held (as PyJWT's ``PyJWKClient`` does).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt

from config.schema import RemoteIssuer
from proxy.jwks import MAX_KID_CHARS, JwksError, SingleFlight, loads_strict, parse_jwks

log = logging.getLogger("scopegate.keys")

MAX_DOCUMENT_BYTES = 256 * 1024
"""Metadata and key sets larger than this are refused (security.md §4.4 "A huge JWKS"; Authlib's
CVE-2025-61920 fix uses the same bound for token segments)."""

KEY_SET_MAX_AGE = 300.0
"""A key set older than this is renewed in the background on the next hit, so that a key the issuer
withdrew stops verifying within minutes even if no unknown ``kid`` ever arrives (PyJWT's default lifespan)."""


class RemoteFetchError(Exception):
    """A control-plane call to a remote issuer failed (network, status, size or shape)."""


@dataclass(frozen=True)
class IssuerMetadata:
    issuer: str
    jwks_uri: str
    introspection_endpoint: str | None


def _http_url(value: Any, what: str) -> str:
    if not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).netloc:
        raise RemoteFetchError(f"{what} is not an http(s) URL")
    return value


async def fetch_json(client: httpx.AsyncClient, method: str, url: str, *, seconds: float,
                     **kwargs: Any) -> tuple[int, Any]:
    """``(status, parsed JSON or None)``; the whole exchange is bounded by ``seconds`` and the body by
    ``MAX_DOCUMENT_BYTES``. Redirects are not followed (security.md §3.8: a redirect is an SSRF pivot)."""
    try:
        async with asyncio.timeout(seconds):
            async with client.stream(method, url, timeout=seconds, follow_redirects=False, **kwargs) as response:
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise RemoteFetchError(f"{url}: response larger than {MAX_DOCUMENT_BYTES} bytes")
                status = response.status_code
    except TimeoutError:
        raise RemoteFetchError(f"{url}: no complete answer within {seconds:g}s") from None
    except httpx.HTTPError as exc:
        raise RemoteFetchError(f"{url}: {type(exc).__name__}: {exc}") from None
    if status != 200:
        return status, None
    try:
        return status, loads_strict(bytes(body))
    except JwksError as exc:
        raise RemoteFetchError(f"{url}: {exc}") from None


async def discover(client: httpx.AsyncClient, issuer: str, *, seconds: float) -> IssuerMetadata:
    """RFC 8414 metadata, falling back to OpenID Connect Discovery 1.0.

    Okta serves both under the issuer (``{issuer}/.well-known/...``), as the co-located core does. RFC 8414
    §3.3: "The "issuer" value returned MUST be identical to the authorization server's issuer identifier
    value into which the well-known URI string was inserted", or the metadata is not used.
    """
    errors: list[str] = []
    base = issuer.rstrip("/")
    for suffix in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
        url = base + suffix
        try:
            status, document = await fetch_json(client, "GET", url, seconds=seconds,
                                                 headers={"Accept": "application/json"})
        except RemoteFetchError as exc:
            errors.append(str(exc))
            continue
        if status != 200 or not isinstance(document, dict):
            errors.append(f"{url}: HTTP {status}")
            continue
        if document.get("issuer") != issuer:
            raise RemoteFetchError(f"{url}: metadata names issuer {document.get('issuer')!r}, not {issuer!r}")
        introspection = document.get("introspection_endpoint")
        return IssuerMetadata(
            issuer=issuer,
            jwks_uri=_http_url(document.get("jwks_uri"), f"{url}: jwks_uri"),
            introspection_endpoint=_http_url(introspection, f"{url}: introspection_endpoint")
            if introspection is not None else None,
        )
    raise RemoteFetchError("discovery failed: " + "; ".join(errors))


class RemoteIssuerKeys:
    """The verification keys of one remote issuer, fetched over HTTP and held in memory.

    ``resolve`` answers from memory; only an unknown ``kid`` (at most once per ``jwks_refetch_cooldown``)
    or the first use after a failed start waits for the network.
    """

    def __init__(self, remote: RemoteIssuer, algorithms: Collection[str], client: httpx.AsyncClient,
                 *, now: Callable[[], float] = time.monotonic, max_age: float = KEY_SET_MAX_AGE) -> None:
        self.remote = remote
        self.issuer = remote.issuer
        self.algorithms = frozenset(algorithms)
        self._client = client
        self._now = now
        self.max_age = max_age
        self.metadata: IssuerMetadata | None = None
        self._keys: dict[str, jwt.PyJWK] = {}
        self.fetched_at: float | None = None
        """Monotonic time of the last successful key-set fetch; None until one succeeds."""
        self._refresher = SingleFlight(self._refresh, remote.jwks_refetch_cooldown, now,
                                       name=f"remote issuer {remote.issuer}")

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    @property
    def last_error(self) -> str | None:
        return self._refresher.last_error

    async def start(self) -> None:
        """First discovery and fetch. A failure is logged, not raised: the issuer may come up later, and
        until it does its tokens are refused (fail closed) while local issuers keep working."""
        await self._refresher.run(force=True)

    async def refresh(self) -> None:
        """Refetch now unless a fetch ran within the cooldown."""
        await self._refresher.run()

    async def resolve(self, issuer: str, kid: str) -> jwt.PyJWK | None:
        # RFC 8725 §3.8: a key of this issuer never verifies a token that claims another issuer (J26).
        if issuer != self.issuer or len(kid) > MAX_KID_CHARS:
            return None
        key = self._keys.get(kid)
        if key is not None:
            if self.fetched_at is not None and self._now() - self.fetched_at > self.max_age:
                self._refresher.start_in_background()
            return key
        await self._refresher.run()
        return self._keys.get(kid)

    async def introspection_endpoint(self) -> str | None:
        """From the discovered metadata, discovering first if needed (within the cooldown)."""
        if self.metadata is None:
            await self._refresher.run()
        return self.metadata.introspection_endpoint if self.metadata is not None else None

    async def _refresh(self) -> None:
        seconds = self.remote.jwks_timeout
        if self.metadata is None:
            self.metadata = await discover(self._client, self.issuer, seconds=seconds)
        status, document = await fetch_json(self._client, "GET", self.metadata.jwks_uri, seconds=seconds,
                                            headers={"Accept": "application/json"})
        if status != 200:
            raise RemoteFetchError(f"{self.metadata.jwks_uri}: HTTP {status}")
        try:
            keys = parse_jwks(document, self.algorithms, source=self.metadata.jwks_uri)
        except JwksError as exc:
            raise RemoteFetchError(str(exc)) from None
        # Written only after a complete, well-formed answer: a failed refresh keeps the keys held.
        self._keys = keys
        self.fetched_at = self._now()
        log.info("remote issuer %s: %d signing key(s) %s", self.issuer, len(keys), sorted(keys))

    async def aclose(self) -> None:
        await self._refresher.aclose()
