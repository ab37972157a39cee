"""Client secrets and user passwords at rest: scrypt hashes, constant-time verification."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

# scrypt parameters: n=2**14, r=8, p=1 is the interactive-login setting of the scrypt paper (~16 MiB).
_N, _R, _P, _LEN = 2**14, 8, 1, 32


def hash_secret(secret: str) -> str:
    """``scrypt$n$r$p$salt$hash`` (base64url), safe to store and to log."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=_LEN)
    return "$".join(["scrypt", str(_N), str(_R), str(_P), _b64(salt), _b64(digest)])


def verify_secret(secret: str, stored: str | None) -> bool:
    """True if ``secret`` matches ``stored``; compares in constant time and never raises on bad input."""
    if stored is None:
        # Burn comparable time so that "no such client" and "wrong secret" are indistinguishable.
        hashlib.scrypt(secret.encode(), salt=b"\0" * 16, n=_N, r=_R, p=_P, dklen=_LEN)
        return False
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        candidate = hashlib.scrypt(secret.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
                                   dklen=len(_unb64(digest)))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(candidate, _unb64(digest))


def token_hash(value: str) -> str:
    """Lookup key for high-entropy opaque values (refresh tokens, codes): SHA-256 is enough, and fast."""
    return hashlib.sha256(value.encode()).hexdigest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
