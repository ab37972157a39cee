"""security.md §1.3, J1-J26: forged, malformed and confused tokens against the whole gate.

Each test sends its attack through the proxy app and asserts the answer (401 ``invalid_token`` unless
stated) and that nothing reached the upstream.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tests.security.attack_bench import (
    ADMIN_AUD,
    ADMIN_ISS,
    NOW,
    ORDERS_AUD,
    ORDERS_ISS,
    Gate,
    b64url,
    claims,
    ec_key,
    encode_json,
    forge,
    rsa_key,
    valid_token,
)

HEADER = {"alg": "RS256", "kid": "orders-1", "typ": "at+jwt"}


async def assert_denied(gate: Gate, tokens: list[str], *, status: int = 401, path: str = "/orders",
                        error: str | None = "invalid_token") -> None:
    """Every token is refused with ``status``, the challenge names ``error``, no token is echoed,
    and the upstream saw nothing."""
    for token in tokens:
        response = await gate.get(path, token)
        assert response.status_code == status, (token[:80], response.status_code, response.text)
        challenge = response.headers.get("www-authenticate", "")
        if error is not None:
            assert challenge.startswith("Bearer ") and f'error="{error}"' in challenge, challenge
        for part in token.split("."):
            if len(part) >= 16:
                assert part not in response.text and part not in challenge
    assert gate.upstream.requests == [], "a forged token reached the upstream"


def hs256(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    signing_input = f"{b64url(encode_json(header))}.{b64url(encode_json(payload))}".encode()
    return f"{signing_input.decode()}.{b64url(hmac.new(secret, signing_input, hashlib.sha256).digest())}"


def with_signature_segment(token: str, segment: str) -> str:
    head, payload, _ = token.split(".")
    return f"{head}.{payload}.{segment}"


async def test_control_a_valid_token_reaches_the_upstream(gate: Gate) -> None:
    """The positive control: the bench's own valid token passes, so every denial below is the attack's doing."""
    response = await gate.get("/orders/7", valid_token())
    assert response.status_code == 200, response.text
    assert len(gate.upstream.requests) == 1


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
async def test_J1_alg_none_any_casing_rejected(gate: Gate, alg: str) -> None:
    """RFC 8725 §2.1: an unsigned token never passes, whatever the casing of none."""
    header = {"alg": alg, "kid": "orders-1", "typ": "at+jwt"}
    unsigned = forge(header=header, signature="")
    await assert_denied(gate, [unsigned, forge(header=header, signature=b"x" * 32)])


async def test_J2_hs256_keyed_with_the_public_key_rejected(gate: Gate) -> None:
    """CVE-2022-29217 / CVE-2026-48526: HMAC keyed with the RSA public key in any encoding is refused."""
    public = rsa_key("orders-1").public_key()
    secrets = [
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
        public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
        public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH),
        jwt.algorithms.RSAAlgorithm.to_jwk(public).encode(),
    ]
    header = {"alg": "HS256", "kid": "orders-1", "typ": "at+jwt"}
    await assert_denied(gate, [hs256(header, claims(), s) for s in secrets])


async def test_J3_cross_family_alg_switch_rejected(gate: Gate) -> None:
    """RFC 8725 §3.1: an ES256 or PS256 token under the RS256 key's kid is refused."""
    es_header = {"alg": "ES256", "kid": "orders-1", "typ": "at+jwt"}
    signing_input = f"{b64url(encode_json(es_header))}.{b64url(encode_json(claims()))}".encode()
    der = ec_key("attacker").sign(signing_input, ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    es256 = f"{signing_input.decode()}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
    ps_header = {"alg": "PS256", "kid": "orders-1", "typ": "at+jwt"}
    ps_input = f"{b64url(encode_json(ps_header))}.{b64url(encode_json(claims()))}".encode()
    pss = rsa_key("orders-1").sign(ps_input, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
    await assert_denied(gate, [es256, f"{ps_input.decode()}.{b64url(pss)}"])


async def test_J4_malformed_alg_rejected(gate: Gate) -> None:
    """A missing, numeric, unknown or space-padded alg is refused."""
    headers: list[dict[str, Any]] = [
        {"kid": "orders-1", "typ": "at+jwt"}, {"alg": 256, "kid": "orders-1", "typ": "at+jwt"},
        {"alg": "InvalidAlg", "kid": "orders-1", "typ": "at+jwt"}, {"alg": "RS256 ", "kid": "orders-1", "typ": "at+jwt"},
    ]
    await assert_denied(gate, [forge(header=h) for h in headers])


async def test_J5_kid_injection_rejected_with_bounded_key_reloads(gate: Gate) -> None:
    """Hostile kids find no key, touch nothing but a dictionary, and cost at most one key reload."""
    reads = gate.table.calls
    kids: list[Any] = ["../../../../dev/null", "x' UNION SELECT 'secret'--", "key1|id", 1, "k" * 8192, None]
    tokens = []
    for kid in kids:
        header = {"alg": "RS256", "typ": "at+jwt", **({"kid": kid} if kid is not None else {})}
        tokens.append(forge(header=header))
    tokens += [forge(header={"alg": "HS256", "kid": "../../../../dev/null", "typ": "at+jwt"}, signature=b"")]
    await assert_denied(gate, tokens * 3)
    assert gate.table.calls - reads <= 2, "unknown kids must not re-read the key store on every request"


async def test_J6_embedded_or_remote_key_headers_rejected(gate: Gate) -> None:
    """jwk, jku, x5u and x5c are refused, and the URLs they name are never fetched (the upstream is the canary)."""
    attacker = rsa_key("attacker")
    attacker_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(attacker.public_key()))
    canary = gate.upstream.url + "/jwks"
    tokens = [
        forge(header={**HEADER, "kid": "attacker", "jwk": attacker_jwk}, kid="attacker"),
        forge(header={**HEADER, "kid": "attacker", "jku": canary}, kid="attacker"),
        forge(header={**HEADER, "kid": "attacker", "x5u": canary}, kid="attacker"),
        forge(header={**HEADER, "kid": "attacker", "x5c": [base64.b64encode(b"self-signed").decode()]}, kid="attacker"),
        # Signed by the real key but carrying a key-location header: refused, never ignored.
        forge(header={**HEADER, "jku": canary}),
        forge(header={**HEADER, "x5u": canary}),
    ]
    await assert_denied(gate, tokens)


async def test_J7_crit_rejected(gate: Gate) -> None:
    """RFC 7515 §4.1.11 / CVE-2026-32597: any crit is refused (no extension is understood)."""
    crits: list[dict[str, Any]] = [{"crit": ["foo"], "foo": 1}, {"crit": []}, {"crit": "b64"}, {"crit": ["zzz"]},
                                   {"crit": ["alg"]}]
    await assert_denied(gate, [forge(header={**HEADER, **c}) for c in crits])


async def test_J8_b64_false_rejected(gate: Gate) -> None:
    """RFC 7797: an access token never uses an unencoded payload."""
    tokens = [forge(header={**HEADER, "b64": False, "crit": ["b64"]}), forge(header={**HEADER, "b64": False})]
    detached = tokens[0].split(".")
    await assert_denied(gate, [*tokens, f"{detached[0]}..{detached[2]}"])


async def test_J9_nested_jwe_and_json_serialization_rejected(gate: Gate) -> None:
    """Only compact three-part JWS: no JWE, no nested JWT, no JSON serialization."""
    inner = valid_token()
    nested = forge(payload=json.dumps(inner), header={**HEADER, "cty": "JWT"})
    jwe = ".".join([b64url(b'{"alg":"RSA-OAEP","enc":"A256GCM"}'), "a" * 20, "b" * 16, "c" * 40, "d" * 22])
    head, payload, sig = inner.split(".")
    json_jws = b64url(json.dumps({"payload": payload, "protected": head, "signature": sig}).encode())
    await assert_denied(gate, [nested, jwe, json_jws])


async def test_J10_zip_header_rejected(gate: Gate) -> None:
    """A compression header is refused before anything is inflated."""
    await assert_denied(gate, [forge(header={**HEADER, "zip": "DEF"})])


async def test_J11_duplicate_json_members_rejected(gate: Gate) -> None:
    """RFC 7515 §5.2 / RFC 7519 §4: duplicate header or claim names are refused, validly signed or not."""
    dup_header = '{"alg":"none","alg":"RS256","kid":"orders-1","typ":"at+jwt"}'
    body = json.dumps(claims())[:-1] + ', "sub": "admin"}'
    await assert_denied(gate, [forge(header=dup_header), forge(payload=body)])


async def test_J12_degenerate_signatures_rejected(gate: Gate) -> None:
    """Psychic signatures: all-zero or empty signatures never verify."""
    token = valid_token()
    await assert_denied(gate, [with_signature_segment(token, b64url(b"\0" * 256)), with_signature_segment(token, "")])


async def test_J13_signature_encoding_abuse_rejected(gate: Gate) -> None:
    """A signature with a leading zero byte or truncated by one byte is refused."""
    token = valid_token()
    sig = base64.urlsafe_b64decode(token.split(".")[2] + "==")
    await assert_denied(gate, [with_signature_segment(token, b64url(b"\0" + sig)),
                               with_signature_segment(token, b64url(sig[:-1]))])


async def test_J14_malleated_copy_of_a_revoked_token_stays_revoked(gate: Gate) -> None:
    """Revocation is by (iss, jti): a re-padded copy of a revoked token (even one cached as valid) is refused."""
    token = valid_token(jti="AT.20.revoke-me-123456")
    assert (await gate.get("/orders", token)).status_code == 200
    gate.upstream.requests.clear()
    gate.revocations.revoked.add((ORDERS_ISS, "AT.20.revoke-me-123456"))
    await assert_denied(gate, [token, token + "=", token + "=="])


async def test_J15_non_canonical_base64url_rejected(gate: Gate) -> None:
    """Junk characters, the standard alphabet and non-zero unused bits are refused (GHSA-hxm8-2xgr-2p9m)."""
    token = valid_token()
    head, payload, sig = token.split(".")
    last = sig[-1]
    # 256 bytes in 342 characters leave 4 unused bits in the last one; flip one of them.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    unused_bit = alphabet[alphabet.index(last) ^ 1]
    tokens = [
        f"{head}.{payload}.{sig[:10]}!!!!{sig[10:]}",
        f"{head}.{payload}.{sig.replace('-', '+').replace('_', '/')}" if ("-" in sig or "_" in sig) else f"{head}+.{payload}.{sig}",
        f"{head}.{payload}.{sig[:-1]}{unused_bit}",
    ]
    for t in tokens:
        response = await gate.get("/orders", t)
        # '!' is no b64token character (400 at extraction); '+' '/' are, and fail as a JWS (401).
        assert response.status_code in (400, 401), (t[-20:], response.status_code)
    status, _, _ = await gate.asgi("GET", b"/orders", [(b"authorization", f"Bearer {head}.{payload}.{sig[:-2]}\xc3\xa9".encode())])
    assert status in (400, 401)
    assert gate.upstream.requests == []


async def test_J16_stripped_or_missing_parts_rejected(gate: Gate) -> None:
    """Every token shape but header.payload.signature is refused."""
    head, payload, sig = valid_token().split(".")
    shapes = [f"{head}.{payload}.", f"{head}.{payload}", f".{payload}.{sig}", f"{head}..{sig}",
              f"{head}.{payload}.{sig}.", f"{head}.{payload}.{sig}.x"]
    await assert_denied(gate, shapes)


@pytest.mark.parametrize("exp", [int(NOW) - 61, "9999999999", True, None, "missing", 10**30, "NaN", "Infinity", "1e400"])
async def test_J17_exp_edge_cases_rejected(gate: Gate, exp: Any) -> None:
    """exp past the leeway, missing, a string, a boolean, null, non-finite or absurdly far is refused."""
    if exp in ("NaN", "Infinity", "1e400"):
        payload: Any = json.dumps(claims(exp=0)).replace('"exp": 0', f'"exp": {exp}')
    elif exp == "missing":
        payload = claims(exp=None)
    elif exp is None:
        payload = json.dumps(claims(exp=0)).replace('"exp": 0', '"exp": null')
    else:
        payload = claims(exp=exp)
    await assert_denied(gate, [forge(payload=payload)])


async def test_J17_exp_inside_the_leeway_passes(gate: Gate) -> None:
    """The other side of the line: a token expired 30 s ago is inside the 60 s leeway."""
    response = await gate.get("/orders", valid_token(exp=int(NOW) - 30))
    assert response.status_code == 200
    assert len(gate.upstream.requests) == 1


async def test_J18_nbf_or_iat_in_the_future_rejected(gate: Gate) -> None:
    """nbf or iat beyond now + leeway, or a non-numeric iat, is refused."""
    await assert_denied(gate, [valid_token(nbf=int(NOW) + 61), valid_token(iat=int(NOW) + 61), valid_token(iat="abc")])


async def test_J19_wrong_audience_rejected(gate: Gate) -> None:
    """aud must contain this resource exactly; near-misses and non-strings are refused."""
    auds: list[Any] = ["api://orders-evil", ORDERS_AUD + "-evil", ORDERS_AUD + "/", ORDERS_AUD[:-1], [], 5, None, ["x"],
                       ADMIN_AUD]
    await assert_denied(gate, [valid_token(aud=a) if a is not None else forge(claims(aud=None)) for a in auds])


async def test_J19_audience_array_containing_the_resource_passes(gate: Gate) -> None:
    """RFC 7519 §4.1.3: an array that contains the resource is accepted."""
    assert (await gate.get("/orders", valid_token(aud=["x", ORDERS_AUD]))).status_code == 200


async def test_J20_issuer_variants_rejected(gate: Gate) -> None:
    """iss is compared exactly: trailing slash, case, prefix, substring and arrays are refused (CVE-2024-53861)."""
    issuers: list[Any] = [ORDERS_ISS + "/", ORDERS_ISS.upper(), ORDERS_ISS.replace("http://", "HTTP://"),
                          ORDERS_ISS + ".evil", ORDERS_ISS[:-1], [ORDERS_ISS], ADMIN_ISS]
    await assert_denied(gate, [valid_token(iss=i) for i in issuers])


async def test_J21_typ_and_cross_jwt_confusion_rejected(gate: Gate) -> None:
    """RFC 9068 §4 / RFC 8725 §3.12: no typ, typ JWT, parameters on typ and an ID token are refused."""
    no_typ = {"alg": "RS256", "kid": "orders-1"}
    id_token = claims(aud="reporting", nonce="n-0S6_WzA2Mj", jti="ID.21.abcdefghijklmnop")
    tokens = [forge(header=no_typ), forge(header={**HEADER, "typ": "JWT"}), forge(header={**HEADER, "typ": "at+jwt; x=y"}),
              forge(id_token, header={**HEADER, "typ": "JWT"}), forge(id_token),
              forge(claims(jti="ID.22.abcdefghijklmnop")), forge(header={**HEADER, "typ": "logout+jwt"})]
    await assert_denied(gate, tokens)


@pytest.mark.parametrize("typ", ["AT+JWT", "application/at+jwt", "Application/AT+JWT"])
async def test_J21_typ_compares_case_insensitively(gate: Gate, typ: str) -> None:
    """RFC 7515 §4.1.9: media types compare case-insensitively, with application/ implied."""
    assert (await gate.get("/orders", forge(header={**HEADER, "typ": typ}))).status_code == 200


async def test_J22_claim_type_confusion_rejected(gate: Gate) -> None:
    """sub, jti, client_id and scopes of the wrong JSON type are refused (or never grant a scope)."""
    tokens = [valid_token(sub=123), valid_token(jti=123), valid_token(client_id={}, cid=None),
              valid_token(scp="orders:read"), valid_token(scp=[["orders:read"]]),
              valid_token(scp=None, scope=["orders:read"]), valid_token(scp=None, scope="orders:read\torders:write"),
              valid_token(sub="alice\r\nX-Admin: true")]
    for token in tokens:
        response = await gate.get("/orders", token)
        assert response.status_code in (401, 403), response.text
    assert gate.upstream.requests == []


async def test_J23_token_signed_by_a_weak_key_rejected(gate: Gate) -> None:
    """RFC 7518 §3.3: an RSA-1024 key in the key set never verifies (J23)."""
    await assert_denied(gate, [forge(kid="weak-1024", bits=1024)])


async def test_J24_huge_tokens_rejected_before_decoding(gate: Gate) -> None:
    """A token over the size cap is refused before any decoding; a megabyte costs no more than a few ms of work."""
    big_claim = valid_token(pad="x" * 10_000)
    response = await gate.get("/orders", big_claim)
    assert response.status_code in (401, 431)
    huge = "eyJ" + "A" * (1024 * 1024) + ".e30.c2ln"
    started = time.perf_counter()
    response = await gate.get("/orders", huge)
    assert response.status_code in (401, 431)
    assert time.perf_counter() - started < 1.0
    nested = forge(payload='{"a":' + "[" * 100_000 + "]" * 100_000 + "}")
    big_int = forge(payload=json.dumps(claims())[:-1] + ', "n": ' + "9" * 5000 + "}")
    for token in (nested, big_int):
        assert (await gate.get("/orders", token)).status_code in (401, 431)
    assert gate.upstream.requests == []


async def test_J25_sender_constrained_token_used_as_bearer_rejected(gate: Gate) -> None:
    """RFC 9449 / RFC 8705: a token bound to a key (cnf) sent without proof is refused."""
    await assert_denied(gate, [valid_token(cnf={"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}),
                               valid_token(cnf={"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"})])


async def test_J26_key_of_another_issuer_rejected(gate: Gate) -> None:
    """RFC 8725 §3.8: a token claiming the admin issuer, signed by the orders AS's key, is refused."""
    token = forge(claims(iss=ADMIN_ISS, aud=ADMIN_AUD, scp=["admin:all"]), kid="orders-1")
    await assert_denied(gate, [token], path="/admin")
    control = forge(claims(iss=ADMIN_ISS, aud=ADMIN_AUD, scp=["admin:all"]), header={**HEADER, "kid": "admin-1"},
                    kid="admin-1")
    assert (await gate.get("/admin", control)).status_code == 200


async def test_token_never_reaches_the_decision_log(gate: Gate) -> None:
    """No token value (nor its signature) is ever written to the decision log, allowed or denied."""
    good, bad = valid_token(), forge(header={**HEADER, "kid": "nope"})
    await gate.get("/orders", good)
    await gate.get("/orders", bad)
    log = gate.log.getvalue()
    for token in (good, bad):
        assert token.split(".")[2] not in log and token.split(".")[1] not in log


async def test_error_description_is_header_safe(gate: Gate) -> None:
    """RFC 6750 §3: error_description carries no '"', '\\' or control characters, whatever the token held."""
    token = forge(claims(sub='a"b\\c'), header={**HEADER, "kid": 'x"y\\z'})
    response = await gate.get("/orders", token)
    challenge = response.headers["www-authenticate"]
    description = challenge.split('error_description="', 1)[1].rsplit('"', 1)[0] if "error_description" in challenge else ""
    assert '"' not in description and "\\" not in description
    assert all(0x20 <= ord(c) < 0x7F for c in challenge)


_ = httpx  # the client type is used through the Gate fixture
