"""The shared store: PostgreSQL, so that several scopegate replicas (pods) share one source of truth.

Every replica keeps its own in-memory revocation state and follows the change feed (DESIGN §4-§5).
Two things make that feed safe here that SQLite gets for free from its single writer:

- Commit order. Identity values are handed out at INSERT time, not at commit, so two transactions can
  commit seqs 6 and 5 in that order, and a reader that already saw 6 would skip 5 forever. Appending
  to the feed therefore takes ``LOCK TABLE changes IN EXCLUSIVE MODE`` (readers are not blocked; other
  appenders wait until commit), so that seqs become visible in order.
- Wake-ups. The append also runs ``NOTIFY scopegate_changes`` in its transaction ("if a NOTIFY is
  executed inside a transaction, the notify events are not delivered until and unless the transaction
  is committed", PostgreSQL docs, NOTIFY); ``wait_for_change`` LISTENs on a connection of its own.

Connections: one per thread, in autocommit mode, with explicit ``BEGIN``/``COMMIT`` around every write
(so a read never leaves a session idle in transaction). ``?schema=name`` in the URL puts every table
in that schema (created if missing): several stores, or tests, can share one database.

Deadlines (issue 12: a black-holed network must never freeze a caller). Every statement and every
connection attempt has one, ``timeout`` (the config's ``storeTimeout``, 1 s by default):

- the server cancels a statement past 80% of it (``statement_timeout``), so a lock wait ends and frees its
  locks and its error reaches the client before the client's own deadline,
  and ends a session left idle in a transaction (``idle_in_transaction_session_timeout``, 10x, at least
  10 s) so that a replica cut off mid-transaction never holds the feed's lock for long;
- the client gives up at the same deadline even when the server never answers (a partition, a silently
  dead node: no RST, and a statement timeout needs the server to see the statement): a watchdog thread
  shuts the connection's socket down, the blocked call fails with StoreError and the connection is
  rebuilt on next use. A connection attempt is waited for at most ``timeout`` too;
- TCP keepalives and ``tcp_user_timeout`` make the kernel drop a connection whose peer vanished while
  it was idle (these and ``connect_timeout`` can be overridden as query parameters of the store URL).

After a deadline or a failed connection attempt (a lost connection alone is reopened on next use) the store is *down*: calls
fail at once with StoreError, except one trial every ``RETRY_INTERVAL_SECONDS`` (the revocation feed
polls often enough to be that trial), so that an outage costs callers no waiting and the first call
that succeeds ends it. Nothing is retried, except a read or a BEGIN outside a transaction that the server
answered by ending the session (a restart: it ran nothing of it), once, on a new connection (``_Session``).

A write is never applied after its caller was told it failed: a COMMIT held up in the network past the
client's deadline finds its session already ended by the server (``_guard_commit``), so the transaction is
rolled back whole. Only a COMMIT that reached the server in time and whose answer was lost may have committed
unbeknown to its caller (see the README, "Storage").
"""

from __future__ import annotations

import json
import math
import os
import re
import select
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg import pq

from authz.store.errors import StoreConflict, StoreError
from authz.store.sql import Cursor, SqlStore, SqlTx

