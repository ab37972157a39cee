"""security.md §4.1 and §4.5: attacks on client authentication at /token, /introspect and /revoke.

Mixed methods, Basic encoding, secrets at rest, the unknown-client timing oracle, and the back-off
after repeated failures (429). Each test asserts the answer and what was (not) issued afterwards.
"""

from __future__ import annotations

import base64
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import authz.clientauth
import authz.passwords
from authz.clientauth import parse_basic
from authz.errors import OAuthError
from tests.authz.oauth_kit import BASE_CONFIG, SECRET, WEB_SECRET, Core
from tests.security.as_kit import INTROSPECT, REVOKE, TOKEN, assert_oauth_error, basic, core_with, is_active

MULTIPLE = ("Cannot supply multiple client credentials. Use one of the following: credentials in the Authorization "
            "header, credentials in the post body, or a client_assertion in the post body.")
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ODD_SECRET = "p:a%s+s wörd/&=é-0123"
"""A client secret with every character RFC 6749 §2.3.1's form-urlencoding changes."""


def with_core(**core: Any) -> dict[str, Any]:
    apps = [*BASE_CONFIG["apps"], {"clientId": "odd", "clientSecret": ODD_SECRET, "name": "Odd secret"},
            {"clientId": "poster", "clientSecret": SECRET, "name": "Poster",
             "tokenEndpointAuthMethod": "client_secret_post"}]
    policies = [{**BASE_CONFIG["authorizationServers"][0]["policies"][0],
                 "conditions": {"clients": {"include": ["svc", "odd", "poster"]}}},
                *BASE_CONFIG["authorizationServers"][0]["policies"][1:]]
    servers = [{**BASE_CONFIG["authorizationServers"][0], "policies": policies},
               *BASE_CONFIG["authorizationServers"][1:]]
    document = {**BASE_CONFIG, "apps": apps, "authorizationServers": servers}
    if core:
        document["core"] = core
    return document


@pytest.fixture
async def odd(tmp_path: Path) -> AsyncIterator[Core]:
    async for built in core_with(tmp_path, with_core()):
        yield built


def cc_form(**extra: str) -> dict[str, str]:
    return {"grant_type": "client_credentials", "scope": "orders:read", **extra}


class TestMixedMethods:
    @pytest.mark.parametrize("extra", [
        {"client_secret": SECRET},
        {"client_assertion_type": JWT_BEARER, "client_assertion": "a.b.c"},
    ])
    async def test_client_auth_mixed_methods_rejected(self, core: Core, extra: dict[str, str]) -> None:
        """RFC 6749 §2.3: 'The client MUST NOT use more than one authentication method in each request':
        Basic plus body credentials is invalid_request (Okta: 401), even when both are correct."""
        response = await core.token(cc_form(**extra), auth=("svc", SECRET))
        assert_oauth_error(response, 401, "invalid_request", MULTIPLE)
        assert core.store.list_tokens(client_id="svc") == []

    async def test_client_auth_post_and_assertion_rejected(self, core: Core) -> None:
        """client_secret in the body plus a client_assertion is two methods as well."""
        response = await core.token(cc_form(client_id="svc", client_secret=SECRET, client_assertion_type=JWT_BEARER,
                                            client_assertion="a.b.c"))
        assert_oauth_error(response, 401, "invalid_request", MULTIPLE)
        assert core.store.list_tokens(client_id="svc") == []

    async def test_client_credentials_in_query_rejected(self, core: Core) -> None:
        """Spec §2.5: credentials in the query string are refused (they end up in logs)."""
        response = await core.client.post(TOKEN, params={"client_secret": SECRET}, data=cc_form(client_id="svc"))
        assert_oauth_error(response, 400, "invalid_request",
                           "Client credentials cannot be supplied via query parameters.")
        assert core.store.list_tokens(client_id="svc") == []

    async def test_invalid_client_challenge_matches_scheme(self, odd: Core) -> None:
        """RFC 6749 §5.2: invalid_client is 401, with a Basic challenge when the client used Basic, and
        none for a client that authenticated in the body."""
        with_basic = await odd.token(cc_form(), auth=("svc", "wrong-secret-000"))
        assert_oauth_error(with_basic, 401, "invalid_client")
        assert with_basic.headers["www-authenticate"].startswith("Basic ")
        in_body = await odd.token(cc_form(client_id="poster", client_secret="wrong-secret-000"))
        assert_oauth_error(in_body, 401, "invalid_client")
        assert "www-authenticate" not in in_body.headers
        assert odd.store.list_tokens() == []


