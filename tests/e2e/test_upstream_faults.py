"""The upstream misbehaves (issue 12 item 4), through the real ``scopegate`` process.

Each fault gives the documented 502 ``upstream_unavailable`` or 504 ``upstream_timeout`` (or, once the response
has started, a connection closed short of its body), never a wait beyond ``upstream.timeout``, and never a pooled
connection that carries the fault into the next request: after each one, plain requests succeed and every byte the
upstream received frames into whole requests. A GET, HEAD or OPTIONS without a body whose reused keep-alive
connection the upstream closed before a byte of the response is retried once on a fresh connection; nothing else
is retried.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import RunningScopegate, decision_lines, launch
from tests.security.raw_upstream import FaultyUpstream

pytestmark = pytest.mark.e2e

TIMEOUT = 1.0
"""``upstream.timeout`` in these tests."""
SLACK = 1.0
"""What a bound may exceed ``upstream.timeout`` by on a loaded CI machine."""


def _config(url: str) -> dict[str, Any]:
    return {"upstream": {"url": url, "timeout": f"{int(TIMEOUT * 1000)}ms", "connectTimeout": "1s"},
            "routes": [{"name": "public", "path": "/", "public": True}]}


@pytest.fixture(scope="module")
def faulty() -> Iterator[FaultyUpstream]:
    """One upstream for the module (its behaviour is chosen by path; each test uses paths of its own)."""
    server = FaultyUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory, faulty: FaultyUpstream) -> Iterator[RunningScopegate]:
    """One scopegate for the module: starting one per test would cost more than the faults themselves."""
    running = launch(tmp_path_factory.mktemp("upstream-faults"), _config(faulty.url))
    yield running
    assert running.stop() == 0


def _reason(gate: RunningScopegate, path: str, deadline: float = 3.0) -> str:
    """The decision log's reason for the last request to ``path`` (lines leave in batches of ≤ 100 ms)."""
    end = time.monotonic() + deadline
    while True:
        lines = [line for line in decision_lines(gate) if line["path"] == path]
        if lines or time.monotonic() > end:
            assert lines, f"no decision line for {path}"
            return str(lines[-1]["reason"])
        time.sleep(0.05)


