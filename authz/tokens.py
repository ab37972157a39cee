"""Access and ID tokens: their claims (spec §4.1, §4.2, RFC 9068), signing, and reading our own back.

Only claim building and JOSE live here; deciding what to mint (policy, lifetimes) is the grant's job,
and recording what was minted is the store's.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from authz.keys import load_private_key
from authz.store.base import SigningKey
from config.schema import ClaimConfig, UserConfig

ID_TOKEN_LIFETIME = 3600
"""Spec §4.2: 'Lifetime is fixed at 60 min.'"""
CODE_LIFETIME = 300
"""Spec §3.4: authorization codes live 300 s."""
ACCESS_TOKEN_TYP = "at+jwt"
"""RFC 9068 §2.1: 'Resource servers MUST verify that the typ header value is at+jwt'."""

# Spec §1.2 "What each OIDC scope releases" (the attributes the user profile can hold).
_PROFILE_CLAIMS = ("name", "family_name", "given_name", "middle_name", "nickname", "preferred_username", "profile",
                   "picture", "website", "gender", "birthdate", "zoneinfo", "locale", "updated_at")


def sign(key: SigningKey, claims: Mapping[str, Any], typ: str | None = None) -> str:
    headers: dict[str, Any] = {"kid": key.kid}
    if typ:
        headers["typ"] = typ
    return jwt.encode(dict(claims), load_private_key(key), algorithm="RS256", headers=headers)


def new_opaque() -> str:
    """Refresh tokens and codes: 256 bits, URL-safe (spec §4.3: opaque strings)."""
    return secrets.token_urlsafe(32)


def at_hash(access_token: str) -> str:
    """OIDC Core §3.1.3.6: the left-most half of the SHA-256 of the ASCII token, base64url."""
    digest = hashlib.sha256(access_token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode()


@dataclass(frozen=True)
class AccessTokenRequest:
    """Everything that decides an access token's claims."""

    issuer: str
    audience: str
    client_id: str
    scopes: tuple[str, ...]
    jti: str
    issued_at: int
    lifetime: int
    user: UserConfig | None = None
    auth_time: int | None = None
    scope_claims: str = "both"
    """The AS's ``accessTokenClaims``: ``okta`` (``scp``), ``rfc9068`` (``scope``) or ``both``."""


SCOPE_CLAIMS = ("scp", "scope")
"""Never set by a custom claim, whatever ``accessTokenClaims`` leaves out: a resource server reading the other
claim (RFC 9068's ``scope``, Okta's ``scp``) must not find scopes the grant did not decide."""


