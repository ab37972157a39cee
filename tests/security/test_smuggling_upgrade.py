"""Issue 8 item 1: request smuggling through a non-WebSocket ``Upgrade`` plus ``Content-Length``, through the
real process and a raw upstream that answers before reading the body.

httptools treats a request with ``Connection: Upgrade`` and an ``Upgrade`` header as an upgrade and skips its
body; the proxy used to forward the declared ``Content-Length`` with no body bytes and put the upstream
connection back in the pool, where the start of the next forwarded request became that body.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time

import pytest

from proxy.keys import IssuerKeys, LocalKeys
from tests.security.attack_bench import ADMIN_ISS, ORDERS_ISS, Gate, KeyTable, Revocations, build_proxy_app, gate_config
from tests.security.framing_kit import FramingGate, check_invariant, exchange, framing_gate, request
from tests.security.raw_upstream import RawUpstream

pytestmark = pytest.mark.e2e

__all__ = ["framing_gate"]

ISSUE_FIRST = (b"GET /health/early HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
               b"Content-Length: 52\r\n\r\n")
ISSUE_SECOND = b"GET /health/x HTTP/1.1\r\nHost: x\r\nX-A: GET /admin/secret HTTP/1.1\r\n\r\n"


def _offset_of(gate: FramingGate, probe: bytes, needle: bytes) -> int:
    """Where ``needle`` lands in the bytes the proxy forwards for ``probe`` (the attacker's length scan)."""
    cursor = gate.cursor()
    got = exchange(gate, [probe], expect=1)
    assert got.responses and got.responses[0].status == 200, got.raw
    gate.settle(cursor)
    streams = cursor.streams()
    assert len(streams) == 1
    return streams[0][1].index(needle)


def test_request_smuggling_upgrade_h2c_with_content_length_issue_bytes(framing_gate: FramingGate) -> None:
    """The issue's exact bytes: the h2c upgrade carrying Content-Length 52 is refused with 400 and the
    connection closed, and every upstream stream holds exactly the allowed requests (none here)."""
    gate = framing_gate
    since, cursor = len(gate.decisions()), gate.cursor()
    got = exchange(gate, [ISSUE_FIRST, ISSUE_SECOND], pause=0.3, expect=2)
    gate.settle(cursor)
    assert [r.status for r in got.responses][:1] == [400], got.raw
    assert got.closed, "a refused upgrade must close the connection"
    assert check_invariant(gate, cursor, since, {}) == []


def test_request_smuggling_upgrade_h2c_tuned_length_runs_no_hidden_request(framing_gate: FramingGate) -> None:
    """The attack with the length scanned to the hidden request's offset: the upstream never sees
    ``GET /admin/secret``, a request the gate never decided on."""
    gate = framing_gate
    length = _offset_of(gate, ISSUE_SECOND, b"GET /admin/secret")
    first = ISSUE_FIRST.replace(b"Content-Length: 52", b"Content-Length: %d" % length)
    since, cursor = len(gate.decisions()), gate.cursor()
    exchange(gate, [first], expect=1)
    exchange(gate, [ISSUE_SECOND], expect=1)
    gate.settle(cursor)
    for _, data in cursor.streams():
        assert b"\r\nGET /admin/secret" not in data.replace(b"X-A: GET /admin/secret", b"")
    assert check_invariant(gate, cursor, since, {}) == []


def test_request_smuggling_upgrade_scope_bypass_delete_with_read_token(framing_gate: FramingGate) -> None:
    """With only an ``orders:read`` token the smuggled ``DELETE /orders/1`` never reaches the upstream, with or
    without the gate's identity headers."""
    gate = framing_gate
    token = gate.token("orders:read")
    second = request("GET", "/orders/list", [("Authorization", f"Bearer {token}"),
                                             ("X-A", "DELETE /orders/1 HTTP/1.1")])
    length = _offset_of(gate, second, b"DELETE /orders/1")
    first = request("GET", "/health/early", [("Connection", "Upgrade"), ("Upgrade", "h2c"),
                                             ("Content-Length", str(length))])
    since, cursor = len(gate.decisions()), gate.cursor()
    exchange(gate, [first], expect=1)
    exchange(gate, [second], expect=1)
    gate.settle(cursor)
    for _, data in cursor.streams():
        assert b"\r\nDELETE /orders/1" not in data.replace(b"X-A: DELETE /orders/1", b"")
    assert check_invariant(gate, cursor, since, {}) == []


def _ws_key() -> str:
    return base64.b64encode(b"0123456789abcdef").decode()


@pytest.mark.parametrize(("name", "headers"), [
    ("h2c", [("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "h2c"), ("HTTP2-Settings", "AAMAAABkAAQCAAAAAAIAAAAA")]),
    ("tls", [("Connection", "Upgrade"), ("Upgrade", "TLS/1.2")]),
    ("websocket-no-key", [("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")]),
    ("websocket-short-key", [("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"),
                             ("Sec-WebSocket-Key", base64.b64encode(b"short").decode())]),
    ("websocket-version-8", [("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "8"),
                             ("Sec-WebSocket-Key", _ws_key())]),
    ("websocket-with-body", [("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"),
                             ("Sec-WebSocket-Key", _ws_key()), ("Content-Length", "20")]),
    ("upgrade-without-connection", [("Upgrade", "h2c"), ("Content-Length", "20")]),
])
def test_request_smuggling_upgrade_not_a_websocket_handshake_refused(framing_gate: FramingGate, name: str,
                                                                     headers: list[tuple[str, str]]) -> None:
    """Any Upgrade that is not a valid RFC 6455 §4.2.1 handshake is 400 and the connection closes; the bytes
    after its head (a hidden request here) never reach the upstream."""
    gate = framing_gate
    body = b"GET /health/hidden HTTP/1.1\r\nHost: x\r\n\r\n"
    body = body[:20] if any(k == "Content-Length" for k, _ in headers) else body
    since, cursor = len(gate.decisions()), gate.cursor()
    got = exchange(gate, [request("GET", f"/health/early/{name}", headers) + body], expect=1)
    gate.settle(cursor)
    assert [r.status for r in got.responses][:1] == [400], got.raw
    assert got.closed
    assert cursor.streams() == [], "a refused upgrade reached the upstream"
    assert check_invariant(gate, cursor, since, {}) == []


@pytest.mark.parametrize("target", ["api.example.com:443", "/health/early"])
def test_request_smuggling_connect_refused(framing_gate: FramingGate, target: str) -> None:
    """CONNECT (a tunnel: what follows its head is not HTTP) is refused with 405 and the connection closes."""
    gate = framing_gate
    since, cursor = len(gate.decisions()), gate.cursor()
    got = exchange(gate, [request("CONNECT", target) + b"GET /health/tunnelled HTTP/1.1\r\nHost: x\r\n\r\n"],
                   expect=1)
    gate.settle(cursor)
    assert [r.status for r in got.responses][:1] in ([405], [400]), got.raw
    assert got.closed
    assert cursor.streams() == []
    assert check_invariant(gate, cursor, since, {}) == []


def test_request_smuggling_short_body_closes_the_upstream_connection(framing_gate: FramingGate) -> None:
    """A client that declares 100 bytes, sends 10 and leaves: the upstream connection that carried the
    partial body is closed, never pooled, so the next request never becomes the rest of that body."""
    gate = framing_gate
    since, cursor = len(gate.decisions()), gate.cursor()
    exchange(gate, [request("POST", "/health/late/short", [("Content-Length", "100")], b"x" * 10)], idle=0.3)
    gate.settle(cursor)
    after = exchange(gate, [request("POST", "/health/late/next", [("Content-Length", "5")], b"hello")], expect=1)
    gate.settle(cursor)
    assert after.responses and after.responses[0].status == 200
    streams = cursor.streams()
    short = [conn for conn, data in streams if b"/health/late/short" in data]
    assert short and all(conn.closed_by_peer for conn in short), "the aborted body's connection stayed open"
    assert check_invariant(gate, cursor, since, {"/health/late/next": 5, "/health/late/short": 100}) == []


def test_request_smuggling_early_answer_mid_body_closes_the_upstream_connection(framing_gate: FramingGate) -> None:
    """The upstream answers before the body is relayed and the body is still arriving: that connection is
    closed once the answer is in, never reused with the body half sent."""
    gate = framing_gate
    since, cursor = len(gate.decisions()), gate.cursor()
    head = request("POST", "/health/early/slow", [("Content-Length", "40")])
    got = exchange(gate, [head + b"a" * 10, b"b" * 30], pause=0.3, expect=1)
    nxt = exchange(gate, [request("GET", "/health/late/after")], expect=1)
    gate.settle(cursor)
    assert got.responses and got.responses[0].status == 200
    assert nxt.responses and nxt.responses[0].status == 200
    assert check_invariant(gate, cursor, since, {"/health/early/slow": 40}) == []


# ---------------------------------------------------------------------------------------------- in process


async def test_request_smuggling_body_shorter_than_content_length_never_pooled() -> None:
    """A server that hands the app fewer body bytes than the declared Content-Length (httptools does, for an
    upgrade it skips): the proxy aborts that upstream request and closes its connection, so the next request
    on the pool is never read as the rest of that body."""
    upstream = RawUpstream().start()
    keys = IssuerKeys(LocalKeys(KeyTable([]), {ORDERS_ISS: "orders", ADMIN_ISS: "admin"}, now=time.monotonic), {})  # type: ignore[arg-type]
    await keys.start()
    app = build_proxy_app(gate_config(upstream.url), keys, Revocations(), io.StringIO())
    await app.startup()
    gate = Gate(app, None, Revocations(), KeyTable([]), io.StringIO(), None)  # type: ignore[arg-type]
    try:
        status, _, _ = await gate.asgi("GET", b"/public/early/a", [(b"content-length", b"52")])
        assert status in (400, 502)
        status, _, _ = await gate.asgi("GET", b"/public/late/b", [])
        assert status == 200
        await asyncio.sleep(0.1)
        problems = []
        for conn in upstream.snapshot():
            parsed = conn.parsed()
            for req in parsed.requests:
                if req.target == "/public/early/a":
                    problems.append("the short body was forwarded as a complete request")
            if parsed.rest and not conn.closed_by_peer:
                problems.append("the connection with the short body was left open")
        targets = [req.target for conn in upstream.snapshot() for req in conn.parsed().requests]
        assert "/public/late/b" in targets
        assert problems == []
    finally:
        await app.shutdown()
        await keys.aclose()
        upstream.stop()


# ---------------------------------------------------------------------------------------------- found by the property


def test_request_smuggling_pipelined_parse_error_keeps_the_forwarded_request_allowed(framing_gate: FramingGate) -> None:
    """A request pipelined behind a forwarded one fails to parse (``Transfer-Encoding: identity``): the forwarded one
    is logged as the allowed request the upstream ran, not as a 500 denial after a write to a closed socket, and
    no 400 is written where the first request's answer belongs."""
    gate = framing_gate
    since, cursor = len(gate.decisions()), gate.cursor()
    data = request("GET", "/health/early/pipelined-a") + request("GET", "/health/early/pipelined-b",
                                                                 [("Transfer-Encoding", "identity")])
    got = exchange(gate, [data], expect=2)
    gate.settle(cursor)
    assert got.closed
    assert [(d["path"], d["decision"], d["status"]) for d in gate.decisions()[since:]] == [
        ("/health/early/pipelined-a", "allow", 200)]
    assert check_invariant(gate, cursor, since, {}) == []


def test_request_smuggling_expect_100_continue_is_not_forwarded(framing_gate: FramingGate) -> None:
    """The server answers the client's ``Expect: 100-continue`` itself; forwarded, it made the proxy hold the body
    until the upstream sent a 100 of its own (an upstream that never does stalled the request to a 504)."""
    gate = framing_gate
    since, cursor = len(gate.decisions()), gate.cursor()
    got = exchange(gate, [request("POST", "/health/late/expect", [("Expect", "100-continue"), ("Content-Length", "5")]),
                          b"hello"], pause=0.1, expect=2)
    gate.settle(cursor)
    assert [r.status for r in got.responses] == [100, 200], got.raw
    ((_, stream),) = cursor.streams()
    assert b"\r\nexpect:" not in stream.lower()
    assert check_invariant(gate, cursor, since, {"/health/late/expect": 5}) == []


def test_request_smuggling_body_cut_off_at_the_size_limit_closes_the_upstream_connection(framing_gate: FramingGate) -> None:
    """A chunked body that grows past maxBodyBytes after its head was forwarded: 413, and the upstream connection
    that carried the part already relayed is closed, never pooled with a request half sent."""
    gate = framing_gate
    since, cursor = len(gate.decisions()), gate.cursor()
    head = request("POST", "/health/late/too-big", [("Transfer-Encoding", "chunked")])
    chunk = b"%x\r\n%s\r\n" % (30000, b"z" * 30000)
    got = exchange(gate, [head + chunk, chunk, chunk + b"0\r\n\r\n"], pause=0.1, expect=1)
    after = exchange(gate, [request("GET", "/health/late/after-big")], expect=1)
    gate.settle(cursor)
    assert [r.status for r in got.responses][:1] == [413], got.raw
    assert after.responses and after.responses[0].status == 200
    big = [conn for conn, data in cursor.streams() if b"/health/late/too-big" in data]
    assert all(conn.closed_by_peer for conn in big)
    assert check_invariant(gate, cursor, since, {}) == []
