"""Issue 8 items 13 and 16 over the wire, through the real process and a raw upstream that records every byte:
chunked trailers, HTTP/0.9, HTTP/1.1 without Host, a malformed Host, one Date, CONNECT and TRACE."""

from __future__ import annotations

import pytest

from tests.security.framing_kit import FramingGate, check_invariant, exchange, framing_gate, request
from tests.security.raw_upstream import parse_stream

pytestmark = pytest.mark.e2e

__all__ = ["framing_gate"]


def chunked(body_chunks: list[bytes], trailers: list[tuple[str, str]]) -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in body_chunks) + b"0\r\n"
    out += b"".join(f"{k}: {v}\r\n".encode() for k, v in trailers)
    return out + b"\r\n"


# ---------------------------------------------------------------------------------------------- item 13


def test_chunked_trailers_never_reach_the_upstream_as_headers(framing_gate: FramingGate) -> None:
    """Trailer fields are dropped: the upstream sees neither a header nor a trailer the client put after the body."""
    gate = framing_gate
    since, cursor = len(gate.decisions()), gate.cursor()
    data = request("POST", "/health/late/trailers", [("Transfer-Encoding", "chunked")]) + chunked(
        [b"abc", b"defg"], [("X-Trailer-Injected", "1"), ("X-Scopegate-Subject", "admin"), ("Forwarded", "for=1.2.3.4")])
    got = exchange(gate, [data], expect=1)
    gate.settle(cursor)
    assert [r.status for r in got.responses] == [200], got.raw
    ((_, stream),) = cursor.streams()
    (forwarded,) = parse_stream(stream).requests
    assert forwarded.header("X-Trailer-Injected") == [] and forwarded.header("Forwarded") == []
    assert b"x-trailer-injected" not in stream.lower() and b"admin" not in stream and b"1.2.3.4" not in stream
    assert check_invariant(gate, cursor, since, {"/health/late/trailers": 7}) == []


def test_chunked_trailers_cannot_carry_the_bearer_token(framing_gate: FramingGate) -> None:
    """A token sent only as a trailer is no token: 401, and nothing reaches the upstream."""
    gate = framing_gate
    token = gate.token("orders:write")
    since, cursor = len(gate.decisions()), gate.cursor()
    data = request("POST", "/orders/trailer", [("Transfer-Encoding", "chunked")]) + chunked(
        [b"{}"], [("Authorization", f"Bearer {token}")])
    got = exchange(gate, [data], expect=1)
    gate.settle(cursor)
    assert [r.status for r in got.responses] == [401], got.raw
    assert cursor.streams() == []
    assert check_invariant(gate, cursor, since, {}) == []


# ---------------------------------------------------------------------------------------------- item 16


@pytest.mark.parametrize("line", [b"GET /health/http09\r\n\r\n", b"GET /health/http09 \r\n\r\n"])
def test_http09_request_line_refused(framing_gate: FramingGate, line: bytes) -> None:
    """An HTTP/0.9 request line (no version, hence no headers and no framing) is 400 and the connection closes."""
    gate = framing_gate
    cursor = gate.cursor()
    got = exchange(gate, [line], expect=1)
    gate.settle(cursor)
    assert got.raw.startswith(b"HTTP/1.1 400 "), got.raw
    assert got.closed
    assert cursor.streams() == []


def test_http_version_2_request_line_refused(framing_gate: FramingGate) -> None:
    """``HTTP/2.0`` in an HTTP/1 request line is not a version this listener speaks: 505, closed."""
    gate = framing_gate
    cursor = gate.cursor()
    got = exchange(gate, [b"GET /health/h2 HTTP/2.0\r\nHost: x\r\n\r\n"], expect=1)
    gate.settle(cursor)
    assert got.raw.startswith(b"HTTP/1.1 505 "), got.raw
    assert cursor.streams() == []