def access_token_claims(req: AccessTokenRequest, custom: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Spec §4.1 claims plus RFC 9068's ``client_id`` and ``scope``; ``sub`` is the login, or the client id
    without user. The scopes travel as Okta's ``scp`` array, RFC 9068 §2.2.3's ``scope`` string, or both
    (``req.scope_claims``, issue 10 item 3), always with the same values in the same order."""
    claims: dict[str, Any] = {
        "ver": 1,
        "jti": req.jti,
        "iss": req.issuer,
        "aud": req.audience,
        "iat": req.issued_at,
        "exp": req.issued_at + req.lifetime,
        "cid": req.client_id,
        "client_id": req.client_id,
        # [AS]: sub = "(appuser != null) ? appuser.userName : app.clientId"
        "sub": req.user.login if req.user is not None else req.client_id,
    }
    if req.scope_claims in ("okta", "both"):
        claims["scp"] = list(req.scopes)
    if req.scope_claims in ("rfc9068", "both"):
        claims["scope"] = " ".join(req.scopes)
    if req.user is not None:
        claims["uid"] = req.user.id
    if req.auth_time is not None:
        claims["auth_time"] = req.auth_time
    for name, value in (custom or {}).items():
        if name not in SCOPE_CLAIMS:
            claims.setdefault(name, value)  # reserved claims cannot be overridden (spec §4.1)
    return claims


def token_scopes(claims: Mapping[str, Any]) -> list[str]:
    """The scopes of one of our own access tokens, whichever claim ``accessTokenClaims`` put them in (both,
    when present, hold the same scopes: ``access_token_claims``)."""
    scp = claims.get("scp")
    if isinstance(scp, list):
        return [s for s in scp if isinstance(s, str)]
    scope = claims.get("scope")
    return [s for s in scope.split(" ") if s] if isinstance(scope, str) else []


def user_claims(user: UserConfig, scopes: Iterable[str]) -> dict[str, Any]:
    """The OIDC claims each granted scope releases (spec §1.2), from the user's profile."""
    granted = set(scopes)
    profile = user.profile.model_dump(by_alias=False, exclude_none=True)
    extra = {k: v for k, v in profile.items() if k in _PROFILE_CLAIMS}
    claims: dict[str, Any] = {}
    if "profile" in granted:
        names = [n for n in (user.profile.first_name, user.profile.last_name) if n]
        claims.update(extra)
        if names:
            claims["name"] = " ".join(names)
        if user.profile.first_name:
            claims["given_name"] = user.profile.first_name
        if user.profile.last_name:
            claims["family_name"] = user.profile.last_name
        if user.profile.locale:
            claims["locale"] = user.profile.locale
        claims["preferred_username"] = user.login
    if "email" in granted and user.profile.email:
        claims["email"] = user.profile.email
        claims["email_verified"] = True
    if "phone" in granted and user.profile.mobile_phone:
        claims["phone_number"] = user.profile.mobile_phone
    if "address" in granted:
        address = profile.get("address")
        if isinstance(address, dict):
            claims["address"] = address
    return claims


def id_token_claims(*, issuer: str, client_id: str, user: UserConfig, jti: str, issued_at: int, auth_time: int,
                    scopes: Iterable[str], nonce: str | None = None, access_token: str | None = None,
                    idp: str | None = None) -> dict[str, Any]:
    """Spec §4.2: ``sub`` is the user id, ``aud`` the client; ``nonce`` echoed; ``at_hash`` with an access token."""
    claims: dict[str, Any] = {
        "ver": 1,
        "sub": user.id,
        "iss": issuer,
        "aud": client_id,
        "iat": issued_at,
        "exp": issued_at + ID_TOKEN_LIFETIME,
        "jti": jti,
        "amr": ["pwd"],
        "idp": idp or issuer,
        "auth_time": auth_time,
    }
    if nonce is not None:
        claims["nonce"] = nonce
    if access_token is not None:
        claims["at_hash"] = at_hash(access_token)
    claims.update({k: v for k, v in user_claims(user, scopes).items() if k not in claims})
    return claims


def custom_claims(claims: Iterable[ClaimConfig], claim_type: str, scopes: Iterable[str], user: UserConfig | None,
                  client_id: str) -> dict[str, Any]:
    """The AS's ACTIVE claims of one type whose scope condition holds ('any of the listed scopes', spec §1.3).

    Values are a small subset of Okta's expression language: a quoted literal, ``app.clientId``,
    ``user.login``, ``user.id``, ``user.<profile attribute>``; GROUPS claims filter the user's group ids.
    A value that cannot be evaluated leaves the claim out.
    """
    granted = set(scopes)
    out: dict[str, Any] = {}
    for claim in claims:
        if claim.status != "ACTIVE" or claim.claim_type != claim_type:
            continue
        if claim.conditions.scopes and not granted & set(claim.conditions.scopes):
            continue
        value = _claim_value(claim, user, client_id)
        if value is not None:
            out[claim.name] = value
    return out


def _claim_value(claim: ClaimConfig, user: UserConfig | None, client_id: str) -> Any:
    if claim.value_type == "GROUPS":
        if user is None:
            return None
        return [g for g in user.groups if _group_matches(claim, g)][:100]
    expr = claim.value.strip()
    if len(expr) >= 2 and expr[0] == expr[-1] and expr[0] in "\"'":
        return expr[1:-1]
    if expr == "app.clientId":
        return client_id
    if user is None or not expr.startswith("user."):
        return None
    attr = expr.removeprefix("user.")
    if attr in ("login", "userName"):
        return user.login
    if attr == "id":
        return user.id
    profile = user.profile.model_dump(by_alias=True, exclude_none=True)
    return profile.get(attr)


def _group_matches(claim: ClaimConfig, group: str) -> bool:
    import re

    pattern = claim.value
    kind = claim.group_filter_type
    if kind == "REGEX":
        return re.fullmatch(pattern, group) is not None
    g, p = group.casefold(), pattern.casefold()
    if kind == "EQUALS":
        return g == p
    if kind == "CONTAINS":
        return p in g
    return g.startswith(p)


def read_own_jwt(token: str, keys: Iterable[SigningKey], issuer: str, now: float,
                 audience: str | None = None) -> dict[str, Any] | None:
    """Verify a JWT this AS issued (any published key); None if it is not one, or expired."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return None
    if header.get("alg") != "RS256":
        return None
    key = next((k for k in keys if k.kid == header.get("kid")), None)
    if key is None:
        return None
    try:
        public = jwt.PyJWK(key.public_jwk, algorithm="RS256").key
        claims: dict[str, Any] = jwt.decode(
            token, public, algorithms=["RS256"], issuer=issuer, audience=audience,
            # The clock is ours (``now``), not PyJWT's: time claims are checked below.
            options={"verify_aud": audience is not None, "verify_exp": False, "verify_iat": False,
                     "verify_nbf": False, "require": ["exp", "iat", "jti"]},
        )
    except jwt.PyJWTError:
        return None
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or exp <= now:
        return None
    return claims


__all__ = [
    "ACCESS_TOKEN_TYP",
    "CODE_LIFETIME",
    "ID_TOKEN_LIFETIME",
    "SCOPE_CLAIMS",
    "AccessTokenRequest",
    "access_token_claims",
    "at_hash",
    "custom_claims",
    "id_token_claims",
    "new_opaque",
    "read_own_jwt",
    "sign",
    "token_scopes",
    "user_claims",
]
