"""/v1/authorize and the code exchange (spec §2.3, §3.4): Authlib drives the client side."""

from __future__ import annotations

import warnings
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import authlib.deprecate  # noqa: F401  (it installs an 'always' filter on import; let it do so outside the block)
import httpx
import pytest
from authlib.common.security import generate_token
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

from tests.authz.oauth_kit import ISSUER, REDIRECT, WEB_SECRET, Core, pkce_pair, read_form, sign_in

with warnings.catch_warnings():
    # Authlib announces its httpx2 move at import time; the client it gives us is the same.
    warnings.simplefilter("ignore")
    from authlib.integrations.httpx_client import AsyncOAuth2Client

AUTHORIZE = f"{ISSUER}/oauth2/orders/v1/authorize"
TOKEN = f"{ISSUER}/oauth2/orders/v1/token"


def oauth_client(core: Core, client_id: str = "web", secret: str | None = WEB_SECRET,
                 scope: str = "openid profile offline_access orders:read") -> AsyncOAuth2Client:
    transport = core.client._transport
    return AsyncOAuth2Client(client_id, secret, scope=scope, redirect_uri=REDIRECT, code_challenge_method="S256",
                             token_endpoint_auth_method="client_secret_basic" if secret else "none",
                             transport=transport)


def authorize_url(**params: str) -> str:
    base = {"client_id": "web", "redirect_uri": REDIRECT, "response_type": "code", "scope": "orders:read",
            "state": "st-1"}
    base.update(params)
    return f"{AUTHORIZE}?{urlencode({k: v for k, v in base.items() if v != ''})}"


def redirect_params(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT)
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def verify_with_jwks(core: Core, token: str) -> dict[str, Any]:
    """Verify with joserfc against the published /v1/keys: an independent JOSE implementation."""
    jwks = (await core.client.get("/oauth2/orders/v1/keys")).json()
    decoded = jose_jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["RS256"])
    return dict(decoded.claims)


