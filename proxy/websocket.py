"""WebSocket upgrades after the gate (issue 5 step 10: "WebSocket upgrades pass through after the same gate").

The gate decides on the opening handshake exactly as on any GET (token, route, scopes); only then is the
upstream connection opened, over the same pooled aiohttp session, with the same header plan (identity
headers added, client copies and hop-by-hop headers removed). The client is accepted only once the upstream
has accepted, with the subprotocol the upstream chose; frames are then relayed both ways until either side
closes, and the close code is passed on.

A denial is answered with an HTTP response when the server offers the ASGI "WebSocket Denial Response"
extension (uvicorn does), so the client sees the same 401/403 and ``WWW-Authenticate`` as for plain HTTP;
otherwise the handshake is closed with 1008 (policy violation), which the client sees as 403.

A session lives no longer than the token that opened it (issue 8 item 11): ``SessionWatch`` closes it with
1008 at the token's ``exp`` and once the token is revoked (checked on every tick of the revocation poll interval
at which the feed has applied something new, so within the feed's own bound), and with 1013 (try again later)
while the revocation state is stale under ``onStale: deny``, as new requests get 503 then. Both sides are
closed: the client with the code and a short reason, the upstream with the same code.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

import aiohttp
from yarl import URL

from authz.errors import BearerError, GateError, ScopegateError
from proxy import reasons
from proxy.revocation import RevocationLike

log = logging.getLogger("scopegate.proxy")

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

HANDSHAKE_HEADERS = frozenset({"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
                               "sec-websocket-protocol", "sec-websocket-accept"})
"""Per-hop handshake headers (RFC 6455 §4.1): aiohttp writes its own for the upstream connection."""

_NORMAL_CLOSE = 1000
_GOING_AWAY = 1001
POLICY_VIOLATION = 1008
_UPSTREAM_ERROR = 1011
TRY_AGAIN_LATER = 1013

Ending = tuple[int, str]
"""Why a session must end: the close code and a short reason for the client."""


class Session:
    """One relayed session and the token behind it; ``ended`` resolves when the session must be closed."""

    __slots__ = ("claims", "ended", "exp", "recheck")

    def __init__(self, claims: Mapping[str, Any], exp: float,
                 recheck: Callable[[], Awaitable[None]] | None) -> None:
        self.claims = claims
        self.exp = exp
        self.recheck = recheck
        """Asks the issuer again (RFC 7662 introspection, cached): raises when the token is no longer active."""
        self.ended: asyncio.Future[Ending] = asyncio.get_running_loop().create_future()

    def end(self, code: int, reason: str) -> None:
        if not self.ended.done():
            self.ended.set_result((code, reason))


class SessionWatch:
    """Ends relayed WebSocket sessions whose token expires or is revoked.

    One ticker task for all sessions (started with the first, gone with the last), not a timer per session:
    expiries come off a heap; revocation is asked of every session only on a tick at which the feed has applied
    something new (``last_seq`` moved; every tick when the state does not say), so an idle feed costs nothing
    per session."""

    def __init__(self, revocation: RevocationLike, now: Callable[[], float], *, interval: float,
                 deny_when_stale: bool) -> None:
        self.revocation = revocation
        self.now = now
        self.interval = interval
        self.deny_when_stale = deny_when_stale
        self.sessions: set[Session] = set()
        self._expiries: list[tuple[float, int, Session]] = []
        self._order = itertools.count()
        self._seen_seq: object = None
        self._task: asyncio.Task[None] | None = None
        self._rechecks: asyncio.Task[None] | None = None

    def open(self, claims: Mapping[str, Any], exp: float,
             recheck: Callable[[], Awaitable[None]] | None = None) -> Session:
        session = Session(claims, exp, recheck)
        self.sessions.add(session)
        heapq.heappush(self._expiries, (exp, next(self._order), session))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return session

    def discard(self, session: Session) -> None:
        self.sessions.discard(session)
        session.end(_NORMAL_CLOSE, "")

    def check_all(self) -> None:
        """Ask every session's token again on the next tick (after a reload changed what revokes)."""
        self._seen_seq = None

    async def _run(self) -> None:
        while self.sessions:
            now = self.now()
            wait = self.interval
            if self._expiries:
                wait = min(wait, max(0.0, self._expiries[0][0] - now))
            await asyncio.sleep(wait)
            try:
                self.tick()
            except Exception:  # a failing check must not leave sessions unwatched
                log.exception("checking WebSocket sessions failed")
        self._expiries.clear()
        self._seen_seq = None

    def tick(self) -> None:
        now = self.now()
        while self._expiries and self._expiries[0][0] <= now:
            _, _, session = heapq.heappop(self._expiries)
            if session in self.sessions:
                session.end(POLICY_VIOLATION, "token expired")
        if self.deny_when_stale and self.revocation.is_stale(now):
            for session in self.sessions:
                session.end(TRY_AGAIN_LATER, "revocation state is stale")
            return
        seq = getattr(self.revocation, "last_seq", None)
        if seq is None or seq != self._seen_seq:
            self._seen_seq = seq
            for session in self.sessions:
                if self.revocation.is_revoked(session.claims):
                    session.end(POLICY_VIOLATION, "token revoked")
        remote = [s for s in self.sessions if s.recheck is not None and not s.ended.done()]
        if remote and (self._rechecks is None or self._rechecks.done()):
            self._rechecks = asyncio.get_running_loop().create_task(self._recheck(remote))

    @staticmethod
    async def _recheck(sessions: list[Session]) -> None:
        async def one(session: Session) -> None:
            assert session.recheck is not None
            try:
                await session.recheck()
            except BearerError:
                session.end(POLICY_VIOLATION, "token revoked")
            except ScopegateError:  # the issuer cannot be asked: as a new request would get 503
                session.end(TRY_AGAIN_LATER, "token status unavailable")
        await asyncio.gather(*(one(s) for s in sessions))