class TestBasicEncoding:
    @pytest.mark.parametrize("client_id", ["a:b", "100%", "a+b", "a b", "ünï-çødé", "x%3Ay", "日本"])
    def test_basic_credentials_form_urlencoded(self, client_id: str) -> None:
        """RFC 6749 §2.3.1: id and secret are form-urlencoded before Base64, so ':' '%' '+' and non-ASCII
        survive the round trip (a raw ':' in the id would otherwise split it)."""
        assert parse_basic(basic(client_id, ODD_SECRET)) == (client_id, ODD_SECRET)

    async def test_basic_secret_with_reserved_characters_end_to_end(self, odd: Core) -> None:
        """A secret with ':' '%' '+' ' ' and non-ASCII authenticates when encoded as §2.3.1 says; the same
        secret sent un-encoded is a different secret and fails."""
        good = await odd.client.post(TOKEN, data=cc_form(), headers={"Authorization": basic("odd", ODD_SECRET)})
        assert good.status_code == 200, good.text
        raw = base64.b64encode(f"odd:{ODD_SECRET}".encode()).decode()
        bad = await odd.client.post(TOKEN, data=cc_form(), headers={"Authorization": f"Basic {raw}"})
        assert_oauth_error(bad, 401, "invalid_client")
        assert len(odd.store.list_tokens(client_id="odd")) == 1

    async def test_unknown_encoded_client_id_is_logged_decoded(self, core: Core) -> None:
        """An unknown id with reserved characters is answered invalid_client; the failure names the
        decoded id (what the client meant), never the secret."""
        response = await core.client.post(TOKEN, data=cc_form(), headers={"Authorization": basic("a:b+c", "s3cr3t")})
        assert_oauth_error(response, 401, "invalid_client", "Invalid value for 'client_id' parameter.")
        event = core.events("app.oauth2.as.token.grant")[-1]
        assert event["client"]["id"] == "a:b+c" and "s3cr3t" not in str(core.events())

    @pytest.mark.parametrize("header", ["Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(),
                                        "Basic " + base64.b64encode(b":secret").decode(), "Bearer abc",
                                        "Basic " + base64.b64encode(b"\xff\xfe:x").decode()])
    async def test_malformed_basic_rejected(self, core: Core, header: str) -> None:
        """A Basic header that is not base64, has no ':', an empty id, invalid UTF-8, or another scheme is
        401 invalid_client with Okta's 'not valid client credentials' description."""
        response = await core.client.post(TOKEN, data=cc_form(), headers={"Authorization": header})
        assert_oauth_error(response, 401, "invalid_client",
                           "Found Authentication header but was not valid client credentials.")
        assert core.store.list_tokens() == []


