"""Where the proxy gets its verification keys: the co-located core's store, and remote issuers.

``IssuerKeys`` is the proxy's key resolver: it answers ``resolve(issuer, kid)`` for every configured
authorization server, sending a local issuer to ``LocalKeys`` and a remote one to its
``RemoteIssuerKeys``. Each source holds its keys by issuer, so a key of issuer A never verifies a token
that claims issuer B (RFC 8725 §3.8, security.md J26). A hit is a dictionary lookup: no I/O on the hot
path. Misses refresh at most once per cooldown, concurrent misses sharing one refresh.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING

import httpx
import jwt

from config.schema import ScopegateConfig
from proxy.introspection import Introspector
from proxy.jwks import MAX_KID_CHARS, SingleFlight, parse_jwks
from proxy.remote import RemoteIssuerKeys

if TYPE_CHECKING:
    from authz.store.base import Store

log = logging.getLogger("scopegate.keys")

DEFAULT_LOCAL_COOLDOWN = 5.0
"""An unknown kid for a local issuer re-reads the store at most this often. Rotation through the
management API also calls ``reload()`` from the change feed, so this only bounds the fallback."""


class LocalKeys:
    """The co-located core's signing keys, read from the store and held as ``PyJWK`` by (issuer, kid).

    Every key the store lists verifies, whatever its status: Okta publishes ACTIVE, NEXT and the
    EXPIRED (previous) key, and "tokens stay verifiable as long as the signing key is still published"
    (spec, key rotation is not a revocation event).
    """

    def __init__(self, store: Store, issuers: Mapping[str, str], *,
                 algorithms: Mapping[str, Collection[str]] | None = None,
                 cooldown: float = DEFAULT_LOCAL_COOLDOWN, now: Callable[[], float] = time.monotonic) -> None:
        """``issuers`` maps each local issuer URL to its AS id; ``algorithms`` maps an AS id to its
        allow-list (RS256 when absent)."""
        self._store = store
        self.issuers = dict(issuers)
        self._algorithms = {as_id: frozenset((algorithms or {}).get(as_id, ("RS256",))) for as_id in issuers.values()}
        self._keys: dict[tuple[str, str], jwt.PyJWK] = {}
        self._refresher = SingleFlight(self._load, cooldown, now, name="local keys")
        self.loads = 0
        """Completed store reads (for tests and readiness)."""

    @property
    def loaded(self) -> bool:
        return self.loads > 0

    def kids(self, issuer: str) -> frozenset[str]:
        return frozenset(kid for (iss, kid) in self._keys if iss == issuer)

    async def start(self) -> None:
        await self._refresher.run(force=True)

    async def reload(self) -> None:
        """Re-read the store now (after a key rotation seen on the change feed), ignoring the cooldown;
        joins a read already in flight."""
        await self._refresher.run(force=True)

    async def resolve(self, issuer: str, kid: str) -> jwt.PyJWK | None:
        key = self._keys.get((issuer, kid))
        if key is not None or issuer not in self.issuers or len(kid) > MAX_KID_CHARS:
            return key
        await self._refresher.run()
        return self._keys.get((issuer, kid))

    async def _load(self) -> None:
        # The store is synchronous (authz/store/base.py): read it in a worker thread.
        keys = await asyncio.to_thread(self._read_store)
        self._keys = keys
        self.loads += 1

    def _read_store(self) -> dict[tuple[str, str], jwt.PyJWK]:
        keys: dict[tuple[str, str], jwt.PyJWK] = {}
        for issuer, as_id in self.issuers.items():
            document = {"keys": [dict(k.public_jwk) for k in self._store.list_signing_keys(as_id)]}
            for kid, key in parse_jwks(document, self._algorithms[as_id], source=f"store keys of {as_id}").items():
                keys[(issuer, kid)] = key
        return keys

    async def aclose(self) -> None:
        await self._refresher.aclose()


class IssuerKeys:
    """The key resolver of the proxy: one source per configured issuer (implements ``KeyResolver``)."""

    def __init__(self, local: LocalKeys | None, remotes: Mapping[str, RemoteIssuerKeys],
                 introspectors: Mapping[str, Introspector] | None = None,
                 client: httpx.AsyncClient | None = None) -> None:
        """``remotes`` maps a remote AS id to its key source; ``local`` knows its own AS ids."""
        self.local = local
        self.remotes = {r.issuer: r for r in remotes.values()}
        self._issuers = {as_id: r.issuer for as_id, r in remotes.items()}
        if local is not None:
            self._issuers.update({as_id: issuer for issuer, as_id in local.issuers.items()})
        self.introspectors = dict(introspectors or {})
        self._client = client
        overlap = set(self.remotes) & set(local.issuers if local else ())
        if overlap:
            raise ValueError(f"issuer(s) {sorted(overlap)} are both local and remote")

    async def start(self) -> None:
        """Load local keys and make the first fetch of each remote issuer, concurrently. A remote
        issuer that is down is logged and retried on demand; local keys must load."""
        jobs = [r.start() for r in self.remotes.values()]
        if self.local is not None:
            jobs.append(self.local.start())
        await asyncio.gather(*jobs)
        if self.local is not None and not self.local.loaded:
            raise RuntimeError("the co-located core's signing keys could not be read from the store")

    def issuer_for_as(self, as_id: str) -> str:
        """The exact ``iss`` of the AS's tokens; KeyError for an AS this resolver does not serve."""
        return self._issuers[as_id]

    async def resolve(self, issuer: str, kid: str) -> jwt.PyJWK | None:
        remote = self.remotes.get(issuer)
        if remote is not None:
            return await remote.resolve(issuer, kid)
        if self.local is not None:
            return await self.local.resolve(issuer, kid)
        return None

    async def reload_local(self) -> None:
        if self.local is not None:
            await self.local.reload()

    def introspector(self, issuer: str) -> Introspector | None:
        """The introspection client for a remote issuer configured with ``introspection``, else None."""
        return self.introspectors.get(issuer)

    @property
    def ready(self) -> bool:
        """Local keys loaded (remote issuers may be down; their tokens are refused meanwhile)."""
        return self.local is None or self.local.loaded

    async def aclose(self) -> None:
        for remote in self.remotes.values():
            await remote.aclose()
        if self.local is not None:
            await self.local.aclose()
        if self._client is not None:
            await self._client.aclose()


