"""The store's schema, as ordered migrations shared by SQLite and PostgreSQL.

Migration N brings a store from schema version N-1 to N; ``schema_version`` records the last one
applied. A store whose version is higher than ``len(MIGRATIONS)`` was written by a newer scopegate and
is refused rather than guessed at. Never edit a released migration: append a new one.

The DDL is written once with a few type placeholders so that both dialects keep the same tables,
columns and indexes (the contract tests run against both).
"""

from __future__ import annotations

from typing import Literal

Dialect = Literal["sqlite", "postgres"]

_TYPES: dict[Dialect, dict[str, str]] = {
    "sqlite": {
        "serial_pk": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "int": "INTEGER",
        "real": "REAL",
        "blob": "BLOB",
    },
    "postgres": {
        "serial_pk": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "int": "BIGINT",
        "real": "DOUBLE PRECISION",
        "blob": "BYTEA",
    },
}

# JSON values (documents, scopes, events) are kept as text in both dialects: the store never queries
# inside them, and one representation keeps the two implementations byte-for-byte comparable.
_MIGRATION_1 = """
CREATE TABLE objects (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    document TEXT NOT NULL,
    origin TEXT NOT NULL,
    secret_hash TEXT,
    created {real} NOT NULL,
    last_updated {real} NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE TABLE signing_keys (
    as_id TEXT NOT NULL,
    kid TEXT NOT NULL,
    status TEXT NOT NULL,
    private_pem {blob} NOT NULL,
    public_jwk TEXT NOT NULL,
    created {real} NOT NULL,
    PRIMARY KEY (as_id, kid)
);
CREATE TABLE tokens (
    jti TEXT PRIMARY KEY,
    seq {int} NOT NULL,
    as_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    user_id TEXT,
    scopes TEXT NOT NULL,
    issued_at {real} NOT NULL,
    expires_at {real} NOT NULL,
    token_type TEXT NOT NULL,
    refresh_id TEXT
);
CREATE INDEX tokens_as_id ON tokens (as_id);
CREATE INDEX tokens_client_id ON tokens (client_id);
CREATE INDEX tokens_user_id ON tokens (user_id);
CREATE INDEX tokens_refresh_id ON tokens (refresh_id);
CREATE INDEX tokens_expires_at ON tokens (expires_at);
CREATE TABLE refresh_tokens (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    as_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    user_id TEXT,
    scopes TEXT NOT NULL,
    issued_at {real} NOT NULL,
    expires_at {real},
    window_seconds {int} NOT NULL,
    last_used_at {real} NOT NULL,
    access_lifetime_seconds {int} NOT NULL,
    chain_id TEXT NOT NULL,
    policy_id TEXT,
    rule_id TEXT,
    auth_time {real},
    status TEXT NOT NULL,
    rotated_at {real},
    seq {int} NOT NULL
);
CREATE INDEX refresh_tokens_as_id ON refresh_tokens (as_id);
CREATE INDEX refresh_tokens_client_id ON refresh_tokens (client_id);
CREATE INDEX refresh_tokens_user_id ON refresh_tokens (user_id);
CREATE INDEX refresh_tokens_chain_id ON refresh_tokens (chain_id);
CREATE TABLE codes (
    code_hash TEXT PRIMARY KEY,
    as_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    scopes TEXT NOT NULL,
    issued_at {real} NOT NULL,
    expires_at {real} NOT NULL,
    auth_time {real} NOT NULL,
    nonce TEXT,
    code_challenge TEXT,
    code_challenge_method TEXT,
    policy_id TEXT,
    rule_id TEXT,
    access_lifetime_seconds {int} NOT NULL,
    refresh_lifetime_seconds {int} NOT NULL,
    refresh_window_seconds {int} NOT NULL,
    used_at {real},
    issued_jtis TEXT NOT NULL,
    issued_refresh_ids TEXT NOT NULL
);
CREATE INDEX codes_expires_at ON codes (expires_at);
CREATE TABLE assertion_jtis (
    client_id TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires_at {real} NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE TABLE changes (
    seq {serial_pk},
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    created {real} NOT NULL,
    expires_at {real}
);
CREATE TABLE logs (
    seq {serial_pk},
    published {real} NOT NULL,
    event TEXT NOT NULL
);
CREATE INDEX logs_published ON logs (published);
"""

# The issued-token order. SQLite has no sequences: a one-row counter, updated under the write lock.
# PostgreSQL: a real SEQUENCE, whose nextval never goes backwards across sessions.
_TOKEN_SEQ: dict[Dialect, str] = {
    "sqlite": """
CREATE TABLE token_seq (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
INSERT INTO token_seq (id, value) VALUES (1, 0);
""",
    "postgres": "CREATE SEQUENCE token_seq AS BIGINT START WITH 1 MINVALUE 1;",
}


# When a key stopped signing, so that rotation can drop EXPIRED keys once every token they signed has
# expired (NULL: expired before this column existed; such keys are kept).
_MIGRATION_2 = """
ALTER TABLE signing_keys ADD COLUMN expired_at {real};
"""


def schema_version_table(dialect: Dialect) -> str:
    """Created before any migration runs: the record of which migrations were applied."""
    return (f"CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
            f"applied {_TYPES[dialect]['real']} NOT NULL)")


def migrations(dialect: Dialect) -> list[list[str]]:
    """The migrations in order, each a list of statements for ``dialect``."""
    first = _MIGRATION_1.format(**_TYPES[dialect]) + _TOKEN_SEQ[dialect]
    return [_statements(first), _statements(_MIGRATION_2.format(**_TYPES[dialect]))]


def _statements(script: str) -> list[str]:
    return [statement.strip() for statement in script.split(";") if statement.strip()]
