"""security.md §4.1 "Issued-token hygiene" and §4.4: what the core signs and what /v1/keys publishes.

Tokens are verified against the published JWKS with joserfc (an independent JOSE implementation), and
the JWKS is checked for private members, symmetric keys, duplicate kids and the rotation overlap.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import jwt
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

from authz.keys import rotate_keys
from tests.authz.oauth_kit import Core
from tests.security.as_kit import claims_of, code_for, exchange

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


async def jwks(core: Core, as_id: str = "orders") -> dict[str, Any]:
    response = await core.client.get(f"/oauth2/{as_id}/v1/keys")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


async def test_jwks_publishes_public_members_only(core: Core) -> None:
    """No d/p/q/dp/dq/qi/oth/k and no kty oct; every key is RSA with alg RS256, use sig and a unique kid;
    the answer is cacheable only with revalidation (spec §2.1)."""
    response = await core.client.get("/oauth2/orders/v1/keys")
    assert "must-revalidate" in response.headers["cache-control"]
    keys = response.json()["keys"]
    assert keys, "an AS publishes at least its ACTIVE key"
    for key in keys:
        assert not PRIVATE_MEMBERS & set(key), key
        assert key["kty"] == "RSA" and key["alg"] == "RS256" and key["use"] == "sig" and key["kid"]
        assert set(key) <= {"kty", "alg", "kid", "use", "e", "n"}
    kids = [k["kid"] for k in keys]
    assert len(kids) == len(set(kids))
    stored = core.store.list_signing_keys("orders")
    assert {k.kid for k in stored} >= set(kids)
    for key in stored:
        assert key.private_pem.decode()[:40] not in response.text


async def test_jwks_keeps_old_key_during_rotation(core: Core) -> None:
    """OIDCCServerRotateKeys: after a rotation both the old and the new key are published, tokens signed
    before it still verify, and new tokens use the new key."""
    before = (await core.cc()).json()["access_token"]
    old_kid = jwt.get_unverified_header(before)["kid"]
    with core.store.transaction() as tx:
        new_active = rotate_keys(tx, "orders", core.clock())
    after = (await core.cc()).json()["access_token"]
    assert jwt.get_unverified_header(after)["kid"] == new_active.kid != old_kid
    published = await jwks(core)
    kids = {k["kid"] for k in published["keys"]}
    assert {old_kid, new_active.kid} <= kids
    key_set = KeySet.import_key_set(published)  # type: ignore[arg-type]
    for token in (before, after):
        jose_jwt.decode(token, key_set, algorithms=["RS256"])


async def test_signing_keys_are_per_authorization_server(core: Core) -> None:
    """Each AS signs with its own key: a token of one AS does not verify with another's JWKS."""
    orders = {k["kid"] for k in (await jwks(core, "orders"))["keys"]}
    billing = {k["kid"] for k in (await jwks(core, "billing"))["keys"]}
    assert not orders & billing
    token = (await core.cc("billing:read", as_id="billing")).json()["access_token"]
    assert jwt.get_unverified_header(token)["kid"] in billing


async def test_issued_token_hygiene(core: Core) -> None:
    """RFC 9068 §2: typ at+jwt, RS256 (asymmetric), a kid the JWKS publishes, and iss, exp, aud, sub,
    client_id, iat, jti; aud is the AS's one resource (RFC 8707); exp - iat is the rule's lifetime."""
    key_set = KeySet.import_key_set(await jwks(core))  # type: ignore[arg-type]
    for response in (await core.cc(), await core.password("openid orders:read")):
        token = response.json()["access_token"]
        header = jwt.get_unverified_header(token)
        assert header["typ"] == "at+jwt" and header["alg"] == "RS256"
        assert set(header) == {"typ", "alg", "kid"}
        claims = dict(jose_jwt.decode(token, key_set, algorithms=["RS256"]).claims)
        assert {"iss", "exp", "aud", "sub", "client_id", "iat", "jti"} <= set(claims)
        assert claims["iss"] == "http://core.test/oauth2/orders"
        assert claims["aud"] == "https://api.example.com/orders"
        assert claims["client_id"] == claims["cid"]
        assert isinstance(claims["exp"], int) and isinstance(claims["iat"], int)
        assert claims["exp"] - claims["iat"] == response.json()["expires_in"]


async def test_jti_has_at_least_128_bits_of_entropy(core: Core) -> None:
    """security.md §4.1: jti with ≥128-bit entropy. The random part of ``AT.<seq>.<random>`` decodes to at
    least 16 bytes, and a hundred tokens never repeat it."""
    randoms = set()
    for _ in range(100):
        jti = claims_of((await core.cc()).json()["access_token"])["jti"]
        prefix, _seq, random = jti.split(".")
        assert prefix == "AT"
        raw = base64.urlsafe_b64decode(random + "=" * (-len(random) % 4))
        assert len(raw) * 8 >= 128
        randoms.add(random)
    assert len(randoms) == 100
    # 100 draws of 128 bits: the chance of a collision is about 100²/2¹²⁹, so any repeat is a defect.
    assert math.comb(100, 2) / 2**128 < 1e-30


async def test_id_token_is_not_an_access_token(core: Core) -> None:
    """An ID token (typ absent, aud = client id) is not accepted where an access token is: introspection
    reports it as an id_token, never as a Bearer access token for the resource."""
    code = await code_for(core, scope="openid orders:read")
    tokens = (await exchange(core, code)).json()
    id_header = jwt.get_unverified_header(tokens["id_token"])
    assert id_header.get("typ") != "at+jwt" and id_header["alg"] == "RS256"
    assert claims_of(tokens["id_token"])["aud"] == "web"
    body = (await core.client.post("/oauth2/orders/v1/introspect", data={"token": tokens["id_token"]},
                                   auth=("web", "web-secret-0123456789"))).json()
    assert body.get("token_type") != "Bearer"


async def test_refresh_tokens_and_codes_are_opaque_and_stored_hashed(core: Core) -> None:
    """security.md §4.5: refresh tokens are looked up by a hashed handle; the store never holds the value."""
    body = (await core.password("offline_access orders:read")).json()
    refresh = body["refresh_token"]
    assert refresh.count(".") == 0 and len(base64.urlsafe_b64decode(refresh + "=" * (-len(refresh) % 4))) >= 32
    stored = core.store.list_refresh_tokens(client_id="web")
    assert stored and all(refresh not in (t.token_hash, t.id) for t in stored)
