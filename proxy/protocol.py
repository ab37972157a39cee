"""The proxy listener's HTTP/1.1 protocol: uvicorn's httptools protocol with two checks it lacks.

- A ``#`` in the request target is rejected with 400 (security.md §0.4, §3.4). httptools parses the
  fragment off before the ASGI scope is built, so the gate itself can never see it.
- A read deadline for the request head: headers that trickle in (slowloris, security.md §3.7) are cut
  off after ``limits.readTimeout``; uvicorn only times out idle keep-alive connections.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class FragmentInTarget(Exception):
    """Raised inside a parser callback; httptools turns it into a parser error, answered with 400."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._head_started: float | None = None
        """``loop.time()`` when the head being read began; None between heads."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if b"#" in url:
            raise FragmentInTarget

    def on_headers_complete(self) -> None:
        self._head_started = None
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_started = None
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None
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
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        self.transport.close()


def guarded_protocol(header_timeout: float) -> type[GuardedHttpToolsProtocol]:
    """A protocol class with this listener's deadline (uvicorn instantiates the class per connection)."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"header_timeout": header_timeout})
