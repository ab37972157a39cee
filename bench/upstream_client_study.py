"""The upstream hop alone: aiohttp (as ``proxy/forward.py`` configures it) against a purpose-built keep-alive HTTP/1.1
client on asyncio protocols with httptools' C parser (issue 11 item 4). Not part of the test suite.

Both clients send the same requests to the same upstream (nginx ``return 200`` with a 27-byte JSON body if nginx is
installed, else a small aiohttp server, in its own process) from ``--concurrency`` tasks on uvloop, as ``scopegate
run`` does, and stream each response body to a sink chunk by chunk, as the forwarder relays it. The figure is the
CPU time of this process per request (user + system, ``time.process_time``), in alternating rounds; the upstream's
CPU is not counted. Run from the repository root:

    python3 bench/upstream_client_study.py                      # 7 rounds x 20,000 requests per client
    python3 bench/upstream_client_study.py --rounds 3 --requests 5000 --concurrency 32

The prototype (``ProtoClient``) is held to what the forwarder needs, so that the comparison is not with a toy:

- keep-alive pool with a connection limit, LIFO reuse, an idle connection that receives a byte or is closed by
  the peer is dropped; a connection goes back to the pool only when its response was read exactly to its end
  (Content-Length or the last chunk), the upstream did not say ``Connection: close``, no byte beyond the message
  arrived, and the request was not ``HEAD`` (httptools cannot be told that a HEAD response has no body);
- request framing written by the client itself: the caller's ``Content-Length`` or ``Transfer-Encoding: chunked``
  for a streamed body of unknown length; header values were checked by the guard (no CR, LF, NUL);
- response heads bounded (64 KiB; httptools has no limit of its own and buffers a header with ``bytes +=``);
- 1xx interim responses skipped, 101 refused;
- flow control both ways (``pause_reading`` past 256 KiB of unread body, ``drain`` on ``pause_writing``);
- a deadline for the head, and the forwarder's retry rule (a safe method without body, once, on a new connection,
  when a reused connection closed before a byte of the answer).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httptools
import uvloop

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BODY = b'{"ok":true,"items":[1,2,3]}'
MAX_HEAD = 65536
HIGH_WATER = 256 * 1024
RETRIED = frozenset({"GET", "HEAD", "OPTIONS"})


class UpstreamError(Exception):
    """The upstream refused, reset or misframed: the forwarder's 502."""


# ---------------------------------------------------------------------------------------------- the prototype


