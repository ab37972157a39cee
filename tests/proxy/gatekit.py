"""Test kit for the gate: keys generated once per session, an in-memory key resolver, a token minter,
a controllable revocation state and clock, and a recording upstream (aiohttp.web on a free port)."""

from __future__ import annotations

import base64
import functools
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from config.schema import ScopegateConfig

ISSUER_BASE = "http://127.0.0.1:8081"
RESOURCE = "https://api.example.com/orders"
ISSUER = f"{ISSUER_BASE}/oauth2/orders"
NOW = 1_700_000_000.0


def rsa_key(name: str, bits: int = 2048) -> rsa.RSAPrivateKey:
    """One RSA key per name for the whole session (key generation is the slow part)."""
    return _rsa_key(name, bits)


@functools.cache
def _rsa_key(name: str, bits: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def public_jwk(name: str, alg: str = "RS256", bits: int = 2048) -> jwt.PyJWK:
    data: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key(name, bits).public_key()))
    data.update({"kid": name, "alg": alg, "use": "sig"})
    return jwt.PyJWK(data)


class InMemoryKeys:
    """KeyResolver over a dict: (issuer, kid) → key; records every lookup."""

    def __init__(self, issuers: Mapping[str, str], keys: Mapping[tuple[str, str], jwt.PyJWK]) -> None:
        self.issuers = dict(issuers)
        self.keys = dict(keys)
        self.lookups: list[tuple[str, str]] = []

    def issuer_for_as(self, as_id: str) -> str:
        return self.issuers[as_id]

    async def resolve(self, issuer: str, kid: str) -> jwt.PyJWK | None:
        self.lookups.append((issuer, kid))
        return self.keys.get((issuer, kid))


def default_keys() -> InMemoryKeys:
    return InMemoryKeys({"orders": ISSUER}, {(ISSUER, "k1"): public_jwk("k1")})


def claims(now: float = NOW, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "ver": 1, "jti": "AT.2a.abcdefghijklmnop", "iss": ISSUER, "aud": RESOURCE, "sub": "alice@example.com",
        "iat": int(now), "exp": int(now) + 3600, "cid": "reporting", "client_id": "reporting", "uid": "u1",
        "scp": ["orders:read"],
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not DROP}


DROP: Any = object()
"""An override value that removes the claim."""


def mint(payload: Mapping[str, Any] | None = None, *, kid: str = "k1", key: str | None = None, alg: str = "RS256",
         headers: Mapping[str, Any] | None = None, typ: str | None = "at+jwt") -> str:
    """A token signed by PyJWT with the named session key."""
    extra: dict[str, Any] = {"kid": kid}
    if typ is not None:
        extra["typ"] = typ
    extra.update(headers or {})
    return jwt.encode(dict(payload if payload is not None else claims()), rsa_key(key or kid), algorithm=alg,
                      headers=extra)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint_raw(header_json: str, payload_json: str, key: str = "k1") -> str:
    """A token whose header and payload are exactly these JSON texts (for duplicate members and odd types)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    signing_input = f"{b64(header_json.encode())}.{b64(payload_json.encode())}"
    signature = rsa_key(key).sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64(signature)}"


@dataclass
class FakeRevocation:
    """The two questions the gate asks of the revocation state, with answers the test controls."""

    revoked_jtis: set[str] = field(default_factory=set)
    stale: bool = False
    asked: list[str] = field(default_factory=list)

    def is_revoked(self, claims: Mapping[str, Any]) -> bool:
        self.asked.append(str(claims.get("jti")))
        return (claims.get("iss"), claims.get("jti")) in {(ISSUER, j) for j in self.revoked_jtis}

    def is_stale(self, now: float) -> bool:
        return self.stale

    def age(self, now: float) -> float:
        return 0.5


def gate_config(url: str = "builtin:echo", **overrides: Any) -> ScopegateConfig:
    document: dict[str, Any] = {
        "issuer": ISSUER_BASE,
        "upstream": {"url": url, "connectTimeout": 1, "timeout": 2},
        "routes": [
            {"name": "health", "path": "/health", "public": True},
            {"name": "orders-public", "path": "/orders/catalog", "public": True},
            {"name": "orders-read", "path": "/orders", "methods": ["GET", "HEAD"],
             "scopes": {"anyOf": ["orders:read", "orders:write"]}},
            {"name": "orders-write", "path": "/orders", "methods": ["POST", "PUT", "DELETE"],
             "scopes": {"allOf": ["orders:write"]}},
        ],
        "authorizationServers": [{
            "id": "orders", "name": "Orders", "audiences": [RESOURCE],
            "scopes": [{"name": "orders:read"}, {"name": "orders:write"}],
        }],
    }
    document.update(overrides)
    return ScopegateConfig.model_validate(document)


@dataclass
class Received:
    method: str
    raw_path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes


class RecordingUpstream:
    """A real HTTP upstream on a free port that records every request it receives."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.delay = 0.0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append(Received(request.method, request.raw_path.partition("?")[0], request.raw_path.partition("?")[2],
                                      [(k.decode(), v.decode()) for k, v in request.raw_headers],
                                      body))
        if self.delay:
            import asyncio

            await asyncio.sleep(self.delay)
        if request.path.endswith("/stream"):
            response = web.StreamResponse(status=200, headers={"X-Upstream": "yes"})
            await response.prepare(request)
            for i in range(3):
                await response.write(b"chunk%d;" % i)
            await response.write_eof()
            return response
        return web.json_response({"ok": True, "len": len(body)}, headers={
            "X-Upstream": "yes", "Connection": "keep-alive, X-Secret-Hop", "X-Secret-Hop": "1", "Keep-Alive": "timeout=5"})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def wall_clock() -> float:
    return time.time()
