"""Client authentication helpers (spec §2.5): Basic parsing and the verified-secret cache."""

from __future__ import annotations

import base64

import pytest

from authz.clientauth import VerifiedSecrets, parse_basic
from authz.errors import OAuthError
from authz.passwords import hash_secret


def test_basic_credentials_are_form_decoded() -> None:
    """RFC 6749 §2.3.1: id and secret are form-urlencoded inside Basic."""
    header = "Basic " + base64.b64encode(b"my%20client:s%3Acret").decode()
    assert parse_basic(header) == ("my client", "s:cret")


@pytest.mark.parametrize("header", ["Basic %%%", "Basic " + base64.b64encode(b"no-colon").decode(), "Basic "])
def test_malformed_basic_is_invalid_client(header: str) -> None:
    """A Basic header that does not carry id:secret → invalid_client with Okta's description."""
    with pytest.raises(OAuthError) as info:
        parse_basic(header)
    assert info.value.description == "Found Authentication header but was not valid client credentials."


class TestVerifiedSecrets:
    def test_a_cached_success_never_admits_another_secret(self) -> None:
        """After the right secret is verified (and cached), a wrong one still fails."""
        cache, stored = VerifiedSecrets(), hash_secret("right-secret-0001")
        assert cache.verify("svc", "right-secret-0001", stored)
        assert cache.verify("svc", "right-secret-0001", stored)
        assert not cache.verify("svc", "wrong-secret-0001", stored)
        assert not cache.verify("other", "right-secret-0001", hash_secret("other-secret-001"))

    def test_a_changed_secret_hash_misses(self) -> None:
        """Rotating the secret (a new stored hash) makes the old secret fail at once."""
        cache = VerifiedSecrets()
        old, new = hash_secret("old-secret-00001"), hash_secret("new-secret-00001")
        assert cache.verify("svc", "old-secret-00001", old)
        assert not cache.verify("svc", "old-secret-00001", new)

    def test_failures_are_not_cached_and_no_secret_is_kept(self) -> None:
        """Only keyed digests of successes are held."""
        cache, stored = VerifiedSecrets(), hash_secret("right-secret-0001")
        assert not cache.verify("svc", "wrong-secret-0001", stored)
        assert len(cache._seen) == 0
        cache.verify("svc", "right-secret-0001", stored)
        assert all(b"right-secret" not in key for key in cache._seen)
        assert not cache.verify("svc", "anything", None)
