"""Local signing keys (the co-located core's, from the store) and the composite key resolver."""

from __future__ import annotations

import asyncio
import functools
import json
import threading
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from authz.store.base import KeyStatus, SigningKey
from authz.store.sqlite import SqliteStore
from config.schema import AuthorizationServerConfig, RemoteIssuer, ScopegateConfig
from proxy.keys import IssuerKeys, LocalKeys, build_key_resolver
from proxy.remote import RemoteIssuerKeys
from tests.clock import Clock

ISS_A = "http://127.0.0.1:8081/oauth2/a"
ISS_B = "http://127.0.0.1:8081/oauth2/b"


@functools.cache
def rsa_key(name: str, bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def signing_key(kid: str, as_id: str, status: KeyStatus = "ACTIVE", bits: int = 2048) -> SigningKey:
    jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key(kid, bits).public_key()))
    jwk.update({"kid": kid, "alg": "RS256", "use": "sig"})
    return SigningKey(kid=kid, as_id=as_id, status=status, private_pem=b"", public_jwk=jwk, created=0.0)


class KeyTable:
    """The one store read LocalKeys makes, over an in-memory table.

    ``list_signing_keys`` is all LocalKeys asks of the store (authz/store/base.py); this records the
    calls and the thread they run on, and can fail like an unreachable database.
    """

    def __init__(self, *keys: SigningKey) -> None:
        self.keys = list(keys)
        self.calls: list[str] = []
        self.threads: set[int] = set()
        self.fail = False

    def list_signing_keys(self, as_id: str) -> list[SigningKey]:
        self.calls.append(as_id)
        self.threads.add(threading.get_ident())
        if self.fail:
            raise RuntimeError("database is locked")
        return [k for k in self.keys if k.as_id == as_id]


def local(table: KeyTable, clock: Clock, cooldown: float = 5.0) -> LocalKeys:
    return LocalKeys(table, {ISS_A: "a", ISS_B: "b"}, cooldown=cooldown, now=clock)  # type: ignore[arg-type]


async def test_loads_every_status_at_start_off_the_event_loop() -> None:
    """ACTIVE, NEXT and EXPIRED keys all verify (rotation is not revocation), read in a worker thread."""
    table = KeyTable(signing_key("a1", "a"), signing_key("a0", "a", "EXPIRED"), signing_key("a2", "a", "NEXT"))
    keys = local(table, Clock(100.0))
    await keys.start()
    for kid in ("a0", "a1", "a2"):
        key = await keys.resolve(ISS_A, kid)
        assert key is not None and key.algorithm_name == "RS256"
    assert threading.get_ident() not in table.threads


async def test_a_hit_reads_nothing() -> None:
    """The hot path: a known key is a dictionary lookup, no store call."""
    table = KeyTable(signing_key("a1", "a"))
    keys = local(table, Clock(100.0))
    await keys.start()
    calls = len(table.calls)
    for _ in range(1000):
        await keys.resolve(ISS_A, "a1")
    assert len(table.calls) == calls


async def test_a_key_of_one_issuer_never_verifies_for_another() -> None:
    """J26: AS b's token cannot name AS a's kid, and no refetch finds it there."""
    table = KeyTable(signing_key("a1", "a"), signing_key("b1", "b"))
    keys = local(table, Clock(100.0))
    await keys.start()
    assert await keys.resolve(ISS_B, "a1") is None
    assert await keys.resolve(ISS_A, "b1") is None
    assert await keys.resolve(ISS_B, "b1") is not None


async def test_unknown_issuer_reads_nothing() -> None:
    """An issuer that is not local never triggers a store read."""
    table = KeyTable(signing_key("a1", "a"))
    keys = local(table, Clock(100.0))
    await keys.start()
    calls = len(table.calls)
    assert await keys.resolve("https://evil.example.com", "a1") is None
    assert len(table.calls) == calls


async def test_unknown_kid_reloads_once_per_cooldown() -> None:
    """A new key appears after the cooldown; a storm of unknown kids costs one read per cooldown."""
    clock = Clock(100.0)
    table = KeyTable(signing_key("a1", "a"))
    keys = local(table, clock, cooldown=5)
    await keys.start()
    assert keys.loads == 1
    table.keys.append(signing_key("a2", "a"))
    for i in range(20):
        await keys.resolve(ISS_A, f"x{i}")
    assert keys.loads == 1
    clock.t += 5
    assert await keys.resolve(ISS_A, "a2") is not None
    assert keys.loads == 2


