"""security.md §3.1, §3.4-§3.7 over a real socket: framing, smuggling, targets and slow clients.

ASGITransport cannot send malformed framing, so these speak raw bytes to the gate behind uvicorn with
httptools (as ``scopegate run`` serves it). Each asserts the answer, that the connection is closed where
framing was ambiguous, and that nothing reached the upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from tests.security.attack_bench import READ_TIMEOUT, Gate, RawClient, read_response, request_bytes, valid_token


def smuggled(extra_headers: list[tuple[str, str]], body: bytes, target: str = "/public") -> bytes:
    """A request whose body hides a second request to /admin."""
    return request_bytes("POST", target, extra_headers, body)


HIDDEN = b"GET /admin HTTP/1.1\r\nHost: api.example.com\r\n\r\n"


async def assert_rejected_and_closed(wire: RawClient, gate: Gate, data: bytes, statuses: tuple[int, ...] = (400,)) -> None:
    response = await wire.exchange(data)
    assert response.status in (*statuses, 0), response.head
    assert response.closed, "ambiguous framing must close the connection"
    await asyncio.sleep(0.05)
    assert gate.upstream.started == 0, "an ambiguous request reached the upstream"


async def test_smuggling_control_a_clean_request_passes(wire: RawClient, gate: Gate) -> None:
    """The positive control over the wire: a well-formed public request is forwarded once."""
    response = await wire.exchange(request_bytes("GET", "/public"))
    assert response.status == 200
    assert gate.upstream.started == 1


async def test_smuggling_cl_te_both_present(wire: RawClient, gate: Gate) -> None:
    """CL.TE / TE.CL: Content-Length and Transfer-Encoding together are 400 and the connection closes."""
    body = b"0\r\n\r\n" + HIDDEN
    await assert_rejected_and_closed(wire, gate, smuggled(
        [("Content-Length", str(len(body))), ("Transfer-Encoding", "chunked")], body))


async def test_smuggling_te_cl_both_present_te_first(wire: RawClient, gate: Gate) -> None:
    """The same with the headers in the other order."""
    body = b"5\r\nhello\r\n0\r\n\r\n"
    await assert_rejected_and_closed(wire, gate, smuggled([("Transfer-Encoding", "chunked"), ("Content-Length", "3")], body))


async def test_smuggling_two_different_content_lengths(wire: RawClient, gate: Gate) -> None:
    """Two different Content-Length values are 400."""
    await assert_rejected_and_closed(wire, gate, smuggled([("Content-Length", "4"), ("Content-Length", "40")], b"abcd"))


@pytest.mark.parametrize("value", ["+4", "0x4", "-1", "4 4", "4,5", ""])
async def test_smuggling_malformed_content_length(wire: RawClient, gate: Gate, value: str) -> None:
    """A Content-Length that is not one decimal number is 400."""
    await assert_rejected_and_closed(wire, gate, smuggled([("Content-Length", value)], b"abcd"))


@pytest.mark.parametrize("value", ["xchunked", "chunked, identity", "gzip, chunked", "\x0bchunked", "chunked,", "chunked "])
async def test_smuggling_bad_transfer_encoding(wire: RawClient, gate: Gate, value: str) -> None:
    """Anything but exactly `chunked` as the Transfer-Encoding is 400/501 (gunicorn CVE-2024-1135, tinyproxy #616)."""
    body = b"4\r\nabcd\r\n0\r\n\r\n"
    response = await wire.exchange(smuggled([("Transfer-Encoding", value)], body))
    await asyncio.sleep(0.05)
    if gate.upstream.started:
        # `chunked ` (trailing OWS) is chunked per RFC 9110 §5.5; then only the one body may have passed.
        assert value.strip() == "chunked" and response.status == 200 and gate.upstream.requests[0].body == b"abcd"
    else:
        assert response.status in (0, 400, 501)


async def test_smuggling_two_transfer_encoding_headers(wire: RawClient, gate: Gate) -> None:
    """Two Transfer-Encoding headers are refused."""
    await assert_rejected_and_closed(wire, gate, smuggled([("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "identity")],
                                                          b"0\r\n\r\n"), (400, 501))


async def test_smuggling_space_before_colon(wire: RawClient, gate: Gate) -> None:
    """`Transfer-Encoding : chunked` (whitespace before the colon) is 400 (RFC 9112 §5.1)."""
    await assert_rejected_and_closed(wire, gate, smuggled([("Transfer-Encoding ", "chunked")], b"0\r\n\r\n"))


async def test_smuggling_obs_fold_rejected(wire: RawClient, gate: Gate) -> None:
    """RFC 9112 §5.2: an obs-folded header line is rejected, never joined into an identity header."""
    data = b"GET /public HTTP/1.1\r\nHost: api.example.com\r\nX-Scopegate-Subject: alice\r\n admin\r\n\r\n"
    await assert_rejected_and_closed(wire, gate, data)


@pytest.mark.parametrize("value", [b"a\x00b", b"a\rb"])
async def test_smuggling_nul_or_cr_in_header_value(wire: RawClient, gate: Gate, value: bytes) -> None:
    """Envoy CVE-2019-9900: NUL or a bare CR in a header value is 400."""
    data = b"GET /public HTTP/1.1\r\nHost: api.example.com\r\nX-Thing: " + value + b"\r\n\r\n"
    await assert_rejected_and_closed(wire, gate, data)


async def test_smuggling_bad_chunk_size_rejected(wire: RawClient, gate: Gate) -> None:
    """h11 CVE-2025-43859 class: a chunk size line ended by a bare LF is 400."""
    data = request_bytes("POST", "/public", [("Transfer-Encoding", "chunked")]) + b"4\nabcd\r\n0\r\n\r\n"
    response = await wire.exchange(data)
    assert response.status in (0, 400)
    await asyncio.sleep(0.05)
    assert gate.upstream.requests == []


async def test_smuggling_pipelined_request_after_a_rejected_one_is_not_served(wire: RawClient, gate: Gate) -> None:
    """After a framing rejection nothing else on that connection is read, so a hidden request never runs."""
    body = b"0\r\n\r\n"
    data = smuggled([("Content-Length", "5"), ("Transfer-Encoding", "chunked")], body) + HIDDEN + request_bytes("GET", "/public")
    await assert_rejected_and_closed(wire, gate, data)


async def test_smuggling_underscore_identity_header_name(wire: RawClient, gate: Gate) -> None:
    """`X_Scopegate_Subject` is refused or stripped: the upstream never sees a subject the client chose."""
    response = await wire.exchange(request_bytes("GET", "/public", [("X_Scopegate_Subject", "admin")]))
    assert response.status in (200, 400)
    for req in gate.upstream.requests:
        assert "admin" not in [v for _, v in req.headers]


async def test_smuggling_fragment_in_target_never_reaches_another_path(wire: RawClient, gate: Gate) -> None:
    """Envoy CVE-2021-32779: a `#` in the target never lets /admin be served without its token."""
    for target in ("/admin#x", "/public/x%23/../admin", "/public#/../admin"):
        await wire.exchange(request_bytes("GET", target))
    await asyncio.sleep(0.05)
    for req in gate.upstream.requests:
        assert req.raw_path.startswith("/public"), req.raw_path


async def test_smuggling_fragment_in_target_rejected(wire: RawClient, gate: Gate) -> None:
    """Issue 5 step 1: a fragment-bearing target is 400."""
    response = await wire.exchange(request_bytes("GET", "/public#/../admin"))
    assert response.status == 400
    assert gate.upstream.started == 0


@pytest.mark.parametrize("name", ["X-Scopegate-Subject", "X-SCOPEGATE-SUBJECT", "x-scopegate-subject", "X_Scopegate_Subject"])
async def test_smuggling_identity_header_spellings_never_reach_the_upstream(wire: RawClient, gate: Gate, name: str) -> None:
    """security.md §3.3: a client-sent identity header, in any case or `_` spelling, duplicated, is stripped or refused."""
    response = await wire.exchange(request_bytes("GET", "/public", [(name, "admin"), (name, "admin2")]))
    assert response.status in (200, 400)
    for req in gate.upstream.requests:
        assert not {"admin", "admin2"} & {v for _, v in req.headers}


async def test_smuggling_absolute_form_target_authority_is_ignored(wire: RawClient, gate: Gate) -> None:
    """RFC 9112 §3.2.2: an absolute-form target is reduced to its path; its authority never chooses anything."""
    response = await wire.exchange(request_bytes("GET", "http://evil.example/admin"))
    assert response.status in (400, 401, 403)
    await asyncio.sleep(0.05)
    assert gate.upstream.started == 0
    response = await wire.exchange(request_bytes("GET", "http://evil.example/public"))
    assert response.status in (200, 400)
    for req in gate.upstream.requests:
        assert req.raw_path == "/public" and "evil.example" not in [v for _, v in req.headers]


async def test_host_header_twice_rejected(wire: RawClient, gate: Gate) -> None:
    """Two Host headers are 400 (RFC 9112 §3.2)."""
    data = b"GET /public HTTP/1.1\r\nHost: api.example.com\r\nHost: evil.example\r\n\r\n"
    response = await wire.exchange(data)
    assert response.status in (0, 400)
    await asyncio.sleep(0.05)
    assert gate.upstream.started == 0


async def test_oversized_headers_over_the_wire_rejected(wire: RawClient, gate: Gate) -> None:
    """A 1 MiB Authorization header is refused (431 or a closed connection) before any token work."""
    response = await wire.exchange(request_bytes("GET", "/orders", [("Authorization", "Bearer " + "A" * (1 << 20))]))
    assert response.status in (0, 400, 413, 431)
    assert gate.upstream.started == 0


async def test_slowloris_headers_hit_the_read_deadline(wire: RawClient, gate: Gate) -> None:
    """security.md §3.7: a client trickling its headers is cut off at the read deadline, not held forever."""
    reader, writer = await asyncio.open_connection("127.0.0.1", wire.port)
    started = time.monotonic()

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            for i in range(1000):
                writer.write(f"X-{i}: 1\r\n".encode())
                await writer.drain()
                await asyncio.sleep(0.05)

    writer.write(b"GET /orders HTTP/1.1\r\nHost: api.example.com\r\n")
    trickler = asyncio.create_task(trickle())
    try:
        response = await read_response(reader, READ_TIMEOUT + 3)
        assert response.closed, "a trickling client held the connection past the read deadline"
        assert time.monotonic() - started < READ_TIMEOUT + 3
    finally:
        trickler.cancel()
        writer.close()
    assert gate.upstream.started == 0


async def test_slow_second_head_on_a_keep_alive_connection_gets_its_own_deadline(wire: RawClient, gate: Gate) -> None:
    """A head trickled on a reused connection is cut off a read deadline after it began: not earlier, not never."""
    reader, writer = await asyncio.open_connection("127.0.0.1", wire.port)
    try:
        writer.write(b"GET /orders HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
        first = await read_response(reader, READ_TIMEOUT + 3)
        assert first.status == 401 and not first.closed
        # Start the second head while the connection's first deadline is still pending, so that deadline
        # passes in the middle of the second head.
        await asyncio.sleep(READ_TIMEOUT * 0.7)
        started = time.monotonic()
        writer.write(b"GET /orders HTTP/1.1\r\nHost: api.example.com\r\n")

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                for i in range(1000):
                    writer.write(f"X-{i}: 1\r\n".encode())
                    await writer.drain()
                    await asyncio.sleep(0.05)

        trickler = asyncio.create_task(trickle())
        try:
            response = await read_response(reader, READ_TIMEOUT + 3)
            elapsed = time.monotonic() - started
        finally:
            trickler.cancel()
        assert response.closed, "a trickling second head held the connection past the read deadline"
        assert READ_TIMEOUT * 0.9 <= elapsed < READ_TIMEOUT + 3, f"cut off after {elapsed:.2f}s"
    finally:
        writer.close()
    assert gate.upstream.started == 0


async def test_slow_body_hits_the_read_deadline(wire: RawClient, gate: Gate) -> None:
    """A body that never completes is cut off at the read deadline; the upstream never gets a complete request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", wire.port)
    try:
        writer.write(request_bytes("POST", "/public", [("Content-Length", "100")]) + b"0123456789")
        await writer.drain()
        response = await read_response(reader, READ_TIMEOUT + 3)
        assert response.status in (0, 400, 408, 502, 504) and response.closed
    finally:
        writer.close()
    assert gate.upstream.requests == []


async def test_slow_client_with_token_hits_the_read_deadline(wire: RawClient, gate: Gate) -> None:
    """A valid token does not buy a slow client more time."""
    reader, writer = await asyncio.open_connection("127.0.0.1", wire.port)
    try:
        writer.write(request_bytes("POST", "/orders", [("Authorization", f"Bearer {valid_token(scp=['orders:write'])}"),
                                                       ("Content-Length", "100")]) + b"x")
        await writer.drain()
        response = await read_response(reader, READ_TIMEOUT + 3)
        assert response.closed
    finally:
        writer.close()
    assert gate.upstream.requests == []