def _healthy(gate: RunningScopegate, rounds: int = 2) -> None:
    """Plain requests succeed on whatever the pool holds (four at once, so every pooled connection is used)."""
    def one(i: int) -> None:
        with httpx.Client(base_url=gate.proxy, timeout=5) as client:
            results.append(client.get(f"/ok/{i}").status_code)

    for r in range(rounds):
        results: list[int] = []
        threads = [threading.Thread(target=one, args=(r * 10 + i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert results == [200] * 4, results


def _timed(gate: RunningScopegate, method: str, path: str, **kwargs: Any) -> tuple[httpx.Response, float]:
    with httpx.Client(base_url=gate.proxy, timeout=TIMEOUT + SLACK + 5) as client:
        started = time.monotonic()
        response = client.request(method, path, **kwargs)
        return response, time.monotonic() - started


def _on_a_reused_connection(gate: RunningScopegate, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """``method path`` right after a GET that leaves an idle connection in the proxy's pool."""
    with httpx.Client(base_url=gate.proxy, timeout=10) as client:
        assert client.get("/ok/first").status_code == 200
        return client.request(method, path, **kwargs)


def test_refused_connection_is_502_at_once(gate: RunningScopegate, faulty: FaultyUpstream) -> None:
    """Nothing listens at the upstream's port: 502 upstream_unavailable at once, every time; once it listens
    again, requests succeed."""
    faulty.stop()
    try:
        for method in ("GET", "POST"):
            response, elapsed = _timed(gate, method, "/refused")
            assert response.status_code == 502
            assert response.json()["error"] == "upstream_unavailable"
            assert elapsed < 0.5
    finally:
        faulty.start(faulty.port)
    assert _reason(gate, "/refused") == "upstream_unavailable"
    _healthy(gate)


def test_reset_mid_response_closes_the_client_connection(gate: RunningScopegate, faulty: FaultyUpstream) -> None:
    """The upstream sends a head and part of its body, then RST: the client gets the head and a connection closed
    short of the declared length (never a body completed with something else), at once; the pool stays clean."""
    started = time.monotonic()
    with httpx.Client(base_url=gate.proxy, timeout=10) as client, pytest.raises(httpx.RemoteProtocolError):
        client.get("/reset-mid/1")
    assert time.monotonic() - started < TIMEOUT
    assert len(faulty.targets("/reset-mid/1")) == 1
    assert _reason(gate, "/reset-mid/1") == "upstream_unavailable"
    _healthy(gate)


def test_reset_after_part_of_a_head_is_502_and_not_retried(gate: RunningScopegate, faulty: FaultyUpstream) -> None:
    """Half a status line, then RST, on a reused connection: bytes of a response arrived, so even a GET is not
    sent again (before the fix aiohttp sent it twice); 502."""
    response = _on_a_reused_connection(gate, "GET", "/reset-head/1")
    assert response.status_code == 502
    assert response.json()["error"] == "upstream_unavailable"
    assert len(faulty.targets("/reset-head/1")) == 1
    _healthy(gate)


def test_hang_before_headers_is_504_after_the_timeout(gate: RunningScopegate, faulty: FaultyUpstream) -> None:
    """No byte of an answer: 504 upstream_timeout after ``upstream.timeout``, not before and not much after."""
    response, elapsed = _timed(gate, "GET", "/hang-head/1")
    assert response.status_code == 504
    assert response.json()["error"] == "upstream_timeout"
    assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + SLACK
    assert len(faulty.targets("/hang-head/1")) == 1
    assert _reason(gate, "/hang-head/1") == "upstream_timeout"
    _healthy(gate)


def test_a_head_that_trickles_is_504_after_the_timeout(gate: RunningScopegate) -> None:
    """One byte of a head every 0.1 s keeps a per-read timeout from ever firing; the head still has to arrive
    within ``upstream.timeout`` of the request (before the fix: the proxy waited as long as the upstream liked)."""
    response, elapsed = _timed(gate, "GET", "/trickle-head/1")
    assert response.status_code == 504
    assert elapsed < TIMEOUT + SLACK
    _healthy(gate)


def test_a_head_may_wait_for_a_body_the_client_is_still_sending(gate: RunningScopegate,
                                                                 faulty: FaultyUpstream) -> None:
    """The head deadline starts where the client's body deadline ends: an upload slower than ``upstream.timeout``
    (within ``limits.readTimeout``) is not cut off as an upstream timeout."""
    def slow_body() -> Iterator[bytes]:
        for _ in range(3):
            yield b"x" * 10
            time.sleep(TIMEOUT / 2)

    response, elapsed = _timed(gate, "POST", "/ok/slow-upload", content=slow_body())
    assert response.status_code == 200
    assert elapsed > TIMEOUT
    assert faulty.targets("/ok/slow-upload")


def test_hang_mid_body_closes_the_client_connection_after_the_timeout(gate: RunningScopegate) -> None:
    """A head and 10 of 1,000 declared bytes, then silence: the response has started, so the proxy cannot say 504;
    it closes the client's connection once ``upstream.timeout`` passes without a byte, and the upstream connection
    is closed too, never pooled with 990 bytes still owed. The decision log says upstream_timeout."""
    def read(client: httpx.Client) -> None:
        with client.stream("GET", "/hang-body/1") as response:
            assert response.status_code == 200
            for _ in response.iter_raw():
                pass

    with httpx.Client(base_url=gate.proxy, timeout=TIMEOUT + SLACK + 5) as client:
        started = time.monotonic()
        with pytest.raises(httpx.RemoteProtocolError):
            read(client)
        elapsed = time.monotonic() - started
    assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + SLACK
    assert _reason(gate, "/hang-body/1") == "upstream_timeout"
    _healthy(gate)


def test_oversized_response_headers_are_502(gate: RunningScopegate) -> None:
    """A 64 KiB response header is not relayed: 502, and the connection it came on is not reused."""
    response, _ = _timed(gate, "GET", "/big-headers/1")
    assert response.status_code == 502
    assert response.json()["error"] == "upstream_unavailable"
    _healthy(gate)


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
def test_safe_request_on_a_reused_connection_closed_by_the_upstream_is_retried_once(
        gate: RunningScopegate, faulty: FaultyUpstream, method: str) -> None:
    """The keep-alive race (RFC 9112 §9.3.1): the upstream closes the pooled connection as the proxy reuses it,
    before a byte of the answer. A safe method without a body is sent once more, on a new connection, and
    succeeds."""
    path = f"/drop-reused/{method}"
    response = _on_a_reused_connection(gate, method, path)
    assert response.status_code == 200
    attempts = faulty.targets(path)
    assert [entry[2] for entry in attempts] == [method, method]
    assert attempts[0][1] > 0 and attempts[1][1] == 0  # a reused connection, then a new one


@pytest.mark.parametrize("method", ["POST", "PATCH", "PUT", "DELETE"])
@pytest.mark.parametrize("content", [None, b"{}"], ids=["no-body", "body"])
def test_unsafe_request_on_a_reused_connection_closed_by_the_upstream_is_never_retried(
        gate: RunningScopegate, faulty: FaultyUpstream, method: str, content: bytes | None) -> None:
    """The same race for a method that is not safe: 502, sent exactly once. PUT and DELETE are idempotent (RFC
    9110 §9.2.2), but the upstream may have acted on the request before closing; the client decides (before the
    fix aiohttp sent a PUT or DELETE without a body twice)."""
    path = f"/drop-reused/{method}-{content is not None}"
    response = _on_a_reused_connection(gate, method, path, content=content)
    assert response.status_code == 502
    assert len(faulty.targets(path)) == 1


def test_get_with_a_body_is_never_retried(gate: RunningScopegate, faulty: FaultyUpstream) -> None:
    """The client's body streams through and is gone once sent: a request carrying one is not sent again."""
    response = _on_a_reused_connection(gate, "GET", "/drop-reused/get-body", content=b"a body")
    assert response.status_code == 502
    assert len(faulty.targets("/drop-reused/get-body")) == 1


def test_a_fresh_connection_closed_before_an_answer_is_not_retried(gate: RunningScopegate,
                                                                   faulty: FaultyUpstream) -> None:
    """Only a reused connection has the keep-alive race as an excuse: a new connection closed without a byte of
    answer is the upstream failing this request, 502, sent once (before the fix aiohttp sent it twice)."""
    response, _ = _timed(gate, "GET", "/close-head/1")
    assert response.status_code == 502
    assert len(faulty.targets("/close-head/1")) == 1
    _healthy(gate)


def test_upstream_closing_idle_connections_loses_no_request(gate: RunningScopegate, faulty: FaultyUpstream) -> None:
    """An upstream keep-alive timeout (30 ms) shorter than the proxy's: GETs spaced around it meet connections
    closed before or just as they are reused; every one succeeds."""
    faulty.restart_with(idle_close=0.03)
    try:
        before = faulty.connections
        with httpx.Client(base_url=gate.proxy, timeout=10) as client:
            for i in range(60):
                assert client.get(f"/ok/idle/{i}").status_code == 200
                time.sleep(0.02 + (i % 7) * 0.003)
        assert faulty.connections - before > 5
    finally:
        faulty.restart_with(idle_close=0.0)


def test_upstream_restart_during_load(gate: RunningScopegate, faulty: FaultyUpstream) -> None:
    """Four clients keep sending while the upstream dies (every connection reset) and comes back on the same port
    0.8 s later: meanwhile the answers are 502 (never 500, never a hang), and within a second of its return every
    request succeeds again."""
    results: list[tuple[float, int]] = []
    slow: list[float] = []
    stop = threading.Event()

    def client(n: int) -> None:
        with httpx.Client(base_url=gate.proxy, timeout=TIMEOUT + SLACK + 5) as http:
            i = 0
            while not stop.is_set():
                started = time.monotonic()
                results.append((started, http.get(f"/ok/load/{n}/{i}").status_code))
                if time.monotonic() - started > TIMEOUT + SLACK:
                    slow.append(time.monotonic() - started)
                i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        faulty.stop()
        down = time.monotonic()
        time.sleep(0.8)
        faulty.start(faulty.port)
        up = time.monotonic()
        time.sleep(1.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert not slow
    statuses = {status for _, status in results}
    assert statuses <= {200, 502}, statuses
    assert any(status == 502 for started, status in results if down + 0.1 < started < up)
    late = [status for started, status in results if started > up + 1.0]
    assert late and set(late) == {200}, late[-20:]


def test_restart_with_idle_pooled_connections_needs_no_failed_request(gate: RunningScopegate,
                                                                      faulty: FaultyUpstream) -> None:
    """Connections pooled before an upstream restart are all dead; the first GETs after it do not fail on them."""
    _healthy(gate, rounds=2)
    faulty.stop()
    faulty.start(faulty.port)
    with httpx.Client(base_url=gate.proxy, timeout=10) as client:
        for i in range(8):
            assert client.get(f"/ok/after/{i}").status_code == 200
