"""Token validation (the gate's step 6) and the verified-token cache (step 7)."""

from __future__ import annotations

import hashlib
import hmac
import json
import warnings
from typing import Any

import jwt
import pytest

from authz.errors import BearerError
from proxy.cache import TokenCache
from proxy.validate import IssuerPolicy, TokenValidator, VerifiedToken
from tests.clock import Clock
from tests.proxy.gatekit import (
    DROP,
    ISSUER,
    NOW,
    RESOURCE,
    InMemoryKeys,
    b64,
    claims,
    default_keys,
    mint,
    mint_raw,
    public_jwk,
    rsa_key,
)

POLICY = IssuerPolicy(as_id="orders", issuer=ISSUER, audience=RESOURCE, algorithms=frozenset({"RS256"}),
                      require_typ=True, local=True)


async def validate(token: str, *, policy: IssuerPolicy = POLICY, keys: InMemoryKeys | None = None,
                   now: float = NOW, leeway: float = 60) -> VerifiedToken:
    validator = TokenValidator(keys or default_keys(), leeway=leeway, max_token_bytes=8192)
    return await validator.validate(token, policy, now)


async def rejected(token: str, **kwargs: Any) -> BearerError:
    with pytest.raises(BearerError) as info:
        await validate(token, **kwargs)
    err = info.value
    assert err.status_code == 401 and err.error == "invalid_token"
    challenge = err.get_headers()["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="orders", error="invalid_token"')
    if token:
        assert token[:40] not in challenge and token[:40] not in err.body_bytes().decode()
    return err


class TestAccepts:
    async def test_valid_token(self) -> None:
        """A well-formed RS256 at+jwt for this issuer and resource passes, with its identity."""
        verified = await validate(mint())
        assert verified.subject == "alice@example.com"
        assert verified.client_id == "reporting"
        assert verified.scopes == frozenset({"orders:read"})
        assert verified.as_id == "orders" and verified.exp == NOW + 3600

    @pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt", "Application/AT+JWT"])
    async def test_typ_variants_pass(self, typ: str) -> None:
        """RFC 7515 §4.1.9: media types compare case-insensitively, and application/ is implied."""
        await validate(mint(typ=typ))

    async def test_audience_array_containing_the_resource(self) -> None:
        """RFC 7519 §4.1.3: aud may be an array; it must contain the resource."""
        await validate(mint(claims(aud=["x", RESOURCE])))

    async def test_scope_string_rfc9068(self) -> None:
        """RFC 9068: scope is one space-delimited string."""
        verified = await validate(mint(claims(scp=DROP, scope="orders:read orders:write")))
        assert verified.scopes == frozenset({"orders:read", "orders:write"})
        assert verified.scope_header == "orders:read orders:write"

    async def test_scope_claim_disagreeing_with_scp_scope_wins_and_is_flagged(self) -> None:
        """Issue 10 item 3: with both claims and different scopes, ``scope`` (RFC 9068's) decides and the token
        is marked, so that the decision log says ``bad_claims``; agreeing claims (any order) are not marked."""
        verified = await validate(mint(claims(scp=["orders:read"], scope="orders:write")))
        assert verified.scopes == frozenset({"orders:write"}) and verified.scope_conflict
        agreeing = await validate(mint(claims(scp=["orders:write", "orders:read"], scope="orders:read orders:write")))
        assert agreeing.scopes == frozenset({"orders:read", "orders:write"}) and not agreeing.scope_conflict

    async def test_exp_inside_leeway(self) -> None:
        """A token expired less than the leeway ago still passes (RFC 9068 §4: a small leeway)."""
        await validate(mint(claims(iat=int(NOW) - 3600, exp=int(NOW) - 59)), leeway=60)

    async def test_remote_issuer_without_typ(self) -> None:
        """A remote issuer with requireTyp false (real Okta) accepts tokens without typ, keyed by cid only."""
        policy = IssuerPolicy("orders", ISSUER, RESOURCE, frozenset({"RS256"}), require_typ=False, local=False)
        verified = await validate(mint(claims(client_id=DROP, jti="okta-jti-1"), typ=None), policy=policy)
        assert verified.client_id == "reporting"


class TestHeader:
    @pytest.mark.parametrize(("token", "reason"), [
        ("", "malformed"), ("a.b", "malformed"), ("a.b.c.d", "malformed"), ("a.b.c.d.e", "malformed"),
        ("x" * 9000, "token_too_long"),
    ])
    async def test_not_compact_jws(self, token: str, reason: str) -> None:
        """Only a size-bounded three-part compact JWS is parsed at all (J9, J16, J24)."""
        assert (await rejected(token)).reason == reason

    async def test_stripped_signature(self) -> None:
        """h.p. (no signature) is refused (J16)."""
        h, p, _ = mint().split(".")
        assert (await rejected(f"{h}.{p}.")).reason == "malformed"

    @pytest.mark.parametrize("suffix", ["=", "==", "!!!!"])
    async def test_repadded_or_junk_signature(self, suffix: str) -> None:
        """Trailing padding or junk on the signature is refused: one token, one spelling (J14, J15)."""
        assert (await rejected(mint() + suffix)).reason == "malformed"

    @pytest.mark.parametrize("header", [
        '{"alg":"none","kid":"k1","typ":"at+jwt"}', '{"alg":"None","kid":"k1","typ":"at+jwt"}',
        '{"alg":"HS256","kid":"k1","typ":"at+jwt"}', '{"alg":"ES256","kid":"k1","typ":"at+jwt"}',
        '{"alg":"PS256","kid":"k1","typ":"at+jwt"}', '{"alg":256,"kid":"k1","typ":"at+jwt"}',
        '{"alg":"RS256 ","kid":"k1","typ":"at+jwt"}', '{"kid":"k1","typ":"at+jwt"}',
    ])
    async def test_algorithm_not_from_the_allow_list(self, header: str) -> None:
        """alg comes from the AS's allow-list, never from the header alone (J1, J3, J4)."""
        token = mint_raw(header, json.dumps(claims()))
        assert (await rejected(token)).reason == "bad_algorithm"

    async def test_hs256_with_the_public_key_as_secret(self) -> None:
        """Algorithm confusion: HMAC keyed with the RSA public key is refused (J2)."""
        from cryptography.hazmat.primitives import serialization

        pem = rsa_key("k1").public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo)
        header = b'{"alg":"HS256","kid":"k1","typ":"at+jwt"}'
        signing_input = b64(header) + "." + b64(json.dumps(claims()).encode())
        signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
        token = f"{signing_input}.{b64(signature)}"
        assert (await rejected(token)).reason == "bad_algorithm"

    @pytest.mark.parametrize("member", [
        '"crit":["exp"]', '"jku":"http://canary.local/jwks"', '"x5u":"http://canary.local/x"', '"jwk":{"kty":"RSA"}',
        '"x5c":["MIIB"]', '"b64":false', '"zip":"DEF"', '"cty":"JWT"', '"foo":1',
    ])
    async def test_refused_header_members(self, member: str) -> None:
        """crit, jku, x5u, jwk, x5c, b64, zip (and anything else) are refused, never followed (J6-J10)."""
        token = mint_raw('{"alg":"RS256","kid":"k1","typ":"at+jwt",' + member + "}", json.dumps(claims()))
        assert (await rejected(token)).reason == "bad_header_param"

    async def test_duplicate_header_member(self) -> None:
        """{"alg":"none","alg":"RS256"}: duplicates are refused, not last-wins (J11)."""
        token = mint_raw('{"alg":"none","alg":"RS256","kid":"k1","typ":"at+jwt"}', json.dumps(claims()))
        assert (await rejected(token)).reason == "malformed"

    @pytest.mark.parametrize("typ", [None, "JWT", "jwt", "at+jwt; x=y", "application/jwt", "logout+jwt"])
    async def test_typ_must_be_at_jwt(self, typ: str | None) -> None:
        """RFC 9068 §4: typ must be at+jwt; PyJWT never checks it (J21)."""
        assert (await rejected(mint(typ=typ))).reason == "bad_type"

    async def test_typ_not_a_string(self) -> None:
        """A typ that is not a string is refused."""
        token = mint_raw('{"alg":"RS256","kid":"k1","typ":1}', json.dumps(claims()))
        assert (await rejected(token)).reason == "bad_type"

    @pytest.mark.parametrize("kid", ["../../../../dev/null", "x' UNION SELECT 'secret'--", "unknown", "k1 "])
    async def test_unknown_kid(self, kid: str) -> None:
        """A kid is a dictionary lookup only; an unknown one is refused (J5)."""
        assert (await rejected(mint(kid=kid, key="k1"))).reason == "unknown_key"

    async def test_non_string_kid(self) -> None:
        """kid must be a string (J5)."""
        token = mint_raw('{"alg":"RS256","kid":1,"typ":"at+jwt"}', json.dumps(claims()))
        assert (await rejected(token)).reason == "unknown_key"

    async def test_key_of_another_issuer(self) -> None:
        """A key present only in another issuer's set never verifies this issuer's tokens (J26, RFC 8725 §3.8)."""
        keys = InMemoryKeys({"orders": ISSUER}, {("http://other/oauth2/x", "k2"): public_jwk("k2")})
        assert (await rejected(mint(kid="k2"), keys=keys)).reason == "unknown_key"
        assert keys.lookups == [(ISSUER, "k2")]

    async def test_key_algorithm_must_match(self) -> None:
        """The key's own alg must equal the token's (RFC 8725 §3.1: one key, one algorithm)."""
        keys = InMemoryKeys({"orders": ISSUER}, {(ISSUER, "k1"): public_jwk("k1", alg="RS384")})
        policy = IssuerPolicy("orders", ISSUER, RESOURCE, frozenset({"RS256", "RS384"}), True, True)
        assert (await rejected(mint(), keys=keys, policy=policy)).reason == "bad_algorithm"

    async def test_wrong_signature(self) -> None:
        """A token signed by another key under a known kid fails the signature check."""
        assert (await rejected(mint(kid="k1", key="attacker"))).reason == "bad_signature"

    async def test_short_rsa_key(self) -> None:
        """RSA-1024 keys are refused (J23)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            keys = InMemoryKeys({"orders": ISSUER}, {(ISSUER, "weak"): public_jwk("weak", bits=1024)})
            token = jwt.encode(claims(), rsa_key("weak", 1024), algorithm="RS256", headers={"kid": "weak", "typ": "at+jwt"})
        await rejected(token, keys=keys)


class TestClaims:
    @pytest.mark.parametrize(("overrides", "reason"), [
        ({"iss": ISSUER + "/"}, "bad_issuer"), ({"iss": ISSUER.upper()}, "bad_issuer"), ({"iss": [ISSUER]}, "bad_issuer"),
        ({"iss": "http://127.0.0.1:8081/oauth2/other"}, "bad_issuer"), ({"iss": DROP}, "bad_issuer"),
        ({"aud": "https://api.example.com/orders-evil"}, "bad_audience"), ({"aud": "https://api.example.com/order"}, "bad_audience"),
        ({"aud": []}, "bad_audience"), ({"aud": 5}, "bad_audience"), ({"aud": DROP}, "bad_audience"),
        ({"aud": ["x"]}, "bad_audience"), ({"aud": [RESOURCE, 5]}, "bad_audience"),
        ({"exp": int(NOW) - 61}, "expired"), ({"exp": DROP}, "bad_claims"), ({"exp": str(int(NOW) + 60)}, "bad_claims"),
        ({"exp": True}, "bad_claims"), ({"exp": None}, "bad_claims"), ({"exp": 10**30}, "bad_claims"),
        ({"iat": int(NOW) + 61}, "not_yet_valid"), ({"iat": "abc"}, "bad_claims"), ({"iat": DROP}, "bad_claims"),
        ({"nbf": int(NOW) + 61}, "not_yet_valid"), ({"nbf": "0"}, "bad_claims"),
        ({"exp": int(NOW) + 2 * 86400}, "bad_claims"),
        ({"sub": 123}, "bad_claims"), ({"sub": DROP}, "bad_claims"), ({"sub": "u1\r\nX-Admin: true"}, "bad_claims"),
        ({"jti": 123}, "bad_claims"), ({"jti": DROP}, "bad_claims"), ({"jti": "ID.2a.abc"}, "bad_type"),
        ({"client_id": {}}, "bad_claims"), ({"client_id": DROP, "cid": DROP}, "bad_claims"),
        ({"client_id": "other"}, "bad_claims"),
        ({"scope": ["admin"]}, "bad_claims"), ({"scp": "orders:read"}, "bad_claims"), ({"scp": [1]}, "bad_claims"),
        ({"scp": DROP, "scope": "read\twrite"}, "bad_claims"), ({"scp": DROP, "scope": "read  write"}, "bad_claims"),
        ({"scope": "orders:write", "scp": ["orders:read", 1]}, "bad_claims"),  # scope wins, but scp must be well-formed
        ({"nonce": "n"}, "bad_type"), ({"at_hash": "x"}, "bad_type"),
        ({"cnf": {"jkt": "abc"}}, "bad_claims"),
    ])
    async def test_claims_checked_strictly(self, overrides: dict[str, Any], reason: str) -> None:
        """Every claim PyJWT would let through or mistype is refused with a stable reason (J17-J22, J25)."""
        token = mint_raw('{"alg":"RS256","kid":"k1","typ":"at+jwt"}', json.dumps(claims(**overrides)))
        assert (await rejected(token)).reason == reason

    async def test_duplicate_payload_member(self) -> None:
        """A payload with two sub values is refused (J11)."""
        body = json.dumps(claims())[:-1] + ', "sub": "admin"}'
        assert (await rejected(mint_raw('{"alg":"RS256","kid":"k1","typ":"at+jwt"}', body))).reason == "malformed"

    @pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400"])
    async def test_non_finite_numbers(self, value: str) -> None:
        """NaN, Infinity and 1e400 (which Python's json accepts) never pass as exp (J17)."""
        body = json.dumps(claims(exp=DROP))[:-1] + f', "exp": {value}}}'
        await rejected(mint_raw('{"alg":"RS256","kid":"k1","typ":"at+jwt"}', body))

    async def test_id_token_never_passes(self) -> None:
        """An OIDC ID token of the same issuer (typ JWT, aud = client id, nonce) never passes as an access token."""
        id_claims = claims(aud="reporting", nonce="n", jti="ID.2b.xyz", scp=DROP)
        await rejected(mint(id_claims, typ="JWT"))
        relaxed = IssuerPolicy("orders", ISSUER, RESOURCE, frozenset({"RS256"}), require_typ=False, local=False)
        await rejected(mint(id_claims, typ=None), policy=relaxed)
        await rejected(mint(claims(nonce="n"), typ=None), policy=relaxed)

    async def test_non_canonical_base64_payload(self) -> None:
        """A payload segment with non-zero unused bits is a second spelling and is refused (J15)."""
        h, p, s = mint().split(".")
        if len(p) % 4 in (2, 3):
            alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
            bumped = p[:-1] + alphabet[alphabet.index(p[-1]) + 1]
            assert (await rejected(f"{h}.{bumped}.{s}")).reason in ("malformed", "bad_signature")

    async def test_error_description_is_safe(self) -> None:
        """error_description never echoes the token and holds no quote, backslash or control character."""
        err = await rejected(mint(claims(iss='evil"\\\r\n')))
        assert '\\' not in err.challenge() and "\r" not in err.challenge()
        assert b64(b"x")  # the kit's encoder is importable


class TestCache:
    def _verified(self, exp: float) -> VerifiedToken:
        return VerifiedToken("orders", "s", "c", frozenset(), "", exp, {})

    def test_hit_until_exp(self) -> None:
        """An entry is returned until its token's exp, then it is a miss."""
        clock = Clock(NOW)
        cache = TokenCache(10, clock)
        cache.put("t", self._verified(NOW + 10))
        assert cache.get("orders", "t") is not None
        clock.t = NOW + 10
        assert cache.get("orders", "t") is None

    def test_keyed_by_authorization_server(self) -> None:
        """The same token under another AS is a miss: it must be validated for that AS."""
        cache = TokenCache(10, Clock(NOW))
        cache.put("t", self._verified(NOW + 10))
        assert cache.get("other", "t") is None

    def test_bounded(self) -> None:
        """The cache never holds more than its size."""
        cache = TokenCache(3, Clock(NOW))
        for i in range(10):
            cache.put(f"t{i}", self._verified(NOW + 10))
        assert len(cache) == 3

    def test_size_zero_disables(self) -> None:
        """tokenCacheSize 0 turns the cache off."""
        cache = TokenCache(0, Clock(NOW))
        cache.put("t", self._verified(NOW + 10))
        assert cache.get("orders", "t") is None

    def test_expired_entry_is_not_stored(self) -> None:
        """A token past its exp (passing only by leeway) is never cached."""
        cache = TokenCache(3, Clock(NOW))
        cache.put("t", self._verified(NOW - 1))
        assert len(cache) == 0
