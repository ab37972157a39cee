"""The HTTP/1.1 protocol of all three listeners: uvicorn's httptools protocol with the guards it lacks.

- A ``#`` in the request target is rejected with 400 (security.md §0.4, §3.4). httptools parses the
  fragment off before the ASGI scope is built, so the gate itself can never see it.
- A read deadline for the request head: headers that trickle in (slowloris, security.md §3.7) are cut
  off after ``limits.readTimeout``; uvicorn only times out idle keep-alive connections. The deadline is
  armed when the connection opens, so a connection that never sends a byte is closed as well.
- Head and target sizes are enforced *while* the head arrives (issue 8, item 6): httptools has no limit of
  its own and buffers a header value with repeated ``bytes +=``, so a 97 MiB header used to be read whole
  (quadratically) before the guard could count it. At most ``limits.maxTargetBytes`` of target (414) and
  ``maxTargetBytes + maxHeaderBytes`` of head (431) are ever fed to the parser; then the connection closes.
- A body deadline (core and ops; the proxy bounds its bodies itself, per request, in ``proxy/forward.py``):
  a body that trickles is cut off ``readTimeout`` after its head.
- A cap on open connections per listener: one over the cap is answered 503 and closed at once.
- Upgrades (issue 8, item 1): httptools treats a request with ``Connection: upgrade`` and an ``Upgrade``
  header, and any CONNECT, as the end of HTTP on the connection: it skips the declared body and stops
  parsing. Only a valid RFC 6455 §4.2.1 WebSocket handshake may upgrade; any other upgrade is answered 400
  and CONNECT 405, and the connection closes, so the bytes after such a head are never read as anything.
- Request lines (issue 8, item 16): HTTP/0.9 (no version, no headers, no framing) is 400; a major version
  other than 1 is 505.
- Chunked trailers (issue 8, item 13): llhttp reports trailer fields through the same callback as header
  fields, and uvicorn appends them to the request's ASGI headers, after the gate may have read them. They
  are dropped here; nothing forwards trailers.
"""

from __future__ import annotations

import asyncio
import binascii
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from proxy.routes import FORWARDED_METHODS

_HEAD_SLACK = 64
"""Bytes of request line and framing beyond the target and header limits (method, version, CRLFs)."""


class FragmentInTarget(Exception):
    """Raised inside a parser callback; httptools turns it into a parser error, answered with 400."""


