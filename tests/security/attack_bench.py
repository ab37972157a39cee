"""The attacker's test bench: keys, a token forge, a recording upstream, and the gate under attack.

Every security test asserts two things: the answer the attacker gets, and that **no request reached the
upstream** (``upstream.requests`` stays empty). The upstream is a real HTTP server on a free port that
records what it receives, so a request the gate let through cannot go unnoticed.

The gate runs in-process (``httpx.ASGITransport`` on ``ProxyApp``) or, for framing, smuggling and slow
clients, behind a real uvicorn (``http="httptools"``, as ``scopegate run`` serves it) spoken to in raw
bytes (``RawClient``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import io
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from prometheus_client import CollectorRegistry

from authz.store.base import SigningKey
from config.schema import ScopegateConfig
from proxy.app import ProxyApp
from proxy.keys import IssuerKeys, LocalKeys
from proxy.metrics import ProxyMetrics
from tests.e2e.conftest import free_port
from tests.e2e.recording_upstream import Recorded

NOW = 1_800_000_000.0
"""The gate's clock in these tests (tokens are minted relative to it)."""
CORE = "http://127.0.0.1:8081"
ORDERS_ISS = f"{CORE}/oauth2/orders"
ADMIN_ISS = f"{CORE}/oauth2/admin"
ORDERS_AUD = "https://api.example.com/orders"
ADMIN_AUD = "https://api.example.com/admin"
HOST = "api.example.com"
MAX_TOKEN_BYTES = 8192
MAX_BODY_BYTES = 4096
READ_TIMEOUT = 0.5
UPSTREAM_TIMEOUT = 0.5


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def encode_json(value: Any) -> bytes:
    """A header or payload: a dict is serialized; a str is taken as raw JSON text (for duplicates)."""
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value, separators=(",", ":")).encode()


