"""Step 10 of the gate: forward to the upstream over one pooled aiohttp session, streaming both ways.

Header handling follows security.md §3.2's order: (1) drop hop-by-hop headers and every header named in
``Connection``; (2) drop client copies of identity and forwarding headers in any case, ``-`` or ``_``
spelling, duplicated or not; (3) only then add the proxy's own headers, which nothing can remove
afterwards (Traefik CVE-2021-32813). The framing is rebuilt by aiohttp, never copied (security.md §3.1).
The URL is the configured upstream plus the normalized path, sent byte for byte (``encoded=True``: aiohttp
must not re-quote what was authorized). Connect error → 502, timeout → 504, with a short JSON body and no
internals; aiohttp never retries a non-idempotent request.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from dataclasses import replace
from typing import Any

import aiohttp
from yarl import URL

from authz.errors import GateError
from config.schema import ScopegateConfig
from proxy import reasons
from proxy.decision import Decision
from proxy.guard import RequestHead, is_plain_name, is_protected, protected_names
from proxy.validate import VerifiedToken

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te", "trailer",
    "transfer-encoding", "upgrade", "content-length", "host", "expect",
})
"""RFC 9110 §7.6.1 plus the framing headers the proxy rebuilds itself (Content-Length, Host), and ``Expect``:
the server already answered the client's 100-continue when the gate read the body, and forwarded, it made
aiohttp hold the body until the upstream sent a 100 of its own (Envoy strips it too)."""
_RESPONSE_DROP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-connection", b"te", b"trailer",
                            b"transfer-encoding", b"upgrade", b"date"})
"""Hop-by-hop response headers, and ``Date``: the server adds its own to every response, and a response
carries one Date (RFC 9110 §6.6.1; issue 8 item 16)."""
PREFLIGHT_HEADERS = frozenset({b"origin", b"access-control-request-method", b"access-control-request-headers",
                               b"access-control-request-private-network"})
"""What a CORS preflight forwards of the client's headers (the last one: Private Network Access preflights)."""
_SKIP_AUTO = frozenset({"User-Agent", "Accept-Encoding", "Accept", "Content-Type"})


def drop_frames(exc: BaseException) -> None:
    """Clear the locals of the finished frames in ``exc``'s tracebacks, along its cause and context chain.

    An exception kept in a local of a frame its traceback holds is a reference cycle (aiohttp's connector keeps
    a failed connect in ``last_exc``; ``RequestBody.error`` keeps the body's): it, and this request's frames and
    decision with it, would wait for a collection instead of being freed on return (issue 11 item 1). Frames
    still running are skipped (``traceback.clear_frames`` ignores them); the traceback text stays printable."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        current = current.__cause__ or current.__context__


class ClientGone(Exception):
    """The client disconnected while its body was being read."""


class RequestBody:
    """The client's body as an async iterator, bounded in size and time; optionally read whole first."""

    def __init__(self, receive: Receive, *, max_bytes: int, deadline: float, length: int | None = None) -> None:
        self._receive = receive
        self._max = max_bytes
        self._length = length
        """The declared Content-Length, forwarded as is: the body must be exactly that long."""
        self._deadline = deadline
        self._seen = 0
        self._buffered: bytes | None = None
        self._more = True
        self.error: BaseException | None = None
        """What stopped the body (aiohttp wraps errors raised inside a request body into its own)."""

    def take_error(self) -> BaseException:
        """The error that stopped the body, forgotten here: kept, it would be a cycle through its traceback."""
        error, self.error = self.error, None
        assert error is not None
        drop_frames(error)
        return error

    async def _next(self) -> bytes:
        try:
            return await self._read()
        except (GateError, ClientGone) as exc:
            self.error = exc
            raise

    async def _read(self) -> bytes:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(loop.time() + max(0.0, self._deadline - time.monotonic())):
                message = await self._receive()
        except TimeoutError:
            raise GateError(408, reasons.READ_TIMEOUT, "The request body was not received in time.", close=True) from None
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        self._more = message.get("more_body", False)
        self._seen += len(chunk)
        if self._seen > self._max:
            raise GateError(413, reasons.TOO_LARGE, "The request body is too large.", close=True)
        if self._length is not None and (self._seen > self._length or (not self._more and self._seen < self._length)):
            # The upstream was told Content-Length; fewer bytes would let it read the next request on the
            # connection as the rest of this body (issue 8 item 1). Raising here aborts the upstream request,
            # and aiohttp closes a connection whose body failed instead of pooling it.
            raise GateError(400, reasons.BAD_FRAMING, "The request body does not match its Content-Length.", close=True)
        return chunk

    async def read_all(self) -> bytes:
        """Read the whole body (forms only: they are small and must be searched for a token)."""
        parts = []
        while self._more:
            parts.append(await self._next())
        self._buffered = b"".join(parts)
        return self._buffered

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._buffered is not None:
            if self._buffered:
                yield self._buffered
            return
        while self._more:
            chunk = await self._next()
            if chunk:
                yield chunk


