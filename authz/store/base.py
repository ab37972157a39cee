"""The storage contract: every implementation (SQLite, PostgreSQL) passes the same tests.

The store is synchronous on purpose: SQLite's and psycopg's blocking APIs are simple and fast, and async
callers hop to a worker thread (``asyncio.to_thread``) so that the event loop, which also carries the
proxy's hot path, never waits on disk.

Writes that belong together go through one ``transaction()``: an issued token and its system-log
event, a revocation and its change-feed entry, a configuration change and its watermark. Either all
of it is committed (and durable: a SIGKILL afterwards loses nothing) or none of it is.

Configuration objects are kept as the JSON documents of their config-schema model
(``config.schema``): an authorization server's document holds its scopes, claims, policies and rules.
Secrets (client secrets, user passwords) are never in a document; their scrypt hashes are kept beside
it (``secret_hash``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

ObjectKind = Literal["authorization_server", "app", "user", "group"]
Origin = Literal["config", "api"]
KeyStatus = Literal["ACTIVE", "NEXT", "EXPIRED"]
ChangeKind = Literal["revoke_jti", "watermark", "config"]
WatermarkScope = Literal["user", "client", "user_client", "as"]


@dataclass(frozen=True)
class StoredObject:
    kind: ObjectKind
    id: str
    document: dict[str, Any]
    """The config model's JSON (``model_dump(by_alias=True, exclude_none=True)``), without secrets."""
    origin: Origin
    secret_hash: str | None
    created: float
    last_updated: float


@dataclass(frozen=True)
class SigningKey:
    kid: str
    as_id: str
    status: KeyStatus
    private_pem: bytes
    """PKCS#8 PEM of the RSA private key."""
    public_jwk: dict[str, Any]
    """``{kty, n, e, kid, alg: RS256, use: sig}``."""
    created: float
    expired_at: float | None = None
    """When the key became EXPIRED (stopped signing); None while it signs or will sign."""


@dataclass(frozen=True)
class IssuedToken:
    """An access or ID token that was minted (its value is never stored, only its jti)."""

    jti: str
    as_id: str
    client_id: str
    user_id: str | None
    scopes: tuple[str, ...]
    issued_at: float
    expires_at: float
    token_type: Literal["access_token", "id_token"] = "access_token"
    refresh_id: str | None = None
    """The refresh token this access token was minted with, if any (revoking it revokes these)."""
    seq: int = 0
    """Position in the issued-token order (``allocate_token_seq``); watermarks compare against it."""


@dataclass(frozen=True)
class RefreshToken:
    id: str
    """Public id (``oar…``) for the admin API; the token value is only kept as ``token_hash``."""
    token_hash: str
    as_id: str
    client_id: str
    user_id: str | None
    scopes: tuple[str, ...]
    issued_at: float
    expires_at: float | None
    """Absolute expiry (None: unlimited). Rotated tokens inherit it from the first of the chain."""
    window_seconds: int
    """Idle window: revoked if not used within it; each use resets it."""
    last_used_at: float
    access_lifetime_seconds: int
    """The rule's access token lifetime when the flow started (spec §9 D3: refresh does not re-evaluate)."""
    chain_id: str
    policy_id: str | None = None
    rule_id: str | None = None
    auth_time: float | None = None
    status: Literal["ACTIVE", "ROTATED", "REVOKED"] = "ACTIVE"
    rotated_at: float | None = None
    seq: int = 0
    """Issued-token order, as for access tokens, so watermarks apply to refresh tokens too."""