class TestCodeFlow:
    async def test_code_flow_with_pkce_through_the_form(self, core: Core) -> None:
        """Authlib's client: authorize with PKCE, sign in through the HTML form, exchange the code."""
        client = oauth_client(core)
        verifier = generate_token(48)
        url, state = client.create_authorization_url(AUTHORIZE, code_verifier=verifier, nonce="n-0S6")
        response = await sign_in(core.client, url)
        params = redirect_params(response)
        assert params["state"] == state and params["code"]
        token = await client.fetch_token(TOKEN, authorization_response=response.headers["location"],
                                         code_verifier=verifier)
        assert token["token_type"] == "Bearer" and token["scope"] == "openid profile offline_access orders:read"
        claims = await verify_with_jwks(core, token["access_token"])
        assert claims["sub"] == "alice@example.com" and claims["uid"] == "alice" and claims["cid"] == "web"
        assert claims["exp"] - claims["iat"] == 15 * 60 == token["expires_in"]
        id_claims = jose_jwt.decode(token["id_token"], KeySet.import_key_set(
            (await core.client.get("/oauth2/orders/v1/keys")).json())).claims
        assert id_claims["nonce"] == "n-0S6" and id_claims["aud"] == "web" and "at_hash" in id_claims
        assert id_claims["auth_time"] <= id_claims["iat"]
        assert core.events("app.oauth2.as.authorize.code")
        await client.aclose()

    async def test_code_is_single_use_and_reuse_revokes_its_tokens(self, core: Core) -> None:
        """A second use fails and revokes the tokens issued from the first (RFC 9700 §4.2.1)."""
        params = redirect_params(await sign_in(core.client, authorize_url(scope="offline_access orders:read")))
        exchange = {"grant_type": "authorization_code", "code": params["code"], "redirect_uri": REDIRECT}
        first = await core.token(exchange, auth=("web", WEB_SECRET))
        assert first.status_code == 200
        access = first.json()["access_token"]
        second = await core.token(exchange, auth=("web", WEB_SECRET))
        assert second.json() == {"error": "invalid_grant",
                                 "error_description": "The authorization code is invalid or has expired."}
        introspected = await core.client.post("/oauth2/orders/v1/introspect", data={"token": access},
                                              auth=("web", WEB_SECRET))
        assert introspected.json() == {"active": False}
        refreshed = await core.token({"grant_type": "refresh_token", "refresh_token": first.json()["refresh_token"]},
                                     auth=("web", WEB_SECRET))
        assert refreshed.json()["error"] == "invalid_grant"
        assert core.events("app.oauth2.as.token.grant")[-2]["outcome"]["reason"] == "authorization_code_reused"

    async def test_code_expires_after_300_seconds(self, core: Core) -> None:
        """Codes live 300 s."""
        params = redirect_params(await sign_in(core.client, authorize_url()))
        core.clock.advance(301)
        response = await core.token({"grant_type": "authorization_code", "code": params["code"],
                                     "redirect_uri": REDIRECT}, auth=("web", WEB_SECRET))
        assert response.json()["error_description"] == "The authorization code is invalid or has expired."

    async def test_policy_change_after_authorize_does_not_affect_exchange(self, core: Core) -> None:
        """Spec §3.1 point 8: the policy is evaluated once, at /authorize."""
        params = redirect_params(await sign_in(core.client, authorize_url()))

        def remove_people_policy(doc: dict[str, Any]) -> dict[str, Any]:
            doc["policies"] = [p for p in doc["policies"] if p["name"] != "People"]
            return doc

        await core.update_server("orders", remove_people_policy)
        response = await core.token({"grant_type": "authorization_code", "code": params["code"],
                                     "redirect_uri": REDIRECT}, auth=("web", WEB_SECRET))
        assert response.status_code == 200, response.text
        assert (await core.password("orders:read")).json()["error"] == "access_denied"

    async def test_code_bound_to_client_and_redirect_uri(self, core: Core) -> None:
        """Another client or another redirect_uri cannot redeem the code."""
        params = redirect_params(await sign_in(core.client, authorize_url()))
        wrong_uri = await core.token({"grant_type": "authorization_code", "code": params["code"],
                                      "redirect_uri": REDIRECT + "/other"}, auth=("web", WEB_SECRET))
        assert wrong_uri.json()["error_description"] == ("The 'redirect_uri' does not match the redirection URI used "
                                                         "in the authorization request.")
        spa_url = authorize_url(client_id="spa", code_challenge=pkce_pair()[1], code_challenge_method="S256")
        params = redirect_params(await sign_in(core.client, spa_url))
        other = await core.token({"grant_type": "authorization_code", "code": params["code"],
                                  "redirect_uri": REDIRECT}, auth=("web", WEB_SECRET))
        assert other.json()["error_description"].startswith("The grant was issued to another client.")

    async def test_public_client_must_use_pkce(self, core: Core) -> None:
        """A public client without code_challenge gets the PKCE error on the redirect."""
        params = redirect_params(await core.client.get(authorize_url(client_id="spa")))
        assert params == {"error": "invalid_request", "state": "st-1", "iss": f"{ISSUER}/oauth2/orders",
                          "error_description": "PKCE code challenge is required by the application."}
        plain = redirect_params(await core.client.get(authorize_url(client_id="spa", code_challenge="x" * 43,
                                                                    code_challenge_method="plain")))
        assert plain["error_description"] == "PKCE code challenge method is not supported. Valid values: [S256]"

    async def test_public_client_pkce_verification(self, core: Core) -> None:
        """A wrong code_verifier fails with 'PKCE verification failed.'; the right one succeeds."""
        verifier, challenge = pkce_pair()
        url = authorize_url(client_id="spa", code_challenge=challenge, code_challenge_method="S256")
        params = redirect_params(await sign_in(core.client, url))
        bad = await core.token({"grant_type": "authorization_code", "code": params["code"], "client_id": "spa",
                                "redirect_uri": REDIRECT, "code_verifier": "x" * 50})
        assert bad.json() == {"error": "invalid_grant", "error_description": "PKCE verification failed."}
        params = redirect_params(await sign_in(core.client, url))
        good = await core.token({"grant_type": "authorization_code", "code": params["code"], "client_id": "spa",
                                 "redirect_uri": REDIRECT, "code_verifier": verifier})
        assert good.status_code == 200, good.text


