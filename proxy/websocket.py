"""WebSocket upgrades after the gate (issue 5 step 10: "WebSocket upgrades pass through after the same gate").

The gate decides on the opening handshake exactly as on any GET (token, route, scopes); only then is the
upstream connection opened, over the same pooled aiohttp session, with the same header plan (identity
headers added, client copies and hop-by-hop headers removed). The client is accepted only once the upstream
has accepted, with the subprotocol the upstream chose; frames are then relayed both ways until either side
closes, and the close code is passed on.

A denial is answered with an HTTP response when the server offers the ASGI "WebSocket Denial Response"
extension (uvicorn does), so the client sees the same 401/403 and ``WWW-Authenticate`` as for plain HTTP;
otherwise the handshake is closed with 1008 (policy violation), which the client sees as 403.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
from yarl import URL

from authz.errors import GateError, ScopegateError
from proxy import reasons

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

HANDSHAKE_HEADERS = frozenset({"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
                               "sec-websocket-protocol", "sec-websocket-accept"})
"""Per-hop handshake headers (RFC 6455 §4.1): aiohttp writes its own for the upstream connection."""

_NORMAL_CLOSE = 1000
_GOING_AWAY = 1001
_UPSTREAM_ERROR = 1011


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


async def relay(receive: Receive, send: Send, upstream: aiohttp.ClientWebSocketResponse) -> None:
    """Accept the client with the upstream's subprotocol, then copy frames both ways until one side closes."""
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
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task.exception() is not None and not client_closed.is_set():
                with contextlib.suppress(Exception):
                    await send({"type": "websocket.close", "code": _UPSTREAM_ERROR})
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        await upstream.close()