@dataclass(frozen=True)
class AuthorizationCode:
    code_hash: str
    as_id: str
    client_id: str
    user_id: str
    redirect_uri: str
    scopes: tuple[str, ...]
    issued_at: float
    expires_at: float
    auth_time: float
    nonce: str | None = None
    code_challenge: str | None = None
    code_challenge_method: str | None = None
    policy_id: str | None = None
    rule_id: str | None = None
    access_lifetime_seconds: int = 3600
    refresh_lifetime_seconds: int = 0
    refresh_window_seconds: int = 604800
    used_at: float | None = None
    issued_jtis: tuple[str, ...] = field(default=())
    """Tokens minted from this code, revoked if the code is presented again (RFC 9700 §4.2.1)."""
    issued_refresh_ids: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Change:
    """One entry of the append-only change feed that every process applies to its revocation state."""

    seq: int
    kind: ChangeKind
    data: dict[str, Any]
    """revoke_jti: {as_id, jti, exp}. watermark: {scope, key, before_seq, exp}. config: {kind, id}."""
    created: float


@dataclass(frozen=True)
class LogQuery:
    since: float | None = None
    until: float | None = None
    after: int | None = None
    """Cursor: the ``seq`` of the last event of the previous page."""
    limit: int = 100
    descending: bool = False


@dataclass(frozen=True)
class LogRecord:
    seq: int
    published: float
    event: dict[str, Any]


class StoreTx(Protocol):
    """The writes available inside one transaction."""

    def put_object(self, kind: ObjectKind, id: str, document: dict[str, Any], origin: Origin,
                   secret_hash: str | None = None, keep_secret: bool = True) -> None:
        """Insert or replace; ``keep_secret`` keeps the existing hash when ``secret_hash`` is None."""

    def delete_object(self, kind: ObjectKind, id: str) -> bool: ...

    def get_object(self, kind: ObjectKind, id: str) -> StoredObject | None:
        """Inside a transaction: read for a read-modify-write. Every configuration object is locked until
        commit, so that another process's change waits and then builds on this one's (SQLite: the write
        transaction holds the database; PostgreSQL: an advisory lock on the objects plus ``FOR UPDATE``)."""

    def list_objects(self, kind: ObjectKind) -> list[StoredObject]:
        """Inside a transaction: like ``get_object``, for every object of a kind (same lock)."""

    def add_signing_key(self, key: SigningKey) -> None: ...

    def set_key_status(self, as_id: str, kid: str, status: KeyStatus, at: float | None = None) -> None:
        """Change the key's status; ``at`` is recorded as ``expired_at`` when the status is EXPIRED."""

    def delete_signing_key(self, as_id: str, kid: str) -> bool:
        """Remove a key (rotation drops EXPIRED keys no unexpired token can need); False if unknown."""

    def hold_objects(self) -> None:
        """Inside a transaction: the configuration objects cannot change until commit, and the reads that
        follow see every change committed before (a grant re-checks its user, client and server here, so
        that a deactivation either commits first and is seen, or waits and its watermark covers the token).
        Shared between holders: grants do not wait for each other, only for a configuration change, which
        takes the objects' lock (``get_object``/``list_objects``). SQLite: the write transaction already
        holds the database; PostgreSQL: the shared form of the objects' advisory lock."""

    def lock_refresh_chain(self, chain_id: str) -> None:
        """Inside a transaction: serialize writers of one refresh-token chain until commit (a refresh reads,
        compares and writes its token under it, and so does a revocation of the chain), so that a refresh
        racing ``/revoke`` either commits first and is revoked with the chain, or sees it REVOKED."""

    def list_signing_keys(self, as_id: str) -> list[SigningKey]:
        """Inside a transaction: the AS's keys, locked until commit, so that two processes creating or
        rotating the keys of one AS at once serialize instead of both writing (``authz.keys``)."""

    def record_token(self, token: IssuedToken) -> None:
        """Store the record (its ``seq`` was allocated with ``allocate_token_seq``)."""

    def put_refresh_token(self, token: RefreshToken) -> None:
        """Insert or replace (by id)."""

    def put_code(self, code: AuthorizationCode) -> None: ...

    def consume_code(self, code_hash: str, now: float) -> AuthorizationCode | None:
        """Mark the code used and return it as it was before; None if unknown. A code already used is
        returned with ``used_at`` set so that the caller can revoke what it issued."""

    def use_assertion_jti(self, client_id: str, jti: str, expires_at: float) -> bool:
        """False if this client already used this jti (private_key_jwt assertions are single-use)."""

    def append_change(self, kind: ChangeKind, data: dict[str, Any]) -> int:
        """Append to the change feed; returns the entry's seq."""

    def append_log(self, event: dict[str, Any], published: float) -> int: ...

    def allocate_token_seq(self) -> int:
        """The next position in the issued-token order (strictly increasing, shared by access, ID and
        refresh tokens). The minting code allocates it first and embeds it in the jti (``authz.jti``), so
        that a proxy can compare a token with a watermark from the token's claims alone."""

    def current_token_seq(self) -> int:
        """The highest seq allocated so far (a watermark's ``before_seq``: every token ≤ it is revoked)."""


