"""Issue 12 items 5 and 6: a reload (SIGHUP) and a shutdown (SIGTERM) while load runs, through the real process,
with one process and with two workers.

Reload: the two configurations differ in the route's name (what the decision log says) and the subject header's
name (what the upstream receives), so a request decided partly by each would show as an old route name with the
new header, or the reverse. Every request has a path of its own, which is how its decision-log line and what the
upstream saw are paired.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.conftest import RunningScopegate, decision_lines, launch
from tests.e2e.recording_upstream import RecordingUpstream
from tests.e2e.test_proxy_gate import bearer, config, token, wait_for

pytestmark = pytest.mark.e2e

START = 90.0
CLIENTS = 6


def versioned(upstream_url: str, version: str, workers: int, **extra: Any) -> dict[str, Any]:
    doc = switch(config(upstream_url, workers=workers, **extra), version)
    # The recording upstream shares the test process (and its GIL) with the load's six client threads: on a loaded
    # CI machine its accept can take longer than the 1 s connect timeout of the shared config.
    doc["upstream"].update({"connectTimeout": "10s", "timeout": "30s"})
    return doc


def switch(doc: dict[str, Any], version: str) -> dict[str, Any]:
    """``doc`` with the routes and identity headers of ``version``."""
    doc["routes"] = [{"name": f"read-{version}", "path": "/api/orders", "methods": ["GET", "POST"],
                      "scopes": {"anyOf": ["orders:read"]}},
                     {"name": "public", "path": "/api/public", "public": True}]
    doc["proxy"] = {"identity": {"subjectHeader": f"X-{version.capitalize()}-Subject"}}
    return doc


def reload(gate: RunningScopegate, version: str) -> None:
    """Rewrite the running file (its ports, issuer and store as launched) to ``version``, then SIGHUP."""
    doc = switch(yaml.safe_load(gate.config_path.read_text()), version)
    gate.config_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    gate.signal(signal.SIGHUP)


def start(tmp_path: Path, doc: dict[str, Any]) -> RunningScopegate:
    gate = launch(tmp_path, doc, wait=False)

    def ready() -> bool:
        assert gate.process.poll() is None, gate.output()[-3000:]
        try:
            return httpx.get(f"{gate.ops}/readyz", timeout=2).status_code == 200 and "serving" in gate.output()
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, START)
    except BaseException:
        gate.stop()
        raise
    return gate


class Load:
    """``CLIENTS`` threads, each on its own keep-alive connection, sending requests until stopped."""

    def __init__(self, url: Callable[[int, int], str], headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.headers = headers
        self.results: list[tuple[str, float, float, int | str]] = []
        """(url, sent at, answered at, status or the exception's name)"""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(CLIENTS)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, n: int) -> None:
        with httpx.Client(headers=self.headers, timeout=30) as client:
            i = 0
            while not self._stop.is_set():
                url = self.url(n, i)
                i += 1
                sent = time.monotonic()
                try:
                    outcome: int | str = client.get(url).status_code
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                with self._lock:
                    self.results.append((url, sent, time.monotonic(), outcome))

    def count(self) -> int:
        with self._lock:
            return len(self.results)


@pytest.mark.parametrize("workers", [1, 2])
def test_reload_under_load_fails_no_request_and_mixes_no_configuration(
        tmp_path: Path, upstream: RecordingUpstream, workers: int) -> None:
    """SIGHUP twice (old → new → old) while six clients keep requests going: every request is answered 200, and
    each is decided wholly by one configuration: its decision-log route and the subject header the upstream got
    name the same version."""
    gate = start(tmp_path, versioned(upstream.url, "old", workers))
    try:
        access = token(gate)
        with Load(lambda n, i: f"{gate.proxy}/api/orders/{n}-{i}", bearer(access)) as load:
            for version, reloads in (("new", 1), ("old", 2)):
                wait_for(lambda: load.count() > 200, 30)
                reload(gate, version)
                expected = reloads * (1 + workers if workers > 1 else 1)
                wait_for(lambda expected=expected: gate.output().count("reloaded") >= expected, 30)  # type: ignore[misc]
                before = load.count()
                wait_for(lambda before=before: load.count() > before + 200, 30)  # type: ignore[misc]
        assert gate.stop() == 0
    finally:
        gate.stop()
    failed = [r for r in load.results if r[3] != 200]
    assert not failed, failed[:10]
    lines = {line["path"]: line for line in decision_lines(gate) if line["path"].startswith("/api/orders/")}
    unlogged = [r.raw_path for r in upstream.requests if r.raw_path not in lines]
    other = [line for line in gate.output().splitlines() if not line.startswith('{"')]
    assert not unlogged, (len(unlogged), unlogged[:5], other[-20:])
    seen = {"old": 0, "new": 0}
    for request in upstream.requests:
        subjects = {v: request.header(f"X-{v.capitalize()}-Subject") for v in seen}
        versions = [v for v, values in subjects.items() if values]
        assert len(versions) == 1, (request.raw_path, subjects)
        route = lines[request.raw_path]["route"]
        assert route == f"read-{versions[0]}", (request.raw_path, route, versions)
        seen[versions[0]] += 1
    assert len(upstream.requests) == len(load.results)
    assert seen["old"] > 0 and seen["new"] > 0, seen


def test_a_request_waiting_mid_decision_is_decided_by_one_configuration(tmp_path: Path,
                                                                        upstream: RecordingUpstream) -> None:
    """A form POST whose body is still coming when SIGHUP lands (the gate waits for it after matching the route,
    before building the upstream headers): it is decided and forwarded by the configuration it started under."""
    gate = start(tmp_path, versioned(upstream.url, "old", 1))
    try:
        access = token(gate)
        host, port = gate.proxy.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"POST /api/orders/form HTTP/1.1\r\nHost: api.example.com\r\n"
                         b"Authorization: Bearer " + access.encode() + b"\r\n"
                         b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 7\r\n\r\na=")
            time.sleep(0.5)  # the gate has matched the route and waits for the rest of the form
            reload(gate, "new")
            wait_for(lambda: "reloaded" in gate.output(), 30)
            sock.sendall(b"12345")
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        wait_for(lambda: any(line["path"] == "/api/orders/form" for line in decision_lines(gate)))
        (line,) = [line for line in decision_lines(gate) if line["path"] == "/api/orders/form"]
        (forwarded,) = [r for r in upstream.requests if r.raw_path == "/api/orders/form"]
        got = [v for v in ("old", "new") if forwarded.header(f"X-{v.capitalize()}-Subject")]
        assert [line["route"]] == [f"read-{v}" for v in got], (line["route"], forwarded.headers)
    finally:
        gate.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_under_load_drains_refuses_new_connections_and_exits_within_the_grace_period(
        tmp_path: Path, upstream: RecordingUpstream, workers: int) -> None:
    """SIGTERM while six clients keep the proxy busy and slow requests are in flight: the slow ones (1.5 s, inside
    the 3 s grace period) are answered 200, no request is answered with an error status, new connections are
    refused within a second, a request that outlasts the grace period is cut, and the process exits 0 within the
    grace period (plus start-up of the shutdown itself)."""
    grace = 3.0
    doc = versioned(upstream.url, "old", workers, shutdownGracePeriod=f"{grace:g}s")
    doc["upstream"]["timeout"] = "60s"  # the stuck request is cut by the grace period, not by the upstream timeout
    gate = start(tmp_path, doc)
    host, port = gate.proxy.removeprefix("http://").split(":")
    slow: list[int | str] = []
    stuck: list[int | str] = []

    def get(url: str, into: list[int | str]) -> None:
        try:
            into.append(httpx.get(url, timeout=60).status_code)
        except httpx.HTTPError as exc:
            into.append(type(exc).__name__)

    try:
        with Load(lambda n, i: f"{gate.proxy}/api/public/{n}-{i}") as load:
            wait_for(lambda: load.count() > 200, 30)
            threads = [threading.Thread(target=get, args=(f"{gate.proxy}/api/public/slow-{k}?delay=1.5", slow))
                       for k in range(4)]
            threads.append(threading.Thread(target=get, args=(f"{gate.proxy}/api/public/stuck?delay=60", stuck)))
            for thread in threads:
                thread.start()
            wait_for(lambda: sum(r.raw_path.startswith("/api/public/s") for r in list(upstream.requests)) == 5, 10)
            signalled = time.monotonic()
            signalled_at = time.strftime("%H:%M:%S", time.gmtime()) + f"{time.time() % 1:.3f}"[1:]
            gate.signal(signal.SIGTERM)
            refused_after = None
            while time.monotonic() - signalled < 10:
                try:
                    socket.create_connection((host, int(port)), timeout=1).close()
                except ConnectionRefusedError:
                    refused_after = time.monotonic() - signalled
                    break
                except OSError:
                    pass
                time.sleep(0.02)
            status = gate.process.wait(grace + 10)
            exited_after = time.monotonic() - signalled
            for thread in threads:
                thread.join(10)
    finally:
        gate.stop()
    assert status == 0, gate.output()[-3000:]
    assert refused_after is not None and refused_after < 1.0, refused_after
    assert slow == [200] * 4, slow
    assert stuck and stuck[0] != 200, stuck
    # The drain ends at the grace period; closing the pool, the store and the threads then takes a moment (more on a
    # loaded CI machine): Kubernetes' terminationGracePeriodSeconds should leave room for it (README, Deploy).
    assert grace <= exited_after < grace + 5.0, exited_after
    statuses = {r[3] for r in load.results}
    errors = [line for line in gate.output().splitlines() if '"status":5' in line or "Traceback" in line]
    assert all(s == 200 or isinstance(s, str) for s in statuses), (statuses, signalled_at, errors[:5], gate.output()[-3000:])
    answered_late = [r for r in load.results if r[3] == 200 and r[1] > signalled + 1.0]
    assert not answered_late, answered_late[:5]  # nothing new was served once the ports were closed


def test_a_sighup_during_start_up_does_not_kill_the_process(tmp_path: Path, upstream: RecordingUpstream) -> None:
    """A SIGHUP while the process is still starting (imports, store, keys: a second or more) is ignored rather
    than fatal (the default action of SIGHUP ends a process); the file is read after it anyway."""
    gate = launch(tmp_path, versioned(upstream.url, "old", 1), wait=False)
    try:
        time.sleep(0.8)  # past the interpreter's own start (0.05-0.1 s idle), before serving (imports alone take longer)
        if "serving" in gate.output():
            pytest.skip("the process started within 0.8 s: no start-up left to signal")
        gate.signal(signal.SIGHUP)
        wait_for(lambda: gate.process.poll() is not None or "serving" in gate.output(), START)
        assert gate.process.poll() is None, (gate.process.returncode, gate.output()[-2000:])
        assert httpx.get(f"{gate.proxy}/api/public/x", timeout=10).status_code == 200
    finally:
        gate.stop()
