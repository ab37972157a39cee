"""The real `scopegate run` process driven by real OAuth clients (issue 3, "Tested as a user would").

Authlib is the client for client_credentials, password, code + PKCE (signing in through the HTML form
like a browser) and refresh; joserfc verifies the access tokens against /v1/keys; Okta's own
resource-server library (okta-jwt-verifier) accepts them from an https issuer.
"""

from __future__ import annotations

import ssl
import warnings
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import authlib.deprecate  # noqa: F401  (it installs an 'always' filter on import; let it do so outside the block)
import httpx
import pytest
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

from tests.certs import self_signed
from tests.e2e.conftest import RunningScopegate

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Authlib announces its httpx2 move at import time
    from authlib.common.security import generate_token
    from authlib.integrations.httpx_client import OAuth2Client

pytestmark = pytest.mark.e2e

SECRET = "svc-secret-0123456789"
WEB_SECRET = "web-secret-0123456789"
PASSWORD = "correct-horse-battery"
REDIRECT = "https://app.example.com/callback"
AUDIENCE = "https://api.example.com/orders"

CONFIG: dict[str, Any] = {
    "upstream": {"url": "builtin:echo"},
    "routes": [{"name": "orders", "path": "/orders", "scopes": {"anyOf": ["orders:read"]}}],
    "authorizationServers": [{
        "id": "orders", "name": "Orders API", "audiences": [AUDIENCE],
        "scopes": [{"name": "orders:read", "default": True}, {"name": "orders:write"}],
        "policies": [{"name": "All", "priority": 1, "rules": [
            {"name": "Services", "priority": 1,
             "conditions": {"grantTypes": {"include": ["client_credentials"]}, "scopes": {"include": ["orders:read"]}},
             "actions": {"token": {"accessTokenLifetimeMinutes": 30}}},
            {"name": "People", "priority": 2,
             "conditions": {"grantTypes": {"include": ["password", "authorization_code"]},
                            "scopes": {"include": ["*"]}},
             "actions": {"token": {"accessTokenLifetimeMinutes": 15, "refreshTokenWindowMinutes": 60}}}]}],
    }],
    "apps": [
        {"clientId": "svc", "clientSecret": SECRET, "name": "Service", "grantTypes": ["client_credentials"]},
        {"clientId": "web", "clientSecret": WEB_SECRET, "name": "Web", "redirectUris": [REDIRECT],
         "grantTypes": ["authorization_code", "refresh_token", "password"], "assignments": {"users": ["alice"]}},
    ],
    "users": [{"id": "alice", "login": "alice@example.com", "password": PASSWORD,
               "profile": {"firstName": "Alice", "email": "alice@example.com"}}],
}


def verify_with_jwks(gate: RunningScopegate, token: str, verify: Any = True) -> dict[str, Any]:
    """An independent JOSE implementation checks the signature against the published keys."""
    jwks = httpx.get(f"{gate.issuer('orders')}/v1/keys", verify=verify).json()
    claims = dict(jose_jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["RS256"]).claims)
    assert claims["iss"] == gate.issuer("orders") and claims["aud"] == AUDIENCE
    return claims


def client(gate: RunningScopegate, client_id: str, secret: str, **kwargs: Any) -> OAuth2Client:
    return OAuth2Client(client_id, secret, token_endpoint_auth_method="client_secret_basic", **kwargs)


def test_client_credentials_token_passes_the_proxy(scopegate: Callable[..., RunningScopegate]) -> None:
    """Authlib fetches a client_credentials token; joserfc verifies it; the proxy lets it through."""
    gate = scopegate(CONFIG)
    with client(gate, "svc", SECRET, scope="orders:read") as oauth:
        token = oauth.fetch_token(f"{gate.issuer('orders')}/v1/token", grant_type="client_credentials")
    claims = verify_with_jwks(gate, token["access_token"])
    assert claims["sub"] == "svc" and claims["exp"] - claims["iat"] == 1800 == token["expires_in"]
    allowed = httpx.get(f"{gate.proxy}/orders/1", headers={"Authorization": f"Bearer {token['access_token']}"})
    assert allowed.status_code == 200, allowed.text


