"""Signing keys: generation, the JWKS document, first-start creation and rotation (spec §1.1)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from joserfc.jwk import RSAKey

from authz.keys import (
    EXPIRED_KEY_RETENTION_SECONDS,
    active_signing_key,
    ensure_signing_keys,
    generate_signing_key,
    jwk_thumbprint,
    jwks_document,
    load_private_key,
    rotate_keys,
)
from authz.store.base import SigningKey, Store, open_store

NOW = 1_700_000_000.0


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return generate_signing_key("orders", "ACTIVE", NOW)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = open_store(f"sqlite:///{tmp_path}/state.db")
    yield store
    store.close()


def sign(key: SigningKey, claims: dict[str, object]) -> str:
    return jwt.encode(claims, load_private_key(key), algorithm="RS256", headers={"kid": key.kid})


def verify(token: str, keys: list[SigningKey]) -> dict[str, object]:
    """What a resource server does: pick the published JWK by the token's kid and check the signature."""
    jwks = jwt.PyJWKSet.from_dict(jwks_document(keys))
    header = jwt.get_unverified_header(token)
    claims: dict[str, object] = jwt.decode(token, jwks[header["kid"]].key, algorithms=["RS256"],
                                           options={"verify_exp": False, "verify_aud": False})
    return claims


class TestGeneratedKey:
    def test_public_jwk_members(self, key: SigningKey) -> None:
        """The public JWK is an RS256 signature key named by its kid, with no private member."""
        assert set(key.public_jwk) == {"kty", "n", "e", "kid", "alg", "use"}
        assert (key.public_jwk["kty"], key.public_jwk["alg"], key.public_jwk["use"]) == ("RSA", "RS256", "sig")
        assert key.public_jwk["kid"] == key.kid and key.public_jwk["e"] == "AQAB"

    def test_rsa_2048_pkcs8(self, key: SigningKey) -> None:
        """The private key is RSA 2048 in a PKCS#8 PEM."""
        assert key.private_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
        assert load_private_key(key).key_size == 2048

    def test_kid_is_the_rfc7638_thumbprint(self, key: SigningKey) -> None:
        """The kid equals the JWK thumbprint an independent library computes for the same key."""
        assert key.kid == RSAKey.import_key(key.public_jwk).thumbprint()

    def test_thumbprint_matches_rfc7638_example(self) -> None:
        """RFC 7638 §3.1's worked example gives its published thumbprint."""
        n = ("0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3"
             "oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgd"
             "AZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur"
             "-kEgU8awapJzKnqDKgw")
        assert jwk_thumbprint({"kty": "RSA", "n": n, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"}) == (
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")

    def test_kid_is_stable_across_store_round_trip(self, key: SigningKey, store: Store) -> None:
        """A key read back from the store has the same kid and thumbprint; the kid does not depend on when."""
        store.add_signing_key(key)
        (stored,) = store.list_signing_keys("orders")
        assert stored.kid == key.kid == jwk_thumbprint(stored.public_jwk)
        assert load_private_key(stored).private_numbers() == load_private_key(key).private_numbers()

    def test_two_keys_differ(self, key: SigningKey) -> None:
        """Every generated key is a new key pair."""
        assert generate_signing_key("orders", "NEXT", NOW).kid != key.kid


class TestJwks:
    def test_active_key_signature_verifies_against_jwks(self, key: SigningKey) -> None:
        """A JWT signed with the ACTIVE key verifies with pyjwt against the published JWKS."""
        keys = [key, generate_signing_key("orders", "NEXT", NOW)]
        token = sign(active_signing_key(keys), {"sub": "alice", "jti": "AT.1.x"})
        assert verify(token, keys)["sub"] == "alice"

    def test_document_publishes_only_public_members(self, key: SigningKey) -> None:
        """Each published JWK has kty, alg, kid, use, e, n and nothing else (no status, no private part)."""
        (published,) = jwks_document([key])["keys"]
        assert set(published) == {"kty", "alg", "kid", "use", "e", "n"}

    def test_order_active_next_expired(self) -> None:
        """ACTIVE first, then NEXT, then EXPIRED keys newest first."""
        keys = [generate_signing_key("orders", "EXPIRED", NOW), generate_signing_key("orders", "NEXT", NOW + 2),
                generate_signing_key("orders", "EXPIRED", NOW + 1), generate_signing_key("orders", "ACTIVE", NOW + 1)]
        kids = [k["kid"] for k in jwks_document(keys)["keys"]]
        assert kids == [keys[3].kid, keys[1].kid, keys[2].kid, keys[0].kid]

    def test_no_active_key(self) -> None:
        """Asking for the ACTIVE key of an AS that has none is a LookupError, not a silent None."""
        with pytest.raises(LookupError):
            active_signing_key([generate_signing_key("orders", "NEXT", NOW)])


class TestLifecycle:
    def test_first_start_creates_active_and_next(self, store: Store) -> None:
        """ensure_signing_keys creates one ACTIVE and one NEXT key, and a second call changes nothing."""
        ensure_signing_keys(store, "orders", NOW)
        first = store.list_signing_keys("orders")
        assert sorted(k.status for k in first) == ["ACTIVE", "NEXT"]
        ensure_signing_keys(store, "orders", NOW + 10)
        assert store.list_signing_keys("orders") == first
        assert store.list_signing_keys("other") == []

    def test_repairs_a_missing_active_key_by_promoting_next(self, store: Store) -> None:
        """With only a NEXT key, the NEXT key becomes ACTIVE (it is already published) and a new NEXT appears."""
        nxt = generate_signing_key("orders", "NEXT", NOW)
        store.add_signing_key(nxt)
        ensure_signing_keys(store, "orders", NOW)
        keys = store.list_signing_keys("orders")
        assert active_signing_key(keys).kid == nxt.kid
        assert sorted(k.status for k in keys) == ["ACTIVE", "NEXT"]

    def test_concurrent_first_starts_create_one_pair(self, tmp_path: Path) -> None:
        """Two processes starting at once on one store end up with exactly one ACTIVE and one NEXT key."""
        url = f"sqlite:///{tmp_path}/state.db"
        stores = [open_store(url) for _ in range(4)]
        barrier = threading.Barrier(len(stores))

        def start(s: Store) -> None:
            barrier.wait()
            ensure_signing_keys(s, "orders", NOW)

        threads = [threading.Thread(target=start, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(k.status for k in stores[0].list_signing_keys("orders")) == ["ACTIVE", "NEXT"]
        for s in stores:
            s.close()

    def test_rotation(self, store: Store) -> None:
        """keyRotate: ACTIVE → EXPIRED, NEXT → ACTIVE, a new NEXT; new tokens use the new ACTIVE key."""
        ensure_signing_keys(store, "orders", NOW)
        before = {k.status: k for k in store.list_signing_keys("orders")}
        old_token = sign(before["ACTIVE"], {"sub": "alice"})
        with store.transaction() as tx:
            new_active = rotate_keys(tx, "orders", NOW + 100)
        after = store.list_signing_keys("orders")
        status = {k.kid: k.status for k in after}
        assert status[before["ACTIVE"].kid] == "EXPIRED"
        assert status[before["NEXT"].kid] == "ACTIVE" == new_active.status
        assert new_active.kid == before["NEXT"].kid == active_signing_key(after).kid
        assert sorted(status.values()) == ["ACTIVE", "EXPIRED", "NEXT"]
        published = [k["kid"] for k in jwks_document(after)["keys"]]
        assert before["ACTIVE"].kid in published, "the EXPIRED key must stay published"
        assert verify(old_token, after)["sub"] == "alice"
        assert verify(sign(active_signing_key(after), {"sub": "bob"}), after)["sub"] == "bob"

    def test_rotation_drops_expired_keys_no_token_can_need(self, store: Store) -> None:
        """EXPIRED keys are published while a token they signed can still be valid (one day plus leeway
        after they stopped signing) and dropped at the next rotation after that; the key that expires
        in a rotation is always kept, so the JWKS stays bounded instead of growing per rotation."""
        ensure_signing_keys(store, "orders", NOW)
        first = active_signing_key(store.list_signing_keys("orders"))
        with store.transaction() as tx:
            rotate_keys(tx, "orders", NOW + 100)
        expired = {k.kid: k for k in store.list_signing_keys("orders")}[first.kid]
        assert expired.status == "EXPIRED" and expired.expired_at == NOW + 100
        second = active_signing_key(store.list_signing_keys("orders"))
        with store.transaction() as tx:
            rotate_keys(tx, "orders", NOW + 100 + EXPIRED_KEY_RETENTION_SECONDS)
        kids = {k.kid: k.status for k in store.list_signing_keys("orders")}
        assert kids[first.kid] == "EXPIRED", "a token signed just before the first rotation may still verify"
        assert kids[second.kid] == "EXPIRED"
        with store.transaction() as tx:
            rotate_keys(tx, "orders", NOW + 101 + EXPIRED_KEY_RETENTION_SECONDS)
        kids = {k.kid: k.status for k in store.list_signing_keys("orders")}
        assert first.kid not in kids
        assert kids[second.kid] == "EXPIRED"
        assert sorted(kids.values()) == ["ACTIVE", "EXPIRED", "EXPIRED", "NEXT"]
        for step in range(2, 6):
            with store.transaction() as tx:
                rotate_keys(tx, "orders", NOW + step * 2 * EXPIRED_KEY_RETENTION_SECONDS)
        assert sorted(k.status for k in store.list_signing_keys("orders")) == ["ACTIVE", "EXPIRED", "NEXT"]

    def test_rotation_keeps_expired_keys_of_unknown_age(self, store: Store) -> None:
        """A key that became EXPIRED before its expiry time was recorded is kept (it cannot be shown safe)."""
        ensure_signing_keys(store, "orders", NOW)
        first = active_signing_key(store.list_signing_keys("orders"))
        store.set_key_status("orders", first.kid, "EXPIRED")
        with store.transaction() as tx:
            rotate_keys(tx, "orders", NOW + 10 * EXPIRED_KEY_RETENTION_SECONDS)
        assert first.kid in {k.kid for k in store.list_signing_keys("orders")}

    def test_rotation_rolls_back_with_its_transaction(self, store: Store) -> None:
        """A rotation whose transaction fails leaves the keys as they were."""
        ensure_signing_keys(store, "orders", NOW)
        before = store.list_signing_keys("orders")

        def rotate_then_fail() -> None:
            with store.transaction() as tx:
                rotate_keys(tx, "orders", NOW + 100)
                raise RuntimeError("log write failed")

        with pytest.raises(RuntimeError):
            rotate_then_fail()
        assert store.list_signing_keys("orders") == before