class HeaderPlan:
    """Header sets and names built once per configuration."""

    _MAX_NAMES = 1024
    """Bound on the memo of client header names (they are client-chosen: the memo must not grow without end)."""

    def __init__(self, cfg: ScopegateConfig) -> None:
        identity = cfg.proxy.identity
        self.protected = protected_names(identity, cfg.proxy.strip_headers)
        self.subject = identity.subject_header
        self.client_id = identity.client_id_header
        self.scopes = identity.scopes_header
        self.auth_server = identity.auth_server_header
        self.forward_authorization = identity.forward_authorization
        self._names: dict[bytes, str | None] = {}
        """Raw header name → the name to forward it under, or None when it is never forwarded."""

    def _classify(self, raw_name: bytes) -> str | None:
        """Steps (1) and (2) for one name: None when hop-by-hop, spelled with '_', '.' or other punctuation,
        protected or a withheld token."""
        name = raw_name.decode("latin-1")
        if name in HOP_BY_HOP or not is_plain_name(raw_name) or is_protected(name, self.protected):
            kept: str | None = None
        elif name == "authorization" and not self.forward_authorization:
            kept = None
        else:
            kept = name
        if len(self._names) < self._MAX_NAMES:
            self._names[raw_name] = kept
        return kept

    def upstream_headers(self, head: RequestHead, scope: Mapping[str, Any], token: VerifiedToken | None) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        names = self._names
        connection_named: set[str] | None = None
        for raw_name, raw_value in head.headers:
            name = names[raw_name] if raw_name in names else self._classify(raw_name)
            if name is None:
                if raw_name == b"connection":
                    if connection_named is None:
                        connection_named = set()
                    connection_named.update(t.strip().lower() for t in raw_value.decode("latin-1").split(","))
                continue
            out.append((name, raw_value.decode("latin-1")))
        if connection_named:
            out = [(name, value) for name, value in out if name not in connection_named]
        if head.content_length is not None and (head.content_length or head.method not in ("GET", "HEAD")):
            out.append(("Content-Length", str(head.content_length)))
        client = scope.get("client")
        if client:
            out.append(("X-Forwarded-For", str(client[0])))
        out.append(("X-Forwarded-Proto", str(scope.get("scheme", "http"))))
        if head.host is not None:
            out.append(("X-Forwarded-Host", head.host))
        if token is not None:
            out.append((self.subject, token.subject))
            out.append((self.client_id, token.client_id))
            out.append((self.scopes, token.scope_header))
            out.append((self.auth_server, token.as_id))
        return out


    def preflight_headers(self, head: RequestHead, scope: Mapping[str, Any]) -> list[tuple[str, str]]:
        """A token-less CORS preflight's headers: Origin and the Access-Control-Request-* ones (all the upstream
        needs to answer it, Fetch standard §3.2.2), then the proxy's own X-Forwarded-*; no body framing."""
        cors = [(name, value) for name, value in head.headers if name in PREFLIGHT_HEADERS]
        return self.upstream_headers(replace(head, headers=cors, content_length=None, chunked=False), scope, None)


def response_headers(raw: Any) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers minus hop-by-hop ones and those its Connection names."""
    out: list[tuple[bytes, bytes]] = []
    named: set[bytes] | None = None
    has_te = False
    for name, value in raw:
        lower = name.lower()
        if lower in _RESPONSE_DROP:
            if lower == b"connection":
                if named is None:
                    named = set()
                named.update(t.strip().lower() for t in value.split(b","))
            elif lower == b"transfer-encoding":
                has_te = True
            continue
        out.append((lower, value))
    if named or has_te:
        out = [(name, value) for name, value in out
               if not (named and name in named) and not (has_te and name == b"content-length")]
    return out


class Forwarder:
    """Owns the pooled upstream session (created at start-up, closed at shutdown)."""

    def __init__(self, cfg: ScopegateConfig) -> None:
        self.base = cfg.upstream.url
        self.upstream = cfg.upstream
        self.session: aiohttp.ClientSession | None = None

    async def startup(self) -> None:
        if self.session is not None:
            return
        connector = aiohttp.TCPConnector(limit=self.upstream.max_connections, keepalive_timeout=self.upstream.keepalive_timeout,
                                         ttl_dns_cache=60)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.upstream.connect_timeout,
                                        sock_read=self.upstream.timeout)
        self.session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                             cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=_SKIP_AUTO)

    async def shutdown(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def forward(self, method: str, target: str, headers: list[tuple[str, str]], body: RequestBody | None,
                      send: Send, decision: Decision) -> None:
        """Send the request, stream the response to ``send``; ``decision`` learns the status once headers go out."""
        if self.session is None:
            raise GateError(503, reasons.UPSTREAM_UNAVAILABLE, "The upstream connection pool is not started.")
        url = URL(self.base + target, encoded=True)
        try:
            async with self.session.request(method, url, headers=headers, data=body.__aiter__() if body else None,
                                            allow_redirects=False) as response:
                status = response.status
                await send({"type": "http.response.start", "status": status,
                            "headers": response_headers(response.raw_headers)})
                decision.response_started = True
                decision.status = status
                if method == "HEAD":
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
                # Each chunk goes out as it arrives (never the whole body); the one that ends the body is sent
                # as the final message, which saves an empty message per response.
                content = response.content
                while True:
                    chunk = await content.readany()
                    if not chunk:
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
                        return
                    if content.at_eof():
                        await send({"type": "http.response.body", "body": chunk, "more_body": False})
                        return
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except GateError:
            raise
        except Exception as exc:
            drop_frames(exc)
            if body is not None and body.error is not None:
                # aiohttp wraps the body's error and names it as the cause; the raise below makes the wrapper
                # that error's context: a cycle, unless the wrapper (dropped anyway) lets go of it.
                exc.__cause__ = exc.__context__ = None
                raise body.take_error() from None
            if isinstance(exc, TimeoutError):  # aiohttp.ServerTimeoutError is one
                raise GateError(504, reasons.UPSTREAM_TIMEOUT, "The upstream did not answer in time.") from None
            if isinstance(exc, aiohttp.ClientError):
                raise GateError(502, reasons.UPSTREAM_UNAVAILABLE, "The upstream is unavailable.") from None
            raise
