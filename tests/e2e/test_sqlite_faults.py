"""Issue 12 item 3: SQLite faults through the real process.

- A database another process holds the write lock of, beyond the busy timeout (``?busy_timeout=<ms>`` in the
  store URL, 10 s by default): writes answer 503 in the endpoint family's shape (RFC 6749's
  ``temporarily_unavailable`` on ``/oauth2``, Okta's ``E0000009`` object on ``/api/v1``, both with
  ``Retry-After: 1``, as ``test_store_outage.py`` checks for PostgreSQL), reads and the proxy keep answering,
  and everything works again once the lock is released.
- A store file that is not a database, is cut short, has a corrupted page that start-up reads, or is a
  directory: one line on stderr naming the file, and a non-zero exit, never a traceback.
- A full disk (a tmpfs with a size limit, mounted by the test; skipped only when the machine refuses the
  mount): writes answer 503 and leave nothing behind, reads, introspection and the proxy keep answering, and
  once space is back the store is intact and writable.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from authz.store.base import open_store
from tests.e2e.conftest import RunningScopegate, free_port
from tests.e2e.recording_upstream import RecordingUpstream
from tests.e2e.test_process import run_cli
from tests.e2e.test_proxy_gate import SECRET, bearer, config, token

pytestmark = pytest.mark.e2e

BUSY_TIMEOUT_MS = 300
BOUND = 3.0
"""Seconds a write may take to be refused while the database is locked (two busy timeouts and scheduling)."""


def mint(gate: RunningScopegate) -> httpx.Response:
    return httpx.post(f"{gate.core}/oauth2/orders/v1/token", auth=("service", SECRET),
                      data={"grant_type": "client_credentials", "scope": "orders:read"}, timeout=30)


def create_group(gate: RunningScopegate) -> httpx.Response:
    return httpx.post(f"{gate.core}/api/v1/groups", headers={"Authorization": f"SSWS {gate.admin_token}"},
                      json={"profile": {"name": f"fault-{uuid.uuid4().hex[:8]}"}}, timeout=30)


def revoke(gate: RunningScopegate, access: str) -> httpx.Response:
    return httpx.post(f"{gate.core}/oauth2/orders/v1/revoke", auth=("service", SECRET), data={"token": access},
                      timeout=30)


def introspect(gate: RunningScopegate, access: str) -> dict[str, Any]:
    response = httpx.post(f"{gate.core}/oauth2/orders/v1/introspect", auth=("service", SECRET),
                          data={"token": access}, timeout=30)
    assert response.status_code == 200, response.text
    return dict(response.json())


def assert_protocol_503(response: httpx.Response, path: Path) -> None:
    assert response.status_code == 503, (response.status_code, response.text)
    assert response.json() == {"error": "temporarily_unavailable",
                               "error_description": "The service is temporarily unavailable. Try again later."}
    assert response.headers["retry-after"] == "1" and response.headers["content-type"] == "application/json"
    assert str(path) not in response.text and "sqlite" not in response.text.lower()


def assert_okta_503(response: httpx.Response, path: Path) -> None:
    assert response.status_code == 503, (response.status_code, response.text)
    body = response.json()
    assert body["errorCode"] == "E0000009" and body["errorSummary"] == "Internal Server Error", body
    assert {"errorLink", "errorId", "errorCauses"} <= set(body) and response.headers["retry-after"] == "1"
    assert str(path) not in response.text and "sqlite" not in response.text.lower()


def assert_reads_served(gate: RunningScopegate, access: str) -> None:
    """What needs no write: the management API's reads, the system log, introspection, the proxy, /readyz."""
    admin = {"Authorization": f"SSWS {gate.admin_token}"}
    assert httpx.get(f"{gate.core}/api/v1/groups", headers=admin, timeout=30).status_code == 200
    assert httpx.get(f"{gate.core}/api/v1/logs", headers=admin, timeout=30).status_code == 200
    assert introspect(gate, access)["active"] is True
    assert httpx.get(f"{gate.proxy}/api/orders", headers=bearer(access), timeout=30).status_code == 200
    assert httpx.get(f"{gate.ops}/readyz", timeout=30).status_code == 200


def timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    return call(), time.monotonic() - started


