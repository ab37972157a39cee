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


# ------------------------------------------------------------------------------------- a misbehaving upstream


def _abort(conn: socket.socket) -> None:
    """Close with RST instead of FIN (SO_LINGER 0), as a crashed or reset peer does. ``SHUT_RD`` first wakes a
    thread blocked in ``recv`` on it (a close alone would not, and the socket would stay open until it returned)."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RD)
    conn.close()


@dataclass
class FaultyUpstream:
    """An upstream whose behaviour the request path chooses (issue 12 item 4); every request it reads is recorded
    as (connection number, index on that connection, method, target).

    - ``/reset-mid``: a head declaring 1,000 bytes of body, 10 of them, then RST;
    - ``/reset-head``: half a status line, then RST (bytes of a response arrived: never retried);
    - ``/close-head``: close (FIN) at once, not a byte answered, on any connection;
    - ``/drop-reused``: on a connection's second or later request, close (FIN) without a byte: the keep-alive
      race a pooled connection meets when the upstream closes it just as the proxy reuses it; answered on a
      connection's first request;
    - ``/hang-head``: never answer; ``/trickle-head``: one byte of a head every 0.1 s, forever;
    - ``/hang-body``: a head declaring 1,000 bytes, 10 of them, then nothing;
    - ``/big-headers``: a 200 carrying a 64 KiB header;
    - anything else: 200 with a small JSON body, keep-alive. ``idle_close`` > 0 closes a connection that long
      after its last answer (an upstream keep-alive timeout shorter than the proxy's).

    ``start(port)`` binds a given port (SO_REUSEADDR), so ``stop()`` then ``start(port)`` is a restart."""

    idle_close: float = 0.0
    url: str = ""
    port: int = 0
    seen: list[tuple[int, int, str, str]] = field(default_factory=list)
    connections: int = 0
    _sock: socket.socket | None = None
    _open: list[socket.socket] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)

    def start(self, port: int = 0) -> FaultyUpstream:
        self._stopping = threading.Event()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
        self._sock = sock
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        thread = threading.Thread(target=self._accept, args=(sock, self._stopping), daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop listening and reset every open connection (a crashed upstream)."""
        self._stopping.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
            self._sock = None
        with self._lock:
            conns, self._open = self._open, []
        for conn in conns:
            _abort(conn)
        for thread in self._threads:
            thread.join(5)
        self._threads = []

    def restart_with(self, idle_close: float) -> None:
        """Restart on the same port with another ``idle_close``."""
        self.stop()
        self.idle_close = idle_close
        self.start(self.port)

    def targets(self, target: str) -> list[tuple[int, int, str, str]]:
        with self._lock:
            return [entry for entry in self.seen if entry[3] == target]

    def _accept(self, sock: socket.socket, stopping: threading.Event) -> None:
        while not stopping.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                number = self.connections
                self._open.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn, number, stopping), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket, number: int, stopping: threading.Event) -> None:
        data = b""
        index = 0
        try:
            if self.idle_close:
                conn.settimeout(self.idle_close)
            while not stopping.is_set():
                one = parse_one(data)
                if one is None:
                    try:
                        chunk = conn.recv(65536)
                    except TimeoutError:
                        return  # idle past idle_close: close (FIN)
                    if not chunk:
                        return
                    data += chunk
                    continue
                request, end = one
                data = data[end:]
                with self._lock:
                    self.seen.append((number, index, request.method, request.target))
                index += 1
                if not self._answer(conn, request, index, stopping):
                    return
        except OSError:
            return
        finally:
            with self._lock:
                if conn in self._open:
                    self._open.remove(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def _answer(self, conn: socket.socket, request: ParsedRequest, index: int, stopping: threading.Event) -> bool:
        """Answer one request; False when the connection is done."""
        path = request.target.partition("?")[0]
        if path.startswith("/reset-mid"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
            time.sleep(0.05)
            _abort(conn)
            return False
        if path.startswith("/reset-head"):
            conn.sendall(b"HTTP/1.1 200 O")
            time.sleep(0.05)
            _abort(conn)
            return False
        if path.startswith("/close-head") or (path.startswith("/drop-reused") and index > 1):
            return False
        if path.startswith("/hang-head"):
            stopping.wait(60)
            return False
        if path.startswith("/trickle-head"):
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000:
                if stopping.wait(0.1):
                    return False
                conn.sendall(bytes([byte]))
            return False
        if path.startswith("/hang-body"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
            stopping.wait(60)
            return False
        if path.startswith("/big-headers"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * 65536 + b"\r\nContent-Length: 2\r\n\r\nok")
            return True
        answer = _response(request.target, index)
        conn.sendall(answer[:answer.index(b"\r\n\r\n") + 4] if request.method == "HEAD" else answer)
        return True
