"""A raw-socket upstream that records every byte it receives, per connection, and a strict HTTP/1.1 parser.

The framing tests (issue 8 item 1) need to see exactly what the proxy wrote on each upstream connection, not
what a lenient HTTP server made of it. ``RawUpstream`` accepts connections on a free port, keeps each
connection's bytes in order, and answers every request it parses. A request whose path contains ``/early``
is answered as soon as its head has arrived, *before* its body is read, as Node.js ``http`` and
uvicorn+Starlette do for a handler that does not read the body: the upstream then reads the declared body
afterwards, so a proxy that declares more body than it sends makes the upstream swallow the start of the
next request on that connection. That is the smuggling primitive these tests look for.

``parse_stream`` splits one connection's byte stream into requests with RFC 9112 framing, strictly: one
Content-Length or ``Transfer-Encoding: chunked``, never both; anything else is an error, and bytes that do
not form a complete request are returned as the remainder. The tests compare what it finds with what the
decision log allowed.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from dataclasses import dataclass, field

_REQUEST_LINE = re.compile(rb"([A-Z]+) (\S+) HTTP/1\.1")
_HEADER = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([^\r\n]*?)[ \t]*")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})")


class FramingError(Exception):
    """The stream holds something that is not a well-framed HTTP/1.1 request."""


@dataclass(frozen=True)
class ParsedRequest:
    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    trailers: tuple[tuple[str, str], ...] = ()

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class Parsed:
    requests: list[ParsedRequest]
    rest: bytes
    """Bytes after the last complete request: an incomplete request, or nothing."""
    error: str | None = None
    """Why the stream stopped parsing, when it holds something that is not HTTP/1.1."""


def _parse_head(data: bytes, start: int) -> tuple[str, str, list[tuple[str, str]], int] | None:
    """(method, target, headers, offset after the head), or None when the head is incomplete."""
    end = data.find(b"\r\n\r\n", start)
    if end < 0:
        return None
    lines = data[start:end].split(b"\r\n")
    line = _REQUEST_LINE.fullmatch(lines[0])
    if line is None:
        raise FramingError(f"not an HTTP/1.1 request line: {lines[0][:80]!r}")
    headers = []
    for raw in lines[1:]:
        header = _HEADER.fullmatch(raw)
        if header is None:
            raise FramingError(f"not a header line: {raw[:80]!r}")
        headers.append((header[1].decode("latin-1"), header[2].decode("latin-1")))
    return line[1].decode(), line[2].decode("latin-1"), headers, end + 4


def _framing(headers: list[tuple[str, str]]) -> tuple[int | None, bool]:
    lengths = [v for k, v in headers if k.lower() == "content-length"]
    encodings = [v for k, v in headers if k.lower() == "transfer-encoding"]
    if lengths and encodings:
        raise FramingError("Content-Length and Transfer-Encoding together")
    if len(lengths) > 1 or len(encodings) > 1:
        raise FramingError("a repeated framing header")
    if encodings:
        if encodings[0].lower() != "chunked":
            raise FramingError(f"Transfer-Encoding {encodings[0]!r}")
        return None, True
    if lengths:
        if not lengths[0].isdigit():
            raise FramingError(f"Content-Length {lengths[0]!r}")
        return int(lengths[0]), False
    return 0, False


def _parse_chunked(data: bytes, pos: int) -> tuple[bytes, list[tuple[str, str]], int] | None:
    """(body, trailers, offset after the message), or None when incomplete."""
    body = bytearray()
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None
        size_line = data[pos:eol]
        size = _CHUNK_SIZE.fullmatch(size_line)
        if size is None:
            raise FramingError(f"bad chunk size line {size_line[:40]!r}")
        n = int(size[1], 16)
        pos = eol + 2
        if n == 0:
            break
        if len(data) < pos + n + 2:
            return None
        body += data[pos:pos + n]
        if data[pos + n:pos + n + 2] != b"\r\n":
            raise FramingError("chunk data not followed by CRLF")
        pos += n + 2
    trailers: list[tuple[str, str]] = []
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None
        line = data[pos:eol]
        pos = eol + 2
        if not line:
            return bytes(body), trailers, pos
        header = _HEADER.fullmatch(line)
        if header is None:
            raise FramingError(f"bad trailer line {line[:80]!r}")
        trailers.append((header[1].decode("latin-1"), header[2].decode("latin-1")))


def parse_one(data: bytes, start: int = 0) -> tuple[ParsedRequest, int] | None:
    """One request starting at ``start`` and the offset after it; None when it is not complete yet."""
    head = _parse_head(data, start)
    if head is None:
        return None
    method, target, headers, pos = head
    length, chunked = _framing(headers)
    if chunked:
        parsed = _parse_chunked(data, pos)
        if parsed is None:
            return None
        body, trailers, pos = parsed
        return ParsedRequest(method, target, tuple(headers), body, tuple(trailers)), pos
    assert length is not None
    if len(data) < pos + length:
        return None
    return ParsedRequest(method, target, tuple(headers), data[pos:pos + length]), pos + length


def parse_stream(data: bytes) -> Parsed:
    """Split one connection's bytes into the requests they frame, strictly (see the module docstring)."""
    requests: list[ParsedRequest] = []
    pos = 0
    while pos < len(data):
        try:
            one = parse_one(data, pos)
        except FramingError as exc:
            return Parsed(requests, data[pos:], str(exc))
        if one is None:
            break
        request, pos = one
        requests.append(request)
    return Parsed(requests, data[pos:])