class WriteLock:
    """Another process holding the database's write lock (``BEGIN IMMEDIATE``) until ``release()``."""

    def __init__(self, path: Path) -> None:
        code = textwrap.dedent(f"""
            import sqlite3, sys
            conn = sqlite3.connect({str(path)!r}, isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")
            print("locked", flush=True)
            sys.stdin.readline()
            conn.execute("ROLLBACK")
        """)
        self.process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)
        assert self.process.stdout is not None and self.process.stdout.readline().strip() == "locked"

    def release(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        if self.process.poll() is None:
            self.process.stdin.write("\n")
            self.process.stdin.flush()
            self.process.wait(10)
        self.process.stdin.close()
        self.process.stdout.close()


def test_locked_database_answers_503_and_recovers(scopegate: Callable[..., RunningScopegate],
                                                   upstream: RecordingUpstream, tmp_path: Path) -> None:
    """Writes refused within a bound with 503 in each family's shape; reads and the proxy go on; no crash."""
    path = tmp_path / "locked.db"
    gate = scopegate(config(upstream.url, store=f"sqlite:///{path}?busy_timeout={BUSY_TIMEOUT_MS}"))
    access = token(gate)
    lock = WriteLock(path)
    try:
        response, took = timed(lambda: mint(gate))
        assert_protocol_503(response, path)
        assert took < BOUND, took
        response, took = timed(lambda: create_group(gate))
        assert_okta_503(response, path)
        assert took < BOUND, took
        assert_protocol_503(revoke(gate, access), path)
        assert_reads_served(gate, access)
        assert gate.process.poll() is None
    finally:
        lock.release()
    assert mint(gate).status_code == 200
    assert create_group(gate).status_code == 200
    assert revoke(gate, access).status_code == 200 and introspect(gate, access) == {"active": False}
    # The operator learns why, naming the file, once (not once per refused request).
    lines = [line for line in gate.output().splitlines() if line.startswith("scopegate: store ")]
    assert len(lines) == 1 and str(path) in lines[0] and "locked" in lines[0], lines
    assert gate.stop() == 0


def _corrupt_objects_page(path: Path) -> None:
    """A real store whose ``objects`` table (read at start) has its root page overwritten."""
    store = open_store(f"sqlite:///{path}")
    for i in range(20):
        store.put_object("group", f"g{i}", {"id": f"g{i}", "name": "x" * 200}, "api")
    store.close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'objects'").fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with path.open("r+b") as f:
        f.seek((root - 1) * size)
        f.write(b"\xee" * size)


def _cut_short(path: Path) -> None:
    store = open_store(f"sqlite:///{path}")
    store.close()
    data = path.read_bytes()
    path.write_bytes(data[:100] + b"\xff" * 60 + data[160:len(data) // 3])


def _not_a_database(path: Path) -> None:
    path.write_bytes(b"this is not a database" * 200)


CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "not a database": _not_a_database,
    "cut short": _cut_short,
    "corrupted page read at start": _corrupt_objects_page,
    "a directory": lambda path: path.mkdir(),
}


@pytest.mark.parametrize("damage", sorted(CORRUPTIONS))
def test_damaged_store_at_start_is_one_line_and_a_nonzero_exit(tmp_path: Path, damage: str) -> None:
    """A store file start-up cannot use stops the process with one line naming the file, not a traceback."""
    path = tmp_path / "damaged.db"
    CORRUPTIONS[damage](path)
    for side in ("-wal", "-shm"):
        Path(f"{path}{side}").unlink(missing_ok=True)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"listen: {{proxy: '127.0.0.1:{free_port()}', core: '127.0.0.1:{free_port()}', "
                   f"ops: '127.0.0.1:{free_port()}'}}\nstore: 'sqlite:///{path}'\n")
    result = run_cli("run", "--config", str(cfg), cwd=tmp_path, timeout=60)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(lines) == 1 and str(path) in lines[0], lines


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted for the test (the machine must allow ``mount``; the test is skipped if it refuses)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True,
                                 text=True, timeout=30)
    except OSError as exc:
        pytest.skip(f"cannot run mount to make a full disk: {exc}")
    if mounted.returncode != 0:
        pytest.skip(f"this machine refuses `mount -t tmpfs` (needed for a full disk): {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=30)


def fill(disk: Path) -> Path:
    """Write a file until the disk has no byte left; returns it (delete it to free the space)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 1):  # then the last partial block, byte by byte
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    return filler


def test_full_disk_refuses_writes_cleanly_and_serves_reads(scopegate: Callable[..., RunningScopegate],
                                                           upstream: RecordingUpstream, small_disk: Path) -> None:
    """Writes 503 with nothing half-written; reads and the proxy go on; the store is intact once space is back."""
    path = small_disk / "full.db"
    gate = scopegate(config(upstream.url, store=f"sqlite:///{path}"))
    access = token(gate)
    store = open_store(f"sqlite:///{path}")
    seen = {t.jti for t in store.list_tokens()}
    store.close()
    filler = fill(small_disk)
    for _ in range(3):  # repeatedly: a refused write must not leave the store worse for the next one
        assert_protocol_503(mint(gate), path)
        assert_okta_503(create_group(gate), path)
        assert_protocol_503(revoke(gate, access), path)
        assert_reads_served(gate, access)
    assert gate.process.poll() is None
    filler.unlink()
    assert mint(gate).status_code == 200
    assert create_group(gate).status_code == 200
    assert revoke(gate, access).status_code == 200 and introspect(gate, access) == {"active": False}
    assert gate.stop() == 0
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        jtis = {row[0] for row in conn.execute("SELECT jti FROM tokens")}
        grants = {row[0] for row in conn.execute(
            "SELECT json_extract(event, '$.target[0].id') FROM logs "
            "WHERE json_extract(event, '$.eventType') = 'app.oauth2.as.token.grant.access_token'")}
    finally:
        conn.close()
    # Nothing acknowledged lost, nothing half-done: two tokens answered 200, each with its record and event.
    assert seen <= jtis and len(jtis) == 2 and jtis == grants


def test_page_found_malformed_mid_scan_is_a_store_error(tmp_path: Path) -> None:
    """A corrupted page met after a query's first row is a StoreError (503), not a raw sqlite3 error (500): the
    rows are read inside the store's error translation."""
    from authz.store.base import LogQuery
    from authz.store.errors import StoreError
    from authz.store.sqlite import SqliteStore

    path = tmp_path / "scan.db"
    store = SqliteStore(f"sqlite:///{path}")
    with store.transaction() as tx:
        for i in range(300):
            tx.append_log({"eventType": "x", "n": i, "pad": "y" * 300}, float(i))
    store.close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size, pages = conn.execute("PRAGMA page_size").fetchone()[0], conn.execute("PRAGMA page_count").fetchone()[0]
    conn.close()
    with path.open("r+b") as f:  # a leaf near the end of the log: the scan meets it after its first rows
        f.seek((pages - 3) * size)
        f.write(b"\xee" * size)
    store = SqliteStore(f"sqlite:///{path}")
    try:
        with pytest.raises(StoreError, match="malformed"):
            store.query_logs(LogQuery(limit=1000))
    finally:
        store.close()