class Refused(Exception):
    """Raised inside a parser callback to answer ``status`` and close (httptools re-raises it as context)."""

    def __init__(self, status: int, phrase: str) -> None:
        super().__init__(phrase)
        self.status = status
        self.phrase = phrase


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout: float = 30.0
    body_timeout: float | None = None
    """Seconds from the end of a head to the end of its body; None leaves bodies to the app."""
    max_target_bytes: int = 8192
    max_head_bytes: int = 8192 + 16384 + _HEAD_SLACK
    max_trailer_bytes: int = 16384 + _HEAD_SLACK
    """A chunk-size line plus a chunked body's trailer fields (issue 8, item 13: they are dropped, never kept)."""
    max_connections: int = 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._head_started: float | None = None
        """``loop.time()`` when the head being read began; None between heads."""
        self._head_bytes = 0
        """Bytes fed to the parser since the bounded section being read (a head, or a chunked body's trailers) began."""
        self._bounded: int | None = self.max_head_bytes
        """The byte limit of the section being read; None while a body streams (the app bounds bodies)."""
        self._body_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._refuse(503, "Service Unavailable", b"retry-after: 1\r\n")
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        # Feed a head (or trailers) no further than its budget: what is past it is never buffered, parsed or kept.
        while self._bounded is not None and not self.transport.is_closing():
            budget = self._bounded - self._head_bytes
            if budget <= 0:
                self._refuse(431, "Request Header Fields Too Large")
                return
            if len(data) <= budget:
                self._head_bytes += len(data)
                self._feed(data)
                return
            part, data = data[:budget], data[budget:]
            self._head_bytes += len(part)
            self._feed(part)
            if self.parser is None or self.transport.is_closing() or self.transport.get_protocol() is not self:
                return  # refused, or handed over to the WebSocket protocol
        if data and not self.transport.is_closing() and self.transport.get_protocol() is self:
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        """uvicorn's ``data_received``, with refusals raised in callbacks answered with their own status."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            refused = exc.__context__
            if isinstance(refused, Refused):
                self._refuse(refused.status, refused.phrase)
                return
            self.send_400_response("Invalid HTTP request received.")
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.max_target_bytes:
            raise Refused(414, "URI Too Long")
        if b"#" in url:
            raise FragmentInTarget

    def on_header(self, name: bytes, value: bytes) -> None:
        # After on_headers_complete uvicorn's cycle holds this message's scope: a field now is a chunked
        # trailer, which would land in the ASGI headers the gate has already checked (issue 8, item 13).
        if self.cycle is not None and self.cycle.scope is self.scope:
            return
        super().on_header(name, value)

    # A chunked body ends with a 0-size chunk and optional trailer fields, which httptools buffers like header
    # values (``bytes +=``) until each ends. llhttp reports every chunk's header before its data, so the bytes
    # after a chunk header and before its first data are read under the trailer budget, as a head is.

    def on_chunk_header(self) -> None:
        self._bounded = self.max_trailer_bytes
        self._head_bytes = 0

    def on_body(self, body: bytes) -> None:
        self._bounded = None
        super().on_body(body)

    def on_headers_complete(self) -> None:
        self._check_framing()
        self._head_started = None
        self._bounded = None
        super().on_headers_complete()
        if self.body_timeout is not None and self._body_deadline is None:
            self._body_deadline = self.loop.call_later(self.body_timeout, self._body_too_slow)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._bounded = self.max_head_bytes
        self._head_bytes = 0
        if self._body_deadline is not None:
            self._body_deadline.cancel()
            self._body_deadline = None

    def _check_framing(self) -> None:
        """Refuse, before any app sees it, a head whose following bytes would not be HTTP framing."""
        version = self.parser.get_http_version()
        if version not in ("1.1", "1.0"):
            if version.startswith("0."):
                raise Refused(400, "Bad Request")  # HTTP/0.9: no headers, no framing, no Host
            raise Refused(505, "HTTP Version Not Supported")
        if not self.parser.should_upgrade() or self._should_upgrade():
            return
        if self.parser.get_method() == b"CONNECT":
            self._refuse(405, "Method Not Allowed", b"allow: %s\r\n" % FORWARDED_METHODS.encode())
            raise Refused(405, "Method Not Allowed")
        raise Refused(400, "Bad Request")

    # A close of the connection must reach the request whose app is running. uvicorn tells only ``self.cycle``,
    # which, once a pipelined request's head has been parsed, is that later, queued request: the running app
    # then wrote to a closed transport (uvloop raises), after forwarding, and logged a 500 denial for a
    # request the upstream had run (found by tests/security/test_framing_property.py).

    _running: RequestResponseCycle | None = None

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def _disconnect_cycles(self) -> bool:
        """Mark the running and the current request disconnected; True when a response was under way."""
        under_way = False
        for cycle in (self._running, self.cycle):
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
                under_way = under_way or cycle.response_started
        return under_way

    def send_400_response(self, msg: str) -> None:
        running = self._running
        # A 400 written while an earlier pipelined request is still owed its answer would be read as that answer.
        owed_earlier = running is not None and running is not self.cycle and not running.response_complete
        if self._disconnect_cycles() or owed_earlier:  # nor ever a 400 in the middle of a response
            self.transport.close()
            return
        super().send_400_response(msg)

    def _should_upgrade(self) -> bool:
        """uvicorn hands a request to the WebSocket protocol when this holds: only a valid handshake."""
        return is_websocket_handshake(self.parser.get_method(), self.parser.get_http_version(), self.headers) and \
            super()._should_upgrade()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_started = None
        for timer in (self._head_deadline, self._body_deadline):
            if timer is not None:
                timer.cancel()
        self._head_deadline = self._body_deadline = None
        self._disconnect_cycles()
        super().connection_lost(exc)

    # One timer per connection, re-armed lazily (as aiohttp re-arms its read timeout): a head that completes
    # in time leaves the timer running, and when it fires it either finds no head being read (and stops),
    # or a later head (and waits for that head's own deadline). A timer per request costs a TimerHandle
    # and a cancel on every request of a keep-alive connection.

    def _arm(self) -> None:
        self._head_started = self.loop.time()
        if self._head_deadline is None:
            self._head_deadline = self.loop.call_at(self._head_started + self.header_timeout, self._check_head)

    def _check_head(self) -> None:
        self._head_deadline = None
        started = self._head_started
        if started is None:
            return
        deadline = started + self.header_timeout
        if self.loop.time() < deadline:
            self._head_deadline = self.loop.call_at(deadline, self._check_head)
            return
        self._head_too_slow()

    def _head_too_slow(self) -> None:
        self._head_started = None
        self._refuse(408, "Request Timeout")

    def _body_too_slow(self) -> None:
        self._body_deadline = None
        self._refuse(408, "Request Timeout")

    def _refuse(self, status: int, phrase: str, extra: bytes = b"") -> None:
        """Answer ``status`` (unless a response is already under way) and close the connection."""
        self._head_started = None
        self._bounded = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-length: 0\r\nconnection: close\r\n%s\r\n"
                                 % (status, phrase.encode("ascii"), extra))
        if cycle is not None and not cycle.response_complete:
            # The app's own answer must never follow on this socket, and a read it waits on ends now.
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()


def is_websocket_handshake(method: bytes, version: str, headers: list[tuple[bytes, bytes]]) -> bool:
    """RFC 6455 §4.2.1: a GET over HTTP/1.1 with ``Upgrade: websocket``, ``upgrade`` among the Connection
    options, one ``Sec-WebSocket-Key`` that is base64 of 16 bytes and ``Sec-WebSocket-Version: 13``; and no
    body, since whatever follows the head is read as WebSocket frames. Names are lower-case (uvicorn)."""
    if method != b"GET" or version != "1.1":
        return False
    upgrade: list[bytes] = []
    keys: list[bytes] = []
    versions: list[bytes] = []
    connection = False
    for name, value in headers:
        if name == b"upgrade":
            upgrade.append(value.strip().lower())
        elif name == b"connection":
            connection = connection or b"upgrade" in (t.strip().lower() for t in value.split(b","))
        elif name == b"sec-websocket-key":
            keys.append(value.strip())
        elif name == b"sec-websocket-version":
            versions.append(value.strip())
        elif name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return False
    if upgrade != [b"websocket"] or not connection or versions != [b"13"] or len(keys) != 1:
        return False
    try:
        return len(binascii.a2b_base64(keys[0], strict_mode=True)) == 16
    except binascii.Error:
        return False


def guarded_protocol(header_timeout: float, *, max_target_bytes: int = 8192, max_header_bytes: int = 16384,
                     max_connections: int = 1024, body_timeout: float | None = None) -> type[GuardedHttpToolsProtocol]:
    """A protocol class with one listener's limits (uvicorn instantiates the class per connection)."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {
        "header_timeout": header_timeout,
        "body_timeout": body_timeout,
        "max_target_bytes": max_target_bytes,
        "max_head_bytes": max_target_bytes + max_header_bytes + _HEAD_SLACK,
        "max_trailer_bytes": max_header_bytes + _HEAD_SLACK,
        "max_connections": max_connections,
    })
