"""The upstream HTTP/1.1 client: a keep-alive pool of asyncio protocols that parse responses with httptools (issue 11
item 4; ``bench/upstream_client_study.py`` measured it against aiohttp on the hop alone).

What it guarantees, each a rule of the forwarder (security.md §3.1, issue 8 items 1 and 13, issue 12 item 4):

- **framing written by the proxy**: the request line, ``Host`` and the headers the caller built (the guard checked
  their values: no CR, LF or NUL), then either the caller's ``Content-Length`` with exactly that many bytes (a body
  that runs short or long aborts the connection), or ``Transfer-Encoding: chunked`` for a body of unknown length;
- **responses parsed strictly** by llhttp (no leniency flags): both Content-Length and Transfer-Encoding, a bad
  chunk, bytes after a complete response before the next request, a head over ``MAX_HEAD`` bytes or a field over
  ``MAX_FIELD`` bytes, a 101: each fails the exchange (502) and closes the connection;
- **pool hygiene**: a connection goes back to the pool only after its response was read exactly to its end, the
  upstream kept it alive, and the request was not HEAD (llhttp cannot be told a HEAD response has no body); an idle
  connection that receives a byte, is closed by the peer, or idled past ``keepalive_timeout`` is dropped; a failed
  one is aborted, never pooled;
- **time**: the head must arrive by a deadline the caller gives; each wait for body bytes is bounded by
  ``read_timeout``;
- **retries**: one, on a new connection, for a safe method without a body whose reused connection closed before a
  byte of the answer (RFC 9112 §9.3.1).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
import time
from collections.abc import AsyncIterable
from typing import Any
from urllib.parse import urlsplit

import httptools

MAX_HEAD = 65536
"""Bytes of a response head (status line and fields) at most."""
MAX_FIELD = 8190
"""Bytes of one response field (name and value) at most, as aiohttp's default."""
HIGH_WATER = 256 * 1024
"""Unread response body past which the socket stops being read."""
RETRIED_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class UpstreamError(Exception):
    """The upstream refused, closed, reset or misframed: the forwarder's 502."""