@functools.cache
def rsa_key(name: str, bits: int = 2048) -> rsa.RSAPrivateKey:
    """Generated once per session and name (generation is the slow part)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@functools.cache
def ec_key(name: str) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_jwk(kid: str, bits: int = 2048) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key(kid, bits).public_key()))
    jwk.update({"kid": kid, "alg": "RS256", "use": "sig"})
    return jwk


def signing_key(kid: str, as_id: str, bits: int = 2048) -> SigningKey:
    pem = rsa_key(kid, bits).private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption())
    return SigningKey(kid=kid, as_id=as_id, status="ACTIVE", private_pem=pem, public_jwk=public_jwk(kid, bits),
                      created=0.0)


def rs256(kid: str, signing_input: bytes, bits: int = 2048) -> bytes:
    return rsa_key(kid, bits).sign(signing_input, padding.PKCS1v15(), hashes.SHA256())


def claims(**overrides: Any) -> dict[str, Any]:
    """An Okta-shaped access token of the orders AS (spec §4.1 plus RFC 9068's client_id)."""
    base: dict[str, Any] = {
        "ver": 1, "jti": "AT.1f.abcdefghijklmnop", "iss": ORDERS_ISS, "aud": ORDERS_AUD,
        "iat": int(NOW) - 60, "exp": int(NOW) + 3600, "cid": "reporting", "client_id": "reporting",
        "scp": ["orders:read"], "sub": "alice@example.com", "uid": "alice",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def forge(payload: Any = None, header: Any = None, *, kid: str = "orders-1", bits: int = 2048,
          signature: bytes | str | None = None) -> str:
    """A compact JWS signed RS256 with test key ``kid`` (or with the given signature bytes/segment)."""
    payload = claims() if payload is None else payload
    header = {"alg": "RS256", "kid": kid, "typ": "at+jwt"} if header is None else header
    signing_input = f"{b64url(encode_json(header))}.{b64url(encode_json(payload))}".encode()
    if signature is None:
        sig = b64url(rs256(kid, signing_input, bits))
    elif isinstance(signature, bytes):
        sig = b64url(signature)
    else:
        sig = signature
    return f"{signing_input.decode()}.{sig}"


# ---------------------------------------------------------------------------------------------- upstream


@dataclass
class RecordingUpstream:
    """The protected API: records every request it receives; its behaviour is set per test."""

    url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    started: int = 0
    """Requests whose head arrived, complete or not (a slow body may never complete)."""
    hang: bool = False
    response_headers: dict[str, str] = field(default_factory=dict)
    status: int = 200
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.started += 1
        body = await request.read()
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
        self.requests.append(Recorded(request.method, request.raw_path, headers, body))
        if self.hang:
            await self.release.wait()
        return web.Response(status=self.status, body=b'{"upstream":"ok"}', content_type="application/json",
                            headers=self.response_headers)


@pytest.fixture
async def upstream() -> AsyncIterator[RecordingUpstream]:
    rec = RecordingUpstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    rec.url = f"http://{host}:{port}"
    yield rec
    rec.release.set()
    await runner.cleanup()


# ---------------------------------------------------------------------------------------------- the gate


class KeyTable:
    """The core's signing keys as the store lists them (the one store call the key source makes)."""

    def __init__(self, keys: Iterable[SigningKey]) -> None:
        self.keys = list(keys)
        self.calls = 0

    def list_signing_keys(self, as_id: str) -> list[SigningKey]:
        self.calls += 1
        return [k for k in self.keys if k.as_id == as_id]


class Revocations:
    """In-memory revocation by ``(iss, jti)``, the question the gate asks (proxy/revocation.py)."""

    def __init__(self) -> None:
        self.revoked: set[tuple[str, str]] = set()

    def is_revoked(self, claims: Mapping[str, Any]) -> bool:
        return (claims.get("iss"), claims.get("jti")) in self.revoked

    def is_stale(self, now: float) -> bool:
        return False


def gate_config(upstream_url: str, **proxy: Any) -> ScopegateConfig:
    limits = {"maxTokenBytes": MAX_TOKEN_BYTES, "maxBodyBytes": MAX_BODY_BYTES, "readTimeout": READ_TIMEOUT}
    limits.update(proxy.pop("limits", {}))
    return ScopegateConfig.model_validate({
        "issuer": CORE,
        "upstream": {"url": upstream_url, "timeout": UPSTREAM_TIMEOUT, "connectTimeout": UPSTREAM_TIMEOUT},
        "proxy": {"leeway": 60, "limits": limits, **proxy},
        "routes": [
            {"name": "orders-read", "path": "/orders", "methods": ["GET", "HEAD"],
             "scopes": {"anyOf": ["orders:read", "orders:write"]}},
            {"name": "orders-write", "path": "/orders", "methods": ["POST", "PUT", "PATCH", "DELETE"],
             "scopes": {"allOf": ["orders:write"]}},
            {"name": "admin", "path": "/admin", "scopes": {"allOf": ["admin:all"]}},
            {"name": "public", "path": "/public", "public": True},
            {"name": "health", "path": "/health", "public": True},
        ],
        "authorizationServers": [
            {"id": "orders", "name": "Orders", "audiences": [ORDERS_AUD],
             "scopes": [{"name": "orders:read"}, {"name": "orders:write"}]},
            {"id": "admin", "name": "Admin", "audiences": [ADMIN_AUD], "scopes": [{"name": "admin:all"}],
             "matchHost": True},
        ],
    })


@dataclass
class Gate:
    app: ProxyApp
    upstream: RecordingUpstream
    revocations: Revocations
    table: KeyTable
    log: io.StringIO
    client: httpx.AsyncClient

    async def get(self, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return await self.client.request(kwargs.pop("method", "GET"), path, headers=headers, **kwargs)

    async def asgi_with_host(self, method: str, raw_path: bytes, host: bytes,
                             headers: list[tuple[bytes, bytes]]) -> tuple[int, dict[str, str], bytes]:
        return await self.asgi(method, raw_path, headers, host=host)

    async def asgi(self, method: str, raw_path: bytes, headers: list[tuple[bytes, bytes]],
                   query: bytes = b"", body: bytes = b"", host: bytes = HOST.encode()) -> tuple[int, dict[str, str], bytes]:
        """One request with a raw path the ASGI server would hand over (no client-side normalization).

        Header names are lower-cased as the ASGI spec requires of servers; case and ``_`` spellings as
        sent on the wire are tested over a real socket (``test_wire.py``)."""
        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": raw_path.decode("latin-1"), "raw_path": raw_path,
            "query_string": query, "root_path": "", "headers": [(b"host", host), *((k.lower(), v) for k, v in headers)],
            "client": ("203.0.113.9", 40000), "server": ("127.0.0.1", 8080),
        }
        sent = False
        status, out_headers, chunks = 0, {}, []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            nonlocal status, out_headers
            if message["type"] == "http.response.start":
                status = message["status"]
                out_headers = {k.decode().lower(): v.decode("latin-1") for k, v in message.get("headers", [])}
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await asyncio.wait_for(self.app(scope, receive, send), 10)
        return status, out_headers, b"".join(chunks)


def build_proxy_app(cfg: ScopegateConfig, keys: IssuerKeys, revocations: Revocations, log: io.StringIO) -> ProxyApp:
    return ProxyApp(cfg, keys, revocations, ProxyMetrics(CollectorRegistry()), log_stream=log, now=lambda: NOW)


@pytest.fixture
async def gate(upstream: RecordingUpstream) -> AsyncIterator[Gate]:
    table = KeyTable([signing_key("orders-1", "orders"), signing_key("admin-1", "admin"),
                      signing_key("weak-1024", "orders", bits=1024)])
    keys = IssuerKeys(LocalKeys(table, {ORDERS_ISS: "orders", ADMIN_ISS: "admin"}, now=time.monotonic), {})  # type: ignore[arg-type]
    await keys.start()
    revocations = Revocations()
    log = io.StringIO()
    app = build_proxy_app(gate_config(upstream.url), keys, revocations, log)
    await app.startup()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("203.0.113.9", 40000)),
                               base_url=f"http://{HOST}")
    try:
        yield Gate(app, upstream, revocations, table, log, client)
    finally:
        await client.aclose()
        await app.shutdown()
        await keys.aclose()


