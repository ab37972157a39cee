"""Issue 8, item 6: request heads are bounded *while* they are read, on every listener, and idle, trickling
and surplus connections are closed (security.md §3.6-§3.7).

These talk raw bytes to the real ``scopegate`` process. A head is streamed in small pieces and the test counts
what it managed to send before the listener answered or hung up: the listener must stop reading at its limit,
not after the whole head has been buffered (the outside probe sent 97 MiB of one header to the proxy).
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import RunningScopegate, launch
from tests.e2e.test_process import demo_config

pytestmark = pytest.mark.e2e

READ_TIMEOUT = 1.0
LISTENERS = ("proxy", "core", "ops")
STREAM_LIMIT = 4 * 1024 * 1024
"""How much a test is willing to stream; the old code read all of it and still waited for the head's end."""


def config(tmp_path: Path, **listen: Any) -> dict[str, Any]:
    doc = demo_config(tmp_path)
    doc["proxy"] = {**dict(doc.get("proxy") or {}), "limits": {"readTimeout": f"{READ_TIMEOUT}s"}}
    if listen:
        doc["listen"] = listen
    return doc


def address(url: str) -> tuple[str, int]:
    host, _, port = url.rpartition("//")[2].rpartition(":")
    return host, int(port)


def stream(url: str, prefix: bytes, filler: bytes = b"a" * 16384) -> tuple[int, bytes]:
    """Send ``prefix`` then ``filler`` until the listener answers or hangs up; return (bytes sent, answer)."""
    sock = socket.create_connection(address(url), timeout=5)
    sent = 0
    answer = b""
    try:
        sock.sendall(prefix)
        while sent < STREAM_LIMIT:
            try:
                sock.sendall(filler)
            except OSError:  # reset or broken pipe: the listener hung up
                break
            sent += len(filler)
            if select.select([sock], [], [], 0.002)[0]:
                break
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
    finally:
        sock.close()
    return sent, answer


def wait_closed(sock: socket.socket, limit: float) -> tuple[float, bytes]:
    """Read until the peer closes; return (seconds waited, bytes read). Fails if still open after ``limit``."""
    started = time.monotonic()
    sock.settimeout(limit)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        pytest.fail(f"the connection was still open after {limit} s: {data[:200]!r}")
    except OSError:
        pass
    return time.monotonic() - started, data


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningScopegate]:
    """One process for the module: every test opens its own connections and leaves none behind."""
    tmp_path = tmp_path_factory.mktemp("listener-limits")
    gate = launch(tmp_path, config(tmp_path))
    yield gate
    assert gate.stop() == 0


@pytest.mark.parametrize("listener", LISTENERS)
def test_unbounded_header_is_cut_off_at_the_head_limit(running: RunningScopegate, listener: str) -> None:
    """One ever-growing header: 431 and the connection closed after the head limit, not after the whole head."""
    sent, answer = stream(getattr(running, listener), b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
    assert sent < 1024 * 1024, f"{listener} read {sent} bytes of one head without answering"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:200]


@pytest.mark.parametrize("listener", LISTENERS)
def test_unbounded_request_target_is_cut_off_at_the_target_limit(running: RunningScopegate, listener: str) -> None:
    """An ever-growing target: 414 and the connection closed once the target passes maxTargetBytes."""
    sent, answer = stream(getattr(running, listener), b"GET /", filler=b"a" * 4096)
    assert sent < 1024 * 1024, f"{listener} read {sent} bytes of one target without answering"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 414 "), answer[:200]


@pytest.mark.parametrize("listener", LISTENERS)
def test_many_small_headers_are_cut_off_at_the_head_limit(running: RunningScopegate, listener: str) -> None:
    """Many headers, none large: the head as a whole is bounded too."""
    sent, answer = stream(getattr(running, listener), b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
                          filler=b"".join(b"X-H%d: v\r\n" % i for i in range(1000)))
    assert sent < 1024 * 1024
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:200]


