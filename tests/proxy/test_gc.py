"""The request path creates no reference cycles (issue 11 item 1, DESIGN §8).

The process freezes its start-up heap (``gc.freeze()``) and raises the young-generation threshold, which is
only safe if requests leave no cyclic garbage behind: every cycle outlives its request until a collection
walks it, and each collection is a pause in the event loop. These tests drive the ASGI app directly (no
HTTP client library in the process, whose own cycles would hide ours) against an upstream in a subprocess,
with the collector off, and count what ``gc.collect()`` finds unreachable (``DEBUG_SAVEALL`` keeps it to
name in the failure message).
"""

from __future__ import annotations

import gc
import io
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator, MutableMapping, Sequence
from typing import Any

import pytest
import uvloop
from prometheus_client import CollectorRegistry

from proxy.app import ProxyApp
from proxy.metrics import ProxyMetrics
from tests.clock import Clock
from tests.proxy.gatekit import NOW, FakeRevocation, claims, default_keys, gate_config, mint

UPSTREAM = r'''
import asyncio
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}"
class Upstream(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""
    def data_received(self, data):
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            # A path ending in /slow never gets an answer (the gate's timeout), nor a POST (its body fails first).
            if b"/slow " not in head and not head.startswith(b"POST"):
                self.transport.write(OK)
async def main():
    server = await asyncio.get_running_loop().create_server(Upstream, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
'''


@pytest.fixture(scope="module")
def upstream_port() -> Iterator[int]:
    proc = subprocess.Popen([sys.executable, "-c", UPSTREAM], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def scope(path: str, headers: list[tuple[bytes, bytes]] | None = None, method: str = "GET") -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"host", b"api.example.com"), *(headers or [])],
            "client": ("203.0.113.7", 5555), "server": ("127.0.0.1", 8080)}


async def call(app: ProxyApp, request: dict[str, Any], messages: Sequence[dict[str, Any]] | None = None) -> int:
    incoming = list(messages or [{"type": "http.request", "body": b"", "more_body": False}])
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await app(dict(request), receive, send)
    return int(sent[0]["status"]) if sent else 499


Requests = Sequence[tuple[dict[str, Any], Sequence[dict[str, Any]] | None, int]]


def run(url: str, requests: Requests, rounds: int, **upstream: Any) -> tuple[int, str]:
    """On uvloop, as ``scopegate run`` serves (asyncio's own selector transports hold a cycle each)."""

    async def main() -> tuple[int, str]:
        async for app in build(url, **upstream):
            return await cyclic_garbage(app, requests, rounds)
        raise AssertionError("unreachable")

    return uvloop.run(main())


async def build(url: str, **upstream: Any) -> AsyncIterator[ProxyApp]:
    cfg = gate_config(proxy={"limits": {"maxBodyBytes": 1024}},
                      upstream={"url": url, "connectTimeout": 1, "timeout": 2, **upstream})
    app = ProxyApp(cfg, default_keys(), FakeRevocation(), ProxyMetrics(CollectorRegistry()), log_stream=io.StringIO(),
                   now=Clock(NOW))
    await app.startup()
    try:
        yield app
    finally:
        await app.shutdown()


async def cyclic_garbage(app: ProxyApp, requests: Requests, rounds: int) -> tuple[int, str]:
    """Run ``rounds`` times through ``requests`` with the collector off; what a full collection then finds."""
    for request, messages, status in requests:  # warm: pools, caches, lazily built tables
        assert await call(app, request, messages) == status
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(rounds):
            for request, messages, _ in requests:
                await call(app, request, messages)
        found = gc.collect()
        kinds = Counter(type(o).__name__ for o in gc.garbage)
        frames = Counter(o.f_code.co_name for o in gc.garbage if type(o).__name__ == "frame")
        return found, f"{kinds.most_common(8)}; frames {frames.most_common(8)}"
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def test_gc_request_path_creates_no_cycles_over_10000_requests(upstream_port: int) -> None:
    """Public route, warm token cache, and the common denials: 10,000 requests, zero cyclic garbage."""
    bearer = [(b"authorization", b"Bearer " + mint(claims()).encode())]
    other = [(b"authorization", b"Bearer " + mint(claims(scp=["other"])).encode())]
    requests = [
        (scope("/orders/catalog"), None, 200),  # public, forwarded
        (scope("/orders/7", bearer), None, 200),  # token, verified-token cache hit, forwarded
        (scope("/orders/7", bearer), None, 200),
        (scope("/orders/7", bearer), None, 200),
        (scope("/orders/7"), None, 401),  # missing_token
        (scope("/orders/7", other), None, 403),  # insufficient_scope
        (scope("/nothing"), None, 403),  # no_resource
        (scope("/orders/7", [(b"authorization", b"Bearer abc.def.ghi")]), None, 401),  # malformed token
        (scope("/orders/7", bearer + bearer), None, 400),  # two credentials
        (scope("/orders/%2e%2e/x"), None, 403),  # dot segments normalized out of the resource
    ]
    found, detail = run(f"http://127.0.0.1:{upstream_port}", requests, 1000)
    assert found == 0, f"{found} objects in cycles after 10,000 requests: {detail}"


def test_gc_upstream_refused_creates_no_cycles() -> None:
    """502: aiohttp keeps the failed connect's exception in a local of the frame it raised from (``last_exc``),
    a cycle that held the request's own frames and decision until a collection."""
    found, detail = run("http://127.0.0.1:1", [(scope("/orders/catalog"), None, 502)], 200)
    assert found == 0, f"{found} objects in cycles after 200 refused upstream connections: {detail}"


def test_gc_upstream_timeout_creates_no_cycles(upstream_port: int) -> None:
    found, detail = run(f"http://127.0.0.1:{upstream_port}", [(scope("/orders/catalog/slow"), None, 504)], 30,
                        timeout=0.02)
    assert found == 0, f"{found} objects in cycles after 30 upstream timeouts: {detail}"


def test_gc_body_errors_create_no_cycles(upstream_port: int) -> None:
    """A body over the limit (413) and a client gone while its body is read (499), both while forwarding."""
    post = scope("/orders/catalog", [(b"transfer-encoding", b"chunked")], method="POST")
    big: list[dict[str, Any]] = [{"type": "http.request", "body": b"x" * 600, "more_body": True},
           {"type": "http.request", "body": b"x" * 600, "more_body": False}]
    gone: list[dict[str, Any]] = [{"type": "http.request", "body": b"x" * 10, "more_body": True}, {"type": "http.disconnect"}]
    found, detail = run(f"http://127.0.0.1:{upstream_port}", [(post, big, 413), (post, gone, 499)], 100)
    assert found == 0, f"{found} objects in cycles after 200 body errors: {detail}"