# ---------------------------------------------------------------------------------------------- the upstream


@dataclass
class UpstreamConnection:
    data: bytearray = field(default_factory=bytearray)
    closed_by_peer: bool = False
    """The proxy closed (or reset) this connection."""
    answered: int = 0

    def parsed(self) -> Parsed:
        return parse_stream(bytes(self.data))


def _response(target: str, answered: int) -> bytes:
    body = f'{{"upstream":"raw","target":{target!r},"n":{answered}}}'.replace("'", '"').encode()
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())
    return (f"HTTP/1.1 200 OK\r\nDate: {date}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


@dataclass
class RawUpstream:
    """Records every byte per connection; answers each request (early for ``/early`` paths)."""

    url: str = ""
    port: int = 0
    connections: list[UpstreamConnection] = field(default_factory=list)
    _sock: socket.socket | None = None
    _threads: list[threading.Thread] = field(default_factory=list)
    _open: list[socket.socket] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: bool = False

    def start(self) -> RawUpstream:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        self._sock = sock
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stopping = True
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        with self._lock:
            for conn in self._open:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(5)

    def snapshot(self) -> list[UpstreamConnection]:
        with self._lock:
            return list(self.connections)

    def reset(self) -> None:
        """Forget the recorded connections (those still open keep recording into objects no one reads)."""
        with self._lock:
            self.connections = []

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._stopping:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            record = UpstreamConnection()
            with self._lock:
                self.connections.append(record)
                self._open.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn, record), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket, record: UpstreamConnection) -> None:
        pos = 0
        """Offset of the request being read; its head may have been answered already (early)."""
        answered_head_at = -1
        try:
            while True:
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    record.closed_by_peer = True
                    return
                with self._lock:
                    record.data += chunk
                    data = bytes(record.data)
                while True:
                    try:
                        head = _parse_head(data, pos)
                    except FramingError:
                        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        return
                    if head is None:
                        break
                    target = head[1]
                    early = "/early" in target
                    if early and answered_head_at != pos:
                        answered_head_at = pos
                        record.answered += 1
                        conn.sendall(_response(target, record.answered))
                    try:
                        one = parse_one(data, pos)
                    except FramingError:
                        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        return
                    if one is None:
                        break
                    pos = one[1]
                    if not early:
                        record.answered += 1
                        conn.sendall(_response(target, record.answered))
        except OSError:
            record.closed_by_peer = True
        finally:
            with self._lock:
                if conn in self._open:
                    self._open.remove(conn)
            conn.close()
