"""Client authentication at /token, /introspect and /revoke (spec §2.5), with Okta's exact errors.

Methods: ``client_secret_basic``, ``client_secret_post``, ``private_key_jwt`` (the app's ``jwks``; a
``jti`` makes the assertion single-use) and ``none`` (public clients, ``client_id`` only). An app
authenticates only with the method it is configured for. Secrets are compared in constant time
(``authz.passwords.verify_secret``), and an unknown client costs the same scrypt work as a known one.

Blocking (scrypt, store): call it from a worker thread.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

import jwt
from cachetools import TTLCache

from authz.errors import OAuthError
from authz.model import App, get_app
from authz.passwords import verify_secret
from authz.store.base import Store

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512"]
MAX_ASSERTION_LIFETIME = 3600
"""Spec §2.5: 'exp required and ≤ 1 h in the future'."""
ASSERTION_LEEWAY = 60

MULTIPLE_CREDENTIALS = ("Cannot supply multiple client credentials. Use one of the following: credentials in the "
                        "Authorization header, credentials in the post body, or a client_assertion in the post body.")
QUERY_CREDENTIALS = "Client credentials cannot be supplied via query parameters."
NO_CREDENTIALS = "No client credentials found."
UNKNOWN_CLIENT = "Invalid value for 'client_id' parameter."
BAD_SECRET = "The client secret supplied for a confidential client is invalid."
AUTH_FAILED = "Client authentication failed. Either the client or the client credentials are invalid."
BAD_BASIC = "Found Authentication header but was not valid client credentials."
ASSERTION_USED = "The client_assertion token has already been used."
ASSERTION_AUDIENCE = "The audience claim for client_assertion must be the endpoint invoked for the request."
"""Okta's string; the issuer identifier is accepted as well (``accepted_audiences``)."""
ASSERTION_TOO_LONG = "The client_assertion token has an expiration too far into the future."
ASSERTION_INVALID = "The client_assertion token is invalid."

_CREDENTIAL_PARAMS = ("client_secret", "client_assertion", "client_assertion_type")


class VerifiedSecrets:
    """Recently verified (client, secret, stored hash) triples, so that a service fetching a token every
    few minutes does not pay scrypt (~65 ms, the whole cost of a client_credentials request) each time.

    Only a keyed digest is kept (HMAC with a per-process random key): memory never holds a secret or a
    value that could be checked offline. The stored hash is part of the digest, so a changed secret
    misses; the app itself (ACTIVE, method) is re-read on every request. Failures are never cached.
    """

    def __init__(self, ttl: float = 300.0, size: int = 10_000) -> None:
        self._key = secrets.token_bytes(32)
        self._seen: TTLCache[bytes, bool] = TTLCache(maxsize=size, ttl=ttl)
        self._lock = threading.Lock()

    def _digest(self, client_id: str, secret: str, stored: str) -> bytes:
        message = "\0".join((client_id, secret, stored)).encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def verify(self, client_id: str, secret: str, stored: str | None) -> bool:
        if stored is None:
            return verify_secret(secret, None)
        digest = self._digest(client_id, secret, stored)
        with self._lock:
            if digest in self._seen:
                return True
        if not verify_secret(secret, stored):
            return False
        with self._lock:
            self._seen[digest] = True
            self._seen[self._digest(client_id, secret, "")] = True
        return True

    def recently_verified(self, client_id: str, secret: str) -> bool:
        """True if this client id and secret passed ``verify`` within the TTL, whatever the store holds now.

        Not proof of anything (the secret may have been rotated since: ``verify`` still decides, against the
        stored hash); it only tells the back-off that this caller is no guesser, so that its concurrent calls
        do not take the in-flight slots meant to bound guessing (``authz/oauth/authenticate.py``). A guess
        cannot match: it would have to be the secret."""
        digest = self._digest(client_id, secret, "")
        with self._lock:
            return digest in self._seen

    def forget(self, client_id: str, secret: str) -> None:
        """Drop ``recently_verified``'s mark (the secret failed: rotated since it passed)."""
        with self._lock:
            self._seen.pop(self._digest(client_id, secret, ""), None)


VERIFIED = VerifiedSecrets()


@dataclass(frozen=True)
class AuthenticatedClient:
    app: App
    method: str
    """How it authenticated: client_secret_basic, client_secret_post, private_key_jwt or none."""

    @property
    def client_id(self) -> str:
        return self.app.client_id


def invalid_client(description: str, *, basic: bool = False, reason: str = "invalid_client") -> OAuthError:
    """RFC 6749 §5.2: 401 with a challenge when the client used (or should use) HTTP Basic."""
    return OAuthError("invalid_client", description, status_code=401, reason=reason, basic_challenge=basic)