class _Conn(asyncio.Protocol):
    """One upstream connection and the state of the exchange on it."""

    def __init__(self, client: UpstreamClient) -> None:
        self.client = client
        self.transport: Any = None
        self.parser: Any = None
        """Made when the connection is, dropped when it is lost: it holds this protocol's bound methods, a cycle."""
        self.used = 0
        self.idle_since = 0.0
        self.idle = False
        self.paused = False
        self._new_exchange()

    def _new_exchange(self) -> None:
        self.received = False
        self.head_bytes = 0
        self.field_bytes = 0
        self.headers_done = False
        self.until_close = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None

    # ----------------------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.parser = httptools.HttpResponseParser(self)

    def data_received(self, data: bytes) -> None:
        if self.idle or self.complete or self.error is not None or self.parser is None:
            # Bytes nobody asked for: the connection cannot be trusted to frame the next response.
            self._fail(UpstreamError("unsolicited bytes from the upstream"))
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamError("upgrade on a plain request"))
            return
        except httptools.HttpParserError:
            self._fail(UpstreamError("malformed response"))
            return
        if not self.headers_done:
            # Counted after the parser has seen the bytes: a read may hold a whole small head and much body. A head
            # still incomplete past the limit (one field that never ends) stops here; complete fields are counted
            # as they arrive (``on_header``).
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD + 4:
                self._fail(UpstreamError("response head too large"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.parser = None
        if self.idle:
            self.client._drop(self)
        elif self.until_close and exc is None and self.error is None:
            self.complete = True  # a body delimited by the end of the connection (RFC 9112 §6.3 item 8)
            self._wake()
        else:
            self._fail(UpstreamError("connection closed"), abort=False)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake()

    # ----------------------------------------------------------------------- httptools callbacks

    def on_message_begin(self) -> None:
        if self.complete:
            # A second response in the bytes of the first: never read into this exchange's body (response splitting).
            raise UpstreamError("bytes after the response")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.headers_done:
            return  # a trailer field: nothing forwards trailers
        size = len(name) + len(value)
        self.field_bytes += size + 4
        if size > MAX_FIELD or self.field_bytes > MAX_HEAD:
            raise UpstreamError("response field or head too large")
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            if status == 101:
                raise UpstreamError("101 on a plain request")
            self.headers = []  # an interim response (103); the final one follows
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        self.headers_done = True
        if status not in (204, 304):
            names = {name.lower() for name, _ in self.headers}
            self.until_close = b"content-length" not in names and b"transfer-encoding" not in names
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.headers_done:
            self.complete = True
            self._wake()

    # ----------------------------------------------------------------------- the exchange

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException, abort: bool = True) -> None:
        if self.error is None:
            self.error = exc
        self._wake()
        if abort and self.transport is not None:
            self.transport.abort()

    async def wait(self, idle: float | None = None) -> None:
        """Until a callback wakes the exchange (the caller looks at what changed, ``error`` included); TimeoutError
        past ``idle`` seconds."""
        loop = asyncio.get_running_loop()
        self.waiter = waiter = loop.create_future()
        timer = None if idle is None else loop.call_later(idle, self._timed_out, waiter)
        try:
            await waiter
        finally:
            self.waiter = None
            if timer is not None:
                timer.cancel()

    @staticmethod
    def _timed_out(waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(TimeoutError())


class UpstreamResponse:
    """The response head, and its body read chunk by chunk (``readany`` / ``at_eof``, as aiohttp's stream)."""

    __slots__ = ("_client", "_conn", "_done", "headers", "status")

    def __init__(self, client: UpstreamClient, conn: _Conn, head_only: bool) -> None:
        self._client = client
        self._conn: _Conn | None = conn
        self.status = conn.status
        self.headers = conn.headers
        self._done = head_only

    async def readany(self) -> bytes:
        """The next chunk of the body, b"" at its end."""
        conn = self._conn
        if conn is None or self._done:
            return b""
        while True:
            if conn.chunks:
                chunk = conn.chunks.popleft()
                conn.buffered -= len(chunk)
                if conn.buffered <= HIGH_WATER // 4 and conn.transport is not None:
                    conn.transport.resume_reading()
                if conn.complete and not conn.chunks:
                    self._done = True
                return chunk
            if conn.complete:
                self._done = True
                return b""
            if conn.error is not None:
                raise conn.error
            await conn.wait(self._client.read_timeout)

    def at_eof(self) -> bool:
        return self._done

    def release(self) -> None:
        """Back to the pool when read exactly to its end (never for HEAD), else closed."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._client._release(conn, reusable=self._done and conn.complete)


class UpstreamClient:
    """A keep-alive pool of connections to one upstream (``http://`` or ``https://``)."""

    def __init__(self, url: str, *, max_connections: int, keepalive_timeout: float, connect_timeout: float,
                 read_timeout: float) -> None:
        parts = urlsplit(url)
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.tls else 80)
        self.prefix = parts.path.rstrip("/")
        default = parts.port is None or parts.port == (443 if self.tls else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = (host if default else f"{host}:{self.port}").encode("latin-1")
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if self.tls else None
        self.limit = max_connections
        self.keepalive_timeout = keepalive_timeout
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._idle: list[_Conn] = []
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False

    # ----------------------------------------------------------------------- the pool

    def _drop(self, conn: _Conn) -> None:
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)
            self._open -= 1
            self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _acquire(self, fresh: bool) -> _Conn:
        loop = asyncio.get_running_loop()
        while True:
            if not fresh:
                now = time.monotonic()
                while self._idle:
                    conn = self._idle.pop()  # the most recently used: the least likely to have been closed
                    if (conn.transport is not None and not conn.transport.is_closing()
                            and now - conn.idle_since <= self.keepalive_timeout):
                        conn.idle = False
                        conn._new_exchange()
                        return conn
                    if conn.transport is not None:
                        conn.transport.abort()
                    self._open -= 1
            if self._open < self.limit:
                self._open += 1
                try:
                    async with asyncio.timeout(self.connect_timeout):
                        _, conn = await loop.create_connection(
                            lambda: _Conn(self), self.host, self.port, ssl=self.ssl,
                            server_hostname=self.host if self.tls else None)
                except OSError:
                    self._open -= 1
                    self._wake()
                    raise UpstreamError("cannot connect to the upstream") from None
                except BaseException:
                    self._open -= 1
                    self._wake()
                    raise
                return conn
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                waiter.cancel()
                self._wake()
                raise

    def _release(self, conn: _Conn, reusable: bool) -> None:
        transport = conn.transport
        if (reusable and not self._closed and conn.keep_alive and conn.error is None and transport is not None
                and not transport.is_closing() and not conn.chunks):
            conn.idle = True
            conn.idle_since = time.monotonic()
            conn.error = None
            self._idle.append(conn)
        else:
            conn.error = None  # the exception holds this exchange's frames: a cycle, kept
            if transport is not None:
                transport.abort()
            self._open -= 1
        self._wake()

    async def close(self) -> None:
        """Close the idle connections; those in use close when their exchange ends."""
        self._closed = True
        for conn in self._idle:
            if conn.transport is not None:
                conn.transport.close()
        self._idle = []

    # ----------------------------------------------------------------------- a request

    async def request(self, method: str, target: str, headers: list[tuple[str, str]],
                      body: AsyncIterable[bytes] | None, length: int | None, deadline: float) -> UpstreamResponse:
        """Send the request; the response once its head has arrived, by ``deadline`` (loop time)."""
        # UTF-8, as aiohttp wrote the head: claim values are sent as UTF-8 (README "Claims as headers").
        lines = [f"{method} {self.prefix}{target} HTTP/1.1\r\nHost: ".encode(), self.host_header, b"\r\n"]
        lines.extend(f"{name}: {value}\r\n".encode() for name, value in headers)
        if body is not None and length is None:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        lines.append(b"\r\n")
        head = b"".join(lines)
        fresh = False
        async with asyncio.timeout_at(deadline):
            while True:
                conn = await self._acquire(fresh)
                reused = conn.used > 0
                conn.used += 1
                try:
                    await self._send(conn, head, body, length)
                    while not conn.headers_done:
                        if conn.error is not None:
                            raise conn.error
                        await conn.wait()
                    return UpstreamResponse(self, conn, head_only=method == "HEAD")
                except UpstreamError:
                    received = conn.received
                    self._release(conn, reusable=False)
                    if fresh or not reused or received or body is not None or method not in RETRIED_METHODS:
                        raise
                    fresh = True
                except BaseException:
                    self._release(conn, reusable=False)
                    raise

    @staticmethod
    async def _send(conn: _Conn, head: bytes, body: AsyncIterable[bytes] | None, length: int | None) -> None:
        transport = conn.transport
        if transport is None:
            raise UpstreamError("connection closed")
        transport.write(head)
        if body is None:
            return
        sent = 0
        async for chunk in body:
            sent += len(chunk)
            if length is not None:
                if sent > length:
                    raise UpstreamError("the body is longer than its Content-Length")
                transport.write(chunk)
            elif chunk:
                transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            while conn.paused and conn.error is None:
                await conn.wait()
            if conn.error is not None:
                raise conn.error
        if length is not None and sent != length:
            raise UpstreamError("the body is shorter than its Content-Length")
        if length is None:
            transport.write(b"0\r\n\r\n")