class _Conn(asyncio.Protocol):
    """One upstream connection: httptools parses the responses, a future wakes the request waiting for a head, a
    deque and an event carry body chunks to it."""

    def __init__(self, pool: ProtoClient) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.idle = False
        self.used = 0
        self.received = False
        self.head_bytes = 0
        self.headers_done = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.error: BaseException | None = None
        self.head_waiter: asyncio.Future[None] | None = None
        self.body_waiter: asyncio.Future[None] | None = None
        self.drain_waiter: asyncio.Future[None] | None = None
        self.paused = False

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport is not an asyncio.Transport

    def data_received(self, data: bytes) -> None:
        if self.idle or self.complete:
            # Bytes nobody asked for: the connection cannot be trusted to frame the next response.
            self._fail(UpstreamError("unsolicited bytes"))
            return
        self.received = True
        if not self.headers_done:
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD:
                self._fail(UpstreamError("response head too large"))
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamError("upgrade"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"bad response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.idle:
            self.pool._drop(self)
        self._fail(UpstreamError("connection closed") if exc is None else UpstreamError(str(exc)), close=False)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            if status == 101:
                raise UpstreamError("101 on a plain request")
            self.headers = []  # an interim response; the final one follows on the same connection
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        self.headers_done = True
        if self.head_waiter is not None and not self.head_waiter.done():
            self.head_waiter.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
        self._wake_body()

    def on_message_complete(self) -> None:
        if not self.headers_done:
            return  # the end of a 1xx
        self.complete = True
        self._wake_body()

    # the request side
    def _wake_body(self) -> None:
        if self.body_waiter is not None and not self.body_waiter.done():
            self.body_waiter.set_result(None)

    def _fail(self, exc: BaseException, close: bool = True) -> None:
        if self.error is None:
            self.error = exc
        for waiter in (self.head_waiter, self.body_waiter, self.drain_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)
        if close and self.transport is not None:
            self.transport.abort()

    def reset(self) -> None:
        self.idle = False
        self.received = False
        self.head_bytes = 0
        self.headers_done = False
        self.status = 0
        self.headers = []
        self.complete = False
        self.error = None
        self.head_waiter = None
        self.body_waiter = None


class ProtoResponse:
    def __init__(self, conn: _Conn, client: ProtoClient, head_only: bool) -> None:
        self.conn = conn
        self.client = client
        self.status = conn.status
        self.headers = conn.headers
        self.head_only = head_only
        self.done = head_only

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (``(chunk, last)`` semantics are left to the caller: an empty chunk ends it)."""
        conn = self.conn
        loop = asyncio.get_running_loop()
        while not self.done:
            if conn.chunks:
                chunk = conn.chunks.popleft()
                conn.buffered -= len(chunk)
                if conn.buffered <= HIGH_WATER // 4 and conn.transport is not None:
                    conn.transport.resume_reading()
                yield chunk
                continue
            if conn.complete:
                self.done = True
                return
            if conn.error is not None:
                raise conn.error
            conn.body_waiter = loop.create_future()
            await conn.body_waiter
            conn.body_waiter = None

    def release(self) -> None:
        self.client._release(self.conn, reusable=self.done and not self.head_only)


class ProtoClient:
    """A keep-alive pool of ``_Conn`` to one upstream."""

    def __init__(self, host: str, port: int, limit: int = 256, timeout: float = 30.0) -> None:
        self.host, self.port = host, port
        self.host_header = f"{host}:{port}".encode()
        self.limit = limit
        self.timeout = timeout
        self.idle: list[_Conn] = []
        self.open = 0
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def _drop(self, conn: _Conn) -> None:
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)
            self.open -= 1
            self._wake()

    def _wake(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _acquire(self, fresh: bool) -> _Conn:
        while True:
            if not fresh:
                while self.idle:
                    conn = self.idle.pop()
                    if conn.transport is not None and not conn.transport.is_closing():
                        conn.reset()
                        return conn
                    self.open -= 1
            if self.open < self.limit:
                self.open += 1
                try:
                    _, proto = await asyncio.get_running_loop().create_connection(
                        lambda: _Conn(self), self.host, self.port)
                except OSError as exc:
                    self.open -= 1
                    self._wake()
                    raise UpstreamError(f"connect: {exc}") from None
                return proto
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            await waiter

    def _release(self, conn: _Conn, reusable: bool) -> None:
        if (reusable and conn.keep_alive and conn.error is None and conn.transport is not None
                and not conn.transport.is_closing() and not conn.chunks):
            conn.idle = True
            conn.complete = False
            self.idle.append(conn)
        else:
            if conn.transport is not None:
                conn.transport.abort()
            self.open -= 1
        self._wake()

    async def request(self, method: str, target: str, headers: list[tuple[str, str]],
                      body: AsyncIterator[bytes] | None = None, length: int | None = None) -> ProtoResponse:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        lines = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1"), b"host: ", self.host_header, b"\r\n"]
        for name, value in headers:
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        if body is not None and length is None:
            lines.append(b"transfer-encoding: chunked\r\n")
        lines.append(b"\r\n")
        head = b"".join(lines)
        fresh = False
        async with asyncio.timeout_at(deadline):
            while True:
                conn = await self._acquire(fresh)
                reused = conn.used > 0
                conn.used += 1
                try:
                    return await self._exchange(conn, method, head, body, length)
                except UpstreamError:
                    self._release(conn, reusable=False)
                    if fresh or not reused or conn.received or body is not None or method not in RETRIED:
                        raise
                    fresh = True
                except BaseException:
                    self._release(conn, reusable=False)
                    raise

    async def _exchange(self, conn: _Conn, method: str, head: bytes, body: AsyncIterator[bytes] | None,
                        length: int | None) -> ProtoResponse:
        transport = conn.transport
        if transport is None:
            raise UpstreamError("connection closed")
        loop = asyncio.get_running_loop()
        conn.head_waiter = loop.create_future()
        transport.write(head)
        if body is not None:
            sent = 0
            async for chunk in body:
                sent += len(chunk)
                if length is not None and sent > length:
                    raise UpstreamError("body longer than its Content-Length")
                transport.write(chunk if length is not None else b"%x\r\n%b\r\n" % (len(chunk), chunk))
                if conn.paused:
                    conn.drain_waiter = loop.create_future()
                    await conn.drain_waiter
                    conn.drain_waiter = None
                if conn.error is not None:
                    raise conn.error
            if length is not None and sent != length:
                raise UpstreamError("body shorter than its Content-Length")
            if length is None:
                transport.write(b"0\r\n\r\n")
        if not conn.headers_done:
            if conn.error is not None:
                raise conn.error
            await conn.head_waiter
        conn.head_waiter = None
        return ProtoResponse(conn, self, head_only=method == "HEAD")

    async def close(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()
        self.idle = []


# ---------------------------------------------------------------------------------------------- aiohttp, as the forwarder


async def aiohttp_session(limit: int) -> aiohttp.ClientSession:
    """aiohttp as ``proxy/forward.py`` configured it for HTTP before adopting ``proxy/upstream.py`` (and still does
    for WebSocket upgrades)."""
    from proxy.forward import _UpstreamRequest

    connector = aiohttp.TCPConnector(limit=limit, keepalive_timeout=60, ttl_dns_cache=60)
    session = aiohttp.ClientSession(connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
                                    request_class=_UpstreamRequest,
                                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=2, sock_read=30))
    session._retry_connection = False
    return session


# ---------------------------------------------------------------------------------------------- the run


HEADERS = [("accept", "application/json"), ("authorization", "Bearer " + "x" * 600), ("X-Forwarded-For", "127.0.0.1"),
           ("X-Forwarded-Proto", "http"), ("X-Forwarded-Host", "api.example.com"), ("X-Scopegate-Subject", "alice"),
           ("X-Scopegate-Client-Id", "bench"), ("X-Scopegate-Scopes", "items:read"),
           ("X-Scopegate-Auth-Server", "bench")]


async def _sink(message: dict[str, Any]) -> None:
    return None


async def run_aiohttp(session: aiohttp.ClientSession, base: str, requests: int, concurrency: int) -> int:
    from yarl import URL

    async def worker(n: int) -> int:
        ok = 0
        for i in range(n):
            async with await session.request("GET", URL(f"{base}/items/{i}", encoded=True), headers=HEADERS,
                                             allow_redirects=False) as response:
                await _sink({"status": response.status, "headers": list(response.raw_headers)})
                content = response.content
                while True:
                    chunk = await content.readany()
                    if not chunk:
                        break
                    await _sink({"body": chunk, "more_body": not content.at_eof()})
                    if content.at_eof():
                        break
                ok += response.status == 200
        return ok

    return sum(await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency))))


async def run_proto(client: ProtoClient, requests: int, concurrency: int) -> int:
    async def worker(n: int) -> int:
        ok = 0
        for i in range(n):
            response = await client.request("GET", f"/items/{i}", HEADERS)
            try:
                await _sink({"status": response.status, "headers": response.headers})
                async for chunk in response.chunks():
                    await _sink({"body": chunk, "more_body": True})
                ok += response.status == 200
            finally:
                response.release()
        return ok

    return sum(await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency))))


async def measure(port: int, rounds: int, requests: int, concurrency: int) -> dict[str, list[float]]:
    base = f"http://127.0.0.1:{port}"
    session = await aiohttp_session(256)
    proto = ProtoClient("127.0.0.1", port)
    runners: dict[str, Callable[[], Awaitable[int]]] = {
        "aiohttp": lambda: run_aiohttp(session, base, requests, concurrency),
        "prototype": lambda: run_proto(proto, requests, concurrency),
    }
    for run in runners.values():  # warm: pools, caches
        await run()
    results: dict[str, list[float]] = {name: [] for name in runners}
    try:
        for r in range(rounds):
            for name in (list(runners) if r % 2 == 0 else list(runners)[::-1]):
                cpu = time.process_time()
                wall = time.perf_counter()
                ok = await runners[name]()
                cpu = time.process_time() - cpu
                wall = time.perf_counter() - wall
                total = requests // concurrency * concurrency
                assert ok == total, f"{name}: {ok} of {total} answered 200"
                results[name].append(cpu / total * 1e6)
                print(f"round {r + 1} {name:9s} {cpu / total * 1e6:7.1f} µs CPU/request  {total / wall:8.0f} req/s",
                      flush=True)
    finally:
        await session.close()
        await proto.close()
    return results


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def upstream(workdir: Path) -> Any:
    port = free_port()
    if shutil.which("nginx"):
        conf = workdir / "nginx.conf"
        conf.write_text(f"""worker_processes 1; daemon off; pid {workdir}/nginx.pid; error_log {workdir}/error.log warn;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port}; location / {{ default_type application/json; return 200 '{BODY.decode()}'; }} }} }}
""")
        proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(workdir)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        kind = "nginx, 1 worker"
    else:
        script = workdir / "upstream.py"
        script.write_text(f"""from aiohttp import web
async def ok(request): return web.Response(body={BODY!r}, content_type="application/json")
app = web.Application(); app.router.add_route("*", "/{{tail:.*}}", ok)
web.run_app(app, host="127.0.0.1", port={port}, print=None, access_log=None)
""")
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kind = "aiohttp.web"
    try:
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.05)
        yield port, kind
    finally:
        proc.send_signal(signal.SIGQUIT if kind.startswith("nginx") else signal.SIGTERM)
        proc.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, upstream(Path(tmp)) as (port, kind):
        print(f"upstream: {kind}; {args.rounds} rounds x {args.requests} requests per client, "
              f"{args.concurrency} concurrent, uvloop")
        results = uvloop.run(measure(port, args.rounds, args.requests, args.concurrency))
    a, p = statistics.median(results["aiohttp"]), statistics.median(results["prototype"])
    for name, values in results.items():
        print(f"{name:9s} median {statistics.median(values):6.1f} µs CPU/request (min {min(values):.1f}, "
              f"max {max(values):.1f})")
    print(f"aiohttp / prototype = {a / p:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
