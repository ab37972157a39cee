"""The SQL shared by the SQLite and PostgreSQL stores: queries, row mapping, transactions.

Queries are written once with ``?`` placeholders (the PostgreSQL store rewrites them to ``%s``); the
dialects differ only in the hooks at the bottom of ``SqlStore`` (how a write transaction starts, how
the issued-token order is allocated, what happens around a change-feed append).

Transactions: each thread has its own connection (the core calls the store from ``asyncio.to_thread``
workers). ``transaction()`` begins a write transaction; used again inside one (a bare write, or a
nested ``transaction()``) it opens a savepoint, so that the inner block still commits or rolls back as
a unit while everything stays in the outer transaction.
"""

from __future__ import annotations

import json
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from typing import Any, Protocol

from authz.store.base import (
    AuthorizationCode,
    Change,
    ChangeKind,
    IssuedToken,
    KeyStatus,
    LogQuery,
    LogRecord,
    ObjectKind,
    Origin,
    RefreshToken,
    SigningKey,
    StoredObject,
    StoreTx,
)
from authz.store.errors import StoreConflict, StoreError
from authz.store.migrations import Dialect, migrations, schema_version_table

_LOG_PAGE = 1000


class Cursor(Protocol):
    """What both drivers' cursors offer (sqlite3.Cursor, psycopg.Cursor)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _loads_tuple(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text))


_OBJECT_COLUMNS = "kind, id, document, origin, secret_hash, created, last_updated"
_KEY_COLUMNS = "kid, as_id, status, private_pem, public_jwk, created, expired_at"
_TOKEN_COLUMNS = "jti, as_id, client_id, user_id, scopes, issued_at, expires_at, token_type, refresh_id, seq"
_REFRESH_COLUMNS = ("id, token_hash, as_id, client_id, user_id, scopes, issued_at, expires_at, window_seconds, "
                    "last_used_at, access_lifetime_seconds, chain_id, policy_id, rule_id, auth_time, status, "
                    "rotated_at, seq")
_CODE_COLUMNS = ("code_hash, as_id, client_id, user_id, redirect_uri, scopes, issued_at, expires_at, auth_time, "
                 "nonce, code_challenge, code_challenge_method, policy_id, rule_id, access_lifetime_seconds, "
                 "refresh_lifetime_seconds, refresh_window_seconds, used_at, issued_jtis, issued_refresh_ids")


def _placeholders(columns: str) -> str:
    return ", ".join("?" for _ in columns.split(","))


def _upsert(table: str, columns: str, key: str) -> str:
    names = [name.strip() for name in columns.split(",")]
    keys = {name.strip() for name in key.split(",")}
    updates = ", ".join(f"{name} = excluded.{name}" for name in names if name not in keys)
    return f"INSERT INTO {table} ({columns}) VALUES ({_placeholders(columns)}) ON CONFLICT ({key}) DO UPDATE SET {updates}"  # noqa: S608 (constant identifiers)


def _object(row: Sequence[Any]) -> StoredObject:
    return StoredObject(kind=row[0], id=row[1], document=json.loads(row[2]), origin=row[3], secret_hash=row[4],
                        created=row[5], last_updated=row[6])


def _key(row: Sequence[Any]) -> SigningKey:
    return SigningKey(kid=row[0], as_id=row[1], status=row[2], private_pem=bytes(row[3]),
                      public_jwk=json.loads(row[4]), created=row[5], expired_at=row[6])


def _token(row: Sequence[Any]) -> IssuedToken:
    return IssuedToken(jti=row[0], as_id=row[1], client_id=row[2], user_id=row[3], scopes=_loads_tuple(row[4]),
                       issued_at=row[5], expires_at=row[6], token_type=row[7], refresh_id=row[8], seq=row[9])


def _token_params(t: IssuedToken) -> tuple[Any, ...]:
    return (t.jti, t.as_id, t.client_id, t.user_id, _dumps(list(t.scopes)), t.issued_at, t.expires_at, t.token_type,
            t.refresh_id, t.seq)


def _refresh(row: Sequence[Any]) -> RefreshToken:
    return RefreshToken(id=row[0], token_hash=row[1], as_id=row[2], client_id=row[3], user_id=row[4],
                        scopes=_loads_tuple(row[5]), issued_at=row[6], expires_at=row[7], window_seconds=row[8],
                        last_used_at=row[9], access_lifetime_seconds=row[10], chain_id=row[11], policy_id=row[12],
                        rule_id=row[13], auth_time=row[14], status=row[15], rotated_at=row[16], seq=row[17])


def _refresh_params(t: RefreshToken) -> tuple[Any, ...]:
    return (t.id, t.token_hash, t.as_id, t.client_id, t.user_id, _dumps(list(t.scopes)), t.issued_at, t.expires_at,
            t.window_seconds, t.last_used_at, t.access_lifetime_seconds, t.chain_id, t.policy_id, t.rule_id,
            t.auth_time, t.status, t.rotated_at, t.seq)


def _code(row: Sequence[Any]) -> AuthorizationCode:
    return AuthorizationCode(code_hash=row[0], as_id=row[1], client_id=row[2], user_id=row[3], redirect_uri=row[4],
                             scopes=_loads_tuple(row[5]), issued_at=row[6], expires_at=row[7], auth_time=row[8],
                             nonce=row[9], code_challenge=row[10], code_challenge_method=row[11], policy_id=row[12],
                             rule_id=row[13], access_lifetime_seconds=row[14], refresh_lifetime_seconds=row[15],
                             refresh_window_seconds=row[16], used_at=row[17], issued_jtis=_loads_tuple(row[18]),
                             issued_refresh_ids=_loads_tuple(row[19]))


def _code_params(c: AuthorizationCode) -> tuple[Any, ...]:
    return (c.code_hash, c.as_id, c.client_id, c.user_id, c.redirect_uri, _dumps(list(c.scopes)), c.issued_at,
            c.expires_at, c.auth_time, c.nonce, c.code_challenge, c.code_challenge_method, c.policy_id, c.rule_id,
            c.access_lifetime_seconds, c.refresh_lifetime_seconds, c.refresh_window_seconds, c.used_at,
            _dumps(list(c.issued_jtis)), _dumps(list(c.issued_refresh_ids)))


class _ThreadState(threading.local):
    depth: int = 0
    changed: bool = False


class SqlTx:
    """The writes of one transaction, on the connection that began it."""

    def __init__(self, store: SqlStore, conn: Any) -> None:
        self._store = store
        self._conn = conn

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return self._store._exec(self._conn, sql, params)

    def put_object(self, kind: ObjectKind, id: str, document: dict[str, Any], origin: Origin,
                   secret_hash: str | None = None, keep_secret: bool = True) -> None:
        now = time.time()
        secret = "objects.secret_hash" if secret_hash is None and keep_secret else "excluded.secret_hash"
        self._exec(
            f"INSERT INTO objects ({_OBJECT_COLUMNS}) VALUES ({_placeholders(_OBJECT_COLUMNS)}) "  # noqa: S608 (constant identifiers)
            "ON CONFLICT (kind, id) DO UPDATE SET document = excluded.document, origin = excluded.origin, "
            f"secret_hash = {secret}, last_updated = excluded.last_updated",
            (kind, id, _dumps(document), origin, secret_hash, now, now))

    def delete_object(self, kind: ObjectKind, id: str) -> bool:
        return self._exec("DELETE FROM objects WHERE kind = ? AND id = ?", (kind, id)).rowcount > 0

    def get_object(self, kind: ObjectKind, id: str) -> StoredObject | None:
        self._store._lock_objects(self._conn)
        row = self._exec(f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE kind = ? AND id = ?{self._store.for_update}",  # noqa: S608 (constant identifiers)
                         (kind, id)).fetchone()
        return _object(row) if row is not None else None

    def list_objects(self, kind: ObjectKind) -> list[StoredObject]:
        self._store._lock_objects(self._conn)
        rows = self._exec(f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE kind = ? ORDER BY created, id", (kind,)).fetchall()  # noqa: S608 (constant identifiers)
        return [_object(row) for row in rows]

    def hold_objects(self) -> None:
        self._store._hold_objects(self._conn)

    def lock_refresh_chain(self, chain_id: str) -> None:
        self._store._lock_refresh_chain(self._conn, chain_id)

    def add_signing_key(self, key: SigningKey) -> None:
        self._exec(f"INSERT INTO signing_keys ({_KEY_COLUMNS}) VALUES ({_placeholders(_KEY_COLUMNS)})",  # noqa: S608 (constant identifiers)
                   (key.kid, key.as_id, key.status, key.private_pem, _dumps(key.public_jwk), key.created,
                    key.expired_at))

    def set_key_status(self, as_id: str, kid: str, status: KeyStatus, at: float | None = None) -> None:
        expired_at = at if status == "EXPIRED" else None
        updated = self._exec("UPDATE signing_keys SET status = ?, expired_at = ? WHERE as_id = ? AND kid = ?",
                             (status, expired_at, as_id, kid))
        if updated.rowcount == 0:
            raise StoreError(f"no signing key {kid!r} for authorization server {as_id!r}")

    def delete_signing_key(self, as_id: str, kid: str) -> bool:
        return self._exec("DELETE FROM signing_keys WHERE as_id = ? AND kid = ?", (as_id, kid)).rowcount > 0

    def list_signing_keys(self, as_id: str) -> list[SigningKey]:
        self._store._lock_signing_keys(self._conn, as_id)
        rows = self._exec(f"SELECT {_KEY_COLUMNS} FROM signing_keys WHERE as_id = ? ORDER BY created, kid", (as_id,)).fetchall()  # noqa: S608 (constant identifiers)
        return [_key(row) for row in rows]

    def record_token(self, token: IssuedToken) -> None:
        self._exec(f"INSERT INTO tokens ({_TOKEN_COLUMNS}) VALUES ({_placeholders(_TOKEN_COLUMNS)})",  # noqa: S608 (constant identifiers)
                   _token_params(token))

    def put_refresh_token(self, token: RefreshToken) -> None:
        self._exec(_upsert("refresh_tokens", _REFRESH_COLUMNS, "id"), _refresh_params(token))

    def put_code(self, code: AuthorizationCode) -> None:
        self._exec(_upsert("codes", _CODE_COLUMNS, "code_hash"), _code_params(code))

    def consume_code(self, code_hash: str, now: float) -> AuthorizationCode | None:
        # The row lock (PostgreSQL) or the database write lock (SQLite) makes read-then-mark atomic: of
        # two concurrent redemptions, the second sees used_at set.
        row = self._exec(f"SELECT {_CODE_COLUMNS} FROM codes WHERE code_hash = ?{self._store.for_update}",  # noqa: S608 (constant identifiers)
                         (code_hash,)).fetchone()
        if row is None:
            return None
        code = _code(row)
        if code.used_at is None:
            self._exec("UPDATE codes SET used_at = ? WHERE code_hash = ?", (now, code_hash))
        return code

    def use_assertion_jti(self, client_id: str, jti: str, expires_at: float) -> bool:
        inserted = self._exec("INSERT INTO assertion_jtis (client_id, jti, expires_at) VALUES (?, ?, ?) "
                              "ON CONFLICT (client_id, jti) DO NOTHING", (client_id, jti, expires_at))
        return inserted.rowcount == 1

    def append_change(self, kind: ChangeKind, data: dict[str, Any]) -> int:
        self._store._before_append_change(self._conn)
        self._store._state.changed = True
        exp = data.get("exp")
        expires_at = float(exp) if isinstance(exp, int | float) else None
        row = self._exec("INSERT INTO changes (kind, data, created, expires_at) VALUES (?, ?, ?, ?) RETURNING seq",
                         (kind, _dumps(data), time.time(), expires_at)).fetchone()
        seq = int(row[0])
        self._store._after_append_change(self._conn, seq)
        return seq

    def append_log(self, event: dict[str, Any], published: float) -> int:
        row = self._exec("INSERT INTO logs (published, event) VALUES (?, ?) RETURNING seq",
                         (published, _dumps(event))).fetchone()
        return int(row[0])

    def allocate_token_seq(self) -> int:
        return self._store._allocate_token_seq(self._conn)

    def current_token_seq(self) -> int:
        return self._store._current_token_seq(self._conn)


class SqlStore(ABC):
    """Reads, transactions and bare writes over a DB-API connection per thread."""

    url: str
    for_update: str = ""
    """Suffix that locks the rows a SELECT reads inside a write transaction (PostgreSQL)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.display_url = url
        """The URL as error messages show it (a password is masked)."""
        self._state = _ThreadState()
        self._changed = threading.Condition()
        self._change_count = 0
        self._closing = False

    # --- connections and dialect hooks ---------------------------------------------------------------

    @abstractmethod
    def _connection(self) -> Any:
        """This thread's connection (opened on first use)."""

    def _guard(self) -> AbstractContextManager[object]:
        """Held around every use of a connection (a shared in-memory connection needs a lock)."""
        return nullcontext()

    @abstractmethod
    def _exec(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> Cursor:
        """Execute one statement; driver errors come out as StoreError."""

    @abstractmethod
    def _begin(self, conn: Any) -> None: ...

    @abstractmethod
    def _allocate_token_seq(self, conn: Any) -> int: ...

    @abstractmethod
    def _current_token_seq(self, conn: Any) -> int: ...

    def _before_append_change(self, conn: Any) -> None:
        return None

    def _after_append_change(self, conn: Any, seq: int) -> None:
        return None

    def _lock_signing_keys(self, conn: Any, as_id: str) -> None:
        """Serialize writers of one AS's keys (SQLite: the write transaction already does)."""
        return None

    def _lock_objects(self, conn: Any) -> None:
        """Serialize read-modify-writes of configuration objects across processes (SQLite: the write
        transaction already does)."""
        return None

    def _hold_objects(self, conn: Any) -> None:
        """Keep configuration objects unchanged until commit, shared with other holders (SQLite: the
        write transaction already does)."""
        return None

    def _lock_refresh_chain(self, conn: Any, chain_id: str) -> None:
        """Serialize writers of one refresh-token chain (SQLite: the write transaction already does)."""
        return None

    def _lock_for_migration(self, tx: SqlTx) -> None:
        """Serialize processes migrating one database at once (SQLite: the write transaction does)."""
        return None

    @abstractmethod
    def close(self) -> None: ...

    def _migrate(self, dialect: Dialect) -> None:
        steps = migrations(dialect)
        with self._transaction() as tx:
            self._lock_for_migration(tx)
            tx._exec(schema_version_table(dialect))
            current = int(tx._exec("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0])
            if current > len(steps):
                raise StoreConflict(f"store {self.display_url} has schema version {current}, written by a newer "
                                    f"scopegate (this one knows versions up to {len(steps)}); upgrade scopegate")
            for version, statements in enumerate(steps[current:], start=current + 1):
                for statement in statements:
                    tx._exec(statement)
                tx._exec("INSERT INTO schema_version (version, applied) VALUES (?, ?)", (version, time.time()))

    # --- transactions --------------------------------------------------------------------------------

    def _writer_turn(self) -> AbstractContextManager[object]:
        """Held from BEGIN to COMMIT or ROLLBACK of an outermost transaction; a dialect may queue its writers."""
        return nullcontext()

    @contextmanager
    def _transaction(self) -> Iterator[SqlTx]:
        state = self._state
        with self._guard():
            conn = self._connection()
            name = f"sp{state.depth}"
            turn = self._writer_turn() if state.depth == 0 else nullcontext()
            with turn:
                if state.depth == 0:
                    self._begin(conn)
                    state.changed = False
                else:
                    self._exec(conn, f"SAVEPOINT {name}")
                state.depth += 1
                try:
                    yield SqlTx(self, conn)
                except BaseException:
                    state.depth -= 1
                    if state.depth == 0:
                        self._rollback_quietly(conn, "ROLLBACK")
                    else:
                        self._rollback_quietly(conn, f"ROLLBACK TO SAVEPOINT {name}")
                    raise
                state.depth -= 1
                if state.depth:
                    self._exec(conn, f"RELEASE SAVEPOINT {name}")
                    return
                try:
                    self._exec(conn, "COMMIT")
                except BaseException:
                    self._rollback_quietly(conn, "ROLLBACK")
                    raise
            if state.changed:
                with self._changed:
                    self._change_count += 1
                    self._changed.notify_all()

    def transaction(self) -> AbstractContextManager[StoreTx]:
        return self._transaction()

    def _rollback_quietly(self, conn: Any, sql: str) -> None:
        # The block's own exception is what the caller needs to see; a failed rollback (the connection
        # is gone) changes nothing, since an unfinished transaction is never committed.
        with suppress(StoreError):
            self._exec(conn, sql)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._guard():
            return self._exec(self._connection(), sql, params).fetchall()

    def wait_for_change(self, timeout: float) -> bool:
        """Wait until this process commits a change-feed entry (True) or ``timeout`` passes (False).
        Other processes' changes are found by polling ``changes_since``. Returns False at once after
        ``close()``, which also wakes the waiters."""
        with self._changed:
            seen = self._change_count
            self._changed.wait_for(lambda: self._change_count != seen or self._closing, timeout=max(timeout, 0))
            return self._change_count != seen

    def _wake_waiters(self) -> None:
        with self._changed:
            self._closing = True
            self._changed.notify_all()

    # --- bare writes: each its own transaction -------------------------------------------------------

    def put_object(self, kind: ObjectKind, id: str, document: dict[str, Any], origin: Origin,
                   secret_hash: str | None = None, keep_secret: bool = True) -> None:
        with self.transaction() as tx:
            tx.put_object(kind, id, document, origin, secret_hash, keep_secret)

    def delete_object(self, kind: ObjectKind, id: str) -> bool:
        with self.transaction() as tx:
            return tx.delete_object(kind, id)

    def add_signing_key(self, key: SigningKey) -> None:
        with self.transaction() as tx:
            tx.add_signing_key(key)

    def set_key_status(self, as_id: str, kid: str, status: KeyStatus, at: float | None = None) -> None:
        with self.transaction() as tx:
            tx.set_key_status(as_id, kid, status, at)

    def delete_signing_key(self, as_id: str, kid: str) -> bool:
        with self.transaction() as tx:
            return tx.delete_signing_key(as_id, kid)

    def record_token(self, token: IssuedToken) -> None:
        with self.transaction() as tx:
            tx.record_token(token)

    def put_refresh_token(self, token: RefreshToken) -> None:
        with self.transaction() as tx:
            tx.put_refresh_token(token)

    def put_code(self, code: AuthorizationCode) -> None:
        with self.transaction() as tx:
            tx.put_code(code)

    def consume_code(self, code_hash: str, now: float) -> AuthorizationCode | None:
        with self.transaction() as tx:
            return tx.consume_code(code_hash, now)

    def use_assertion_jti(self, client_id: str, jti: str, expires_at: float) -> bool:
        with self.transaction() as tx:
            return tx.use_assertion_jti(client_id, jti, expires_at)

    def append_change(self, kind: ChangeKind, data: dict[str, Any]) -> int:
        with self.transaction() as tx:
            return tx.append_change(kind, data)

    def append_log(self, event: dict[str, Any], published: float) -> int:
        with self.transaction() as tx:
            return tx.append_log(event, published)

    def allocate_token_seq(self) -> int:
        with self.transaction() as tx:
            return tx.allocate_token_seq()

    def hold_objects(self) -> None:
        """Outside a transaction there is nothing to hold a lock for: a no-op (see ``StoreTx``)."""
        return None

    def lock_refresh_chain(self, chain_id: str) -> None:
        """Outside a transaction there is nothing to hold a lock for: a no-op (see ``StoreTx``)."""
        return None

    def current_token_seq(self) -> int:
        with self._guard():
            return self._current_token_seq(self._connection())

    # --- reads ---------------------------------------------------------------------------------------

    def ping(self) -> None:
        self._read("SELECT 1")

    def get_object(self, kind: ObjectKind, id: str) -> StoredObject | None:
        rows = self._read(f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE kind = ? AND id = ?", (kind, id))  # noqa: S608 (constant identifiers)
        return _object(rows[0]) if rows else None

    def list_objects(self, kind: ObjectKind) -> list[StoredObject]:
        rows = self._read(f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE kind = ? ORDER BY created, id", (kind,))  # noqa: S608 (constant identifiers)
        return [_object(row) for row in rows]

    def list_signing_keys(self, as_id: str) -> list[SigningKey]:
        rows = self._read(f"SELECT {_KEY_COLUMNS} FROM signing_keys WHERE as_id = ? ORDER BY created, kid", (as_id,))  # noqa: S608 (constant identifiers)
        return [_key(row) for row in rows]

    def get_token(self, jti: str) -> IssuedToken | None:
        rows = self._read(f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE jti = ?", (jti,))  # noqa: S608 (constant identifiers)
        return _token(rows[0]) if rows else None

    def list_tokens(self, *, as_id: str | None = None, client_id: str | None = None,
                    user_id: str | None = None, refresh_id: str | None = None) -> list[IssuedToken]:
        where, params = _filters(as_id=as_id, client_id=client_id, user_id=user_id, refresh_id=refresh_id)
        rows = self._read(f"SELECT {_TOKEN_COLUMNS} FROM tokens{where} ORDER BY seq, jti", params)  # noqa: S608 (constant identifiers)
        return [_token(row) for row in rows]

    def get_refresh_token_by_hash(self, token_hash: str) -> RefreshToken | None:
        rows = self._read(f"SELECT {_REFRESH_COLUMNS} FROM refresh_tokens WHERE token_hash = ?", (token_hash,))  # noqa: S608 (constant identifiers)
        return _refresh(rows[0]) if rows else None

    def get_refresh_token(self, id: str) -> RefreshToken | None:
        rows = self._read(f"SELECT {_REFRESH_COLUMNS} FROM refresh_tokens WHERE id = ?", (id,))  # noqa: S608 (constant identifiers)
        return _refresh(rows[0]) if rows else None

    def list_refresh_tokens(self, *, as_id: str | None = None, client_id: str | None = None,
                            user_id: str | None = None, chain_id: str | None = None) -> list[RefreshToken]:
        where, params = _filters(as_id=as_id, client_id=client_id, user_id=user_id, chain_id=chain_id)
        rows = self._read(f"SELECT {_REFRESH_COLUMNS} FROM refresh_tokens{where} ORDER BY seq, id", params)  # noqa: S608 (constant identifiers)
        return [_refresh(row) for row in rows]

    def changes_since(self, seq: int, limit: int = 10000) -> list[Change]:
        rows = self._read("SELECT seq, kind, data, created FROM changes WHERE seq > ? ORDER BY seq LIMIT ?",
                          (seq, limit))
        return [Change(seq=row[0], kind=row[1], data=json.loads(row[2]), created=row[3]) for row in rows]

    def last_change_seq(self) -> int:
        rows = self._read("SELECT MAX(seq) FROM changes")
        return int(rows[0][0] or 0)

    def query_logs(self, query: LogQuery) -> list[LogRecord]:
        clauses: list[str] = []
        params: list[Any] = []
        if query.since is not None:
            clauses.append("published >= ?")
            params.append(query.since)
        if query.until is not None:
            clauses.append("published < ?")
            params.append(query.until)
        if query.after is not None:
            clauses.append("seq < ?" if query.descending else "seq > ?")
            params.append(query.after)
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
        order = "DESC" if query.descending else "ASC"
        params.append(max(query.limit, 0))
        rows = self._read(f"SELECT seq, published, event FROM logs{where} ORDER BY seq {order} LIMIT ?", params)  # noqa: S608 (constant clauses)
        return [LogRecord(seq=row[0], published=row[1], event=json.loads(row[2])) for row in rows]

    def iter_logs(self) -> Iterator[LogRecord]:
        after = 0
        while True:
            page = self.query_logs(LogQuery(after=after, limit=_LOG_PAGE))
            yield from page
            if len(page) < _LOG_PAGE:
                return
            after = page[-1].seq

    def prune(self, now: float, log_retention: float | None = None) -> int:
        """Delete what can no longer matter: expired codes, assertion jtis and token records, refresh
        token chains past their absolute expiry or idle window, and change-feed entries whose tokens
        have all expired (the newest entry stays, so ``last_change_seq`` never goes backwards)."""
        with self._transaction() as tx:
            removed = 0
            for sql, params in (
                ("DELETE FROM codes WHERE expires_at < ?", (now,)),
                ("DELETE FROM assertion_jtis WHERE expires_at < ?", (now,)),
                ("DELETE FROM tokens WHERE expires_at < ?", (now,)),
                ("DELETE FROM refresh_tokens WHERE expires_at IS NOT NULL AND expires_at < ?", (now,)),
                # A rotated token must outlive its own window while its chain is alive: presenting it is
                # reuse (spec §5), which revokes the chain. So a chain goes only once all of it is idle.
                ("DELETE FROM refresh_tokens WHERE chain_id IN (SELECT chain_id FROM refresh_tokens "
                 "GROUP BY chain_id HAVING MAX(last_used_at + window_seconds) < ?)", (now,)),
                ("DELETE FROM changes WHERE expires_at IS NOT NULL AND expires_at < ? "
                 "AND seq < (SELECT MAX(seq) FROM changes)", (now,)),
            ):
                removed += max(tx._exec(sql, params).rowcount, 0)
            if log_retention is not None:
                removed += max(tx._exec("DELETE FROM logs WHERE published < ?", (now - log_retention,)).rowcount, 0)
            return removed


def _filters(**values: str | None) -> tuple[str, list[Any]]:
    clauses = [f"{name} = ?" for name, value in values.items() if value is not None]
    params = [value for value in values.values() if value is not None]
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params
