"""The embedded store: one SQLite file, so that ``scopegate run`` needs nothing else installed.

Durability: WAL with ``synchronous=FULL`` syncs the log on every commit, so a process killed right
after committing a revocation, an issued-token record or a log event keeps it ("In WAL mode when
synchronous is FULL [...] transactions are durable across application crashes and power failures",
sqlite.org/pragma.html#pragma_synchronous; NORMAL would only protect against application crashes).

Concurrency: a connection per thread; write transactions start with ``BEGIN IMMEDIATE`` so that two
processes on the same file serialize at the start of a write instead of failing with SQLITE_BUSY when
a read lock is upgraded halfway through; ``busy_timeout`` makes the second writer wait its turn (10 s, or
the URL's ``?busy_timeout=<ms>``). A write still locked out after it, or refused by the disk (full, read
only, I/O error), is a ``StoreError``: the core answers 503 and the transaction leaves nothing behind.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from typing import Any

from authz.store.errors import StoreConflict, StoreError
from authz.store.sql import Cursor, SqlStore

BUSY_TIMEOUT_MS = 10_000
_PREFIX = "sqlite:///"
_MEMORY = ":memory:"
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
_SIDE_FILES = ("-wal", "-shm", "-journal")
REPORT_INTERVAL = 10.0
"""Seconds between two stderr lines for the same store error (``SqliteStore._report``)."""


class _Rows:
    """A statement's rows, read in full inside ``_exec`` (see there), with the cursor's ``rowcount``."""

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self._next = 0
        self.rowcount = rowcount

    def fetchone(self) -> Any:
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    def fetchall(self) -> list[Any]:
        rest, self._next = self._rows[self._next:], len(self._rows)
        return rest


def _make_private(path: str, url: str) -> None:
    """Create the database file 0600 before SQLite opens it, and tighten files an older version left looser.

    SQLite creates its -wal and -shm files with the database file's permissions (os_unix.c,
    ``findCreateFileMode``), so a private database file keeps them private too, whatever the umask.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, PRIVATE_FILE_MODE)
    except OSError:
        return  # SQLite cannot open it either, and says why in its own words (one line, as before)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, PRIVATE_FILE_MODE)
        for side in (path + suffix for suffix in _SIDE_FILES):
            if os.path.exists(side) and os.stat(side).st_mode & 0o077:
                os.chmod(side, PRIVATE_FILE_MODE)
    except OSError as exc:
        raise StoreError(f"cannot open store {url}: cannot make its files private (0600): "
                         f"{exc.strerror or exc}") from exc
    finally:
        os.close(fd)


def busy_timeout_ms(url: str) -> int:
    """``?busy_timeout=<ms>`` in the URL (SQLite's own pragma name), else ``BUSY_TIMEOUT_MS``."""
    query = url.split("?", 1)[1] if "?" in url else ""
    for name, _, value in (part.partition("=") for part in query.split("&") if part):
        if name == "busy_timeout":
            if not value.isdigit():
                raise StoreError(f"store {url!r}: busy_timeout must be a whole number of milliseconds")
            return int(value)
    return BUSY_TIMEOUT_MS


def database_path(url: str) -> str:
    """``sqlite:///relative.db`` → ``relative.db``; ``sqlite:////abs.db`` → ``/abs.db``; ``:memory:``."""
    path = url[len(_PREFIX):].split("?", 1)[0] if url.startswith(_PREFIX) else ""
    if not path:
        raise StoreError(f"store {url!r}: expected sqlite:///relative/path.db, sqlite:////absolute/path.db "
                         "or sqlite:///:memory:")
    return path