CHANGES_CHANNEL = "scopegate_changes"
DEFAULT_TIMEOUT_SECONDS = 1.0
MIGRATION_TIMEOUT_SECONDS = 30.0
"""Opening the store migrates it under a lock another replica may hold while it migrates: longer than a call."""
SERVER_SHARE = 0.8
"""The server's ``statement_timeout`` is this share of the timeout; the client's deadline is all of it."""
IN_DOUBT_ATTEMPTS = 20
"""Tries to learn a lost COMMIT's outcome before giving up on it (each when a later call finds the store up)."""
IN_DOUBT_LOG_WINDOW = 10_000
"""The system-log events of a lost COMMIT are looked for among this many latest ones."""
LATE_COMMIT = "committed, but its caller was answered that it failed: the answer to COMMIT was lost past storeTimeout"
"""``debugContext.debugData.storeCommit`` of the events of such a transaction."""
RETRY_INTERVAL_SECONDS = 0.25
"""While the store is down, one call per interval is let through to find out whether it is back."""
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def _cut(fd: int) -> None:
    """Shut down the socket behind ``fd``: a thread blocked reading it wakes with EOF, and libpq marks the
    connection bad. A duplicate descriptor, so that the connection's own descriptor is never closed here."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    with sock, suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _Watchdog:
    """One thread that cuts the connection of any statement past its deadline (``arm`` / ``disarm``)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._armed: dict[int, tuple[float, int]] = {}
        self._next_key = 0
        self._thread: threading.Thread | None = None
        self._stopped = False

    def arm(self, fd: int, seconds: float) -> int:
        with self._cond:
            self._next_key += 1
            self._armed[self._next_key] = (time.monotonic() + seconds, fd)
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._run, name="scopegate-store-deadlines", daemon=True)
                self._thread.start()
            self._cond.notify()
            return self._next_key

    def disarm(self, key: int) -> bool:
        """True when the deadline had passed and the connection was cut."""
        with self._cond:
            return self._armed.pop(key, None) is None

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                for key, (deadline, fd) in list(self._armed.items()):
                    if deadline <= now:
                        # Cut while still armed, under the lock: the owner has not disarmed, so the
                        # connection (and its descriptor) is still open.
                        del self._armed[key]
                        _cut(fd)
                soonest = min((deadline for deadline, _ in self._armed.values()), default=None)
                self._cond.wait(None if soonest is None else max(soonest - now, 0.001))


def _ended_by_server(conn: psycopg.Connection[Any]) -> bool:
    """True when an idle connection has something to read: in autocommit mode, between statements, the
    server sends nothing unless it is going away (a restart, a failover, ``pg_terminate_backend``,
    ``idle_session_timeout``: an ErrorResponse "terminating connection ...", then EOF). One ``poll`` with no
    wait, so that a connection the server closed while it sat in the pool is replaced before a caller's
    statement fails on it (issue 12 item 2: after a restart, every thread's first call failed with 503)."""
    try:
        fd = conn.fileno()
    except psycopg.Error:
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))


_SESSION_ENDED = (pg_errors.AdminShutdown, pg_errors.CrashShutdown, pg_errors.IdleSessionTimeout)
"""The server's own word that it ended the session (SQLSTATE 57P01, 57P02, 57P05)."""


class _Session:
    """A thread's connection as its callers hold it (``SqlTx`` keeps it for a whole transaction).

    The idle check (``_ended_by_server``) can lose a race: ``pg_terminate_backend`` or a shutdown returns before
    the backend has said goodbye, and the next statement then gets that goodbye for its answer. When that
    statement opens a transaction (BEGIN) or is a read outside one, the server ran nothing of it, so it is run
    again on a new connection put in place here, where the transaction then carries on."""

    __slots__ = ("conn",)

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def _masked(url: str) -> str:
    """The URL for stderr: a password, in the userinfo or as libpq's ``?password=`` parameter, is ``***``."""
    parts = urlsplit(url)
    if parts.password is not None:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1))
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(name == "password" for name, _ in query):
        masked = [(name, "***" if name == "password" else value) for name, value in query]
        parts = parts._replace(query=urlencode(masked, safe="*"))
    return urlunsplit(parts)


