"""A TCP relay the test controls, put between scopegate and PostgreSQL (issue 12 item 2), so that the
shared server is never stopped. Modes:

- ``pass``: relay both ways;
- ``refuse``: reset every open connection and reset each new one as soon as it is accepted (what a client
  sees of a dead server or a closed port);
- ``blackhole``: accept and read, but never forward nor answer: no RST, no FIN, the kernel keeps
  acknowledging, as in a network partition or a silently failed node. Neither TCP keepalives nor a
  server-side statement timeout end a wait here; only a deadline of the client's own does.

And, on top of ``pass`` (issue 12 item 2, the rest):

- ``set_latency(seconds, match=b"COMMIT")``: what the client sends in a chunk containing ``match`` (every
  chunk when ``match`` is None; or that runs a statement prepared from such a text) reaches the server
  ``seconds`` later (``upstream=False``: what the server
  answers reaches the client late); what follows it waits behind it, and the sender's FIN too, as on a slow
  link: bytes in flight are delivered, never lost;
- ``hold_matching(b"LISTEN ")``: connections whose client has sent ``match`` are black-holed alone (both
  ways, no RST), the others pass. What is held is delivered when ``hold_matching(None)`` heals the link, as
  TCP retransmission would after a partition that the connection outlived.

Runs an asyncio loop on a daemon thread of its own; ``set_mode`` takes effect at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
import threading
from typing import Literal

Mode = Literal["pass", "refuse", "blackhole"]


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        # SO_LINGER 0: close() sends RST instead of FIN.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.mode: Mode = "pass"
        self.port = 0
        self.accepted = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.latency = 0.0
        self.latency_match: bytes | None = None
        self.latency_upstream = True
        self.hold_match: bytes | None = None
        self.delayed = 0
        """Chunks delayed by ``set_latency`` so far."""
        self._healed = asyncio.Event()
        self._links: set[_Link] = set()

    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def set_mode(self, mode: Mode) -> None:
        async def apply() -> None:
            self.mode = mode
            if mode == "refuse":
                for client, upstream in list(self._pairs):
                    _reset(client)
                    upstream.transport.abort()
                self._pairs.clear()

        asyncio.run_coroutine_threadsafe(apply(), self._loop).result(10)

    def set_latency(self, seconds: float, match: bytes | None = None, upstream: bool = True) -> None:
        """Delay what the client sends (``upstream``) or what the server answers, in chunks containing ``match``."""
        async def apply() -> None:
            self.latency, self.latency_match, self.latency_upstream = seconds, match, upstream

        asyncio.run_coroutine_threadsafe(apply(), self._loop).result(10)

    def hold_matching(self, match: bytes | None) -> None:
        """Black-hole the connections whose client sent ``match``; None heals them (held bytes then flow)."""
        async def apply() -> None:
            self.hold_match = match
            for link in self._links:
                link.held = match is not None and match in link.seen
            if match is None:
                self._healed.set()
                self._healed = asyncio.Event()

        asyncio.run_coroutine_threadsafe(apply(), self._loop).result(10)

    @property
    def held(self) -> int:
        """Connections held by ``hold_matching`` now."""
        return sum(1 for link in list(self._links) if link.held)

    def stop(self) -> None:
        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            for client, upstream in list(self._pairs):
                client.transport.abort()
                upstream.transport.abort()
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode == "refuse":
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(writer)
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        link = _Link()
        self._links.add(link)
        try:
            await asyncio.gather(self._pipe(reader, up_writer, link, upstream=True),
                                 self._pipe(up_reader, writer, link, upstream=False))
        finally:
            self._pairs.discard(pair)
            self._links.discard(link)
            writer.transport.abort()
            up_writer.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link,
                    upstream: bool) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()
        deliverer = asyncio.ensure_future(self._deliver(queue, writer, link))
        graceful = False
        try:
            while True:
                data = await reader.read(65536)
                if upstream and data:
                    link.learn(data)
                    link.seen = (link.seen + data)[-4096:]
                    link.held = link.held or (self.hold_match is not None and self.hold_match in link.seen)
                if not data:
                    graceful = self.mode == "pass" and not (link.held and self.hold_match is not None)
                    break
                if self.mode == "blackhole":
                    continue  # read and dropped: the sender is acknowledged, nobody answers
                if self.mode == "refuse":
                    break
                at = loop.time()
                if (upstream == self.latency_upstream and self.latency > 0
                        and (self.latency_match is None or link.matches(data, self.latency_match, upstream))):
                    at += self.latency
                    self.delayed += 1
                queue.put_nowait((at, data))
        except (ConnectionError, OSError):
            pass
        finally:
            if graceful:
                # A FIN after the bytes in flight, as a network delivers them: the peer reads them, then EOF.
                queue.put_nowait((loop.time(), None))
                with contextlib.suppress(ConnectionError, OSError):
                    await deliverer
            else:
                # Either side gone: the other goes too (PostgreSQL rolls back what a vanished client left open).
                deliverer.cancel()
                writer.transport.abort()

    async def _deliver(self, queue: asyncio.Queue[tuple[float, bytes | None]], writer: asyncio.StreamWriter,
                       link: _Link) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                at, data = await queue.get()
                wait = at - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                while link.held and self.hold_match is not None:
                    await self._healed.wait()
                link.held = False
                if data is None:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            writer.transport.abort()


class _Link:
    """One relayed connection: whether it is held (``hold_matching``) and the tail of what its client sent."""

    def __init__(self) -> None:
        self.seen = b""
        self.held = False
        self.prepared: dict[bytes, bytes] = {}
        """Statement name → text, of what the client prepared (PostgreSQL's Parse message)."""

    def learn(self, data: bytes) -> None:
        for name, text in re.findall(rb"P....([^\0]+)\0([^\0]*)\0", data, flags=re.DOTALL):
            self.prepared[name] = text

    def matches(self, data: bytes, match: bytes, upstream: bool) -> bool:
        """``match`` is in ``data``, or (client to server) ``data`` runs a statement prepared from a text that
        contains it: psycopg prepares a statement it ran five times and then sends only its name (Bind)."""
        if not upstream:
            return match in data
        if match in data:
            return True
        return any(match in self.prepared.get(name, b"")
                   for name in re.findall(rb"B....[^\0]*\0([^\0]+)\0", data, flags=re.DOTALL))