def test_http11_without_host_refused(framing_gate: FramingGate) -> None:
    """RFC 9112 §3.2: an HTTP/1.1 request without Host is 400; HTTP/1.0 without Host is still served."""
    gate = framing_gate
    since, cursor = len(gate.decisions()), gate.cursor()
    got = exchange(gate, [request("GET", "/health/nohost11", host=None)], expect=1)
    assert [r.status for r in got.responses] == [400], got.raw
    got = exchange(gate, [request("GET", "/health/nohost10", host=None, version="HTTP/1.0")], expect=1)
    assert [r.status for r in got.responses] == [200], got.raw
    gate.settle(cursor)
    assert [r.target for _, data in cursor.streams() for r in parse_stream(data).requests] == ["/health/nohost10"]
    assert check_invariant(gate, cursor, since, {}) == []


@pytest.mark.parametrize("host", ["evil.example, api.example.com", "a b", "api.example.com/x", "user@api.example.com",
                                  "[::1", "[zz::1]", "api.example.com:", "api.example.com:123456", "api.example.com:x",
                                  "", "\u00e9xample.com", "[fe80::1%25eth0]", "a\tb", "api.example.com:80:80"])
def test_host_header_invalid_refused(framing_gate: FramingGate, host: str) -> None:
    """A Host that is not ``host[:port]`` (RFC 3986) is 400: it would be copied into X-Forwarded-Host."""
    gate = framing_gate
    cursor = gate.cursor()
    got = exchange(gate, [request("GET", "/health/badhost", host=host)], expect=1)
    gate.settle(cursor)
    assert [r.status for r in got.responses] == [400], got.raw
    assert cursor.streams() == []


@pytest.mark.parametrize("host", ["api.example.com", "api.example.com:8443", "127.0.0.1", "127.0.0.1:80", "[::1]",
                                  "[::1]:8080", "[v1.fe]", "xn--exmple-cua.com", "a-b_c~d.example"])
def test_host_header_valid_becomes_x_forwarded_host(framing_gate: FramingGate, host: str) -> None:
    """A valid Host is forwarded as X-Forwarded-Host exactly."""
    gate = framing_gate
    cursor = gate.cursor()
    got = exchange(gate, [request("GET", "/health/goodhost", host=host)], expect=1)
    gate.settle(cursor)
    assert [r.status for r in got.responses] == [200], got.raw
    (req,) = [r for _, data in cursor.streams() for r in parse_stream(data).requests]
    assert req.header("X-Forwarded-Host") == [host]


def test_proxied_response_has_one_date_header(framing_gate: FramingGate) -> None:
    """The upstream's Date and the server's own used to both reach the client; exactly one does now."""
    gate = framing_gate
    got = exchange(gate, [request("GET", "/health/date")], expect=1)
    assert [r.status for r in got.responses] == [200]
    assert len(got.responses[0].header("Date")) == 1, got.raw


def test_connect_on_a_public_route_is_405(framing_gate: FramingGate) -> None:
    """CONNECT is never forwarded: 405 with Allow, and the connection closes."""
    gate = framing_gate
    cursor = gate.cursor()
    got = exchange(gate, [request("CONNECT", "/health/connect")], expect=1)
    gate.settle(cursor)
    assert [r.status for r in got.responses] == [405], got.raw
    assert got.responses[0].header("Allow")
    assert got.closed
    assert cursor.streams() == []


def test_trace_on_a_public_route_is_405_unless_the_route_names_it(framing_gate: FramingGate) -> None:
    """TRACE (the upstream would echo the gate's identity headers) is 405 on a route that does not list it;
    a route that lists TRACE in ``methods`` forwards it."""
    gate = framing_gate
    since, cursor = len(gate.decisions()), gate.cursor()
    got = exchange(gate, [request("TRACE", "/health/trace")], expect=1)
    assert [r.status for r in got.responses] == [405], got.raw
    assert got.responses[0].header("Allow")
    got = exchange(gate, [request("TRACE", "/tracing/ok")], expect=1)
    assert [r.status for r in got.responses] == [200], got.raw
    gate.settle(cursor)
    denied = [d for d in gate.decisions()[since:] if d["path"] == "/health/trace"]
    assert [(d["status"], d["reason"]) for d in denied] == [(405, "method_not_allowed")]
    assert check_invariant(gate, cursor, since, {}) == []