def split_schema(url: str) -> tuple[str, str | None]:
    """``postgresql://…/db?schema=s&sslmode=require`` → (``postgresql://…/db?sslmode=require``, ``s``)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for name, value in query if name == "schema"]
    rest = [(name, value) for name, value in query if name != "schema"]
    schema = schemas[-1] if schemas else None
    if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
        raise StoreError(f"store {_masked(url)}: schema must be a plain identifier (letters, digits, _), got {schema!r}")
    return urlunsplit(parts._replace(query=urlencode(rest))), schema


@lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    # The shared queries use '?' placeholders and contain no literal '?' or '%'.
    return sql.replace("?", "%s")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class PostgresStore(SqlStore):
    """The Store contract on PostgreSQL (``authz.store.base``), psycopg 3."""

    for_update = " FOR UPDATE"

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        super().__init__(url)
        self.display_url = _masked(url)
        self._conninfo, self.schema = split_schema(url)
        if not timeout > 0:
            raise StoreError(f"store {self.display_url}: the store timeout must be greater than 0, got {timeout!r}")
        self.timeout = timeout
        """The deadline of every statement and connection attempt, in seconds (``storeTimeout``)."""
        self._local = threading.local()
        self._connections: list[psycopg.Connection[Any]] = []
        self._registry = threading.Lock()
        self._closed = False
        self._listener: psycopg.Connection[Any] | None = None
        self._listen_lock = threading.Lock()
        self._watchdog = _Watchdog()
        self._health = threading.Lock()
        self._down_since: float | None = None
        self._last_trial = 0.0
        self._trial = False
        self._in_doubt: list[tuple[int, int]] = []
        """(transaction id, failed attempts) of each COMMIT whose answer never came (``_settle_in_doubt``)."""
        try:
            with self._patience(MIGRATION_TIMEOUT_SECONDS):
                self._migrate("postgres")
        except BaseException:
            self.close()
            raise

    # --- deadlines and health ------------------------------------------------------------------------

    @contextmanager
    def _patience(self, seconds: float) -> Iterator[None]:
        """A longer deadline for this thread's calls within the block (opening and migrating the store)."""
        self._local.patience = seconds
        try:
            yield
        finally:
            self._local.patience = None

    def _deadline(self) -> float:
        patience: float | None = getattr(self._local, "patience", None)
        return patience if patience is not None else self.timeout

    @property
    def down(self) -> bool:
        """True after a connection-level failure, until a call succeeds again."""
        return self._down_since is not None

    def _admit(self) -> None:
        """Fail at once while the store is down, but let one trial at a time through, RETRY_INTERVAL_SECONDS
        after the last one ended. Any answer from the server ends the outage (``_mark_up``)."""
        if self._down_since is None:
            return
        with self._health:
            now = time.monotonic()
            if self._down_since is not None and (self._trial or now - self._last_trial < RETRY_INTERVAL_SECONDS):
                raise StoreError(f"store {self.display_url} is unavailable (failing fast since "
                                 f"{now - self._down_since:.1f}s; retrying every {RETRY_INTERVAL_SECONDS:g}s)")
            self._trial = self._down_since is not None

    def _mark_down(self, detail: str) -> None:
        with self._health:
            self._trial = False
            self._last_trial = time.monotonic()
            if self._down_since is not None:
                return
            self._down_since = self._last_trial
        print(f"scopegate: store unavailable, failing calls fast and retrying every {RETRY_INTERVAL_SECONDS:g}s: "
              f"{detail}", file=sys.stderr, flush=True)

    def _mark_up(self) -> None:
        with self._health:
            since, self._down_since = self._down_since, None
            self._trial = False
        if since is not None:
            print(f"scopegate: store {self.display_url} reachable again after {time.monotonic() - since:.1f}s",
                  file=sys.stderr, flush=True)

    # --- connections ---------------------------------------------------------------------------------

    def _params(self) -> str:
        try:
            params = psycopg.conninfo.conninfo_to_dict(self._conninfo)
        except psycopg.Error as exc:
            raise StoreError(f"cannot open store {self.display_url}: {_first_line(exc)}") from exc
        # libpq waits at least 2 s for a connection; the caller waits self.timeout (_connect_within).
        params.setdefault("connect_timeout", max(2, math.ceil(self._deadline())))
        params.setdefault("application_name", "scopegate")
        # A peer that vanished (no RST) while a connection sat idle: the kernel gives up on it.
        params.setdefault("keepalives", 1)
        params.setdefault("keepalives_idle", 5)
        params.setdefault("keepalives_interval", 2)
        params.setdefault("keepalives_count", 3)
        params.setdefault("tcp_user_timeout", int(max(10.0, 10 * self.timeout) * 1000))
        # The server cancels first, so that a reachable server's answer (an error) beats the client's own
        # deadline: a lock wait is then a failed statement on a usable connection, not an outage.
        statement_ms = max(int(self.timeout * SERVER_SHARE * 1000), 1)
        idle_ms = int(max(10.0, 10 * self.timeout) * 1000)
        # Ours first: a -c in the URL's own options wins.
        ours = f"-c statement_timeout={statement_ms} -c idle_in_transaction_session_timeout={idle_ms}"
        params["options"] = f"{ours} {params.get('options') or ''}".strip()
        return str(psycopg.conninfo.make_conninfo("", **params))

    def _connect_within(self, conninfo: str, seconds: float) -> psycopg.Connection[Any]:
        """psycopg.connect, waited for at most ``seconds`` (libpq's own connect_timeout is 2 s at least and
        counts per address). An attempt given up on closes its connection when it ends."""
        done = threading.Event()
        lock = threading.Lock()
        outcome: dict[str, Any] = {}

        def attempt() -> None:
            conn: psycopg.Connection[Any] | None = None
            try:
                conn = psycopg.connect(conninfo, autocommit=True)
            except BaseException as exc:
                outcome["error"] = exc
            with lock:
                outcome["conn"] = conn
                done.set()
                abandoned = outcome.get("abandoned", False)
            if abandoned and conn is not None:
                with suppress(psycopg.Error):
                    conn.close()

        threading.Thread(target=attempt, name="scopegate-store-connect", daemon=True).start()
        if not done.wait(seconds):
            with lock:
                if not done.is_set():
                    outcome["abandoned"] = True
                    raise StoreError(f"cannot open store {self.display_url}: no answer within {seconds:g}s")
        error = outcome.get("error")
        if error is not None:
            if isinstance(error, psycopg.Error):
                raise StoreError(f"cannot open store {self.display_url}: {_first_line(error)}") from error
            raise error
        conn: psycopg.Connection[Any] = outcome["conn"]
        return conn

    def _open(self, *, search_path: bool = True) -> psycopg.Connection[Any]:
        try:
            # Opening the store may wait longer for locks, not for a connection: 10 s at most then.
            conn = self._connect_within(self._params(), min(self._deadline(), max(self.timeout, 10.0)))
        except StoreError as exc:
            self._mark_down(str(exc))
            raise
        if self.schema is not None and search_path:
            try:
                self._exec(conn, f'SET search_path TO "{self.schema}"')
            except StoreError:
                with suppress(psycopg.Error):
                    conn.close()
                raise
        return conn

    def _connection(self) -> Any:
        if self._closed:
            raise StoreError(f"store {self.display_url} is closed")
        if self._state.depth == 0:
            self._admit()
        session: _Session | None = getattr(self._local, "session", None)
        conn = session.conn if session is not None else None
        # A connection that broke (server restart, network, a deadline) is replaced on next use, outside a
        # transaction; so is one the server ended while it was idle, before a statement fails on it.
        if conn is not None and not conn.closed and self._state.depth == 0 and _ended_by_server(conn):
            with suppress(psycopg.Error):
                conn.close()
        if session is None:
            session = self._local.session = _Session(self._replace(None))
        elif session.conn.closed and self._state.depth == 0:
            session.conn = self._replace(session.conn)
        if self._in_doubt and self._state.depth == 0 and not getattr(self._local, "settling", False):
            self._local.settling = True
            try:
                self._settle_in_doubt(session)
            finally:
                self._local.settling = False
        return session

    def _replace(self, old: psycopg.Connection[Any] | None) -> psycopg.Connection[Any]:
        if old is not None:
            with self._registry:
                self._connections = [c for c in self._connections if c is not old]
        conn = self._open()
        with self._registry:
            self._connections.append(conn)
        return conn

    def close(self) -> None:
        self._closed = True
        self._wake_waiters()
        self._watchdog.stop()
        with self._registry:
            connections, self._connections = self._connections, []
        listener, self._listener = self._listener, None
        for conn in [*connections, *([listener] if listener is not None else [])]:
            with suppress(psycopg.Error):  # best effort: a committed write is already durable
                conn.close()

    # --- dialect -------------------------------------------------------------------------------------

    def _exec(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> Cursor:
        if sql != "COMMIT":
            rerun = (isinstance(conn, _Session) and sql.startswith(("BEGIN", "SELECT"))
                     and conn.conn.info.transaction_status == pq.TransactionStatus.IDLE)
            try:
                return self._run(conn, sql, params)
            except StoreError as exc:
                if not (rerun and isinstance(exc.__cause__, _SESSION_ENDED)):
                    raise
            conn.conn = self._replace(conn.conn)
            return self._run(conn, sql, params)
        xid = self._guard_commit(conn)
        try:
            return self._run(conn, sql, params)
        except StoreError:
            if conn.closed and xid is not None:
                # No answer (a deadline, a lost connection): the COMMIT reached the server in time and its answer
                # was lost, or it did not. The server knows; ask it once it can be reached (_settle_in_doubt).
                with self._registry:
                    self._in_doubt.append((xid, 0))
            raise

    def _guard_commit(self, conn: Any) -> int | None:
        """Make a COMMIT that arrives after its client's deadline fail on the server (issue 12 item 2).

        The client waits ``timeout`` for a COMMIT it sends at t0, and the session went idle in this transaction
        at some ts ≤ t0 (when the previous statement's answer left the server). With the session ended after
        ``SERVER_SHARE × timeout`` idle in the transaction, a COMMIT that reaches the server after t0 + timeout,
        held up in the network while the caller was answered 503, finds the transaction already rolled back
        ("idle_in_transaction_session_timeout: terminate any session that has been idle (that is, waiting for a
        client query) within an open transaction for longer than the specified amount of time", PostgreSQL
        docs). A statement of its own just before the COMMIT, so that only the gap before the COMMIT counts,
        never the caller's work between earlier statements."""
        limit = max(int(self._deadline() * SERVER_SHARE * 1000), 1)
        row = self._run(conn, "SELECT set_config('idle_in_transaction_session_timeout', ?, true), "
                              "txid_current_if_assigned()", (f"{limit}ms",)).fetchone()
        return None if row[1] is None else int(row[1])  # None: the transaction wrote nothing

    def _settle_in_doubt(self, conn: Any) -> None:
        """Find out what became of the COMMITs whose answer never came, and make the system log say so.

        A COMMIT that reached the server before its deadline commits even when its answer is lost on the way
        back (the caller was then answered 503): the events that transaction wrote get
        ``debugContext.debugData.storeCommit`` saying that the change was made although its caller was told
        it failed, and stderr gets one line. A transaction that did not commit leaves nothing to say: it was
        rolled back whole (``_guard_commit``)."""
        with self._registry:
            pending, self._in_doubt = self._in_doubt, []
        keep: list[tuple[int, int]] = []
        for xid, attempts in pending:
            try:
                status = self._run(conn, "SELECT txid_status(?)", (xid,)).fetchone()[0]
                if status == "committed":
                    self._mark_committed_late(conn, xid)
                elif status == "in progress":
                    keep.append((xid, attempts))
            except StoreError:
                if attempts < IN_DOUBT_ATTEMPTS:
                    keep.append((xid, attempts + 1))
        if keep:
            with self._registry:
                self._in_doubt.extend(keep)

    def _mark_committed_late(self, conn: Any, xid: int) -> None:
        # Rows keep the inserting transaction's id in xmin (32 bits); the events are among the latest ones.
        rows = self._run(conn, "SELECT seq, event FROM logs WHERE seq > (SELECT COALESCE(MAX(seq), 0) - ? FROM logs) "
                               "AND xmin::text = ?", (IN_DOUBT_LOG_WINDOW, str(xid % 2**32))).fetchall()
        for seq, text in rows:
            event = json.loads(text)
            debug = event.setdefault("debugContext", {}).setdefault("debugData", {})
            debug["storeCommit"] = LATE_COMMIT
            self._run(conn, "UPDATE logs SET event = ? WHERE seq = ?",
                      (json.dumps(event, separators=(",", ":"), ensure_ascii=False), seq))
        print(f"scopegate: store {self.display_url}: transaction {xid} committed although its caller was answered "
              f"that it failed (its answer was lost past storeTimeout); {len(rows)} system-log event(s) say so",
              file=sys.stderr, flush=True)

    def _run(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> Cursor:
        seconds = self._deadline()
        try:
            key: int | None = self._watchdog.arm(conn.fileno(), seconds)
        except psycopg.Error:  # already closed: execute fails at once below
            key = None
        try:
            cursor: psycopg.Cursor[Any] = conn.execute(_pg_sql(sql), params)
        except psycopg.Error as exc:
            cut = key is not None and self._watchdog.disarm(key)
            key = None
            if cut:
                detail = f"store {self.display_url}: no answer within {seconds:g}s; connection closed"
                self._mark_down(detail)
                raise StoreError(detail) from exc
            if self._down_since is not None:
                # A trial ends either way: the connection was lost, or the server answered (with an error).
                if conn.closed:
                    self._mark_down(f"store {self.display_url}: {_first_line(exc)}")
                else:
                    self._mark_up()
            if isinstance(exc, pg_errors.IntegrityError):
                raise StoreConflict(f"store {self.display_url}: {_first_line(exc)}") from exc
            raise StoreError(f"store {self.display_url}: {_first_line(exc)}") from exc
        finally:
            if key is not None:
                self._watchdog.disarm(key)
        if self._down_since is not None:
            self._mark_up()
        return cursor

    def _begin(self, conn: Any) -> None:
        self._exec(conn, "BEGIN")

    def _allocate_token_seq(self, conn: Any) -> int:
        return int(self._exec(conn, "SELECT nextval('token_seq')").fetchone()[0])

    def _current_token_seq(self, conn: Any) -> int:
        last_value, is_called = self._exec(conn, "SELECT last_value, is_called FROM token_seq").fetchone()
        return int(last_value) if is_called else int(last_value) - 1

    def _before_append_change(self, conn: Any) -> None:
        self._exec(conn, "LOCK TABLE changes IN EXCLUSIVE MODE")

    def _after_append_change(self, conn: Any, seq: int) -> None:
        self._exec(conn, "SELECT pg_notify(?, ?)", (CHANGES_CHANNEL, str(seq)))

    def _lock_signing_keys(self, conn: Any, as_id: str) -> None:
        # SELECT … FOR UPDATE locks nothing when the AS has no key yet: an advisory lock on the AS does.
        self._exec(conn, "SELECT pg_advisory_xact_lock(hashtext(?))", (f"scopegate:keys:{self.schema}:{as_id}",))

    def _lock_objects(self, conn: Any) -> None:
        # READ COMMITTED lets two transactions read the same objects and both write: one lock for every
        # configuration object (a change is validated against all of them, not only the row it edits) makes
        # the second wait, and its next statement then sees the first one's commit.
        self._exec(conn, "SELECT pg_advisory_xact_lock(hashtext(?))", (f"scopegate:objects:{self.schema}",))

    def _hold_objects(self, conn: Any) -> None:
        # The shared form of _lock_objects' key: grants run side by side, a configuration change waits for
        # those already holding it (and they for it), and READ COMMITTED lets the next read see its commit.
        self._exec(conn, "SELECT pg_advisory_xact_lock_shared(hashtext(?))", (f"scopegate:objects:{self.schema}",))

    def _lock_refresh_chain(self, conn: Any, chain_id: str) -> None:
        # A lock per chain rather than FOR UPDATE on its rows: a rotation inserts a row no earlier SELECT locked.
        # The two-key form is a key space of its own ("these two key spaces do not overlap", PostgreSQL docs),
        # so a chain's hash can never collide with the objects' lock this transaction may already hold.
        self._exec(conn, "SELECT pg_advisory_xact_lock(hashtext(?), hashtext(?))",
                   (f"scopegate:chain:{self.schema}", chain_id))

    def _lock_for_migration(self, tx: SqlTx) -> None:
        tx._exec(f"SET LOCAL statement_timeout = {int(self._deadline() * 1000)}")
        tx._exec("SELECT pg_advisory_xact_lock(hashtext(?))", (f"scopegate:migrate:{self.schema}",))
        if self.schema is not None:
            tx._exec(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')

    # --- change notifications ------------------------------------------------------------------------

    def wait_for_change(self, timeout: float) -> bool:
        """True when any process committed a change-feed entry (NOTIFY) within ``timeout`` seconds. A
        waiter blocked when ``close()`` is called returns by its timeout; later calls return False."""
        if self._closed or not self._listen_lock.acquire(timeout=max(timeout, 0)):
            return False
        try:
            listener = self._listener
            if listener is None or listener.closed:
                listener = self._listener = self._open(search_path=False)
                self._exec(listener, f"LISTEN {CHANGES_CHANNEL}")
            for _ in listener.notifies(timeout=max(timeout, 0), stop_after=1):
                return True
            return False
        except (psycopg.Error, StoreError):
            # No listener (database unreachable): the poller's own polling is the fallback.
            if self._listener is not None:
                with suppress(psycopg.Error):
                    self._listener.close()
            self._listener = None
            return False if self._closed else super().wait_for_change(timeout)
        finally:
            self._listen_lock.release()
