"""Signing keys: one RS256 key pair per authorization server, kept in the store, rotated as Okta does.

Statuses (spec §1.1): the ACTIVE key signs new tokens; the NEXT key is published ahead of its use so
that resource servers already have it when it becomes ACTIVE ("A next key appears at about 45 days and
rotation at about 90 days", [OIDC §keys best practices]); an EXPIRED key is "the previous key that the
AS used to sign tokens" and stays published so that tokens it signed keep verifying until they expire.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from authz.store.base import KeyStatus, SigningKey, Store, StoreTx

KEY_SIZE = 2048
ALGORITHM = "RS256"
PUBLISHED_MEMBERS = ("kty", "alg", "kid", "use", "e", "n")
"""What ``/v1/keys`` publishes per key ([AS]: JWKs "with alg: RS256, kty: RSA, use: sig")."""

EXPIRED_KEY_RETENTION_SECONDS = 1440 * 60 + 300
"""The longest token lifetime (access tokens: at most one day) plus the largest leeway (300 s)."""

_STATUS_ORDER: dict[str, int] = {"ACTIVE": 0, "NEXT": 1, "EXPIRED": 2}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_uint(value: int) -> str:
    # RFC 7518 §6.3.1.1: "n" is "a Base64urlUInt-encoded value" (big-endian, minimal length).
    return _b64url(value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 §3.2: SHA-256 over the required members of an RSA key, "in lexicographic order", with
    "no whitespace or line breaks", base64url without padding."""
    required = {"e": jwk["e"], "kty": jwk["kty"], "n": jwk["n"]}
    canonical = json.dumps(required, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return _b64url(hashlib.sha256(canonical).digest())


def generate_signing_key(as_id: str, status: KeyStatus, now: float) -> SigningKey:
    """A new RSA 2048 key pair; its kid is its JWK thumbprint, so the kid names the key itself."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)
    numbers = private.public_key().public_numbers()
    jwk: dict[str, Any] = {"kty": "RSA", "n": _b64url_uint(numbers.n), "e": _b64url_uint(numbers.e)}
    kid = jwk_thumbprint(jwk)
    jwk.update(kid=kid, alg=ALGORITHM, use="sig")
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return SigningKey(kid=kid, as_id=as_id, status=status, private_pem=pem, public_jwk=jwk, created=now)


def ensure_signing_keys(store: Store, as_id: str, now: float) -> None:
    """Give the AS one ACTIVE and one NEXT key if it lacks them (first start). Idempotent, and safe when
    two processes start at once: the keys are re-read under the transaction's lock before writing."""
    if _missing(store.list_signing_keys(as_id)) == []:
        return
    # RSA generation takes tens of milliseconds: do it before taking the write lock.
    spares = [generate_signing_key(as_id, "NEXT", now) for _ in range(2)]
    with store.transaction() as tx:
        keys = tx.list_signing_keys(as_id)
        for status in _missing(keys):
            if status == "ACTIVE" and (nxt := _newest(keys, "NEXT")) is not None:
                # A NEXT key is already published: promoting it keeps resource servers' caches useful.
                tx.set_key_status(as_id, nxt.kid, "ACTIVE")
                continue
            spare = spares.pop()
            tx.add_signing_key(SigningKey(kid=spare.kid, as_id=as_id, status=status, private_pem=spare.private_pem,
                                          public_jwk=spare.public_jwk, created=now))


def _missing(keys: list[SigningKey]) -> list[KeyStatus]:
    missing: list[KeyStatus] = []
    if _newest(keys, "ACTIVE") is None:
        missing.append("ACTIVE")
    # With no ACTIVE key, the NEXT key (if any) is promoted, so a new NEXT is needed as well.
    if _newest(keys, "NEXT") is None or missing:
        missing.append("NEXT")
    return missing


def _newest(keys: Iterable[SigningKey], status: KeyStatus) -> SigningKey | None:
    matching = [k for k in keys if k.status == status]
    return max(matching, key=lambda k: (k.created, k.kid)) if matching else None


def rotate_keys(tx: StoreTx, as_id: str, now: float) -> SigningKey:
    """Spec §1.1 keyRotate: "the ACTIVE key becomes EXPIRED and the NEXT key becomes ACTIVE"; "new tokens
    are signed with the new ACTIVE key immediately". A new NEXT key is generated. Returns the new ACTIVE
    key. The caller's transaction also carries the system-log event and the change-feed entry."""
    keys = tx.list_signing_keys(as_id)
    for key in keys:
        if key.status == "ACTIVE":
            tx.set_key_status(as_id, key.kid, "EXPIRED", now)
    for key in expired_keys_to_drop(keys, now):
        tx.delete_signing_key(as_id, key.kid)
    nxt = _newest(keys, "NEXT")
    if nxt is None:
        active = generate_signing_key(as_id, "ACTIVE", now)
        tx.add_signing_key(active)
    else:
        tx.set_key_status(as_id, nxt.kid, "ACTIVE")
        active = SigningKey(kid=nxt.kid, as_id=as_id, status="ACTIVE", private_pem=nxt.private_pem,
                            public_jwk=nxt.public_jwk, created=nxt.created)
    tx.add_signing_key(generate_signing_key(as_id, "NEXT", now))
    return active


def expired_keys_to_drop(keys: Iterable[SigningKey], now: float) -> list[SigningKey]:
    """EXPIRED keys that no unexpired token can need: they stopped signing more than the longest token
    lifetime (an access token's 1440 minutes, spec §3.5) plus the largest verification leeway ago.
    Without this the JWKS would grow by one key per rotation. ``keys`` is the set before this rotation's
    status changes, so the key expiring now (the most recent EXPIRED key) is never among them; a key
    whose expiry time is unknown (it expired before scopegate recorded it) is kept."""
    return [k for k in keys if k.status == "EXPIRED" and k.expired_at is not None
            and k.expired_at + EXPIRED_KEY_RETENTION_SECONDS < now]


def published_keys(keys: Iterable[SigningKey]) -> list[SigningKey]:
    """ACTIVE, then NEXT, then EXPIRED keys (newest first within a status): every key that can verify a
    token this AS signed, or will sign."""
    return sorted(keys, key=lambda k: (_STATUS_ORDER.get(k.status, 3), -k.created, k.kid))


def public_jwk(key: SigningKey) -> dict[str, Any]:
    """The key's public JWK with only the published members (never a private member)."""
    return {name: key.public_jwk[name] for name in PUBLISHED_MEMBERS if name in key.public_jwk}


def jwks_document(keys: Iterable[SigningKey]) -> dict[str, Any]:
    """The JWK Set (RFC 7517 §5) that ``/oauth2/{id}/v1/keys`` serves: ``{"keys": [...]}``."""
    return {"keys": [public_jwk(k) for k in published_keys(keys)]}


def active_signing_key(keys: Iterable[SigningKey]) -> SigningKey:
    """The key that signs new tokens. LookupError if the AS has none (``ensure_signing_keys`` not run)."""
    active = _newest(keys, "ACTIVE")
    if active is None:
        raise LookupError("the authorization server has no ACTIVE signing key")
    return active


def load_private_key(key: SigningKey) -> RSAPrivateKey:
    """The key's private half, parsed once per process (PEM parsing costs about a millisecond)."""
    return _load_pem(key.private_pem)


@lru_cache(maxsize=64)
def _load_pem(pem: bytes) -> RSAPrivateKey:
    private = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(private, RSAPrivateKey):
        raise ValueError("signing keys are RSA (RS256 only, spec §4.1)")
    return private