class TestAuthorizeErrors:
    @pytest.mark.parametrize(("params", "description"), [
        ({"client_id": "ghost"}, "Invalid value for 'client_id' parameter."),
        ({"redirect_uri": "https://evil.example/cb"}, "The 'redirect_uri' parameter must be a Login redirect URI in the client app settings."),
        ({"redirect_uri": REDIRECT + "/"}, "The 'redirect_uri' parameter must be a Login redirect URI in the client app settings."),
    ])
    async def test_unknown_client_or_redirect_is_an_error_page(self, core: Core, params: dict[str, str],
                                                               description: str) -> None:
        """Never a redirect to an unverified URI: an HTML error page instead (exact match required)."""
        response = await core.client.get(authorize_url(**params))
        assert response.status_code == 400 and "location" not in response.headers
        assert response.headers["content-type"].startswith("text/html")
        assert description.replace("'", "&#x27;") in response.text

    async def test_errors_are_escaped_on_the_page(self, core: Core) -> None:
        """Nothing the request carries is reflected unescaped."""
        response = await core.client.get(authorize_url(login_hint='"><script>alert(1)</script>'))
        assert "<script>alert(1)" not in response.text and "&lt;script&gt;" in response.text

    async def test_user_not_assigned_on_the_redirect(self, core: Core) -> None:
        """An unassigned user is told so on the redirect, with state."""
        params = redirect_params(await sign_in(core.client, authorize_url(), username="bob@example.com"))
        assert params == {"error": "access_denied", "state": "st-1", "iss": f"{ISSUER}/oauth2/orders",
                          "error_description": "User is not assigned to the client application."}

    async def test_no_matching_policy_on_the_redirect(self, core: Core) -> None:
        """Spec §9 D9: always a redirect on /authorize."""
        params = redirect_params(await sign_in(core.client, authorize_url(scope="orders:admin")))
        assert params["error_description"] == ("Policy evaluation failed for this request, please check the policy "
                                               "configurations.")
        event = core.events("app.oauth2.as.authorize")[-1]
        assert event["outcome"]["reason"] == "no_matching_policy"
        assert event["debugContext"]["debugData"]["user_id"] == "alice"

    async def test_undefined_scope_on_the_redirect(self, core: Core) -> None:
        """invalid_scope travels on the redirect before any sign-in."""
        params = redirect_params(await core.client.get(authorize_url(scope="orders:delete")))
        assert params["error"] == "invalid_scope"

    async def test_missing_state_is_refused_on_the_redirect(self, core: Core) -> None:
        """Okta requires `state` on every authorize request (spec §2.3): its absence is invalid_request."""
        params = redirect_params(await core.client.get(authorize_url(state="")))
        assert params["error"] == "invalid_request"
        assert "'state'" in params["error_description"]

    async def test_wrong_password_shows_the_form_again(self, core: Core) -> None:
        """A failed sign-in re-renders the form; nothing is redirected."""
        response = await sign_in(core.client, authorize_url(), password="wrong")
        assert response.status_code == 401 and "Sign in failed" in response.text

    async def test_form_post_without_its_cookie_or_with_changed_params_is_refused(self, core: Core) -> None:
        """CSRF: the form token is bound to the browser's cookie and to the authorize parameters."""
        page = await core.client.get(authorize_url())
        action, fields = read_form(page.text)
        fresh = httpx.AsyncClient(transport=core.client._transport, base_url=ISSUER)
        no_cookie = await fresh.post(action, data={**fields, "username": "alice@example.com",
                                                   "password": "correct-horse-battery"})
        assert no_cookie.status_code == 400 and "sign-in form expired" in no_cookie.text
        changed = await core.client.post(action, data={**fields, "scope": "orders:write",
                                                       "username": "alice@example.com",
                                                       "password": "correct-horse-battery"})
        assert changed.status_code == 400
        await fresh.aclose()

    async def test_suspended_user_is_denied(self, core: Core) -> None:
        """Spec §9 D5: access_denied at authorize for a suspended user."""
        params = redirect_params(await sign_in(core.client, authorize_url(), username="carol@example.com"))
        assert params["error"] == "access_denied"
