"""Step 6 of the gate: strict validation of a JWT access token (RFC 8725, RFC 9068 §4).

PyJWT verifies the signature; everything it accepts but must not (security.md §0.2 and the J-table of
§1.3) is checked here, following the call pattern of security.md §1.3:

- length cap before any decoding (J24); compact three-part JWS only (J9, J16); strict, canonical
  base64url (J15), so a re-padded signature is not a second token string;
- header and payload parsed with duplicate members rejected (J11; RFC 7515 §5.2, RFC 7519 §4), NaN,
  Infinity and out-of-range numbers refused;
- header members limited to ``alg``, ``kid``, ``typ``: ``crit``, ``jku``, ``x5u``, ``jwk``, ``x5c``,
  ``b64``, ``zip`` are refused (J6-J10);
- ``typ`` must be ``at+jwt`` or ``application/at+jwt``, case-insensitive (RFC 9068 §4: "Resource servers
  receiving a JWT access token MUST validate that the typ header ... is at+jwt or application/at+jwt"),
  except for a remote issuer configured with ``requireTyp: false`` (real Okta tokens carry none);
- ``alg`` from the AS's allow-list and equal to the key's own algorithm, never from the header alone
  (RFC 8725 §3.1); the key is looked up by ``(issuer, kid)`` for the issuer the path chose (§3.8);
- ``iss`` exact (no normalization, RFC 7519 §2), ``aud`` contains the resource (RFC 9068 §4);
- ``exp``, ``iat`` (and ``nbf`` when present) are JSON numbers, not booleans or strings (J17, J18),
  checked against the injected clock with the configured leeway; the lifetime is bounded;
- ``sub``, ``jti`` and the client id (``client_id``, or Okta's ``cid``) present and typed; the values
  that become upstream headers are printable ASCII and bounded (security.md §3.9);
- scopes from ``scope`` (RFC 9068: a space-delimited string) or ``scp`` (Okta: an array), typed strictly;
  when both are present and disagree, ``scope`` decides and the request is logged ``bad_claims``;
- an ID token never passes (RFC 8725 §3.12): wrong ``typ``, wrong ``aud``, ID-token claims, and for the
  co-located core a ``jti`` that is not an access token's (``authz/jti.py``).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NoReturn, TypeGuard

import jwt

from authz.errors import BearerError
from config.schema import ACCESS_TOKEN_MINUTES_MAX, ScopegateConfig
from proxy import reasons
from proxy.keys_api import KeyResolver

log = logging.getLogger("scopegate.proxy")

_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_ALLOWED_HEADER = frozenset({"alg", "kid", "typ"})
_REFUSED_HEADER = frozenset({"crit", "jku", "x5u", "jwk", "x5c", "b64", "zip", "cty", "enc"})
_AT_JWT = frozenset({"at+jwt", "application/at+jwt"})
_ID_TOKEN_CLAIMS = ("nonce", "at_hash", "c_hash", "s_hash")
_HEADER_VALUE = re.compile(r"[\x21-\x7e]{1,256}")
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,200}")
"""RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )."""
_MAX_SCOPES = 200
_Fail = Callable[[str, str], NoReturn]
MAX_LIFETIME = ACCESS_TOKEN_MINUTES_MAX * 60
"""Okta's longest access token lifetime (one day): a token claiming to live longer is refused."""


@dataclass(frozen=True, slots=True)
class IssuerPolicy:
    """What a token for one authorization server must satisfy; built once per configuration."""

    as_id: str
    issuer: str
    audience: str
    algorithms: frozenset[str]
    require_typ: bool
    local: bool


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """A token that passed validation: what the later stages and the identity headers use."""

    as_id: str
    subject: str
    client_id: str
    scopes: frozenset[str]
    scope_header: str
    """The granted scopes, space-separated in the token's order (the scopes identity header)."""
    exp: float
    claims: Mapping[str, Any]
    scope_conflict: bool = False
    """Both ``scope`` and ``scp`` were present and named different scopes: ``scopes`` holds ``scope``'s
    (issue 10 item 3), and the decision log records the request as ``bad_claims``."""