def parse_basic(header: str) -> tuple[str, str]:
    """RFC 6749 §2.3.1: id and secret are form-urlencoded before Basic encoding."""
    scheme, _, value = header.strip().partition(" ")
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise invalid_client(BAD_BASIC, basic=True, reason="malformed_basic") from None
    client_id, sep, secret = decoded.partition(":")
    if scheme.lower() != "basic" or not sep or not client_id:
        raise invalid_client(BAD_BASIC, basic=True, reason="malformed_basic")
    return unquote_plus(client_id), unquote_plus(secret)


def presented_secret(authorization: str | None, form: Mapping[str, str]) -> tuple[str, str] | None:
    """The client id and secret a request presents (Basic header or form), if it presents exactly those."""
    if authorization and authorization.strip().lower().startswith("basic"):
        try:
            return parse_basic(authorization)
        except OAuthError:
            return None
    client_id, secret = form.get("client_id"), form.get("client_secret")
    return (client_id, secret) if client_id and secret else None


def named_client_id(authorization: str | None, form: Mapping[str, str]) -> str | None:
    """The client id a request claims (Basic header, form, or an assertion's unverified ``sub``), to count
    its failures and to log them; never proof of anything."""
    if authorization and authorization.strip().lower().startswith("basic"):
        try:
            return parse_basic(authorization)[0]
        except OAuthError:
            return None
    if form.get("client_id"):
        return form["client_id"]
    if form.get("client_assertion"):
        try:
            sub = jwt.decode(form["client_assertion"], options={"verify_signature": False}).get("sub")
        except jwt.PyJWTError:
            return None
        return sub if isinstance(sub, str) else None
    return None


def authenticate_client(store: Store, *, authorization: str | None, form: Mapping[str, str],
                        query: Mapping[str, str], endpoint_url: str, now: float,
                        issuer: str | None = None) -> AuthenticatedClient:
    """Authenticate the caller of a back-channel endpoint or raise ``invalid_client`` / ``invalid_request``.

    ``issuer`` is the identifier of the AS the endpoint belongs to: a ``private_key_jwt`` assertion may name
    it as its audience (``accepted_audiences``)."""
    if any(p in query for p in _CREDENTIAL_PARAMS):
        raise OAuthError("invalid_request", QUERY_CREDENTIALS, reason="credentials_in_query")
    basic = authorization is not None and authorization.strip().lower().startswith("basic")
    post = "client_secret" in form
    assertion = "client_assertion" in form or "client_assertion_type" in form
    if sum((basic, post, assertion)) > 1:
        raise OAuthError("invalid_request", MULTIPLE_CREDENTIALS, status_code=401, reason="multiple_credentials")
    if authorization is not None and not basic and authorization.strip():
        # A Bearer or other scheme is not a client credential of any kind.
        raise invalid_client(BAD_BASIC, basic=True, reason="malformed_basic")
    if basic:
        assert authorization is not None
        client_id, secret = parse_basic(authorization)
        if "client_id" in form and form["client_id"] != client_id:
            raise invalid_client(AUTH_FAILED, basic=True, reason="client_id_mismatch")
        return _by_secret(store, client_id, secret, "client_secret_basic")
    if post:
        client_id = form.get("client_id", "")
        if not client_id:
            raise invalid_client(NO_CREDENTIALS, reason="no_credentials")
        return _by_secret(store, client_id, form["client_secret"], "client_secret_post")
    if assertion:
        return _by_assertion(store, form, endpoint_url, now, issuer)
    client_id = form.get("client_id", "")
    if not client_id:
        raise invalid_client(NO_CREDENTIALS, basic=True, reason="no_credentials")
    app = get_app(store, client_id)
    if app is None or not app.is_active:
        raise invalid_client(UNKNOWN_CLIENT, reason="unknown_client")
    if app.config.token_endpoint_auth_method != "none":
        raise invalid_client(AUTH_FAILED, basic=app.config.token_endpoint_auth_method == "client_secret_basic",
                             reason="wrong_auth_method")
    return AuthenticatedClient(app, "none")


def _by_secret(store: Store, client_id: str, secret: str, method: str) -> AuthenticatedClient:
    basic = method == "client_secret_basic"
    app = get_app(store, client_id)
    if app is None or not app.is_active:
        verify_secret(secret, None)  # same work as a known client: no timing oracle for client ids
        raise invalid_client(UNKNOWN_CLIENT, basic=basic, reason="unknown_client")
    if app.config.token_endpoint_auth_method != method:
        verify_secret(secret, None)
        raise invalid_client(AUTH_FAILED, basic=basic, reason="wrong_auth_method")
    if not VERIFIED.verify(client_id, secret, app.secret_hash):
        raise invalid_client(BAD_SECRET, basic=basic, reason="invalid_client_secret")
    return AuthenticatedClient(app, method)


