"""The upstream client (proxy/upstream.py) against a scripted raw upstream: strict response framing and pool hygiene."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from proxy.upstream import UpstreamClient, UpstreamError
from tests.certs import self_signed

Script = Callable[[bytes, int], bytes | None]
"""(the request's bytes, its index among all requests) → the bytes to answer, or None to close."""


class Raw:
    def __init__(self, script: Script, tls: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.tls = tls
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Raw:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                body = b""
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        body = await reader.readexactly(int(line.split(b":")[1]))
                self.requests.append(head + body)
                answer = self.script(head + body, len(self.requests) - 1)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if b"Connection: close" in answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def client(raw: Raw) -> UpstreamClient:
    return UpstreamClient(f"http://127.0.0.1:{raw.port}", max_connections=8, keepalive_timeout=60, connect_timeout=1,
                          read_timeout=1)


async def fetch(upstream: UpstreamClient, method: str = "GET", target: str = "/",
                headers: list[tuple[str, str]] | None = None) -> tuple[int, bytes]:
    response = await upstream.request(method, target, headers or [], None, None,
                                      asyncio.get_running_loop().time() + 2)
    body = b""
    try:
        while chunk := await response.readany():
            body += chunk
    finally:
        response.release()
    return response.status, body


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_keep_alive_reuses_one_connection() -> None:
    async with Raw(lambda request, i: OK) as raw:
        upstream = client(raw)
        for _ in range(3):
            assert await fetch(upstream) == (200, b"ok")
        assert raw.connections == 1
        await upstream.close()


async def test_a_second_response_glued_to_the_first_is_never_read_as_its_body() -> None:
    """Response splitting: the first response is relayed as framed; the connection holding the rest is closed."""
    smuggled = OK + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!"
    async with Raw(lambda request, i: smuggled if i == 0 else OK) as raw:
        upstream = client(raw)
        status, body = await fetch(upstream)
        assert (status, body) == (200, b"ok")
        assert await fetch(upstream) == (200, b"ok")
        assert raw.connections == 2
        await upstream.close()


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * 9000 + b"\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + b"X-Many: 1234567890\r\n" * 4000 + b"\r\nok",
], ids=["cl-and-te", "two-cl", "field-over-8k", "101", "head-over-64k"])
async def test_misframed_responses_are_upstream_errors(answer: bytes) -> None:
    async with Raw(lambda request, i: answer if i == 0 else OK) as raw:
        upstream = client(raw)
        with pytest.raises(UpstreamError):
            await fetch(upstream)
        assert await fetch(upstream) == (200, b"ok")
        await upstream.close()


async def test_interim_responses_are_skipped() -> None:
    async with Raw(lambda request, i: b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" + OK) as raw:
        upstream = client(raw)
        assert await fetch(upstream) == (200, b"ok")
        assert await fetch(upstream) == (200, b"ok")
        assert raw.connections == 1
        await upstream.close()


async def test_a_body_read_until_close() -> None:
    async with Raw(lambda request, i: b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end") as raw:
        upstream = client(raw)
        response = await upstream.request("GET", "/", [], None, None, asyncio.get_running_loop().time() + 2)
        body = b""
        while chunk := await response.readany():
            body += chunk
        response.release()
        assert body == b"until the end"
        await upstream.close()


async def test_head_responses_are_not_reused() -> None:
    """llhttp cannot be told a HEAD response has no body: its connection is closed, not pooled."""
    async with Raw(lambda request, i: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n") as raw:
        upstream = client(raw)
        assert await fetch(upstream, "HEAD") == (200, b"")
        assert await fetch(upstream, "HEAD") == (200, b"")
        assert raw.connections == 2
        await upstream.close()


async def test_request_framing_and_utf8_values() -> None:
    async with Raw(lambda request, i: OK) as raw:
        upstream = client(raw)

        async def body() -> AsyncIterator[bytes]:
            yield b"abc"
            yield b"de"

        response = await upstream.request("POST", "/p?q=1", [("X-Name", "José 名")], body(), None,
                                          asyncio.get_running_loop().time() + 2)
        response.release()
        await asyncio.sleep(0.05)
        assert raw.requests[0].startswith(f"POST /p?q=1 HTTP/1.1\r\nHost: 127.0.0.1:{raw.port}\r\n".encode())
        assert "X-Name: José 名\r\n".encode() in raw.requests[0]
        assert b"Transfer-Encoding: chunked\r\n" in raw.requests[0]
        await upstream.close()


async def test_a_body_shorter_than_its_length_aborts() -> None:
    async with Raw(lambda request, i: OK) as raw:
        upstream = client(raw)

        async def body() -> AsyncIterator[bytes]:
            yield b"abc"

        with pytest.raises(UpstreamError):
            await upstream.request("POST", "/", [("Content-Length", "5")], body(), 5,
                                   asyncio.get_running_loop().time() + 2)
        await upstream.close()


async def test_https_upstream_is_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An https:// upstream: the certificate is checked against the trusted roots (``SSL_CERT_FILE`` here), and
    the name in the URL; an untrusted certificate is a 502, never a connection."""
    cert, key = self_signed(tmp_path)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    async with Raw(lambda request, i: OK, tls=server_tls) as raw:
        untrusted = UpstreamClient(f"https://localhost:{raw.port}", max_connections=2, keepalive_timeout=60,
                                   connect_timeout=1, read_timeout=1)
        with pytest.raises(UpstreamError):
            await fetch(untrusted)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        trusted = UpstreamClient(f"https://localhost:{raw.port}", max_connections=2, keepalive_timeout=60,
                                 connect_timeout=1, read_timeout=1)
        assert await fetch(trusted) == (200, b"ok")
        assert raw.requests[-1].startswith(f"GET / HTTP/1.1\r\nHost: localhost:{raw.port}\r\n".encode())
        await trusted.close()


async def test_a_large_body_in_the_first_read_is_not_taken_for_a_large_head() -> None:
    """A small head and 1 MiB of body arrive in reads far larger than the head limit: all of it is the body."""
    body = bytes(range(256)) * 4096
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    async with Raw(lambda request, i: answer) as raw:
        upstream = client(raw)
        for _ in range(2):
            assert await fetch(upstream) == (200, body)
        assert raw.connections == 1
        await upstream.close()
