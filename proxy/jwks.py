"""Turning a JWK Set into verification keys, and refreshing key sets without storms.

Shared by the local key source (the co-located core's keys, ``proxy/keys.py``) and remote issuers
(``proxy/remote.py``): both hold ``kid → PyJWK`` maps built by ``parse_jwks`` and refresh them through a
``SingleFlight`` with a cooldown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

log = logging.getLogger("scopegate.keys")

MIN_RSA_BITS = 2048
"""RFC 7518 §3.3: "A key of size 2048 bits or larger MUST be used with these algorithms." (J23)."""

MAX_KID_CHARS = 256
"""A kid longer than this is never a key we hold; the lookup is refused before any refetch (J5)."""

_KTY_FOR_ALG = {
    "RS256": "RSA", "RS384": "RSA", "RS512": "RSA",
    "PS256": "RSA", "PS384": "RSA", "PS512": "RSA",
    "ES256": "EC", "ES384": "EC", "ES512": "EC",
    "EdDSA": "OKP",
}
_CURVE_FOR_ALG = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}

# RFC 7517 §4 / RFC 7518 §6: members that only a private or symmetric key carries. A JWKS that
# publishes them is broken (security.md §4.4), and a symmetric key from a JWKS would let anyone who
# reads the JWKS mint tokens (J2, PyJWT CVE-2026-48526).
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


class JwksError(Exception):
    """A key set document that cannot be used at all (not JSON, not ``{"keys": [...]}``)."""


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # RFC 7159 §4 leaves duplicate names undefined; a key set that has them is ambiguous (RFC 8725 §2.6).
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise JwksError(f"duplicate member {name!r}")
        result[name] = value
    return result


def _reject_constant(name: str) -> Any:
    raise JwksError(f"{name} is not JSON")


def loads_strict(data: bytes | str) -> Any:
    """JSON without duplicate members and without NaN/Infinity (Python's json accepts both)."""
    try:
        return json.loads(data, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
    except JwksError:
        raise
    except (ValueError, RecursionError) as exc:
        raise JwksError(f"not JSON: {exc}") from None


def usable_key(jwk: Mapping[str, Any], algorithms: Collection[str]) -> jwt.PyJWK | None:
    """The verification key a JWK describes, or None if it must not verify access tokens.

    RFC 8725 §3.1: "each key MUST be used with exactly one algorithm", so the key is pinned to its own
    ``alg`` (or, when the JWK names none, the one allowed algorithm of its key type) and that algorithm
    must be in the authorization server's allow-list.
    """
    kid = jwk.get("kid")
    kty = jwk.get("kty")
    if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_CHARS or not isinstance(kty, str):
        return None
    # RFC 7517 §4.2: "sig" (signature); a key meant for encryption must not verify signatures.
    use = jwk.get("use", "sig")
    if use != "sig":
        return None
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return None
    if _PRIVATE_MEMBERS & jwk.keys():
        return None
    alg = jwk.get("alg")
    if alg is None:
        candidates = [a for a in algorithms if _KTY_FOR_ALG.get(a) == kty]
        if len(candidates) != 1:
            return None
        alg = candidates[0]
    if not isinstance(alg, str) or alg not in algorithms or _KTY_FOR_ALG.get(alg) != kty:
        return None
    if alg in _CURVE_FOR_ALG and jwk.get("crv") != _CURVE_FOR_ALG[alg]:
        return None
    try:
        key = jwt.PyJWK(dict(jwk), algorithm=alg)
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
        return None
    public = key.key
    if kty == "RSA":
        if not isinstance(public, RSAPublicKey) or public.key_size < MIN_RSA_BITS:
            return None
        if public.public_numbers().e < 3 or public.public_numbers().e % 2 == 0:
            return None  # e=1 or an even exponent is no RSA key (security.md §4.4)
    elif kty == "EC" and not isinstance(public, EllipticCurvePublicKey):
        return None
    return key


def parse_jwks(document: Any, algorithms: Collection[str], *, source: str = "JWKS") -> dict[str, jwt.PyJWK]:
    """``kid → key`` for the usable keys of a JWK Set; raise JwksError if it is no JWK Set.

    Keys that are unusable (wrong ``use``, ``alg`` outside the allow-list, RSA under 2048 bits, private
    members) are skipped with a log line. A ``kid`` that appears twice names no key at all: picking one
    of the two would be a guess (security.md §4.4 "Duplicate kids → reject ambiguous").
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksError(f'{source} is not a JWK Set: expected {{"keys": [...]}}')
    keys: dict[str, jwt.PyJWK] = {}
    seen: set[str] = set()
    ambiguous: set[str] = set()
    for entry in document["keys"]:
        if not isinstance(entry, dict):
            continue
        kid = entry.get("kid")
        if isinstance(kid, str):
            if kid in seen:
                ambiguous.add(kid)
            seen.add(kid)
        key = usable_key(entry, algorithms)
        if key is None:
            log.warning("%s: ignoring key %r (not a signing key for %s, or too weak)", source,
                        kid if isinstance(kid, str) else None, sorted(algorithms))
            continue
        keys[entry["kid"]] = key
    for kid in ambiguous:
        log.warning("%s: ignoring kid %r: it names more than one key", source, kid)
        keys.pop(kid, None)
    return keys


class SingleFlight:
    """Runs a refresh at most once per cooldown; concurrent callers share the one in flight.

    The cooldown counts from the start of the last attempt, successful or not, so that a storm of
    unknown ``kid``s (J5) or an issuer outage costs at most one request per cooldown. The shared task
    is shielded: a client that disconnects while waiting does not cancel the refresh for the others.
    """

    def __init__(self, refresh: Callable[[], Awaitable[None]], cooldown: float, now: Callable[[], float],
                 *, name: str = "keys") -> None:
        self._refresh = refresh
        self.cooldown = cooldown
        self._now = now
        self._name = name
        self._task: asyncio.Task[None] | None = None
        self.last_attempt: float | None = None
        self.last_error: str | None = None

    def due(self) -> bool:
        return self.last_attempt is None or self._now() - self.last_attempt >= self.cooldown

    async def run(self, *, force: bool = False) -> None:
        """Refresh unless one ran within the cooldown (``force`` ignores it); wait for the one in flight."""
        if self._task is None:
            if not force and not self.due():
                return
            self.last_attempt = self._now()
            self._task = asyncio.get_running_loop().create_task(self._guarded())
        await asyncio.shield(self._task)

    def start_in_background(self) -> None:
        """Refresh without waiting (used to renew an old key set off the hot path)."""
        if self._task is None and self.due():
            self.last_attempt = self._now()
            self._task = asyncio.get_running_loop().create_task(self._guarded())

    async def _guarded(self) -> None:
        try:
            await self._refresh()
            self.last_error = None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The old keys stay in place; the failure is logged, never raised into a request.
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("%s: refresh failed, keeping the keys already held: %s", self._name, self.last_error)
        finally:
            self._task = None

    async def aclose(self) -> None:
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