def accepted_audiences(endpoint_url: str, issuer: str | None) -> frozenset[str]:
    """What an assertion's ``aud`` may name at ``endpoint_url`` (issue 10 item 2).

    - the URL of the endpoint called (spec §2.5, Okta's rule);
    - this AS's issuer identifier (draft-ietf-oauth-rfc7523bis §4, FAPI 2.0: what openid-client and
      oauth4webapi send, and the audience-confusion fix: an assertion for one AS cannot be played at another);
    - at /introspect and /revoke, this AS's token endpoint too (RFC 7523 §3: "the token endpoint URL of the
      authorization server MAY be used as a value for an aud element"; some clients send it everywhere).
    Nothing else: not another AS's issuer or endpoints, not the org-level ``/oauth2/v1/...`` family.
    """
    accepted = {endpoint_url}
    if issuer is not None:
        accepted |= {issuer, f"{issuer}/v1/token"}
    return frozenset(accepted)


def assertion_audience_ok(aud: Any, accepted: frozenset[str]) -> bool:
    """RFC 7519 §4.1.3 allows a string or an array. An array passes only if it is non-empty and *every* value
    is acceptable: a foreign value means the assertion was also meant for (and may have been shown to)
    another party, which is exactly the audience confusion this check exists for."""
    if isinstance(aud, str):
        return aud in accepted
    if isinstance(aud, list) and aud and len(aud) <= len(accepted):
        return all(isinstance(a, str) and a in accepted for a in aud)
    return False


def _by_assertion(store: Store, form: Mapping[str, str], endpoint_url: str, now: float,
                  issuer: str | None = None) -> AuthenticatedClient:
    """RFC 7523 §3 with spec §2.5's rules: iss = sub = client_id, aud = the endpoint or the issuer
    (``accepted_audiences``), exp ≤ 1 h, jti single-use."""
    if form.get("client_assertion_type") != JWT_BEARER or not form.get("client_assertion"):
        raise invalid_client(AUTH_FAILED, reason="invalid_client_assertion_type")
    token = form["client_assertion"]
    try:
        unverified: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise invalid_client(ASSERTION_INVALID, reason="invalid_client_assertion") from None
    client_id = unverified.get("sub")
    if not isinstance(client_id, str) or unverified.get("iss") != client_id:
        raise invalid_client(ASSERTION_INVALID, reason="invalid_client_assertion")
    if "client_id" in form and form["client_id"] != client_id:
        raise invalid_client(AUTH_FAILED, reason="client_id_mismatch")
    app = get_app(store, client_id)
    if app is None or not app.is_active:
        raise invalid_client(UNKNOWN_CLIENT, reason="unknown_client")
    if app.config.token_endpoint_auth_method != "private_key_jwt" or app.config.jwks is None:
        raise invalid_client(AUTH_FAILED, reason="wrong_auth_method")
    alg = header.get("alg")
    if alg not in ASSERTION_ALGORITHMS:
        raise invalid_client(ASSERTION_INVALID, reason="invalid_client_assertion")
    candidates = [k for k in app.config.jwks.keys if header.get("kid") in (None, k.get("kid"))]
    claims: dict[str, Any] | None = None
    for jwk in candidates:
        try:
            key = jwt.PyJWK(jwk, algorithm=alg).key
            claims = jwt.decode(token, key, algorithms=[alg], options={"verify_aud": False, "verify_exp": False,
                                                                      "verify_iat": False, "verify_nbf": False,
                                                                      "require": ["exp"]})
            break
        except jwt.PyJWTError:
            continue
    if claims is None:
        raise invalid_client(ASSERTION_INVALID, reason="invalid_client_assertion")
    if not assertion_audience_ok(claims.get("aud"), accepted_audiences(endpoint_url, issuer)):
        raise invalid_client(ASSERTION_AUDIENCE, reason="invalid_client_assertion_audience")
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or exp + ASSERTION_LEEWAY <= now:
        raise invalid_client(ASSERTION_INVALID, reason="client_assertion_expired")
    if exp > now + MAX_ASSERTION_LIFETIME + ASSERTION_LEEWAY:
        raise invalid_client(ASSERTION_TOO_LONG, reason="client_assertion_too_long")
    nbf = claims.get("nbf")
    if nbf is not None and (not isinstance(nbf, int | float) or nbf > now + ASSERTION_LEEWAY):
        raise invalid_client(ASSERTION_INVALID, reason="client_assertion_not_yet_valid")
    iat = claims.get("iat")
    if iat is not None and (not isinstance(iat, int | float) or iat > now + ASSERTION_LEEWAY):
        raise invalid_client(ASSERTION_INVALID, reason="client_assertion_issued_in_future")
    jti = claims.get("jti")
    # Spec §2.5: "jti optional, but if present the JWT is single-use". A bare store write is its own
    # transaction, so a replay fails even if the rest of the request is later refused.
    if jti is not None and not store.use_assertion_jti(client_id, str(jti), float(exp)):
        raise invalid_client(ASSERTION_USED, reason="client_assertion_reused")
    return AuthenticatedClient(app, "private_key_jwt")


__all__ = ["JWT_BEARER", "AuthenticatedClient", "accepted_audiences", "assertion_audience_ok", "authenticate_client", "invalid_client", "named_client_id",
           "parse_basic"]
