"""A real upstream for the end-to-end proxy tests, and a raw HTTP/1.1 client.

``RecordingUpstream`` is an aiohttp.web server on a free port, run on its own event loop in a daemon
thread so that the synchronous e2e tests (and the blocking ``scopegate`` fixture) never starve it. It
records every request it receives, byte for byte (raw target, raw headers, body), so a test can assert
what the protected API saw, or that it saw nothing. ``?delay=<seconds>`` makes it answer late (for the
504 and drain tests); ``/ws...`` with an Upgrade is a WebSocket echo.

``raw_request`` speaks bytes over a socket: the only way to send a path or framing that an HTTP client
library would normalize or refuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web


@dataclass
class Recorded:
    method: str
    raw_path: str
    """The request target exactly as received (path and query)."""
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class RecordingUpstream:
    url: str = ""
    port: int = 0
    requests: list[Recorded] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)
    """Set when a request's head has arrived (before any delay)."""
    ws_closes: list[int | None] = field(default_factory=list)
    """The close code of each finished WebSocket session, as this upstream saw it."""
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None
    _thread: threading.Thread | None = None

    # -------------------------------------------------------------------------------------------- server

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        body = await request.read()
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
        self.requests.append(Recorded(request.method, request.raw_path, headers, body))
        self.started.set()
        delay = float(request.query.get("delay", "0"))
        if delay:
            assert self._stop is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
        return web.json_response({"upstream": "ok", "path": request.raw_path},
                                 headers={"X-Upstream-Hop": "kept", "Keep-Alive": "timeout=5"})

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
        self.requests.append(Recorded(request.method, request.raw_path, headers, b""))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await ws.send_str("echo:" + message.data)
            elif message.type == WSMsgType.BINARY:
                await ws.send_bytes(message.data)
        self.ws_closes.append(ws.close_code)
        return ws

    async def _serve(self, ready: threading.Event) -> None:
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        await site.start()
        self.port = runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{self.port}"
        ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def start(self) -> RecordingUpstream:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._serve(ready),), daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the recording upstream did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)
            self._loop.close()
            self._loop = None

    def last(self) -> Recorded:
        assert self.requests, "the upstream received no request"
        return self.requests[-1]


def raw_request(base_url: str, data: bytes, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send ``data`` as is; return (everything read, whether the server closed the connection)."""
    host, _, port = base_url.removeprefix("http://").partition(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        closed = False
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    closed = True
                    break
                received += chunk
                if _complete(received):
                    # A response is complete: see whether the server closes the connection soon after.
                    sock.settimeout(1.0)
        except TimeoutError:
            pass
        except ConnectionResetError:
            closed = True
    return received, closed


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])
