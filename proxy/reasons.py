"""The one vocabulary of decisions and reasons, shared by the metrics, the decision log and the errors.

A reason is a stable, bounded label (never a client value), so it can be a Prometheus label value.
"""

from __future__ import annotations

from typing import Final

ALLOW: Final = "allow"
DENY: Final = "deny"
DECISIONS: Final = (ALLOW, DENY)

# -- allowed
OK: Final = "ok"
"""A valid token with the scopes the route needs."""
PUBLIC: Final = "public"
"""A public route: no token asked."""
PREFLIGHT: Final = "preflight"
"""A CORS preflight, passed without a token as Envoy does."""
STALE_REVOCATION: Final = "stale_revocation"
"""Deny: the revocation feed is stale and ``onStale: deny``; allow: stale and ``onStale: allow``."""

# -- the request itself (parse guard, path normalization)
BAD_FRAMING: Final = "bad_framing"
BAD_METHOD: Final = "bad_method"
BAD_PATH: Final = "bad_path"
BAD_HEADER: Final = "bad_header"
METHOD_NOT_ALLOWED: Final = "method_not_allowed"
"""CONNECT (a tunnel, never forwarded) or TRACE on a path no route names it for (405, issue 8 item 16)."""
TOO_LARGE: Final = "too_large"
HEADERS_TOO_LARGE: Final = "headers_too_large"
TARGET_TOO_LONG: Final = "target_too_long"
READ_TIMEOUT: Final = "read_timeout"

# -- resource and route
NO_RESOURCE: Final = "no_resource"
NO_ROUTE: Final = "no_route"

# -- bearer extraction (RFC 6750)
MISSING_TOKEN: Final = "missing_token"
INVALID_REQUEST: Final = "invalid_request"

# -- token validation (RFC 8725, RFC 9068 §4)
MALFORMED: Final = "malformed"
TOO_LONG: Final = "token_too_long"
BAD_HEADER_PARAM: Final = "bad_header_param"
BAD_TYPE: Final = "bad_type"
BAD_ALGORITHM: Final = "bad_algorithm"
UNKNOWN_KEY: Final = "unknown_key"
BAD_SIGNATURE: Final = "bad_signature"
BAD_ISSUER: Final = "bad_issuer"
BAD_AUDIENCE: Final = "bad_audience"
EXPIRED: Final = "expired"
NOT_YET_VALID: Final = "not_yet_valid"
BAD_CLAIMS: Final = "bad_claims"
REVOKED: Final = "revoked"
INSUFFICIENT_SCOPE: Final = "insufficient_scope"

# -- upstream
UPSTREAM_UNAVAILABLE: Final = "upstream_unavailable"
INTROSPECTION_UNAVAILABLE: Final = "introspection_unavailable"
UPSTREAM_TIMEOUT: Final = "upstream_timeout"
INTERNAL_ERROR: Final = "internal_error"

ALLOW_REASONS: Final = (OK, PUBLIC, PREFLIGHT, STALE_REVOCATION, BAD_CLAIMS)
"""``bad_claims`` allows only when a token's ``scope`` and ``scp`` disagree and ``scope`` grants the route
(issue 10 item 3); every other ``bad_claims`` is a denial."""
DENY_REASONS: Final = (
    BAD_FRAMING, BAD_METHOD, BAD_PATH, BAD_HEADER, METHOD_NOT_ALLOWED, TOO_LARGE, HEADERS_TOO_LARGE, TARGET_TOO_LONG, READ_TIMEOUT,
    NO_RESOURCE, NO_ROUTE, MISSING_TOKEN, INVALID_REQUEST, MALFORMED, TOO_LONG, BAD_HEADER_PARAM, BAD_TYPE,
    BAD_ALGORITHM, UNKNOWN_KEY, BAD_SIGNATURE, BAD_ISSUER, BAD_AUDIENCE, EXPIRED, NOT_YET_VALID, BAD_CLAIMS,
    REVOKED, INSUFFICIENT_SCOPE, STALE_REVOCATION, INTROSPECTION_UNAVAILABLE, UPSTREAM_UNAVAILABLE, UPSTREAM_TIMEOUT, INTERNAL_ERROR,
)
"""Every reason a denial can carry; the metrics pre-build a child per (route, deny, reason)."""