async def test_concurrent_misses_share_one_reload() -> None:
    """Single flight: concurrent misses wait for the same store read."""
    clock = Clock(100.0)
    table = KeyTable(signing_key("a1", "a"))
    keys = local(table, clock)
    await keys.start()
    table.keys.append(signing_key("a2", "a"))
    clock.t += 60
    found = await asyncio.gather(*(keys.resolve(ISS_A, "a2") for _ in range(100)))
    assert all(k is not None for k in found)
    assert keys.loads == 2


async def test_reload_after_rotation_ignores_the_cooldown() -> None:
    """The change feed's reload() picks up a rotated key at once."""
    table = KeyTable(signing_key("a1", "a"))
    keys = local(table, Clock(100.0), cooldown=3600)
    await keys.start()
    table.keys = [signing_key("a1", "a", "EXPIRED"), signing_key("a2", "a")]
    await keys.reload()
    assert await keys.resolve(ISS_A, "a2") is not None


async def test_a_failed_reload_keeps_the_keys() -> None:
    """A store error during reload leaves the keys already held in place."""
    table = KeyTable(signing_key("a1", "a"))
    keys = local(table, Clock(100.0))
    await keys.start()
    table.fail = True
    await keys.reload()
    assert await keys.resolve(ISS_A, "a1") is not None


async def test_weak_store_keys_are_refused() -> None:
    """J23: an RSA key under 2048 bits never verifies, even from our own store."""
    table = KeyTable(signing_key("weak", "a", bits=1024), signing_key("a1", "a"))
    keys = local(table, Clock(100.0))
    await keys.start()
    assert keys.kids(ISS_A) == {"a1"}


async def test_resolver_refuses_to_start_without_local_keys() -> None:
    """Local keys that cannot be read at start-up stop the process (nothing could be validated)."""
    table = KeyTable()
    table.fail = True
    resolver = IssuerKeys(local(table, Clock(100.0)), {})
    with pytest.raises(RuntimeError, match="signing keys"):
        await resolver.start()


async def test_resolver_keeps_local_and_remote_keys_apart() -> None:
    """J26 across sources: a kid held locally is never offered for the remote issuer's tokens."""
    table = KeyTable(signing_key("shared", "a"))
    remote = RemoteIssuer(issuer="http://127.0.0.1:9/oauth2/r", audience="https://api.example.com/r",
                          jwks_timeout=0.5)
    async with httpx.AsyncClient() as client:
        remote_keys = RemoteIssuerKeys(remote, ["RS256"], client, now=Clock(100.0))
        resolver = IssuerKeys(local(table, Clock(100.0)), {"r": remote_keys})
        await resolver.start()
        assert await resolver.resolve(ISS_A, "shared") is not None
        assert await resolver.resolve(remote.issuer, "shared") is None
        assert resolver.issuer_for_as("a") == ISS_A
        assert resolver.issuer_for_as("r") == remote.issuer
        await resolver.aclose()


async def test_build_key_resolver_maps_local_servers_to_their_issuers() -> None:
    """Each local AS's issuer is {issuer}/oauth2/{id}; its keys come from the store."""
    cfg = ScopegateConfig(issuer="http://127.0.0.1:8081", authorization_servers=[
        AuthorizationServerConfig(id="a", name="A", audiences=["https://api.example.com/a"]),
        AuthorizationServerConfig(id="b", name="B", audiences=["https://api.example.com/b"]),
    ])
    table = KeyTable(signing_key("a1", "a"), signing_key("b1", "b"))
    resolver = build_key_resolver(cfg, table)  # type: ignore[arg-type]
    await resolver.start()
    assert resolver.ready
    assert resolver.issuer_for_as("b") == ISS_B
    assert await resolver.resolve(ISS_B, "b1") is not None
    assert await resolver.resolve(ISS_B, "a1") is None
    await resolver.aclose()


async def test_keys_come_from_the_real_sqlite_store_and_follow_a_rotation(tmp_path: Path) -> None:
    """Against SqliteStore: keys load at start; after a rotation (NEXT → ACTIVE), reload() serves the new key."""
    store = SqliteStore(f"sqlite:///{tmp_path / 'keys.db'}")
    try:
        store.add_signing_key(signing_key("s1", "a"))
        keys = LocalKeys(store, {ISS_A: "a"})
        await keys.start()
        assert await keys.resolve(ISS_A, "s1") is not None
        with store.transaction() as tx:
            tx.add_signing_key(signing_key("s2", "a", "NEXT"))
            tx.set_key_status("a", "s1", "EXPIRED")
            tx.set_key_status("a", "s2", "ACTIVE")
        await keys.reload()
        assert keys.kids(ISS_A) == {"s1", "s2"}
        await keys.aclose()
    finally:
        store.close()