# ---------------------------------------------------------------------------------------------- raw sockets


@dataclass
class RawResponse:
    status: int
    head: bytes
    body: bytes
    closed: bool
    """The server closed the connection after this response."""


class RawClient:
    """Speaks raw bytes to the gate behind a real uvicorn: for what ASGITransport cannot send."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def exchange(self, data: bytes, *, wait: float = 3.0) -> RawResponse:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(data)
            await writer.drain()
            return await read_response(reader, wait)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def read_response(reader: asyncio.StreamReader, wait: float) -> RawResponse:
    """Read one response; ``closed`` says whether the connection then ended (EOF within ``wait``)."""
    try:
        async with asyncio.timeout(wait):
            head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return RawResponse(0, b"", b"", True)  # closed without an answer
    except TimeoutError:
        return RawResponse(-1, b"", b"", False)  # no answer, connection still open
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b""
    try:
        async with asyncio.timeout(wait):
            rest = await reader.read(1)
        closed = rest == b""
    except (TimeoutError, ConnectionError):
        closed = False
    return RawResponse(status, head, body, closed)


@pytest.fixture
async def wire(gate: Gate) -> AsyncIterator[RawClient]:
    """The same gate app behind uvicorn with the proxy listener's protocol (httptools plus the fragment
    check and the head read deadline), as ``scopegate run`` serves it, on a free port."""
    import uvicorn

    from proxy.protocol import guarded_protocol

    port = free_port()
    config = uvicorn.Config(gate.app, host="127.0.0.1", port=port, lifespan="off",
                            http=guarded_protocol(READ_TIMEOUT), loop="none",
                            log_level="critical", access_log=False, server_header=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.01)
    try:
        yield RawClient(port)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def request_bytes(method: str = "GET", target: str = "/orders", headers: Iterable[tuple[str, str]] = (),
                  body: bytes = b"", host: str = HOST) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def valid_token(**overrides: Any) -> str:
    return forge(claims(**overrides))


AnyCallable = Callable[..., Any]
