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
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from contextlib import suppress
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors

from authz.store.errors import StoreConflict, StoreError
from authz.store.sql import Cursor, SqlStore, SqlTx

CHANGES_CHANNEL = "scopegate_changes"
CONNECT_TIMEOUT_SECONDS = 10
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def _masked(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


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

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.display_url = _masked(url)
        self._conninfo, self.schema = split_schema(url)
        self._local = threading.local()
        self._connections: list[psycopg.Connection[Any]] = []
        self._registry = threading.Lock()
        self._closed = False
        self._listener: psycopg.Connection[Any] | None = None
        self._listen_lock = threading.Lock()
        try:
            self._migrate("postgres")
        except BaseException:
            self.close()
            raise

    # --- connections ---------------------------------------------------------------------------------

    def _open(self, *, search_path: bool = True) -> psycopg.Connection[Any]:
        try:
            params = psycopg.conninfo.conninfo_to_dict(self._conninfo)
            params.setdefault("connect_timeout", CONNECT_TIMEOUT_SECONDS)
            params.setdefault("application_name", "scopegate")
            conn = psycopg.connect(psycopg.conninfo.make_conninfo("", **params), autocommit=True)
        except psycopg.Error as exc:
            raise StoreError(f"cannot open store {self.display_url}: {_first_line(exc)}") from exc
        if self.schema is not None and search_path:
            try:
                conn.execute(f'SET search_path TO "{self.schema}"')
            except psycopg.Error as exc:
                conn.close()
                raise StoreError(f"cannot open store {self.display_url}: {_first_line(exc)}") from exc
        return conn

    def _connection(self) -> psycopg.Connection[Any]:
        if self._closed:
            raise StoreError(f"store {self.display_url} is closed")
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        # A connection that broke (server restart, network) is replaced on next use, outside a transaction.
        if conn is None or (conn.closed and self._state.depth == 0):
            conn = self._open()
            self._local.conn = conn
            with self._registry:
                self._connections.append(conn)
        return conn

    def close(self) -> None:
        self._closed = True
        self._wake_waiters()
        with self._registry:
            connections, self._connections = self._connections, []
        listener, self._listener = self._listener, None
        for conn in [*connections, *([listener] if listener is not None else [])]:
            with suppress(psycopg.Error):  # best effort: a committed write is already durable
                conn.close()

    # --- dialect -------------------------------------------------------------------------------------

    def _exec(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> Cursor:
        try:
            cursor: psycopg.Cursor[Any] = conn.execute(_pg_sql(sql), params)
        except pg_errors.IntegrityError as exc:
            raise StoreConflict(f"store {self.display_url}: {_first_line(exc)}") from exc
        except psycopg.Error as exc:
            raise StoreError(f"store {self.display_url}: {_first_line(exc)}") from exc
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
                listener.execute(f"LISTEN {CHANGES_CHANNEL}")
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