class TestSecrets:
    async def test_client_secrets_stored_hashed(self, core: Core) -> None:
        """security.md §4.1 'Store secrets hashed': the store holds a salted scrypt hash, not the secret,
        and neither the secret nor its hash reaches the system log."""
        stored = core.store.get_object("app", "svc")
        assert stored is not None and stored.secret_hash is not None
        assert stored.secret_hash.startswith("scrypt$") and SECRET not in stored.secret_hash
        assert SECRET not in str(stored.document)
        await core.cc(client=("svc", "wrong-secret-000"))
        await core.cc()
        log = str(core.events())
        assert SECRET not in log and "wrong-secret-000" not in log and stored.secret_hash not in log

    async def test_unknown_client_costs_a_dummy_hash(self, core: Core, monkeypatch: pytest.MonkeyPatch) -> None:
        """security.md §4.1: 'Response time must not depend on whether the client_id exists. Run a dummy
        hash for unknown clients.' Both paths run scrypt once (counted), and their median times agree
        within a generous factor."""
        calls: list[bool] = []
        real = authz.passwords.verify_secret

        def counting(secret: str, stored: str | None) -> bool:
            calls.append(stored is None)
            return real(secret, stored)

        monkeypatch.setattr(authz.clientauth, "verify_secret", counting)
        timings: dict[str, list[float]] = {"known": [], "unknown": []}
        for _ in range(5):
            for kind, client in (("known", ("svc", "wrong-secret-000")), ("unknown", ("ghost", "wrong-secret-000"))):
                started = time.perf_counter()
                response = await core.cc(client=client)
                timings[kind].append(time.perf_counter() - started)
                assert_oauth_error(response, 401, "invalid_client")
        assert calls == [False, True] * 5  # a real hash for svc, the dummy for ghost, every time
        known, unknown = statistics.median(timings["known"]), statistics.median(timings["unknown"])
        assert unknown > known / 3 and known > unknown / 3, timings

    async def test_wrong_method_costs_a_hash_too(self, odd: Core, monkeypatch: pytest.MonkeyPatch) -> None:
        """A known client using a method it is not configured for burns the same scrypt work."""
        calls: list[bool] = []
        real = authz.passwords.verify_secret

        def counting(secret: str, stored: str | None) -> bool:
            calls.append(stored is None)
            return real(secret, stored)

        monkeypatch.setattr(authz.clientauth, "verify_secret", counting)
        response = await odd.token(cc_form(client_id="svc", client_secret=SECRET))
        assert_oauth_error(response, 401, "invalid_client")
        assert calls == [True]
        assert odd.store.list_tokens() == []


