"""WebSocket upgrades pass through after the same gate (issue 5 step 10), over real sockets: the gate behind
uvicorn with the proxy listener's protocol, an aiohttp upstream that echoes frames and records handshakes."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
import uvicorn
from aiohttp import WSMsgType, web
from prometheus_client import CollectorRegistry

from proxy.app import ProxyApp
from proxy.metrics import ProxyMetrics
from proxy.protocol import guarded_protocol
from tests.clock import Clock
from tests.e2e.conftest import free_port
from tests.proxy.gatekit import NOW, FakeRevocation, claims, default_keys, gate_config, mint


@dataclass
class EchoUpstream:
    url: str = ""
    handshakes: list[dict[str, list[str]]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    closes: list[int | None] = field(default_factory=list)
    """The close code of each finished session, as the upstream saw it."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        headers: dict[str, list[str]] = {}
        for key, value in request.headers.items():
            headers.setdefault(key.lower(), []).append(value)
        self.handshakes.append(headers)
        self.paths.append(request.raw_path)
        ws = web.WebSocketResponse(protocols=("v2.orders",))
        await ws.prepare(request)
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                if message.data == "bye":
                    await ws.close(code=4001, message=b"done")
                    break
                await ws.send_str("echo:" + message.data)
            elif message.type == WSMsgType.BINARY:
                await ws.send_bytes(message.data[::-1])
        self.closes.append(ws.close_code)
        return ws


@dataclass
class Served:
    url: str
    upstream: EchoUpstream
    revocation: FakeRevocation
    log: io.StringIO
    registry: CollectorRegistry
    clock: Clock


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    upstream = EchoUpstream()
    app = web.Application()
    app.router.add_get("/{tail:.*}", upstream.handle)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    upstream.url = f"http://127.0.0.1:{runner.addresses[0][1]}"

    revocation = FakeRevocation()
    registry = CollectorRegistry()
    log = io.StringIO()
    clock = Clock(NOW)
    gate = ProxyApp(gate_config(upstream.url), default_keys(), revocation, ProxyMetrics(registry), log_stream=log,
                    now=clock)
    await gate.startup()
    try:
        async with serve(gate) as url:
            yield Served(url, upstream, revocation, log, registry, clock)
    finally:
        await gate.shutdown()
        await runner.cleanup()


