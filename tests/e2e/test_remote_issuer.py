"""Remote issuers through real processes (issue 5 "Remote issuers"): a second scopegate is the issuer, the
first (its core off) trusts it by discovery, JWKS and, where configured, RFC 7662 introspection."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest

from tests.e2e.conftest import RunningScopegate

pytestmark = pytest.mark.e2e

AUDIENCE = "https://api.example.com/remote"
SECRETS = {"svc": "svc-secret-0123456789abcdef", "introspector": "introspector-secret-0123456789"}
COOLDOWN = 1.0
CACHE_TTL = 1.0

ISSUER_CONFIG: dict[str, Any] = {
    "authorizationServers": [{
        "id": "upstream-as", "name": "Upstream AS", "audiences": [AUDIENCE], "scopes": [{"name": "remote:read"}],
        "policies": [{"name": "Everyone", "priority": 1, "conditions": {"clients": {"include": ["ALL_CLIENTS"]}},
                      "rules": [{"name": "All", "priority": 1,
                                 "conditions": {"grantTypes": {"include": ["client_credentials"]},
                                                "scopes": {"include": ["*"]}},
                                 "actions": {"token": {"accessTokenLifetimeMinutes": 60}}}]}],
    }],
    "apps": [{"clientId": "svc", "clientSecret": SECRETS["svc"], "name": "Service"},
             {"clientId": "introspector", "clientSecret": SECRETS["introspector"], "name": "The proxy"}],
}


def proxy_config(issuer: str, *, introspection: bool) -> dict[str, Any]:
    remote: dict[str, Any] = {"issuer": issuer, "audience": AUDIENCE, "requireTyp": True,
                              "jwksRefetchCooldown": f"{COOLDOWN:g}s", "jwksTimeout": "2s"}
    if introspection:
        remote["introspection"] = {"clientId": "introspector", "clientSecret": SECRETS["introspector"],
                                   "cacheTTL": f"{CACHE_TTL:g}s"}
    return {
        "listen": {"core": "off"},
        "upstream": {"url": "builtin:echo"},
        "routes": [{"name": "remote", "path": "/remote", "scopes": {"anyOf": ["remote:read"]}}],
        "authorizationServers": [{"id": "upstream-as", "name": "Upstream (remote)", "remote": remote}],
    }


class Pair:
    """The issuer process and the proxy process that trusts it."""

    def __init__(self, scopegate: Callable[..., RunningScopegate], *, introspection: bool) -> None:
        self.issuer = scopegate(ISSUER_CONFIG, name="issuer")
        self.proxy = scopegate(proxy_config(self.issuer.issuer("upstream-as"), introspection=introspection),
                               name="proxy")
        self.proxy_started = time.monotonic()

    def token(self) -> str:
        response = httpx.post(f"{self.issuer.core}/oauth2/upstream-as/v1/token", auth=("svc", SECRETS["svc"]),
                              data={"grant_type": "client_credentials", "scope": "remote:read"})
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    def get(self, token: str) -> httpx.Response:
        return httpx.get(f"{self.proxy.proxy}/remote/items", headers={"Authorization": f"Bearer {token}"}, timeout=10)


def kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def wait_until(condition: Callable[[], bool], seconds: float) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, "condition not met in time"
        time.sleep(0.05)
    return time.monotonic() - started


def test_remote_token_passes_and_a_key_rotation_is_picked_up(scopegate: Callable[..., RunningScopegate]) -> None:
    """A token of the remote issuer passes with its identity; after a key rotation at the issuer, a token
    signed by the new key passes too (unknown kid → refetch), and the old token still does."""
    pair = Pair(scopegate, introspection=False)
    old = pair.token()
    first = pair.get(old)
    assert first.status_code == 200, first.text
    seen = dict(first.json()["headers"])
    assert seen["X-Scopegate-Client-Id"] == "svc" and seen["X-Scopegate-Auth-Server"] == "upstream-as"
    assert pair.get(old + "x").status_code == 401

    rotated = httpx.post(f"{pair.issuer.core}/api/v1/authorizationServers/upstream-as/credentials/lifecycle/keyRotate",
                         headers={"Authorization": f"SSWS {pair.issuer.admin_token}"}, json={"use": "sig"})
    assert rotated.status_code == 200, rotated.text
    new = pair.token()
    assert kid(new) != kid(old)
    time.sleep(max(0.0, pair.proxy_started + COOLDOWN + 0.1 - time.monotonic()))  # past the refetch cooldown
    assert pair.get(new).status_code == 200
    assert pair.get(old).status_code == 200   # key rotation is not revocation: the old key is still published


def test_keys_endpoint_outage_keeps_known_keys(scopegate: Callable[..., RunningScopegate]) -> None:
    """With the issuer down, tokens signed by a key already held still pass (a fresh token, so not from the
    verified-token cache), while a token with an unknown kid is refused with 401."""
    pair = Pair(scopegate, introspection=False)
    used, fresh = pair.token(), pair.token()
    assert pair.get(used).status_code == 200
    foreign = jwt.encode({"iss": pair.issuer.issuer("upstream-as"), "aud": AUDIENCE, "exp": int(time.time()) + 600},
                         _throwaway_key(), algorithm="RS256", headers={"kid": "not-a-known-kid", "typ": "at+jwt"})
    assert pair.issuer.stop() == 0
    time.sleep(COOLDOWN + 0.1)  # a refetch is allowed, and fails
    assert pair.get(fresh).status_code == 200
    unknown = pair.get(foreign)
    assert unknown.status_code == 401
    assert 'error="invalid_token"' in unknown.headers["www-authenticate"]
    assert pair.get(used).status_code == 200


def test_introspection_learns_a_revocation_within_cache_ttl(scopegate: Callable[..., RunningScopegate]) -> None:
    """A token revoked at the issuer is refused by the proxy within cacheTTL (RFC 7662 introspection)."""
    pair = Pair(scopegate, introspection=True)
    token = pair.token()
    assert pair.get(token).status_code == 200
    revoked = httpx.post(f"{pair.issuer.core}/oauth2/upstream-as/v1/revoke", auth=("svc", SECRETS["svc"]),
                         data={"token": token, "token_type_hint": "access_token"})
    assert revoked.status_code == 200
    elapsed = wait_until(lambda: pair.get(token).status_code == 401, CACHE_TTL + 2)
    assert elapsed <= CACHE_TTL + 0.5
    assert 'error="invalid_token"' in pair.get(token).headers["www-authenticate"]
    assert pair.get(pair.token()).status_code == 200


def test_introspection_outage_fails_closed(scopegate: Callable[..., RunningScopegate]) -> None:
    """With introspection configured, an issuer that cannot be asked means 503 once the cached answer has
    expired: a token whose revocation state is unknown is not let through."""
    pair = Pair(scopegate, introspection=True)
    token = pair.token()
    assert pair.get(token).status_code == 200
    assert pair.issuer.stop() == 0
    time.sleep(CACHE_TTL + 0.1)
    refused = pair.get(token)
    assert refused.status_code == 503
    assert refused.json()["error"] == "introspection_unavailable"


def _throwaway_key() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
