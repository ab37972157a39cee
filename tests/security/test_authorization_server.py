"""security.md §4.1-§4.3: attacks on the token, introspection and revocation endpoints of the core.

Each test is named after the attack class, sends the attack through the real endpoints (in-process,
real SqliteStore) and asserts both the answer and the state afterwards: nothing was issued, the code
is consumed, the token is still active (or no longer is).
"""

from __future__ import annotations

import json

import pytest

from tests.authz.oauth_kit import REDIRECT, SECRET, WEB_SECRET, Core, pkce_pair
from tests.security.as_kit import (
    ERROR_CHARSET,
    INTROSPECT,
    REVOKE,
    TOKEN,
    assert_oauth_error,
    claims_of,
    code_for,
    exchange,
    introspect,
    is_active,
)

DUPLICATE = "The request contained multiple parameters with the same name."
INVALID_CODE = "The authorization code is invalid or has expired."
PKCE_FAILED = "PKCE verification failed."


async def offline_tokens(core: Core, scope: str = "offline_access orders:read orders:write") -> dict[str, str]:
    """An access and a refresh token of alice for the confidential client ``web`` (password grant)."""
    response = await core.password(scope)
    assert response.status_code == 200, response.text
    body: dict[str, str] = response.json()
    assert "refresh_token" in body
    return body


async def spa_tokens(core: Core) -> dict[str, str]:
    """Tokens of the public, rotating client ``spa`` through the code flow with PKCE."""
    verifier, challenge = pkce_pair()
    code = await code_for(core, client_id="spa", scope="offline_access orders:read", code_challenge=challenge,
                          code_challenge_method="S256")
    response = await exchange(core, code, client=None, client_id="spa", code_verifier=verifier)
    assert response.status_code == 200, response.text
    body: dict[str, str] = response.json()
    return body


# ------------------------------------------------------------------------------------ parameter hygiene


