"""Step 10 of the gate: forward to the upstream over the pooled client of ``proxy/upstream.py``, streaming both ways.

Header handling follows security.md §3.2's order: (1) drop hop-by-hop headers and every header named in
``Connection``; (2) drop client copies of identity and forwarding headers in any case, ``-`` or ``_``
spelling, duplicated or not (the guard does both in its one scan of the headers); (3) only then add the proxy's
own headers, which nothing can remove afterwards (Traefik CVE-2021-32813). The framing is rebuilt by the client,
never copied (security.md §3.1). The target is the configured upstream's path plus the normalized path, sent byte
for byte. Connect error, reset or misframed response → 502, timeout → 504, with a short JSON body and no
internals; only a safe request without a body is ever retried, once (``proxy/upstream.py``). WebSocket upgrades
still go through an aiohttp session (``proxy/websocket.py``).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from dataclasses import replace
from typing import Any

import aiohttp
from multidict import CIMultiDict, istr

from authz.errors import BearerError, GateError
from config.headers import HOP_BY_HOP as HEADERS_HOP_BY_HOP
from config.schema import ScopegateConfig
from proxy import reasons
from proxy.decision import Decision
from proxy.guard import RequestHead, protected_names
from proxy.routes import UNROUTED
from proxy.upstream import UpstreamClient, UpstreamError
from proxy.validate import VerifiedToken

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

HOP_BY_HOP = HEADERS_HOP_BY_HOP
"""RFC 9110 §7.6.1, the framing headers the proxy rebuilds and ``Expect`` (``config/headers.py`` says why)."""
_RESPONSE_DROP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-connection", b"te", b"trailer",
                            b"transfer-encoding", b"upgrade", b"date"})
"""Hop-by-hop response headers, and ``Date``: the server adds its own to every response, and a response
carries one Date (RFC 9110 §6.6.1; issue 8 item 16)."""
PREFLIGHT_HEADERS = frozenset({b"origin", b"access-control-request-method", b"access-control-request-headers",
                               b"access-control-request-private-network"})
"""What a CORS preflight forwards of the client's headers (the last one: Private Network Access preflights)."""


class _UpstreamRequest(aiohttp.ClientRequest):
    """aiohttp's request, adding none of the headers it adds by default (``Accept``, ``Accept-Encoding``,
    ``User-Agent``, a default ``Content-Type``): the upstream gets the client's, or none. Declared once here
    instead of through ``skip_auto_headers``, which aiohttp turns into a sorted multidict and a copy of the
    headers on every request (4-12 µs per request measured, bench/README.md "The upstream hop")."""

    DEFAULT_HEADERS: dict[istr, str] = {}  # noqa: RUF012 (aiohttp's own attribute; read, never written)
    _skip_auto_headers = CIMultiDict((name, None) for name in ("Content-Type",))
    """Read by aiohttp where it would add ``Content-Type: application/octet-stream`` to a body without one."""

    def update_auto_headers(self, skip_auto_headers: Any) -> None:
        pass


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

    @property
    def length(self) -> int | None:
        """The declared Content-Length, or None for a chunked body."""
        return self._length

    @property
    def deadline(self) -> float:
        """When the whole body must have arrived (``time.monotonic()``)."""
        return self._deadline

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


_CLAIM_REFUSED = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]|^ | $")
"""C0 and C1 control characters and DEL (header injection, and parsers that read NEL as a line break), a lone
surrogate (JSON's ``\ud800`` has no UTF-8 form), and a leading or trailing space, which the upstream's parser
trims: it must read the token's value, not another."""


