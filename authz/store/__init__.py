"""Storage: the ``Store`` contract and its SQLite (embedded default) and PostgreSQL implementations."""

from authz.store.base import (
    AuthorizationCode,
    Change,
    IssuedToken,
    LogQuery,
    LogRecord,
    RefreshToken,
    SigningKey,
    Store,
    StoredObject,
    StoreTx,
    open_store,
)
from authz.store.errors import StoreConflict, StoreError

__all__ = ["AuthorizationCode", "Change", "IssuedToken", "LogQuery", "LogRecord", "RefreshToken", "SigningKey",
           "Store", "StoreConflict", "StoreError", "StoreTx", "StoredObject", "open_store"]
