"""What the gate needs from a key source: the contract between validation and key management.

The gate picks the authorization server from the request path (DESIGN §2.3), so it knows which issuer
it expects before it reads the token. It then asks for the key by ``(issuer, kid)``; a key of issuer A
is never offered for a token that must come from issuer B (RFC 8725 §3.8: "the key used must belong to
the issuer"). Implementations: ``proxy/keys.py`` (local signing keys from the store, remote JWKS over
HTTP); the tests use an in-memory one.
"""

from __future__ import annotations

from typing import Protocol

import jwt


class KeyResolver(Protocol):
    def issuer_for_as(self, as_id: str) -> str:
        """The exact ``iss`` a token of this AS carries: ``cfg.issuer_for(as_id)`` for a local AS,
        ``remote.issuer`` for a remote one. Called at start-up and on reconfigure, not per request."""
        ...

    async def resolve(self, issuer: str, kid: str) -> jwt.PyJWK | None:
        """The verification key ``kid`` of ``issuer``, or None when the issuer has no such key.

        The returned key must carry its algorithm (``PyJWK.algorithm_name``): the gate requires the
        token's ``alg`` to equal it (RFC 8725 §3.1, "each key MUST be used with exactly one algorithm").
        A remote implementation may refetch its JWKS on an unknown ``kid`` (at most once per cooldown)
        and must never raise for a network failure: it returns None, which the gate answers with 401.
        """
        ...
