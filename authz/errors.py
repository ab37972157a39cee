"""The one exception family. Each error carries its HTTP data; ``http_response`` turns any of them
into a response in one place (``authz/responses.py``, used by the core, ops and proxy listeners).

Library exceptions (pyjwt, sqlite3, psycopg, httpx, aiohttp) are translated into these at the boundary,
keeping a stable ``reason`` that logs and metrics share.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

_UNSAFE_IN_QUOTED = re.compile(r'["\\\x00-\x1f\x7f]')
_OUTSIDE_ERROR_CHARSET = re.compile(r"[^\x20-\x21\x23-\x5B\x5D-\x7E]")


def error_charset_safe(text: str) -> str:
    """RFC 6749 §5.2: error_description "MUST NOT include characters outside the set %x20-21 / %x23-5B /
    %x5D-7E". Descriptions that echo request values (denied scopes, parameter names) would otherwise carry
    quotes, backslashes, CR/LF or non-ASCII into clients' logs and headers: each such character becomes '?'."""
    return _OUTSIDE_ERROR_CHARSET.sub("?", text)


def quoted_safe(text: str) -> str:
    """RFC 6750 §3: error_description must not contain '"', '\\' or control characters."""
    return _UNSAFE_IN_QUOTED.sub("", text)[:200]


class ScopegateError(Exception):
    """Base of every error scopegate answers with."""

    status_code: int = 500
    reason: str = "internal_error"
    """Stable internal code, shared by the decision log, the system log and the metrics."""

    def __init__(self, description: str = "", *, reason: str | None = None, status_code: int | None = None) -> None:
        super().__init__(description)
        self.description = description
        if reason is not None:
            self.reason = reason
        if status_code is not None:
            self.status_code = status_code

    def get_body(self) -> dict[str, Any]:
        return {"error": "server_error", "error_description": self.description or "Internal error."}

    def get_headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", "Cache-Control": "no-store"}

    def body_bytes(self) -> bytes:
        return json.dumps(self.get_body(), separators=(",", ":")).encode()


class OAuthError(ScopegateError):
    """RFC 6749 §5.2 error from a protocol endpoint: ``{"error", "error_description"}``.

    ``invalid_client`` answered with 401 carries a Basic challenge when the client used (or could use)
    HTTP Basic (RFC 6749 §5.2).
    """

    status_code = 400

    def __init__(self, error: str, description: str, *, status_code: int | None = None, reason: str | None = None,
                 basic_challenge: bool = False, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(error_charset_safe(description), reason=reason or error, status_code=status_code)
        self.error = error
        self.basic_challenge = basic_challenge
        self.extra_headers = dict(headers or {})

    def get_body(self) -> dict[str, Any]:
        return {"error": self.error, "error_description": self.description}

    def get_headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json;charset=UTF-8", "Cache-Control": "no-store", "Pragma": "no-cache"}
        if self.basic_challenge and self.status_code == 401:
            headers["WWW-Authenticate"] = 'Basic realm="scopegate"'
        headers.update(self.extra_headers)
        return headers


class BearerError(ScopegateError):
    """RFC 6750 §3 error from a protected resource: the data lives in ``WWW-Authenticate``.

    ``error`` None is the bare challenge for a request without credentials (RFC 6750 §3.1: "the resource
    server SHOULD NOT include an error code or other error information").
    """

    status_code = 401

    def __init__(self, error: str | None, description: str = "", *, realm: str = "scopegate",
                 scope: str | None = None, status_code: int | None = None, reason: str | None = None) -> None:
        default_status = {None: 401, "invalid_token": 401, "invalid_request": 400, "insufficient_scope": 403}
        super().__init__(description, reason=reason or error or "missing_token",
                         status_code=status_code or default_status.get(error, 401))
        self.error = error
        self.realm = realm
        self.scope = scope

    def challenge(self) -> str:
        parts = [f'realm="{quoted_safe(self.realm)}"']
        if self.error:
            parts.append(f'error="{self.error}"')
            if self.description:
                parts.append(f'error_description="{quoted_safe(self.description)}"')
        if self.scope:
            parts.append(f'scope="{quoted_safe(self.scope)}"')
        return "Bearer " + ", ".join(parts)

    def get_body(self) -> dict[str, Any]:
        if not self.error:
            return {"error": "unauthorized", "error_description": "A bearer token is required."}
        return {"error": self.error, "error_description": quoted_safe(self.description)}

    def get_headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", "Cache-Control": "no-store", "WWW-Authenticate": self.challenge()}


class GateError(ScopegateError):
    """A proxy denial that is not about the token (403 no_resource / no_route, 502, 503, 504, 4xx framing)."""

    def __init__(self, status_code: int, reason: str, description: str, *, close: bool = False,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(description, reason=reason, status_code=status_code)
        self.close = close
        """Close the connection after answering (ambiguous framing must not leave a poisoned connection)."""
        self.extra_headers = dict(headers or {})
        """Headers the status requires (``Allow`` on a 405, RFC 9110 §15.5.6)."""

    def get_body(self) -> dict[str, Any]:
        return {"error": self.reason, "error_description": self.description}

    def get_headers(self) -> dict[str, str]:
        headers = super().get_headers()
        if self.extra_headers:
            headers.update(self.extra_headers)
        return headers


OKTA_ERROR_LINKS = "https://developer.okta.com/docs/reference/error-codes/#"


class OktaApiError(ScopegateError):
    """The management API's error object (``errorCode``, ``errorSummary``, ``errorLink``, ``errorId``, ``errorCauses``)."""

    def __init__(self, status_code: int, code: str, summary: str, causes: Sequence[str] = (),
                 *, reason: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(summary, reason=reason or code, status_code=status_code)
        self.code = code
        self.summary = summary
        self.causes = list(causes)
        self.extra_headers = dict(headers or {})
        self.error_id = "oae" + uuid.uuid4().hex[:20]

    def get_body(self) -> dict[str, Any]:
        return {"errorCode": self.code, "errorSummary": self.summary, "errorLink": self.code,
                "errorId": self.error_id, "errorCauses": [{"errorSummary": c} for c in self.causes]}

    def get_headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", **self.extra_headers}

    @classmethod
    def not_found(cls, id: str, kind: str) -> OktaApiError:
        return cls(404, "E0000007", f"Not found: Resource not found: {id} ({kind})")

    @classmethod
    def validation(cls, causes: Sequence[str], summary: str = "Api validation failed") -> OktaApiError:
        return cls(400, "E0000001", summary, causes)

    @classmethod
    def invalid_token(cls) -> OktaApiError:
        return cls(401, "E0000011", "Invalid token provided")

    @classmethod
    def method_not_allowed(cls, method: str) -> OktaApiError:
        return cls(405, "E0000022", f"The endpoint does not support the provided HTTP method ({method})")