def test_password_grant_and_refresh(scopegate: Callable[..., RunningScopegate]) -> None:
    """Password grant with offline_access, then Authlib's refresh; revoking the refresh token ends both."""
    gate = scopegate(CONFIG)
    token_url = f"{gate.issuer('orders')}/v1/token"
    with client(gate, "web", WEB_SECRET, scope="openid offline_access orders:read") as oauth:
        token = oauth.fetch_token(token_url, username="alice@example.com", password=PASSWORD)
        assert verify_with_jwks(gate, token["access_token"])["uid"] == "alice"
        refreshed = oauth.refresh_token(token_url, refresh_token=token["refresh_token"])
        assert verify_with_jwks(gate, refreshed["access_token"])["sub"] == "alice@example.com"
        oauth.revoke_token(f"{gate.issuer('orders')}/v1/revoke", refreshed["refresh_token"],
                           token_type_hint="refresh_token")
    introspect = httpx.post(f"{gate.issuer('orders')}/v1/introspect", auth=("web", WEB_SECRET),
                            data={"token": refreshed["access_token"]})
    assert introspect.json() == {"active": False}
    denied = httpx.get(f"{gate.proxy}/orders/1", headers={"Authorization": f"Bearer {refreshed['access_token']}"})
    assert denied.status_code == 401


class _Form(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.action = values["action"]
        elif tag == "input" and values.get("type") == "hidden":
            self.fields[values["name"]] = values.get("value", "")


def browser_sign_in(base: str, authorize_url: str, verify: Any = True) -> str:
    """A browser: load the page, fill in the form, post it with the cookie, read the redirect."""
    with httpx.Client(base_url=base, verify=verify) as browser:
        page = browser.get(authorize_url)
        assert page.status_code == 200 and "<form" in page.text
        form = _Form()
        form.feed(page.text)
        done = browser.post(form.action, data={**form.fields, "username": "alice@example.com", "password": PASSWORD})
        assert done.status_code == 302, done.text
        location: str = done.headers["location"]
        return location


def test_code_flow_with_pkce_through_the_html_form(scopegate: Callable[..., RunningScopegate]) -> None:
    """Authorization code + PKCE S256 with Authlib, signing in through the form like a browser."""
    gate = scopegate(CONFIG)
    issuer = gate.issuer("orders")
    with client(gate, "web", WEB_SECRET, scope="openid offline_access orders:read", redirect_uri=REDIRECT,
                code_challenge_method="S256") as oauth:
        verifier = generate_token(48)
        url, state = oauth.create_authorization_url(f"{issuer}/v1/authorize", code_verifier=verifier, nonce="n-1")
        location = browser_sign_in(gate.core, url)
        assert f"state={state}" in location
        token = oauth.fetch_token(f"{issuer}/v1/token", authorization_response=location, code_verifier=verifier)
    assert verify_with_jwks(gate, token["access_token"])["scp"] == ["openid", "offline_access", "orders:read"]
    assert token["refresh_token"] and token["id_token"]
    userinfo = httpx.get(f"{issuer}/v1/userinfo", headers={"Authorization": f"Bearer {token['access_token']}"})
    assert userinfo.json()["sub"] == "alice"


async def test_okta_jwt_verifier_accepts_our_access_tokens(scopegate: Callable[..., RunningScopegate],
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Okta's AccessTokenVerifier (https issuer required) verifies scopegate's access tokens."""
    from okta_jwt_verifier import AccessTokenVerifier
    from okta_jwt_verifier.request_executor import RequestExecutor

    cert, key = self_signed(tmp_path)
    gate = scopegate({**CONFIG, "listen": {"tls": {"certFile": str(cert), "keyFile": str(key)}}})
    issuer = gate.issuer("orders")
    assert issuer.startswith("https://")
    context = ssl.create_default_context(cafile=str(cert))
    async with httpx.AsyncClient(verify=context) as http:
        response = await http.post(f"{issuer}/v1/token", auth=("svc", SECRET),
                                   data={"grant_type": "client_credentials", "scope": "orders:read"})
    token = response.json()["access_token"]

    class TrustingTestCA(RequestExecutor):  # type: ignore[misc]
        """The library's extension point: its aiohttp session gets an SSL context that trusts the test cert."""

        def _build_request_params(self, **params: Any) -> dict[str, Any]:
            built: dict[str, Any] = super()._build_request_params(**params)
            return {**built, "ssl": context}

    await AccessTokenVerifier(issuer=issuer, audience=AUDIENCE, request_executor=TrustingTestCA).verify(token)
    # The sync path fetches with requests, which reads its CA bundle from the environment.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    AccessTokenVerifier(issuer=issuer, audience=AUDIENCE).verify_sync(token)
    async with httpx.AsyncClient(verify=context) as http:
        jwks = (await http.get(f"{issuer}/v1/keys")).json()
    assert jose_jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["RS256"]).claims["cid"] == "svc"
