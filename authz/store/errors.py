"""Errors of the storage layer, translated from sqlite3/psycopg at the boundary."""

from __future__ import annotations

from authz.errors import ScopegateError


class StoreError(ScopegateError):
    """The store cannot be opened, read or written. The message is one clear line for operators."""

    status_code = 503
    reason = "store_unavailable"


class StoreConflict(StoreError):
    """A write conflicts with what is stored (a duplicate id, a migration from a newer version)."""

    status_code = 409
    reason = "store_conflict"
