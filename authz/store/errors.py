"""Errors of the storage layer, translated from sqlite3/psycopg at the boundary.

A store error has two texts. ``str(exc)`` is the operator's line (which store, what the driver said,
the password masked): it goes to stderr only. ``exc.description`` is what a client may read, in an HTTP
body, the system log or ``/readyz``: it never names the store URL, host, port, user, database or the
driver's message (issue 12).
"""

from __future__ import annotations

from typing import Any

from authz.errors import OktaApiError, ScopegateError

UNAVAILABLE = "The service is temporarily unavailable. Try again later."
CONFLICT = "The request conflicts with the stored state. Read it again and retry."


class StoreError(ScopegateError):
    """The store cannot be opened, read or written in time: 503, ``Retry-After: 1``.

    The body is RFC 6749's ``temporarily_unavailable`` here; the core answers Okta's error object on
    ``/api/v1`` instead (``authz.app``)."""

    status_code = 503
    reason = "store_unavailable"
    public = UNAVAILABLE

    def __init__(self, detail: str, *, reason: str | None = None) -> None:
        super().__init__(self.public, reason=reason)
        self.detail = detail
        """The operator's line (stderr only): never in a response."""

    def __str__(self) -> str:
        return self.detail

    def get_body(self) -> dict[str, Any]:
        return {"error": "temporarily_unavailable", "error_description": self.description}

    def get_headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", "Cache-Control": "no-store", "Retry-After": "1"}

    def for_path(self, path: str) -> ScopegateError:
        """The error in the shape of the endpoint family: Okta's error object on the management API and the
        system log (``/api/``; spec §6.3 gives E0000009 for a query that timed out), RFC 6749's elsewhere."""
        if not path.startswith("/api/"):
            return self
        headers = {"Retry-After": "1"} if self.status_code == 503 else {}
        return OktaApiError(self.status_code, "E0000009", "Internal Server Error", [self.description],
                            reason=self.reason, headers=headers)


class StoreConflict(StoreError):
    """A write conflicts with what is stored (a duplicate id, a migration from a newer version)."""

    status_code = 409
    reason = "store_conflict"
    public = CONFLICT

    def get_body(self) -> dict[str, Any]:
        return {"error": "invalid_request", "error_description": self.description}

    def get_headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", "Cache-Control": "no-store"}
