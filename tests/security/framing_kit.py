"""The wire-framing bench (issue 8 items 1, 13, 16): the real ``scopegate run`` process in front of
``RawUpstream``, a raw client, the decision log, and the framing invariant.

The invariant (issue 8 item 1): each upstream connection's byte stream parses, strictly, into exactly the
requests the decision log allowed — same method, same path, same body length, nothing extra. A request the
proxy aborted (the client went away mid-body, or the upstream answered before the body was relayed) may end
a connection's stream unfinished, but only on a connection the proxy then closed, so no byte of it can be
read as part of another request.

The process and the upstream are started once per test module (``framing_gate``); a check looks only at
the decision lines and upstream bytes written since it began (``len(gate.decisions())`` and ``gate.cursor()``),
so the tests of a module must not run concurrently.
"""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import RunningScopegate, launch
from tests.security.raw_upstream import ParsedRequest, RawUpstream, UpstreamConnection, parse_one, parse_stream

RESOURCE = "https://api.example.com/orders"
SECRET = "framing-secret-0123456789abcdef"


def framing_config(upstream_url: str) -> dict[str, Any]:
    return {
        "upstream": {"url": upstream_url, "timeout": "3s", "connectTimeout": "1s"},
        "proxy": {"limits": {"readTimeout": "2s", "maxBodyBytes": 65536}},
        "routes": [
            {"name": "health", "path": "/health", "public": True},
            {"name": "tracing", "path": "/tracing", "public": True, "methods": ["TRACE", "GET"]},
            {"name": "orders-read", "path": "/orders", "methods": ["GET", "HEAD"], "scopes": {"anyOf": ["orders:read"]}},
            {"name": "orders-write", "path": "/orders", "methods": ["POST", "PUT", "PATCH", "DELETE"],
             "scopes": {"allOf": ["orders:write"]}},
        ],
        "authorizationServers": [{
            "id": "orders", "name": "Orders API", "audiences": [RESOURCE],
            "scopes": [{"name": "orders:read"}, {"name": "orders:write"}],
            "policies": [{"name": "Everyone", "priority": 1, "conditions": {"clients": {"include": ["ALL_CLIENTS"]}},
                          "rules": [{"name": "All", "priority": 1,
                                     "conditions": {"grantTypes": {"include": ["client_credentials"]},
                                                    "scopes": {"include": ["*"]}},
                                     "actions": {"token": {"accessTokenLifetimeMinutes": 60}}}]}],
        }],
        "apps": [{"clientId": "service", "clientSecret": SECRET, "name": "Service"}],
    }


class FramingGate:
    """The running process and its raw upstream (a plain class: hypothesis prints it with a failing example)."""

    def __init__(self, process: RunningScopegate, upstream: RawUpstream, host: str, port: int) -> None:
        self.process = process
        self.upstream = upstream
        self.host = host
        self.port = port
        self._tokens: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"FramingGate({self.process.proxy} -> {self.upstream.url})"

    def token(self, scope: str = "orders:read") -> str:
        if scope not in self._tokens:
            response = httpx.post(f"{self.process.core}/oauth2/orders/v1/token", auth=("service", SECRET),
                                  data={"grant_type": "client_credentials", "scope": scope})
            assert response.status_code == 200, response.text
            self._tokens[scope] = str(response.json()["access_token"])
        return self._tokens[scope]

    def decisions(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.process.output().splitlines():
            if line.startswith("{") and '"requestId"' in line:
                lines.append(json.loads(line))
        return lines

    def cursor(self) -> UpstreamCursor:
        return UpstreamCursor(self.upstream, [len(c.data) for c in self.upstream.snapshot()])

    def settle(self, cursor: UpstreamCursor, quiet: float = 0.3, limit: float = 5.0) -> None:
        """Wait until neither the decision log nor the upstream has changed for ``quiet`` seconds (longer than
        the decision log's 100 ms batching interval, with room for a loaded machine)."""
        deadline = time.monotonic() + limit
        last: tuple[int, int, int] | None = None
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            state = (len(self.process.output()), sum(len(c.data) for c in self.upstream.snapshot()),
                     sum(c.closed_by_peer for c in self.upstream.snapshot()))
            if state != last:
                last, stable_since = state, time.monotonic()
            elif time.monotonic() - stable_since >= quiet:
                return
            time.sleep(0.02)


@dataclass
class UpstreamCursor:
    """Where each upstream connection's stream stood when a check began (pooled connections carry over)."""

    upstream: RawUpstream
    offsets: list[int]

    def streams(self) -> list[tuple[UpstreamConnection, bytes]]:
        out = []
        for i, conn in enumerate(self.upstream.snapshot()):
            start = self.offsets[i] if i < len(self.offsets) else 0
            data = bytes(conn.data[start:])
            if data:
                out.append((conn, data))
        return out


@pytest.fixture(scope="module")
def framing_gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FramingGate]:
    upstream = RawUpstream().start()
    tmp: Path = tmp_path_factory.mktemp("framing")
    process = launch(tmp, framing_config(upstream.url), env={"PYTHONUNBUFFERED": "1"}, name="framing")
    host, _, port = process.proxy.removeprefix("http://").partition(":")
    try:
        yield FramingGate(process, upstream, host, int(port))
    finally:
        process.stop()
        upstream.stop()