def build_issuer_policies(cfg: ScopegateConfig, keys: KeyResolver) -> dict[str, IssuerPolicy]:
    policies: dict[str, IssuerPolicy] = {}
    for server in cfg.authorization_servers:
        remote = server.remote
        policies[server.id] = IssuerPolicy(
            as_id=server.id,
            issuer=keys.issuer_for_as(server.id),
            audience=server.resource,
            algorithms=frozenset(server.algorithms),
            require_typ=remote.require_typ if remote is not None else True,
            local=remote is None,
        )
    return policies


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError("duplicate member")
        result[key] = value
    return result


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class TokenValidator:
    """Validates a compact JWS access token for one authorization server; holds no per-request state."""

    def __init__(self, keys: KeyResolver, *, leeway: float, max_token_bytes: int) -> None:
        self.keys = keys
        self.leeway = leeway
        self.max_token_bytes = max_token_bytes
        # RFC 8725 §3.5 / J23: short RSA keys are refused.
        self._jws = jwt.PyJWS(options={"verify_signature": True, "enforce_minimum_key_length": True})

    async def validate(self, token: str, policy: IssuerPolicy, now: float) -> VerifiedToken:
        realm = policy.as_id

        def fail(reason: str, description: str) -> NoReturn:
            raise BearerError("invalid_token", description, realm=realm, reason=reason)

        if len(token) > self.max_token_bytes:
            fail(reasons.TOO_LONG, "The access token is too long.")
        parts = token.split(".")
        if len(parts) != 3:
            fail(reasons.MALFORMED, "The access token is not a compact JWS.")
        header = self._parse_segment(parts[0], fail)
        payload = self._parse_segment(parts[1], fail)
        if not _SEGMENT.fullmatch(parts[2]) or len(parts[2]) % 4 == 1:
            fail(reasons.MALFORMED, "The access token signature is not base64url.")

        # -- header
        if not _ALLOWED_HEADER.issuperset(header):
            fail(reasons.BAD_HEADER_PARAM, "The access token header carries a parameter that is not accepted.")
        typ = header.get("typ")
        if typ is not None and not isinstance(typ, str):
            fail(reasons.BAD_TYPE, "The token is not an access token.")
        if typ is None:
            if policy.require_typ:
                fail(reasons.BAD_TYPE, "The token is not an access token (typ must be at+jwt).")
        elif typ.lower() not in _AT_JWT and (policy.require_typ or typ.lower() != "jwt"):
            fail(reasons.BAD_TYPE, "The token is not an access token (typ must be at+jwt).")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in policy.algorithms:
            fail(reasons.BAD_ALGORITHM, "The access token algorithm is not accepted.")
        kid = header.get("kid")
        if not isinstance(kid, str) or not _HEADER_VALUE.fullmatch(kid):
            fail(reasons.UNKNOWN_KEY, "The access token names no known key.")

        # -- structural claim checks before any key lookup (cheap; nothing here is trusted yet)
        if not isinstance(payload, dict):
            fail(reasons.MALFORMED, "The access token payload is not a JSON object.")

        # -- signature, with the issuer's own key and that key's own algorithm
        key = await self.keys.resolve(policy.issuer, kid)
        if key is None:
            fail(reasons.UNKNOWN_KEY, "The access token names no known key.")
        if key.algorithm_name != alg:
            fail(reasons.BAD_ALGORITHM, "The access token algorithm does not match its key.")
        try:
            self._jws.decode_complete(token, key=key, algorithms=[alg])
        except jwt.InvalidSignatureError:
            fail(reasons.BAD_SIGNATURE, "The access token signature is invalid.")
        except jwt.InvalidAlgorithmError:
            fail(reasons.BAD_ALGORITHM, "The access token algorithm is not accepted.")
        except (jwt.InvalidKeyError, jwt.PyJWKError):
            fail(reasons.UNKNOWN_KEY, "The access token key is not usable.")
        except jwt.PyJWTError:
            fail(reasons.MALFORMED, "The access token could not be verified.")

        return self._check_claims(payload, policy, now, fail)

    @staticmethod
    def _parse_segment(segment: str, fail: _Fail) -> Any:
        if not _SEGMENT.fullmatch(segment) or len(segment) % 4 == 1:
            fail(reasons.MALFORMED, "The access token is not base64url.")
        raw = segment.encode("ascii")
        try:
            data = base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
        except (binascii.Error, ValueError):
            fail(reasons.MALFORMED, "The access token is not base64url.")
        if base64.urlsafe_b64encode(data).rstrip(b"=") != raw:
            # Non-zero unused bits: a second spelling of the same bytes (J15).
            fail(reasons.MALFORMED, "The access token is not canonical base64url.")
        try:
            value = json.loads(data.decode("utf-8"), object_pairs_hook=_reject_duplicates,
                               parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            fail(reasons.MALFORMED, "The access token is not valid JSON.")
        if not isinstance(value, dict):
            fail(reasons.MALFORMED, "The access token is not a JSON object.")
        return value

    def _check_claims(self, claims: dict[str, Any], policy: IssuerPolicy, now: float, fail: _Fail) -> VerifiedToken:
        if claims.get("iss") != policy.issuer or not isinstance(claims.get("iss"), str):
            fail(reasons.BAD_ISSUER, "The access token was issued by another issuer.")
        aud = claims.get("aud")
        if isinstance(aud, str):
            audience_ok = aud == policy.audience
        elif isinstance(aud, list) and aud and all(isinstance(a, str) for a in aud):
            audience_ok = policy.audience in aud
        else:
            audience_ok = False
        if not audience_ok:
            fail(reasons.BAD_AUDIENCE, "The access token is not for this resource.")

        exp, iat, nbf = claims.get("exp"), claims.get("iat"), claims.get("nbf", 0)
        if not _is_number(exp) or not _is_number(iat) or not _is_number(nbf):
            fail(reasons.BAD_CLAIMS, "The access token exp, iat and nbf must be numbers.")
        if now >= exp + self.leeway:
            fail(reasons.EXPIRED, "The access token expired.")
        if iat > now + self.leeway or nbf > now + self.leeway:
            fail(reasons.NOT_YET_VALID, "The access token is not valid yet.")
        if exp <= iat or exp - iat > MAX_LIFETIME:
            fail(reasons.BAD_CLAIMS, "The access token lifetime is out of range.")

        if any(name in claims for name in _ID_TOKEN_CLAIMS):
            fail(reasons.BAD_TYPE, "The token is not an access token.")
        if "cnf" in claims:
            # RFC 9449 / RFC 8705: a sender-constrained token is not a bearer token, and proof of
            # possession is not implemented here (security.md J25).
            fail(reasons.BAD_CLAIMS, "Sender-constrained tokens are not accepted.")
        sub, jti = claims.get("sub"), claims.get("jti")
        if not isinstance(sub, str) or not _HEADER_VALUE.fullmatch(sub):
            fail(reasons.BAD_CLAIMS, "The access token sub is missing or not a printable string.")
        if not isinstance(jti, str) or not _HEADER_VALUE.fullmatch(jti):
            fail(reasons.BAD_CLAIMS, "The access token jti is missing or not a printable string.")
        if policy.local and not jti.startswith("AT."):
            fail(reasons.BAD_TYPE, "The token is not an access token.")
        client_id = claims.get("client_id")
        cid = claims.get("cid")
        if client_id is None:
            client_id = cid
        elif cid is not None and cid != client_id:
            fail(reasons.BAD_CLAIMS, "The access token client_id and cid disagree.")
        if not isinstance(client_id, str) or not _HEADER_VALUE.fullmatch(client_id):
            fail(reasons.BAD_CLAIMS, "The access token client_id is missing or not a printable string.")

        scope_list, conflict = self._scopes(claims, fail)
        if conflict:
            # Logged once per validation (the cache keeps the verdict), with no client-chosen text but the jti.
            log.warning("access token %s of %s carries scope and scp claims that disagree; using scope (bad_claims)",
                        jti, policy.as_id)
        return VerifiedToken(
            as_id=policy.as_id,
            subject=sub,
            client_id=client_id,
            scopes=frozenset(scope_list),
            scope_header=" ".join(scope_list),
            exp=float(exp),
            claims=MappingProxyType(claims),
            scope_conflict=conflict,
        )

    @staticmethod
    def _scopes(claims: Mapping[str, Any], fail: _Fail) -> tuple[list[str], bool]:
        """The granted scopes, and whether ``scope`` and ``scp`` disagreed.

        Issue 10 item 3: either claim is read; when both are present and name different sets, ``scope`` wins:
        the token declares the RFC 9068 profile (``typ: at+jwt``), whose claim it is, and both sit under the
        same issuer signature, so a disagreement is the issuer's mistake, not a client's forgery. The caller
        reports it as ``bad_claims``. Each claim must still be well-formed on its own: a malformed ``scp``
        beside a good ``scope`` is refused, not ignored."""
        scope, scp = claims.get("scope"), claims.get("scp")
        from_scope: list[str] | None = None
        from_scp: list[str] | None = None
        if scope is not None:
            # RFC 9068 §2.2.3 / RFC 8693 §4.2: one space-delimited string; a tab, two spaces or a list is refused.
            if not isinstance(scope, str):
                fail(reasons.BAD_CLAIMS, "The access token scope claim must be a string.")
            from_scope = scope.split(" ") if scope else []
        if scp is not None:
            if not isinstance(scp, list) or not all(isinstance(s, str) for s in scp):
                fail(reasons.BAD_CLAIMS, "The access token scp claim must be an array of strings.")
            from_scp = list(scp)
        for names in (from_scope, from_scp):
            if names is not None and (len(names) > _MAX_SCOPES or not all(_SCOPE_TOKEN.fullmatch(n) for n in names)):
                fail(reasons.BAD_CLAIMS, "The access token scopes are malformed.")
        names = from_scope if from_scope is not None else (from_scp or [])
        conflict = from_scope is not None and from_scp is not None and set(from_scope) != set(from_scp)
        return list(dict.fromkeys(names)), conflict