def subprotocols(scope: MutableMapping[str, Any]) -> list[str]:
    return [str(p) for p in scope.get("subprotocols") or []]


async def deny(scope: MutableMapping[str, Any], send: Send, exc: ScopegateError) -> None:
    """Refuse the handshake with the gate's HTTP answer when the server allows it, else close 1008."""
    if "websocket.http.response" in (scope.get("extensions") or {}):
        body = exc.body_bytes()
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.get_headers().items()]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "websocket.http.response.start", "status": exc.status_code, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})


async def open_upstream(session: aiohttp.ClientSession, url: str, headers: list[tuple[str, str]],
                        protocols: list[str], *, connect_timeout: float,
                        max_message_bytes: int) -> aiohttp.ClientWebSocketResponse:
    """The upstream handshake; 502 if it cannot be made or is refused, 504 if it does not answer in time."""
    kept = [(k, v) for k, v in headers if k.lower() not in HANDSHAKE_HEADERS]
    try:
        return await session.ws_connect(URL(url, encoded=True), headers=kept, protocols=protocols, autoclose=False,
                                        autoping=True, max_msg_size=max_message_bytes,
                                        timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=connect_timeout))
    except TimeoutError:
        raise GateError(504, reasons.UPSTREAM_TIMEOUT, "The upstream did not answer in time.") from None
    except aiohttp.ClientError:
        raise GateError(502, reasons.UPSTREAM_UNAVAILABLE, "The upstream is unavailable.") from None


async def relay(receive: Receive, send: Send, upstream: aiohttp.ClientWebSocketResponse,
                ended: asyncio.Future[Ending] | None = None) -> None:
    """Accept the client with the upstream's subprotocol, then copy frames both ways until one side closes, or
    until ``ended`` resolves: then both sides are closed with its code."""
    accept: dict[str, Any] = {"type": "websocket.accept"}
    if upstream.protocol:
        accept["subprotocol"] = upstream.protocol
    await send(accept)
    client_closed = asyncio.Event()

    async def client_to_upstream() -> None:
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                if message.get("text") is not None:
                    await upstream.send_str(message["text"])
                elif message.get("bytes") is not None:
                    await upstream.send_bytes(message["bytes"])
            elif kind == "websocket.disconnect":
                client_closed.set()
                await upstream.close(code=int(message.get("code") or _NORMAL_CLOSE))
                return

    async def upstream_to_client() -> None:
        async for message in upstream:
            if message.type == aiohttp.WSMsgType.TEXT:
                await send({"type": "websocket.send", "text": message.data})
            elif message.type == aiohttp.WSMsgType.BINARY:
                await send({"type": "websocket.send", "bytes": message.data})
            elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                                  aiohttp.WSMsgType.ERROR):
                break
        if not client_closed.is_set():
            code = upstream.close_code
            if code is None or code in (1005, 1006):  # reserved: never sent in a Close frame (RFC 6455 §7.4.1)
                code = _UPSTREAM_ERROR if upstream.exception() is not None else _GOING_AWAY
            with contextlib.suppress(Exception):  # the client may have gone in the meantime
                await send({"type": "websocket.close", "code": code})

    tasks = [asyncio.ensure_future(client_to_upstream()), asyncio.ensure_future(upstream_to_client())]
    try:
        waited: list[asyncio.Future[Any]] = [*tasks]
        if ended is not None:
            waited.append(ended)
        done, _ = await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
        if ended is not None and ended in done and not client_closed.is_set():
            code, reason = ended.result()
            for task in tasks:  # stop relaying before closing: no frame passes after the token stopped being valid
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            with contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": code, "reason": reason})
            with contextlib.suppress(Exception):
                await upstream.close(code=code, message=reason.encode())
            return
        for finished in done:
            if finished is ended:
                continue
            if finished.exception() is not None and not client_closed.is_set():
                with contextlib.suppress(Exception):
                    await send({"type": "websocket.close", "code": _UPSTREAM_ERROR})
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        await upstream.close()