@contextlib.asynccontextmanager
async def serve(gate: ProxyApp) -> AsyncIterator[str]:
    """The gate behind uvicorn with the proxy listener's protocol, as ``scopegate run`` serves it."""
    port = free_port()
    config = uvicorn.Config(gate, host="127.0.0.1", port=port, lifespan="off", http=guarded_protocol(5.0),
                            loop="none", log_level="critical", access_log=False, server_header=False,
                            proxy_headers=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def test_upgrade_with_a_valid_token_relays_frames_both_ways(served: Served) -> None:
    """A handshake with a valid token is forwarded with the identity headers; text and binary frames are
    relayed both ways, the upstream's subprotocol is the one the client gets, and its close code is passed on."""
    headers = {"Authorization": f"Bearer {mint()}", "X-Scopegate-Subject": "mallory"}
    async with aiohttp.ClientSession() as session, \
            session.ws_connect(f"{served.url}/orders/feed?since=1", protocols=("v2.orders",), headers=headers) as ws:
        assert ws.protocol == "v2.orders"
        await ws.send_str("hello")
        assert (await ws.receive(timeout=5)).data == "echo:hello"
        await ws.send_bytes(b"\x01\x02\x03")
        assert (await ws.receive(timeout=5)).data == b"\x03\x02\x01"
        await ws.send_str("bye")
        closing = await ws.receive(timeout=5)
        assert closing.type == WSMsgType.CLOSE
        assert ws.close_code == 4001
    [handshake] = served.upstream.handshakes
    assert served.upstream.paths == ["/orders/feed?since=1"]
    assert handshake["x-scopegate-subject"] == ["alice@example.com"]
    assert handshake["x-scopegate-client-id"] == ["reporting"]
    assert handshake["x-scopegate-scopes"] == ["orders:read"]
    assert handshake["x-forwarded-proto"] == ["http"]
    assert handshake["upgrade"] == ["websocket"]


async def test_client_close_reaches_the_upstream_and_is_logged(served: Served) -> None:
    """A client that closes ends the upstream connection too; the decision log records the upgrade as allowed."""
    async with aiohttp.ClientSession() as session, \
            session.ws_connect(f"{served.url}/orders/feed", headers={"Authorization": f"Bearer {mint()}"}) as ws:
        await ws.send_str("one")
        assert (await ws.receive(timeout=5)).data == "echo:one"
        await ws.close(code=1000)
    for _ in range(200):
        if served.log.getvalue():
            break
        await asyncio.sleep(0.01)
    line = served.log.getvalue().splitlines()[-1]
    assert '"decision":"allow"' in line and '"status":101' in line and '"route":"orders-read"' in line


@pytest.mark.parametrize(("token", "status", "challenge"), [
    (None, 401, 'Bearer realm="orders"'),
    (mint(claims(exp=1)), 401, 'error="invalid_token"'),
    (mint(claims(scp=["orders:other"])), 403, 'error="insufficient_scope"'),
])
async def test_denied_handshake_never_reaches_the_upstream(served: Served, token: str | None, status: int,
                                                           challenge: str) -> None:
    """Without a valid token with the route's scope the handshake is answered with the gate's HTTP status and
    challenge, and the upstream never sees it."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"{served.url}/orders/feed", headers=headers)
    assert refused.value.status == status
    assert refused.value.headers is not None
    assert challenge in refused.value.headers.get("WWW-Authenticate", "")
    assert served.upstream.handshakes == []


async def test_revoked_token_and_unrouted_path_are_refused(served: Served) -> None:
    """Revocation and routing apply to handshakes as to any request: a revoked token is 401, a path in a
    resource with no route for GET is 403."""
    served.revocation.revoked_jtis.add(str(claims()["jti"]))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as revoked:
            await session.ws_connect(f"{served.url}/orders/feed", headers={"Authorization": f"Bearer {mint()}"})
        assert revoked.value.status == 401
        with pytest.raises(aiohttp.WSServerHandshakeError) as elsewhere:
            await session.ws_connect(f"{served.url}/nowhere", headers={"Authorization": f"Bearer {mint()}"})
        assert elsewhere.value.status == 403
    assert served.upstream.handshakes == []


async def test_upstream_down_is_502() -> None:
    """An upstream that cannot be reached answers the handshake with 502 (never a 101 followed by a close)."""
    cfg = gate_config(f"http://127.0.0.1:{free_port()}")
    gate = ProxyApp(cfg, default_keys(), FakeRevocation(), ProxyMetrics(CollectorRegistry()), log_stream=None,
                    now=Clock(NOW))
    await gate.startup()
    try:
        async with serve(gate) as url, aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(f"{url}/orders/feed", headers={"Authorization": f"Bearer {mint()}"})
        assert refused.value.status == 502
    finally:
        await gate.shutdown()


async def open_session(session: aiohttp.ClientSession, served: Served, token: str) -> aiohttp.ClientWebSocketResponse:
    ws = await session.ws_connect(f"{served.url}/orders/feed", headers={"Authorization": f"Bearer {token}"})
    await ws.send_str("one")
    assert (await ws.receive(timeout=5)).data == "echo:one"
    return ws


async def closed_by_the_proxy(ws: aiohttp.ClientWebSocketResponse, served: Served) -> tuple[int | None, str]:
    """The client's view of the close (no frame in between), once the upstream saw its side closed too."""
    message = await ws.receive(timeout=3)
    assert message.type == WSMsgType.CLOSE, message
    for _ in range(300):
        if served.upstream.closes:
            break
        await asyncio.sleep(0.01)
    return ws.close_code, str(message.extra or "")


async def test_websocket_revocation_closes_an_open_session(served: Served) -> None:
    """A token revoked while its session is open: the session is closed with 1008 on both sides within the
    revocation poll interval (here 0.2 s), instead of relaying until someone hangs up."""
    async with aiohttp.ClientSession() as session:
        ws = await open_session(session, served, mint())
        served.revocation.revoked_jtis.add(str(claims()["jti"]))
        code, reason = await closed_by_the_proxy(ws, served)
    assert code == 1008 and reason == "token revoked"
    assert served.upstream.closes == [1008]


async def test_websocket_revocation_expiry_closes_the_session_at_exp(served: Served) -> None:
    """A session ends when its token's ``exp`` passes (1008 'token expired'), not when the client leaves."""
    async with aiohttp.ClientSession() as session:
        ws = await open_session(session, served, mint(claims(exp=int(NOW) + 60)))
        await ws.send_str("two")
        assert (await ws.receive(timeout=5)).data == "echo:two"
        served.clock.advance(61)
        code, reason = await closed_by_the_proxy(ws, served)
    assert code == 1008 and reason == "token expired"
    assert served.upstream.closes == [1008]


async def test_websocket_revocation_stale_state_closes_with_try_again_later(served: Served) -> None:
    """Under onStale: deny, a stale revocation state closes sessions with 1013, as new requests get 503."""
    async with aiohttp.ClientSession() as session:
        ws = await open_session(session, served, mint())
        served.revocation.stale = True
        code, _ = await closed_by_the_proxy(ws, served)
    assert code == 1013
    assert served.upstream.closes == [1013]


async def test_websocket_revocation_of_another_token_leaves_the_session_open(served: Served) -> None:
    """Only the revoked token's sessions end: another session keeps relaying across revocation checks."""
    async with aiohttp.ClientSession() as session:
        ws = await open_session(session, served, mint())
        served.revocation.revoked_jtis.add("AT.other")
        await asyncio.sleep(0.5)
        await ws.send_str("still")
        assert (await ws.receive(timeout=5)).data == "echo:still"
        await ws.close()