class ClaimHeaders:
    """One route's claim headers (``proxy.identity.claims`` merged with ``routes[].claims``), compiled once: each
    entry is the header name, the claim path and that path split on '.'."""

    __slots__ = ("entries", "max_bytes")

    def __init__(self, claims: Mapping[str, str], max_bytes: int) -> None:
        self.entries = tuple((header, path, tuple(path.split("."))) for header, path in claims.items())
        self.max_bytes = max_bytes

    def values(self, claims: Mapping[str, Any], realm: str) -> list[tuple[str, str]]:
        """The headers for one validated token; a claim that cannot be sent faithfully refuses the token."""
        out: list[tuple[str, str]] = []
        for header, path, keys in self.entries:
            value = _claim_at(claims, path, keys)
            if value is None:
                continue
            text = _claim_text(value)
            if (text is None or _CLAIM_REFUSED.search(text) is not None or len(text) > self.max_bytes
                    or (not text.isascii() and len(text.encode("utf-8")) > self.max_bytes)):
                raise BearerError("invalid_token", "The access token carries a claim that cannot be passed on.",
                                  realm=realm, reason=reasons.BAD_CLAIMS)
            out.append((header, text))
        return out


def _claim_at(claims: Mapping[str, Any], path: str, keys: tuple[str, ...]) -> Any:
    if len(keys) == 1:
        return claims.get(path)
    if path in claims:  # a namespaced claim such as "https://example.com/roles" is a name, not a path
        return claims[path]
    value = claims.get(keys[0])
    for key in keys[1:]:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _claim_text(value: Any) -> str | None:
    """A JSON claim value as header text, or None when it has no faithful one (an object; an array holding an
    object, an array, null, or a string with ',': joined, it would read as other elements)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for item in value:
            text = _scalar_text(item) if not isinstance(item, str) else item
            if text is None or "," in text:
                return None
            parts.append(text)
        return ",".join(parts)
    return _scalar_text(value)


def _scalar_text(value: Any) -> str | None:
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    return None


class HeaderPlan:
    """Header sets and names built once per configuration."""

    def __init__(self, cfg: ScopegateConfig) -> None:
        identity = cfg.proxy.identity
        self.protected = protected_names(identity, cfg.proxy.strip_headers, cfg.routes)
        self.subject = identity.subject_header
        self.client_id = identity.client_id_header
        self.scopes = identity.scopes_header
        self.auth_server = identity.auth_server_header
        self.claims = _claim_plans(cfg)
        """Route name (``unrouted`` for ``proxy.unrouted: any_valid_token``) → its claim headers; empty when no
        claims are configured, which is all the hot path then looks at."""

    def upstream_headers(self, head: RequestHead, scope: Mapping[str, Any], token: VerifiedToken | None,
                         route: str = UNROUTED) -> list[tuple[str, str]]:
        """Steps (1)-(3): the client's headers the guard kept (``head.forward``: it applied steps (1) and (2) in its
        one scan of them), then the proxy's own; ``route`` (the matched route's name) chooses the claim headers.
        Raises BearerError ``bad_claims`` when a claim cannot be sent."""
        out = [*head.forward]
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
            if self.claims and (plan := self.claims.get(route)) is not None:
                out.extend(plan.values(token.claims, token.as_id))
        return out

    def preflight_headers(self, head: RequestHead, scope: Mapping[str, Any]) -> list[tuple[str, str]]:
        """A token-less CORS preflight's headers: Origin and the Access-Control-Request-* ones (all the upstream
        needs to answer it, Fetch standard §3.2.2), then the proxy's own X-Forwarded-*; no body framing."""
        cors = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in head.headers
                if name in PREFLIGHT_HEADERS]
        return self.upstream_headers(replace(head, forward=cors, content_length=None, chunked=False), scope, None)