# ---------------------------------------------------------------------------------------------- the client


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class Exchange:
    responses: list[Response]
    closed: bool
    """The proxy closed the connection."""
    raw: bytes


def parse_responses(data: bytes) -> list[Response]:
    out: list[Response] = []
    pos = 0
    while True:
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            return out
        lines = data[pos:end].split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name.decode("latin-1").strip(), value.decode("latin-1").strip()))
        pos = end + 4
        lengths = [v for k, v in headers if k.lower() == "content-length"]
        if any(k.lower() == "transfer-encoding" for k, _ in headers):
            body = bytearray()
            while True:
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    return out
                size = int(data[pos:eol].split(b";")[0], 16)
                pos = eol + 2
                if size == 0:
                    if data[pos:pos + 2] != b"\r\n":
                        return out
                    pos += 2
                    break
                if len(data) < pos + size + 2:
                    return out
                body += data[pos:pos + size]
                pos += size + 2
            out.append(Response(status, headers, bytes(body)))
        else:
            length = int(lengths[0]) if lengths else 0
            if len(data) < pos + length:
                return out
            out.append(Response(status, headers, data[pos:pos + length]))
            pos += length


def exchange(gate: FramingGate, parts: Sequence[bytes], *, expect: int | None = None, idle: float = 0.2,
             total: float = 4.0, pause: float = 0.0, half_close: bool = False) -> Exchange:
    """Send ``parts`` on one connection (``pause`` seconds apart) and read until the proxy closes it, ``expect``
    responses have arrived, or it has been quiet for ``idle`` seconds."""
    raw = b""
    closed = False
    with socket.create_connection((gate.host, gate.port), timeout=total) as sock:
        for i, part in enumerate(parts):
            if i and pause:
                time.sleep(pause)
            try:
                sock.sendall(part)
            except OSError:
                closed = True
                break
        if half_close and not closed:
            sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + total
        sock.settimeout(idle)
        while not closed and time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            raw += chunk
            if expect is not None and len(parse_responses(raw)) >= expect:
                # See whether the proxy closes right after (it must, after refusing framing).
                sock.settimeout(0.1)
    return Exchange(parse_responses(raw), closed, raw)


def request(method: str, target: str, headers: Sequence[tuple[str, str]] = (), body: bytes = b"",
            host: str | None = "api.example.com", version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# ---------------------------------------------------------------------------------------------- the invariant


@dataclass
class UpstreamView:
    complete: list[ParsedRequest]
    unfinished: list[tuple[str, str]]
    """(method, target) of requests a closed connection's stream ends in the middle of."""
    problems: list[str]


def upstream_view(cursor: UpstreamCursor) -> UpstreamView:
    complete: list[ParsedRequest] = []
    unfinished: list[tuple[str, str]] = []
    problems: list[str] = []
    for conn, data in cursor.streams():
        parsed = parse_stream(data)
        complete += parsed.requests
        if parsed.error is not None:
            problems.append(f"an upstream stream holds something that is not a request: {parsed.error}")
        elif parsed.rest:
            head_end = parsed.rest.find(b"\r\n\r\n")
            line = parsed.rest.split(b"\r\n", 1)[0].split(b" ")
            if not conn.closed_by_peer:
                problems.append(f"an unfinished request on a connection left open: {parsed.rest[:120]!r}")
            elif head_end < 0 or len(line) != 3:
                problems.append(f"a closed connection ends inside a request head: {parsed.rest[:120]!r}")
            else:
                unfinished.append((line[0].decode(), line[1].decode("latin-1")))
                assert parse_one(parsed.rest) is None
    return UpstreamView(complete, unfinished, problems)


def check_invariant(gate: FramingGate, cursor: UpstreamCursor, since: int, bodies: dict[str, int]) -> list[str]:
    """The problems found (empty when the invariant holds) since decision line ``since`` and ``cursor``.

    ``bodies`` maps a target to the body length its client sent (absent: no body). An allowed request the
    upstream never saw is a problem only when its answer came from the upstream (a 2xx or 3xx status): one
    aborted before its head went out (the client left, its body was too large or too slow) reached nothing."""
    view = upstream_view(cursor)
    problems = list(view.problems)
    decisions = [d for d in gate.decisions()[since:] if d["decision"] == "allow"]
    allowed = Counter((d["method"], d["path"]) for d in decisions)
    answered = Counter((d["method"], d["path"]) for d in decisions if 200 <= d["status"] < 400)
    seen: Counter[tuple[str, str]] = Counter()
    for req in view.complete:
        seen[(req.method, req.target)] += 1
        want = bodies.get(req.target, 0)
        if len(req.body) != want:
            problems.append(f"{req.method} {req.target} reached the upstream with a {len(req.body)}-byte body, "
                            f"the client sent {want}")
        if req.trailers:
            problems.append(f"{req.method} {req.target} reached the upstream with trailers {req.trailers}")
    for method, target in view.unfinished:
        seen[(method, target)] += 1
    extra = seen - allowed
    missing = answered - seen
    if extra:
        problems.append(f"the upstream received requests the decision log did not allow: {sorted(extra)}")
    if missing:
        problems.append(f"allowed requests the upstream did not receive: {sorted(missing)}")
    return problems