@pytest.mark.parametrize("listener", ["proxy", "core"])
def test_unbounded_chunked_trailer_is_cut_off_at_the_header_limit(running: RunningScopegate, listener: str) -> None:
    """A chunked body's last chunk followed by an ever-growing trailer field: httptools buffers trailers as it
    buffers header values, so they are bounded like a head (431 and closed), never read to the end."""
    path = b"/api/public" if listener == "proxy" else b"/oauth2/demo/v1/token"
    sent, answer = stream(getattr(running, listener), b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Trailer: ")
    assert sent < 1024 * 1024, f"{listener} read {sent} bytes of one trailer without answering"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:200]


def test_chunked_body_larger_than_the_trailer_budget_still_streams(running: RunningScopegate) -> None:
    """The trailer budget covers only what follows a chunk header before its data: big chunks pass."""
    body = b"a" * 200_000
    chunked = b"%x\r\n%s\r\n0\r\nX-T: 1\r\n\r\n" % (len(body), body)
    with socket.create_connection(address(running.proxy), timeout=10) as sock:
        sock.sendall(b"POST /api/public HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


@pytest.mark.parametrize("listener", LISTENERS)
def test_idle_connection_is_closed_at_the_read_deadline(running: RunningScopegate, listener: str) -> None:
    """A connection that never sends a byte is closed after readTimeout (the core and ops kept them forever)."""
    with socket.create_connection(address(getattr(running, listener))) as sock:
        waited, data = wait_closed(sock, READ_TIMEOUT + 5)
    assert waited >= READ_TIMEOUT * 0.8
    assert data == b"" or data.startswith(b"HTTP/1.1 408 "), data[:200]


@pytest.mark.parametrize("listener", ["core", "ops"])
def test_trickling_head_is_closed_at_the_read_deadline(running: RunningScopegate, listener: str) -> None:
    """Slowloris on the core and ops: a byte every 200 ms does not keep the head alive past readTimeout."""
    with socket.create_connection(address(getattr(running, listener))) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        try:
            while time.monotonic() - started < READ_TIMEOUT + 5:
                sock.sendall(b"X")
                if select.select([sock], [], [], 0.2)[0]:
                    break
            else:
                pytest.fail("the trickling head was never cut off")
        except OSError:
            pass
        _, data = wait_closed(sock, 5)
    assert data == b"" or data.startswith(b"HTTP/1.1 408 "), data[:200]


def test_trickling_body_on_the_core_is_closed_at_the_read_deadline(running: RunningScopegate) -> None:
    """A /token body that never completes gets 408 and a closed connection after readTimeout."""
    with socket.create_connection(address(running.core)) as sock:
        sock.sendall(b"POST /oauth2/demo/v1/token HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ngrant_type")
        waited, data = wait_closed(sock, READ_TIMEOUT + 5)
    assert data.startswith(b"HTTP/1.1 408 "), data[:200]
    assert waited >= READ_TIMEOUT * 0.8


def test_a_healthy_client_is_served_after_the_limits(running: RunningScopegate) -> None:
    """The limits refuse abuse only: a normal request on each listener, and one head just under the limit."""
    gate = running
    near_limit = {"X-Pad": "p" * 15000}
    assert httpx.get(f"{gate.ops}/healthz", headers=near_limit).status_code == 200
    assert httpx.get(f"{gate.core}/oauth2/demo/.well-known/oauth-authorization-server").status_code == 200
    assert httpx.get(f"{gate.proxy}/api/public", headers=near_limit).status_code in (200, 404)


def test_connections_over_the_listener_cap_are_refused(tmp_path: Path) -> None:
    """listen.maxConnections: past the cap a new connection gets 503 and is closed; below it, service resumes."""
    doc = config(tmp_path)
    doc["proxy"]["limits"]["readTimeout"] = "20s"
    doc["listen"] = {"maxConnections": {"ops": 3}}
    gate = launch(tmp_path, doc)
    held = [socket.create_connection(address(gate.ops)) for _ in range(3)]
    try:
        time.sleep(0.3)  # accepted by the server
        with socket.create_connection(address(gate.ops)) as extra:
            _, data = wait_closed(extra, 5)
        assert data.startswith(b"HTTP/1.1 503 "), data[:200]
        held.pop().close()
        time.sleep(0.3)
        assert httpx.get(f"{gate.ops}/healthz").status_code == 200
    finally:
        for sock in held:
            sock.close()
        gate.stop()