def _claim_plans(cfg: ScopegateConfig) -> dict[str, ClaimHeaders]:
    """Each token route's merged claim map, compiled; routes (and unrouted requests) with none are left out."""
    identity = cfg.proxy.identity
    plans: dict[str, ClaimHeaders] = {}
    for name, route_claims in [(UNROUTED, None), *((r.name, r.claims) for r in cfg.routes if not r.public)]:
        merged = {header.lower(): (header, path) for header, path in identity.claims.items()}
        for header, override in (route_claims or {}).items():
            if override is None:
                merged.pop(header.lower(), None)
            else:
                merged[header.lower()] = (header, override)
        if merged:
            plans[name] = ClaimHeaders(dict(merged.values()), identity.max_claim_bytes)
    return plans


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
    """Owns the upstream connection pool (``proxy/upstream.py``) and, for WebSocket upgrades, an aiohttp session;
    both created at start-up and closed at shutdown.

    Time bounds: the response head must arrive within ``upstream.timeout`` of the end of the time the client has
    for its body (``limits.readTimeout``, when there is a body), however slowly it trickles; then the body may take
    as long as it needs as long as no read waits more than ``upstream.timeout`` (a stream, server-sent events)."""

    def __init__(self, cfg: ScopegateConfig) -> None:
        self.base = cfg.upstream.url
        self.upstream = cfg.upstream
        self.session: aiohttp.ClientSession | None = None
        self.client: UpstreamClient | None = None

    async def startup(self) -> None:
        if self.session is not None:
            return
        upstream = self.upstream
        self.client = UpstreamClient(self.base, max_connections=upstream.max_connections,
                                     keepalive_timeout=upstream.keepalive_timeout,
                                     connect_timeout=upstream.connect_timeout, read_timeout=upstream.timeout)
        connector = aiohttp.TCPConnector(limit=upstream.max_connections, keepalive_timeout=upstream.keepalive_timeout,
                                         ttl_dns_cache=60)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=upstream.connect_timeout, sock_read=upstream.timeout)
        self.session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                             cookie_jar=aiohttp.DummyCookieJar(), request_class=_UpstreamRequest)

    async def shutdown(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def forward(self, method: str, target: str, headers: list[tuple[str, str]], body: RequestBody | None,
                      send: Send, decision: Decision) -> None:
        """Send the request, stream the response to ``send``; ``decision`` learns the status once headers go out."""
        client = self.client
        if client is None:
            raise GateError(503, reasons.UPSTREAM_UNAVAILABLE, "The upstream connection pool is not started.")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.upstream.timeout
        if body is not None:
            deadline += max(0.0, body.deadline - time.monotonic())
        try:
            response = await client.request(method, target, headers, body, None if body is None else body.length,
                                            deadline)
            try:
                status = response.status
                await send({"type": "http.response.start", "status": status,
                            "headers": response_headers(response.headers)})
                decision.response_started = True
                decision.status = status
                if method == "HEAD":
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
                # Each chunk goes out as it arrives (never the whole body); the one that ends the body is sent
                # as the final message, which saves an empty message per response.
                while True:
                    chunk = await response.readany()
                    if not chunk:
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
                        return
                    if response.at_eof():
                        await send({"type": "http.response.body", "body": chunk, "more_body": False})
                        return
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            finally:
                response.release()
        except GateError:
            if body is not None and body.error is not None:
                body.take_error()  # this very error: kept by the body, it would be a cycle through its traceback
            raise
        except Exception as exc:
            drop_frames(exc)
            if body is not None and body.error is not None:
                exc.__cause__ = exc.__context__ = None
                raise body.take_error() from None
            if isinstance(exc, TimeoutError):
                status, reason, text = 504, reasons.UPSTREAM_TIMEOUT, "The upstream did not answer in time."
            elif isinstance(exc, UpstreamError):
                status, reason, text = 502, reasons.UPSTREAM_UNAVAILABLE, "The upstream is unavailable."
            else:
                raise
            if decision.response_started:
                # Too late for a 502 or 504: the server closes the client's connection short of the body, and the
                # decision log says why the answer was cut.
                decision.reason = reason
            # Raised, never kept in a local: this frame is in its traceback (a cycle, issue 11 item 1).
            raise GateError(status, reason, text) from None