class TestBackOff:
    async def test_client_auth_failures_rate_limited_per_client(self, tmp_path: Path) -> None:
        """security.md §4.1: 'Lock out or delay after N failures': after clientAuthFailureLimit failures for
        one client_id in the window, even the right secret gets 429 (with Retry-After and Okta's rate-limit
        headers) and no token; other clients are unaffected; after the window the client works again."""
        async for core in core_with(tmp_path, with_core(clientAuthFailureLimit=3, clientAuthFailureWindow="60s")):
            for _ in range(3):
                assert_oauth_error(await core.cc(client=("svc", "wrong-secret-000")), 401, "invalid_client")
            locked = await core.cc()
            assert_oauth_error(locked, 429, "invalid_grant", "API call exceeded rate limit due to too many requests.")
            assert locked.headers["retry-after"] == "60"
            assert locked.headers["x-rate-limit-remaining"] == "0" and locked.headers["x-rate-limit-limit"] == "3"
            assert int(locked.headers["x-rate-limit-reset"]) == int(core.clock() + 60)
            assert core.store.list_tokens(client_id="svc") == []
            assert core.events("app.oauth2.as.token.grant")[-1]["outcome"]["reason"] == "client_auth_rate_limited"
            other = await core.cc(client=("odd", ODD_SECRET))
            assert other.status_code == 401  # not locked: just the un-encoded odd secret failing
            web = await core.password("orders:read")
            assert web.status_code == 200, web.text
            core.clock.advance(59)
            assert (await core.cc()).status_code == 429
            core.clock.advance(1)
            assert (await core.cc()).status_code == 200
            assert len(core.store.list_tokens(client_id="svc")) == 1

    async def test_lockout_of_a_client_is_per_source_address(self, tmp_path: Path) -> None:
        """Client ids are public (every token's `cid`): failures from one address lock that address out of
        the client, never the client itself for everyone else (no denial of service by guessing)."""
        async for core in core_with(tmp_path, with_core(clientAuthFailureLimit=3)):
            for _ in range(3):
                assert (await core.cc(client=("svc", "wrong-secret-000"))).status_code == 401
            assert (await core.cc()).status_code == 429
            transport = core.client._transport
            assert isinstance(transport, httpx.ASGITransport)
            elsewhere = httpx.AsyncClient(transport=httpx.ASGITransport(app=transport.app, client=("192.0.2.7", 4711)),
                                          base_url=str(core.client.base_url))
            async with elsewhere:
                response = await elsewhere.post("/oauth2/orders/v1/token", auth=("svc", SECRET),
                                                data={"grant_type": "client_credentials", "scope": "orders:read"})
            assert response.status_code == 200, response.text

    @pytest.mark.parametrize("path", [INTROSPECT, REVOKE])
    async def test_lockout_covers_introspect_and_revoke(self, tmp_path: Path, path: str) -> None:
        """Guessing through /introspect or /revoke counts the same and is refused the same (429), and the
        locked-out request revokes nothing."""
        async for core in core_with(tmp_path, with_core(clientAuthFailureLimit=2)):
            access = (await core.cc()).json()["access_token"]
            for _ in range(2):
                response = await core.client.post(path, data={"token": access}, auth=("svc", "wrong-secret-000"))
                assert_oauth_error(response, 401, "invalid_client")
            locked = await core.client.post(path, data={"token": access}, auth=("svc", SECRET))
            assert_oauth_error(locked, 429, "invalid_grant")
            assert "active" not in locked.json()
            core.clock.advance(61)
            assert await is_active(core, access)

    async def test_client_auth_failures_rate_limited_per_source(self, tmp_path: Path) -> None:
        """Spraying many client ids from one address trips clientAuthFailureSourceLimit: the source is
        refused even for a valid client until the window passes."""
        async for core in core_with(tmp_path, with_core(clientAuthFailureSourceLimit=4)):
            for n in range(4):
                assert (await core.cc(client=(f"ghost-{n}", "wrong-secret-000"))).status_code == 401
            assert_oauth_error(await core.cc(), 429, "invalid_grant")
            core.clock.advance(60)
            assert (await core.cc()).status_code == 200

    async def test_successes_do_not_reset_failures(self, tmp_path: Path) -> None:
        """A legitimate client's successes between an attacker's guesses do not buy more guesses."""
        async for core in core_with(tmp_path, with_core(clientAuthFailureLimit=3)):
            for _ in range(3):
                assert (await core.cc()).status_code == 200
                assert (await core.cc(client=("svc", "wrong-secret-000"))).status_code == 401
            assert (await core.cc(client=("svc", "guess-number-four"))).status_code == 429

    async def test_back_off_can_be_disabled(self, tmp_path: Path) -> None:
        """clientAuthFailureLimit: 0 and clientAuthFailureSourceLimit: 0 turn the back-off off."""
        async for core in core_with(tmp_path, with_core(clientAuthFailureLimit=0, clientAuthFailureSourceLimit=0)):
            for _ in range(12):
                assert (await core.cc(client=("svc", "wrong-secret-000"))).status_code == 401
            assert (await core.cc()).status_code == 200

    async def test_default_limit_is_ten_per_minute(self, core: Core) -> None:
        """With no `core:` settings, the eleventh attempt after ten failures within 60 s is refused."""
        for _ in range(10):
            assert (await core.cc(client=("svc", "wrong-secret-000"))).status_code == 401
        assert (await core.cc()).status_code == 429
        core.clock.advance(60)
        assert (await core.cc()).status_code == 200

    def test_rate_limited_error_is_an_oauth_error(self) -> None:
        """The 429 is an ``authz.errors.OAuthError`` like every other answer of the protocol endpoints."""
        from authz.oauth.authenticate import rate_limited

        error = rate_limited(12.2, 10, 1000.0)
        assert isinstance(error, OAuthError) and error.status_code == 429
        assert error.get_headers()["Retry-After"] == "13" and error.get_headers()["X-Rate-Limit-Reset"] == "1013"


async def test_public_client_cannot_use_a_confidential_clients_id(core: Core) -> None:
    """A client_id-only request (method none) for a confidential client is invalid_client: the secret
    cannot be skipped by claiming to be public."""
    response = await core.token(cc_form(client_id="svc"))
    assert_oauth_error(response, 401, "invalid_client")
    response = await core.client.post(INTROSPECT, data={"token": "x", "client_id": "web"})
    assert_oauth_error(response, 401, "invalid_client")
    assert core.store.list_tokens() == [] and WEB_SECRET