class Store(StoreTx, Protocol):
    """Reads, plus ``transaction()`` for writes. A bare write call is its own transaction."""

    url: str

    def transaction(self) -> AbstractContextManager[StoreTx]: ...

    def close(self) -> None: ...

    def ping(self) -> None:
        """Raise if the store cannot be read (readiness)."""

    def get_object(self, kind: ObjectKind, id: str) -> StoredObject | None: ...

    def list_objects(self, kind: ObjectKind) -> list[StoredObject]: ...

    def list_signing_keys(self, as_id: str) -> list[SigningKey]: ...

    def get_token(self, jti: str) -> IssuedToken | None: ...

    def list_tokens(self, *, as_id: str | None = None, client_id: str | None = None,
                    user_id: str | None = None, refresh_id: str | None = None) -> list[IssuedToken]: ...

    def get_refresh_token_by_hash(self, token_hash: str) -> RefreshToken | None: ...

    def get_refresh_token(self, id: str) -> RefreshToken | None: ...

    def list_refresh_tokens(self, *, as_id: str | None = None, client_id: str | None = None,
                            user_id: str | None = None, chain_id: str | None = None) -> list[RefreshToken]: ...

    def changes_since(self, seq: int, limit: int = 10000) -> list[Change]: ...

    def last_change_seq(self) -> int: ...

    def wait_for_change(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a new change-feed entry; True if one was (probably)
        committed, so that the feed poller can wake early. False says nothing: poll anyway. PostgreSQL
        hears every process (LISTEN/NOTIFY); SQLite only hears commits made through this store object."""

    def query_logs(self, query: LogQuery) -> list[LogRecord]: ...

    def iter_logs(self) -> Iterator[LogRecord]: ...

    def prune(self, now: float, log_retention: float | None = None) -> int:
        """Delete expired codes, assertion jtis and token records past their expiry, and system-log events
        older than ``log_retention`` seconds (None keeps them all); returns rows removed."""


def open_store(url: str, timeout: float | None = None) -> Store:
    """Open the store named by a config ``store`` URL; raise StoreError with one clear line on failure.

    ``timeout`` (``storeTimeout``, seconds) bounds every PostgreSQL statement and connection attempt (None:
    the default, 1 s); SQLite, a local file, keeps its busy timeout."""
    from authz.store.errors import StoreError

    if url.startswith("sqlite://"):
        from authz.store.sqlite import SqliteStore

        return SqliteStore(url)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from authz.store.postgres import PostgresStore
        except ImportError as exc:  # psycopg is the optional 'postgres' extra
            raise StoreError(f"store {url!r} needs the PostgreSQL driver: pip install 'scopegate[postgres]' ({exc})") from exc
        return PostgresStore(url) if timeout is None else PostgresStore(url, timeout)
    raise StoreError(f"store {url!r}: unknown scheme; use sqlite:///path or postgresql://user@host:port/db")


__all__: Sequence[str] = [
    "AuthorizationCode",
    "Change",
    "IssuedToken",
    "LogQuery",
    "LogRecord",
    "RefreshToken",
    "SigningKey",
    "Store",
    "StoreTx",
    "StoredObject",
    "open_store",
]
