"""Helpers of the authorization-server attack suite (security.md §4): the in-process core of
``tests/authz/oauth_kit.py`` and the few requests every attack needs."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote_plus, urlencode, urlsplit

import httpx
import jwt

from tests.authz.oauth_kit import BASE_CONFIG, ISSUER, REDIRECT, WEB_SECRET, Core, build_core, sign_in

AUTHORIZE = f"{ISSUER}/oauth2/orders/v1/authorize"
INTROSPECT = "/oauth2/orders/v1/introspect"
REVOKE = "/oauth2/orders/v1/revoke"
TOKEN = "/oauth2/orders/v1/token"

ERROR_CHARSET = re.compile(r"^[\x20-\x21\x23-\x5B\x5D-\x7E]*$")
"""RFC 6749 §5.2: error_description "MUST NOT include characters outside the set %x20-21 / %x23-5B / %x5D-7E"."""


async def core_with(tmp_path: Path, document: dict[str, Any] | None = None) -> AsyncIterator[Core]:
    async for built in build_core(tmp_path, document or BASE_CONFIG):
        yield built


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def basic(client_id: str, secret: str) -> str:
    """RFC 6749 §2.3.1: both halves form-urlencoded, then joined with ':' and base64-encoded."""
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return "Basic " + base64.b64encode(raw).decode()


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


async def code_for(core: Core, **params: str) -> str:
    """An authorization code for alice, through the real sign-in form."""
    values = redirect_params(await sign_in(core.client, authorize_url(**params)))
    assert "code" in values, values
    return values["code"]


async def exchange(core: Core, code: str, *, client: tuple[str, str] | None = ("web", WEB_SECRET),
                   **extra: str) -> httpx.Response:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, **extra}
    return await core.token(data, auth=client)


async def introspect(core: Core, token: str, client: tuple[str, str] = ("web", WEB_SECRET),
                     **extra: str) -> dict[str, Any]:
    response = await core.client.post(INTROSPECT, data={"token": token, **extra}, auth=client)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, Any] = response.json()
    return body


async def is_active(core: Core, token: str) -> bool:
    return bool((await introspect(core, token)).get("active"))


def assert_oauth_error(response: httpx.Response, status: int, error: str, description: str | None = None) -> None:
    """An RFC 6749 §5.2 error: JSON, not cacheable, the error code and (if given) Okta's description."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["error"] == error, body
    assert ERROR_CHARSET.match(body.get("error_description", "")), body
    if description is not None:
        assert body["error_description"] == description, body


__all__ = ["AUTHORIZE", "ERROR_CHARSET", "INTROSPECT", "REVOKE", "TOKEN", "assert_oauth_error", "authorize_url",
           "basic", "claims_of", "code_for", "core_with", "exchange", "introspect", "is_active", "redirect_params"]