class TestParameterHygiene:
    @pytest.mark.parametrize("name", ["grant_type", "scope", "client_id", "code"])
    async def test_duplicate_parameters_rejected(self, core: Core, name: str) -> None:
        """RFC 6749 §3.2: a repeated parameter on /token is 400 invalid_request, and nothing is issued."""
        body = f"grant_type=client_credentials&scope=orders:read&client_id=svc&code=x&{name}=again"
        response = await core.client.post(TOKEN, content=body, auth=("svc", SECRET),
                                          headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert_oauth_error(response, 400, "invalid_request", DUPLICATE)
        assert core.store.list_tokens(client_id="svc") == []

    @pytest.mark.parametrize("path", [INTROSPECT, REVOKE])
    async def test_duplicate_parameters_rejected_on_introspect_and_revoke(self, core: Core, path: str) -> None:
        """A repeated ``token`` on /introspect or /revoke is refused; the token is not revoked."""
        access = (await core.cc()).json()["access_token"]
        response = await core.client.post(path, content=f"token={access}&token={access}", auth=("svc", SECRET),
                                          headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert_oauth_error(response, 400, "invalid_request", DUPLICATE)
        assert await is_active(core, access)

    async def test_duplicate_parameters_rejected_on_authorize(self, core: Core) -> None:
        """A repeated ``redirect_uri`` on /authorize is an error page, never a redirect to either value."""
        url = (f"/oauth2/orders/v1/authorize?client_id=web&response_type=code&state=s&scope=orders:read"
               f"&redirect_uri={REDIRECT}&redirect_uri=https://evil.example/cb")
        response = await core.client.get(url)
        assert response.status_code == 400 and "location" not in response.headers
        assert "multiple parameters with the same name" in response.text

    async def test_empty_parameters_count_as_absent(self, core: Core) -> None:
        """RFC 6749 §3.1: 'Parameters sent without a value MUST be treated as if they were omitted'."""
        response = await core.token({"grant_type": "client_credentials", "scope": "", "client_id": "",
                                     "client_secret": ""}, auth=("svc", SECRET))
        assert response.status_code == 200, response.text
        assert response.json()["scope"] == "orders:read"  # the AS's default scope, as with no scope at all

    @pytest.mark.parametrize("path", [TOKEN, INTROSPECT, REVOKE])
    async def test_token_endpoint_form_post_only(self, core: Core, path: str) -> None:
        """POST with application/x-www-form-urlencoded only: GET is 405, a JSON or multipart body is 400
        invalid_request, and a JSON-bodied revocation revokes nothing."""
        access = (await core.cc()).json()["access_token"]
        get = await core.client.get(path, params={"grant_type": "client_credentials", "token": access},
                                    auth=("svc", SECRET))
        assert get.status_code == 405
        as_json = await core.client.post(path, content=json.dumps({"grant_type": "client_credentials",
                                                                   "token": access}),
                                         headers={"Content-Type": "application/json"}, auth=("svc", SECRET))
        assert_oauth_error(as_json, 400, "invalid_request")
        multipart = await core.client.post(path, data={"grant_type": "client_credentials", "token": access},
                                           files={"f": ("f.txt", b"x")}, auth=("svc", SECRET))
        assert_oauth_error(multipart, 400, "invalid_request")
        assert await is_active(core, access)
        assert len(core.store.list_tokens(client_id="svc")) == 1

    async def test_token_responses_are_not_cacheable(self, core: Core) -> None:
        """RFC 6749 §5.1: success and error alike carry Cache-Control: no-store and Pragma: no-cache."""
        for response in (await core.cc(), await core.cc("orders:admin"), await core.cc(client=("svc", "wrong-secret"))):
            assert response.headers["cache-control"] == "no-store", response.text
            assert response.headers["pragma"] == "no-cache"

    async def test_error_description_charset(self, core: Core) -> None:
        """Errors that echo request values keep error_description within %x20-21/%x23-5B/%x5D-7E (no quote,
        backslash, CR, LF, TAB or non-ASCII), so a client cannot inject into logs or headers through them."""
        tokens = await offline_tokens(core)
        hostile = 'orders:read x"y\\z\r\nSet-Cookie:\ta=b é\x00'
        widened = await core.token({"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
                                    "scope": hostile}, auth=("web", WEB_SECRET))
        assert widened.status_code == 400
        description = widened.json()["error_description"]
        assert ERROR_CHARSET.match(description), description
        assert "Denied scopes" in description
        for response in (await core.cc(client=("svc", "wrong\r\nsecret")),
                         await core.token({"grant_type": "x\r\n\"y"}, auth=("svc", SECRET)),
                         await core.token({"grant_type": "password", "scope": "orders:read\t\"", "username": "é",
                                           "password": "x"}, auth=("web", WEB_SECRET))):
            assert response.status_code in (400, 401)
            assert ERROR_CHARSET.match(response.json()["error_description"]), response.text
        # and the refresh token the hostile request named is still good
        again = await core.token({"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
                                 auth=("web", WEB_SECRET))
        assert again.status_code == 200, again.text


# -------------------------------------------------------------------------------- authorization codes


class TestAuthorizationCodes:
    async def test_code_reuse_revokes_issued_tokens(self, core: Core) -> None:
        """RFC 6749 §4.1.2: a second use is 400 invalid_grant (JSON), and the access and refresh tokens
        issued from the first use are revoked."""
        code = await code_for(core, scope="offline_access orders:read")
        first = await exchange(core, code)
        assert first.status_code == 200, first.text
        tokens = first.json()
        assert await is_active(core, tokens["access_token"])
        second = await exchange(core, code)
        assert_oauth_error(second, 400, "invalid_grant", INVALID_CODE)
        assert "access_token" not in second.text
        assert not await is_active(core, tokens["access_token"])
        refreshed = await core.token({"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
                                     auth=("web", WEB_SECRET))
        assert_oauth_error(refreshed, 400, "invalid_grant")
        assert core.revocation.is_revoked(claims_of(tokens["access_token"]))

    async def test_code_reuse_after_30_seconds(self, core: Core) -> None:
        """OIDCCAuthCodeReuseAfter30Seconds: a delayed replay is refused and revokes just the same."""
        code = await code_for(core)
        access = (await exchange(core, code)).json()["access_token"]
        core.clock.advance(30)
        assert_oauth_error(await exchange(core, code), 400, "invalid_grant", INVALID_CODE)
        assert not await is_active(core, access)

    async def test_code_bound_to_client(self, core: Core) -> None:
        """RFC 6749 §4.1.3: another client cannot redeem the code, and the attempt consumes it."""
        verifier, challenge = pkce_pair()
        code = await code_for(core, client_id="spa", code_challenge=challenge, code_challenge_method="S256")
        stolen = await exchange(core, code, client=("web", WEB_SECRET), code_verifier=verifier)
        assert_oauth_error(stolen, 400, "invalid_grant")
        assert stolen.json()["error_description"].startswith("The grant was issued to another client.")
        owner = await exchange(core, code, client=None, client_id="spa", code_verifier=verifier)
        assert_oauth_error(owner, 400, "invalid_grant", INVALID_CODE)
        assert core.store.list_tokens(client_id="web") == [] and core.store.list_tokens(client_id="spa") == []

    @pytest.mark.parametrize("redirect_uri", [None, REDIRECT + "/", REDIRECT + "?x=1", REDIRECT.upper()])
    async def test_code_bound_to_redirect_uri(self, core: Core, redirect_uri: str | None) -> None:
        """RFC 6749 §4.1.3: the token request's redirect_uri must be identical to the authorize request's."""
        code = await code_for(core)
        data = {"grant_type": "authorization_code", "code": code}
        if redirect_uri is not None:
            data["redirect_uri"] = redirect_uri
        assert_oauth_error(await core.token(data, auth=("web", WEB_SECRET)), 400, "invalid_grant")
        assert core.store.list_tokens(client_id="web") == []

    async def test_code_is_short_lived(self, core: Core) -> None:
        """A code lives at most 10 minutes (RFC 6749 §4.1.2); here Okta's 300 s."""
        code = await code_for(core)
        core.clock.advance(301)
        assert_oauth_error(await exchange(core, code), 400, "invalid_grant", INVALID_CODE)
        assert core.store.list_tokens(client_id="web") == []


# ------------------------------------------------------------------------------------------------ PKCE


class TestPkce:
    async def test_pkce_downgrade_rejected(self, core: Core) -> None:
        """RFC 9700 §4.8: a code_verifier for a code issued without code_challenge is refused, and the code
        is gone afterwards (the downgrade gets no second try)."""
        code = await code_for(core)
        verifier, _ = pkce_pair()
        assert_oauth_error(await exchange(core, code, code_verifier=verifier), 400, "invalid_grant", PKCE_FAILED)
        assert_oauth_error(await exchange(core, code), 400, "invalid_grant", INVALID_CODE)
        assert core.store.list_tokens(client_id="web") == []

    async def test_pkce_verifier_required_when_challenged(self, core: Core) -> None:
        """django-oidc-provider 8bfcd47: PKCE is verified whenever the code carries a challenge, not only
        'if the verifier was sent'; the code is consumed by the attempt."""
        verifier, challenge = pkce_pair()
        code = await code_for(core, code_challenge=challenge, code_challenge_method="S256")
        assert_oauth_error(await exchange(core, code), 400, "invalid_request",
                           "PKCE code verifier is required by the application.")
        assert_oauth_error(await exchange(core, code, code_verifier=verifier), 400, "invalid_grant", INVALID_CODE)

    async def test_pkce_plain_rejected(self, core: Core) -> None:
        """Only S256: code_challenge_method=plain (or none given with a challenge) is refused at /authorize."""
        for method in ("plain", ""):
            response = await core.client.get(
                f"/oauth2/orders/v1/authorize?client_id=spa&response_type=code&state=s&scope=orders:read"
                f"&redirect_uri={REDIRECT}&code_challenge={'a' * 43}"
                + (f"&code_challenge_method={method}" if method else ""))
            assert response.status_code == 302
            assert "PKCE+code+challenge+method+is+not+supported" in response.headers["location"]

    @pytest.mark.parametrize("verifier", [
        "a", "a" * 42, "a" * 129, "a" * 42 + "+", "a" * 42 + "/", "a" * 42 + "=", "a" * 42 + " ", "a" * 42 + "é",
        "a" * 42 + "\x00",
    ])
    async def test_pkce_verifier_abnf_enforced(self, core: Core, verifier: str) -> None:
        """RFC 7636 §4.1: code-verifier = 43*128unreserved. A verifier outside the ABNF is refused even when
        the challenge was computed from it (@node-oauth/oauth2-server accepted 1-char verifiers)."""
        from authz.oauth.grants import s256

        code = await code_for(core, client_id="spa", code_challenge=s256(verifier), code_challenge_method="S256")
        response = await exchange(core, code, client=None, client_id="spa", code_verifier=verifier)
        assert response.status_code == 400, response.text
        assert response.json()["error"] in ("invalid_grant", "invalid_request")
        assert core.store.list_tokens(client_id="spa") == []

    @pytest.mark.parametrize("challenge", ["a" * 42, "a" * 44, "a" * 42 + "+", "a" * 42 + "=", "a" * 128])
    async def test_pkce_challenge_abnf_enforced(self, core: Core, challenge: str) -> None:
        """RFC 7636 §4.2: an S256 challenge is BASE64URL(SHA-256), exactly 43 characters of [A-Za-z0-9_-];
        anything else can never be met and is refused at /authorize."""
        response = await core.client.get(
            f"/oauth2/orders/v1/authorize?client_id=spa&response_type=code&state=s&scope=orders:read"
            f"&redirect_uri={REDIRECT}&code_challenge={challenge.replace('+', '%2B').replace('=', '%3D')}"
            f"&code_challenge_method=S256")
        assert response.status_code == 302
        assert "error=invalid_request" in response.headers["location"]

    async def test_failed_pkce_invalidates_code(self, core: Core) -> None:
        """A wrong verifier consumes the code: the right verifier afterwards gets invalid_grant (no online
        brute force of the verifier)."""
        verifier, challenge = pkce_pair()
        code = await code_for(core, client_id="spa", code_challenge=challenge, code_challenge_method="S256")
        wrong = await exchange(core, code, client=None, client_id="spa", code_verifier=pkce_pair()[0])
        assert_oauth_error(wrong, 400, "invalid_grant", PKCE_FAILED)
        right = await exchange(core, code, client=None, client_id="spa", code_verifier=verifier)
        assert_oauth_error(right, 400, "invalid_grant", INVALID_CODE)
        assert core.store.list_tokens(client_id="spa") == []


# -------------------------------------------------------------------------------------- refresh tokens


class TestRefreshTokens:
    async def test_refresh_token_bound_to_client(self, core: Core) -> None:
        """OIDCCRefreshToken: client B presenting client A's refresh token gets invalid_grant, and A's token
        keeps working (the attempt neither rotates nor revokes it)."""
        web = await offline_tokens(core)
        spa = await spa_tokens(core)
        other = await core.token({"grant_type": "refresh_token", "refresh_token": web["refresh_token"],
                                  "client_id": "spa"})
        assert_oauth_error(other, 400, "invalid_grant", "The refresh token is invalid or expired.")
        other = await core.token({"grant_type": "refresh_token", "refresh_token": spa["refresh_token"]},
                                 auth=("web", WEB_SECRET))
        assert_oauth_error(other, 400, "invalid_grant", "The refresh token is invalid or expired.")
        own = await core.token({"grant_type": "refresh_token", "refresh_token": spa["refresh_token"],
                                "client_id": "spa"})
        assert own.status_code == 200, own.text
        own = await core.token({"grant_type": "refresh_token", "refresh_token": web["refresh_token"]},
                               auth=("web", WEB_SECRET))
        assert own.status_code == 200, own.text

    async def test_refresh_scope_can_only_narrow(self, core: Core) -> None:
        """RFC 6749 §6: a refresh may narrow the scope but never widen it; the widening attempt is refused
        and the refresh token still carries its original grant."""
        tokens = await offline_tokens(core, "offline_access orders:read")
        widen = await core.token({"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
                                  "scope": "orders:read orders:write"}, auth=("web", WEB_SECRET))
        assert_oauth_error(widen, 400, "access_denied")
        assert "orders:write" in widen.json()["error_description"]
        narrow = await core.token({"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
                                   "scope": "orders:read"}, auth=("web", WEB_SECRET))
        assert narrow.status_code == 200, narrow.text
        assert claims_of(narrow.json()["access_token"])["scp"] == ["orders:read"]
        full = await core.token({"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
                                auth=("web", WEB_SECRET))
        assert sorted(claims_of(full.json()["access_token"])["scp"]) == ["offline_access", "orders:read"]

    async def test_refresh_token_reuse_revokes_family(self, core: Core) -> None:
        """RFC 9700 §4.14.2: for a rotating public client, replaying a rotated refresh token revokes the
        whole family: the current refresh token and the access tokens minted along the chain."""
        first = await spa_tokens(core)
        rotated = await core.token({"grant_type": "refresh_token", "refresh_token": first["refresh_token"],
                                    "client_id": "spa"})
        assert rotated.status_code == 200, rotated.text
        current = rotated.json()
        assert current["refresh_token"] != first["refresh_token"]
        core.clock.advance(1)
        replay = await core.token({"grant_type": "refresh_token", "refresh_token": first["refresh_token"],
                                   "client_id": "spa"})
        assert_oauth_error(replay, 400, "invalid_grant")
        after = await core.token({"grant_type": "refresh_token", "refresh_token": current["refresh_token"],
                                  "client_id": "spa"})
        assert_oauth_error(after, 400, "invalid_grant")
        assert not await is_active(core, current["access_token"])
        assert core.events("app.oauth2.as.token.detect_reuse")

    async def test_client_credentials_returns_no_refresh_token(self, core: Core) -> None:
        """RFC 6749 §4.4.3: 'A refresh token SHOULD NOT be included'; asking for offline_access does not
        change that (it is refused, and nothing is issued by the refused request)."""
        response = await core.cc("orders:read orders:write")
        assert response.status_code == 200
        assert "refresh_token" not in response.json()
        offline = await core.cc("offline_access orders:read")
        assert offline.status_code == 400 and "refresh_token" not in offline.json()
        assert len(core.store.list_tokens(client_id="svc")) == 1
        assert core.store.list_refresh_tokens(client_id="svc") == []

    async def test_revoking_refresh_token_cascades_to_access_tokens(self, core: Core) -> None:
        """RFC 7009 §2.1 / spec §2.8: revoking a refresh token revokes the access tokens minted from it."""
        tokens = await offline_tokens(core)
        refreshed = (await core.token({"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
                                      auth=("web", WEB_SECRET))).json()
        response = await core.client.post(REVOKE, data={"token": tokens["refresh_token"]}, auth=("web", WEB_SECRET))
        assert response.status_code == 200 and response.content == b""
        assert not await is_active(core, tokens["access_token"])
        assert not await is_active(core, refreshed["access_token"])
        assert not await is_active(core, tokens["refresh_token"])


# -------------------------------------------------------------------------------------- introspection


class TestIntrospection:
    @pytest.mark.parametrize("auth", [None, ("svc", "wrong-secret-000"), ("ghost", SECRET)])
    async def test_introspection_requires_client_auth(self, core: Core, auth: tuple[str, str] | None) -> None:
        """RFC 7662 §2.1: 'To prevent token scanning attacks, the endpoint MUST also require some form of
        authorization': without valid credentials the answer is 401 invalid_client, never the token's state."""
        access = (await core.cc()).json()["access_token"]
        response = await core.client.post(INTROSPECT, data={"token": access}, auth=auth)  # type: ignore[arg-type]
        assert_oauth_error(response, 401, "invalid_client")
        assert "active" not in response.json()
        assert await is_active(core, access)

    async def test_introspection_inactive_reveals_nothing(self, core: Core) -> None:
        """RFC 7662 §2.2: unknown, malformed, expired, revoked and other-AS tokens are all exactly
        {"active": false}, with no hint of why."""
        revoked = await offline_tokens(core)
        await core.client.post(REVOKE, data={"token": revoked["access_token"]}, auth=("web", WEB_SECRET))
        other_as = (await core.cc("billing:read", as_id="billing")).json()["access_token"]
        expiring = (await core.cc()).json()["access_token"]
        candidates = {"unknown": "x" * 43, "malformed": "a.b.c", "revoked_at": revoked["access_token"],
                      "other_as": other_as, "empty_jwt": "..", "refresh_unknown": "r" * 43}
        for name, token in candidates.items():
            assert await introspect(core, token) == {"active": False}, name
        core.clock.advance(31 * 60)
        assert await introspect(core, expiring) == {"active": False}

    async def test_introspection_hint_is_only_a_hint(self, core: Core) -> None:
        """RFC 7662 §2.1: a wrong or unknown token_type_hint still finds the token."""
        tokens = await offline_tokens(core)
        for hint in ("refresh_token", "access_token", "id_token", "bogus"):
            assert (await introspect(core, tokens["access_token"], token_type_hint=hint))["active"] is True
            assert (await introspect(core, tokens["refresh_token"], token_type_hint=hint))["active"] is True


# ------------------------------------------------------------------------------------------ revocation


class TestRevocation:
    async def test_revoke_other_clients_token_does_not_revoke(self, core: Core) -> None:
        """RFC 7009 §2.1: the AS 'verifies whether the token was issued to the client making the revocation
        request'. Client web revoking svc's access token (or spa's refresh token) leaves it active; the
        answer is the same 200 as for an unknown token, so it does not reveal that the token exists."""
        victim = (await core.cc()).json()["access_token"]
        spa = await spa_tokens(core)
        for token in (victim, spa["refresh_token"], spa["access_token"]):
            response = await core.client.post(REVOKE, data={"token": token}, auth=("web", WEB_SECRET))
            assert response.status_code == 200 and response.content == b""
        assert await is_active(core, victim)
        assert await is_active(core, spa["access_token"])
        assert await is_active(core, spa["refresh_token"])
        assert not core.revocation.is_revoked(claims_of(victim))
        failures = [e for e in core.events("app.oauth2.as.token.revoke") if e["outcome"]["result"] == "FAILURE"]
        assert len(failures) == 3 and all(e["outcome"]["reason"] == "token_not_owned" for e in failures)

    async def test_revoke_unknown_token_is_200(self, core: Core) -> None:
        """RFC 7009 §2.2: 'invalid tokens do not cause an error response'."""
        for token in ("x" * 43, "a.b.c", ""):
            response = await core.client.post(REVOKE, data={"token": token}, auth=("svc", SECRET))
            assert response.status_code == 200 and response.content == b""

    async def test_revoke_invalid_hint_ignored(self, core: Core) -> None:
        """RFC 7009 §2.1: a wrong or unknown token_type_hint does not stop the revocation of one's own token."""
        access = (await core.cc()).json()["access_token"]
        response = await core.client.post(REVOKE, data={"token": access, "token_type_hint": "bogus"},
                                          auth=("svc", SECRET))
        assert response.status_code == 200
        assert not await is_active(core, access)
        assert core.revocation.is_revoked(claims_of(access))

    @pytest.mark.parametrize("auth", [None, ("svc", "wrong-secret-000")])
    async def test_revoke_requires_client_auth(self, core: Core, auth: tuple[str, str] | None) -> None:
        """RFC 7009 §2.1: confidential clients authenticate; an unauthenticated revocation is 401 and the
        token stays active."""
        access = (await core.cc()).json()["access_token"]
        response = await core.client.post(REVOKE, data={"token": access}, auth=auth)  # type: ignore[arg-type]
        assert_oauth_error(response, 401, "invalid_client")
        assert await is_active(core, access)