class SqliteStore(SqlStore):
    """The Store contract on SQLite (``authz.store.base``)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.path = database_path(url)
        self.busy_timeout_ms = busy_timeout_ms(url)
        self._memory = self.path == _MEMORY
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._registry = threading.Lock()
        self._closed = False
        self._reported = ""
        self._reported_at = -REPORT_INTERVAL
        self._opened = self._serving = False
        self._writers = threading.Lock()
        # An in-memory database lives in its connection: every thread shares that one, under a lock.
        self._shared_lock = threading.RLock() if self._memory else None
        self._shared: sqlite3.Connection | None = None
        if not self._memory:
            parent = os.path.dirname(os.path.abspath(self.path))
            try:
                # The store holds private signing keys: a directory made here is the user's alone (0700).
                # An existing one is left as it is (it may be /tmp or a mounted volume); the files are 0600.
                os.makedirs(parent, mode=PRIVATE_DIR_MODE, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot open store {url}: cannot create directory {parent}: "
                                 f"{exc.strerror or exc}") from exc
            _make_private(self.path, url)
        try:
            self._migrate("sqlite")
        except BaseException:
            self.close()
            raise
        self._opened = True

    # --- connections ---------------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        try:
            # isolation_level=None: the module issues no implicit BEGIN; transactions are ours.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=self.busy_timeout_ms / 1000)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {self.url}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
            if not self._memory:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreError(f"cannot open store {self.url}: WAL journal mode unavailable (got {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot open store {self.url}: {exc}") from exc
        with self._registry:
            self._connections.append(conn)
        return conn

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"store {self.url} is closed")
        if self._memory:
            if self._shared is None:
                self._shared = self._open()
            return self._shared
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open()
            self._local.conn = conn
        return conn

    def _guard(self) -> AbstractContextManager[object]:
        return self._shared_lock if self._shared_lock is not None else nullcontext()

    @contextmanager
    def _writer_turn(self) -> Iterator[None]:
        """This process's writers take turns on a lock before ``BEGIN IMMEDIATE``, instead of all asking SQLite.

        SQLite's busy handler makes a writer that finds the database locked sleep, in steps growing to 100 ms,
        and try again: with 8 clients at the token endpoint each waiting writer slept past the moment the lock
        was free, so 8 clients minted no more tokens per second than 1 and the p99 grew from ~20 ms to 1.2 s
        (issue 11 benchmark, scenario 8). A lock wakes the next writer as the last one commits. Writers of other
        processes on the same file still meet SQLite's busy handler. Bounded by the same busy timeout."""
        if not self._writers.acquire(timeout=self.busy_timeout_ms / 1000):
            raise StoreError(f"store {self.url}: database is locked (this process's writers queued past "
                             f"busy_timeout {self.busy_timeout_ms} ms)")
        try:
            yield
        finally:
            self._writers.release()

    def close(self) -> None:
        self._closed = True
        self._wake_waiters()
        with self._registry:
            connections, self._connections = self._connections, []
        for conn in connections:
            with suppress(sqlite3.Error):  # best effort: a committed write is already on disk
                conn.close()

    # --- dialect -------------------------------------------------------------------------------------

    def _exec(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> Cursor:
        try:
            cursor: sqlite3.Cursor = conn.execute(sql, params)
            # Every row now: sqlite3 steps lazily, so a page found malformed halfway through a scan would
            # otherwise raise from fetchall(), outside this translation, and answer 500 instead of 503.
            rows = _Rows(cursor.fetchall(), cursor.rowcount)
            if sql == "COMMIT" and self._opened:
                self._serving = True
            return rows
        except sqlite3.IntegrityError as exc:
            raise StoreConflict(f"store {self.url}: {exc}") from exc
        except sqlite3.Error as exc:
            self._report(exc)
            raise StoreError(f"store {self.url}: {exc}") from exc

    def _report(self, exc: sqlite3.Error) -> None:
        """The operator's line on stderr (a client only ever reads 503): when the cause changes, and at most
        every ``REPORT_INTERVAL`` seconds while it lasts, so a locked or full store does not flood the log.
        Silent until a write made after opening committed: before that the process is starting, and start-up
        stops with its own one line (``proxy.server``)."""
        if not self._serving:
            return
        text = str(exc)
        now = time.monotonic()
        with self._registry:
            if text == self._reported and now - self._reported_at < REPORT_INTERVAL:
                return
            self._reported, self._reported_at = text, now
        print(f"scopegate: store {self.url}: {text} (answering 503 while it lasts)", file=sys.stderr, flush=True)

    def _begin(self, conn: Any) -> None:
        self._exec(conn, "BEGIN IMMEDIATE")

    def _allocate_token_seq(self, conn: Any) -> int:
        row = self._exec(conn, "UPDATE token_seq SET value = value + 1 WHERE id = 1 RETURNING value").fetchone()
        return int(row[0])

    def _current_token_seq(self, conn: Any) -> int:
        row = self._exec(conn, "SELECT value FROM token_seq WHERE id = 1").fetchone()
        return int(row[0])