def build_key_resolver(cfg: ScopegateConfig, store: Store | None, *,
                       client: httpx.AsyncClient | None = None,
                       now: Callable[[], float] = time.monotonic,
                       wall_clock: Callable[[], float] = time.time) -> IssuerKeys:
    """The resolver for every AS of the configuration. Call ``await resolver.start()`` before serving,
    ``await resolver.aclose()`` at shutdown."""
    local_issuers = {cfg.issuer_for(s.id): s.id for s in cfg.authorization_servers if s.remote is None}
    local = None
    if local_issuers and store is not None:
        algorithms = {s.id: list(s.algorithms) for s in cfg.authorization_servers if s.remote is None}
        local = LocalKeys(store, local_issuers, algorithms=algorithms, now=now)
    remote_servers = [s for s in cfg.authorization_servers if s.remote is not None]
    if remote_servers and client is None:
        # Control-plane client (issue 5: httpx for discovery, JWKS and introspection).
        client = httpx.AsyncClient(follow_redirects=False, headers={"User-Agent": "scopegate"})
    remotes: dict[str, RemoteIssuerKeys] = {}
    introspectors: dict[str, Introspector] = {}
    for server in remote_servers:
        remote = server.remote
        assert remote is not None
        assert client is not None
        keys = RemoteIssuerKeys(remote, server.algorithms, client, now=now)
        remotes[server.id] = keys
        if remote.introspection is not None:
            introspectors[remote.issuer] = Introspector(
                issuer=remote.issuer, endpoint=None, find_endpoint=keys.introspection_endpoint, client_id=remote.introspection.client_id,
                client_secret=remote.introspection.client_secret, cache_ttl=remote.introspection.cache_ttl,
                client=client, timeout=remote.jwks_timeout, realm=server.id, now=wall_clock)
    return IssuerKeys(local, remotes, introspectors, client)
