"""Implicit revocation through the real process (issue 4): a change made through the management API
revokes the tokens it governs everywhere — introspection says ``{"active": false}``, the refresh grant
answers ``invalid_grant``, the proxy refuses the token — and a token minted afterwards works."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import RunningScopegate

pytestmark = pytest.mark.e2e

PASSWORD = "correct-horse-battery"
SECRETS = {"service": "service-secret-0123456789", "webapp": "webapp-secret-0123456789",
           "introspector": "introspector-secret-012345"}

CONFIG: dict[str, Any] = {
    "upstream": {"url": "builtin:echo"},
    "routes": [{"name": "orders", "path": "/orders", "scopes": {"anyOf": ["orders:read"]}}],
    "authorizationServers": [{
        "id": "orders", "name": "Orders API", "audiences": ["https://api.example.com/orders"],
        "scopes": [{"name": "orders:read"}, {"name": "orders:write"}],
        "policies": [{"name": "Everyone", "priority": 1, "conditions": {"clients": {"include": ["ALL_CLIENTS"]}},
                      "rules": [{"name": "All", "priority": 1,
                                 "conditions": {"grantTypes": {"include": ["client_credentials", "password"]},
                                                "scopes": {"include": ["*"]}},
                                 "actions": {"token": {"accessTokenLifetimeMinutes": 60,
                                                       "refreshTokenWindowMinutes": 60}}}]}],
    }],
    "apps": [
        {"clientId": "service", "clientSecret": SECRETS["service"], "name": "Service"},
        {"clientId": "introspector", "clientSecret": SECRETS["introspector"], "name": "Resource server"},
        {"clientId": "webapp", "clientSecret": SECRETS["webapp"], "name": "Web",
         "grantTypes": ["password", "refresh_token"], "assignments": {"users": ["alice", "carol"],
                                                                       "groups": ["engineering"]}},
    ],
    "groups": [{"id": "engineering", "name": "Engineering"}],
    "users": [
        {"id": "alice", "login": "alice@example.com", "password": PASSWORD, "groups": ["engineering"]},
        {"id": "bob", "login": "bob@example.com", "password": PASSWORD, "groups": ["engineering"]},
        {"id": "carol", "login": "carol@example.com", "password": PASSWORD},
    ],
}


@dataclass
class Tokens:
    access: str
    refresh: str | None


class Harness:
    def __init__(self, gate: RunningScopegate) -> None:
        self.gate = gate
        self.admin = httpx.Client(base_url=gate.core, headers={"Authorization": f"SSWS {gate.admin_token}"},
                                  timeout=30)
        self.token_url = f"{gate.core}/oauth2/orders/v1/token"

    def api(self, method: str, path: str, json: dict[str, Any] | None = None) -> httpx.Response:
        response = self.admin.request(method, path, json=json)
        assert response.status_code < 300, response.text
        return response

    def user_tokens(self, login: str) -> Tokens:
        response = httpx.post(self.token_url, auth=("webapp", SECRETS["webapp"]), data={
            "grant_type": "password", "username": login, "password": PASSWORD,
            "scope": "openid offline_access orders:read"})
        assert response.status_code == 200, response.text
        return Tokens(response.json()["access_token"], response.json().get("refresh_token"))

    def service_tokens(self) -> Tokens:
        response = httpx.post(self.token_url, auth=("service", SECRETS["service"]),
                              data={"grant_type": "client_credentials", "scope": "orders:read"})
        assert response.status_code == 200, response.text
        return Tokens(response.json()["access_token"], None)

    def introspect(self, token: str) -> dict[str, Any]:
        response = httpx.post(f"{self.gate.core}/oauth2/orders/v1/introspect",
                              auth=("introspector", SECRETS["introspector"]), data={"token": token})
        assert response.status_code == 200, response.text
        return dict(response.json())

    def proxied(self, token: str) -> int:
        return httpx.get(f"{self.gate.proxy}/orders/7", headers={"Authorization": f"Bearer {token}"}).status_code

    def refresh(self, refresh_token: str) -> httpx.Response:
        return httpx.post(self.token_url, auth=("webapp", SECRETS["webapp"]),
                          data={"grant_type": "refresh_token", "refresh_token": refresh_token})

    def assert_valid(self, tokens: Tokens) -> None:
        assert self.introspect(tokens.access)["active"] is True
        assert self.proxied(tokens.access) == 200

    def assert_revoked(self, tokens: Tokens) -> None:
        assert self.introspect(tokens.access) == {"active": False}
        assert self.proxied(tokens.access) == 401
        if tokens.refresh is not None:
            response = self.refresh(tokens.refresh)
            assert response.status_code in (400, 401), response.text
            assert response.json()["error"] in ("invalid_grant", "invalid_client")


@pytest.fixture
def harness(scopegate: Callable[..., RunningScopegate]) -> Iterator[Harness]:
    built = Harness(scopegate(CONFIG))
    yield built
    built.admin.close()


def test_user_deactivated(harness: Harness) -> None:
    """User deactivated → all the user's tokens; another user's stay; after reactivation a fresh one works."""
    alice, bob = harness.user_tokens("alice@example.com"), harness.user_tokens("bob@example.com")
    harness.assert_valid(alice)
    harness.api("POST", "/api/v1/users/alice/lifecycle/deactivate")
    harness.assert_revoked(alice)
    harness.assert_valid(bob)
    harness.api("POST", "/api/v1/users/alice/lifecycle/activate")
    harness.assert_valid(harness.user_tokens("alice@example.com"))


def test_user_deleted(harness: Harness) -> None:
    """User deleted (Okta: deactivate, then delete) → all the user's tokens."""
    carol = harness.user_tokens("carol@example.com")
    harness.api("DELETE", "/api/v1/users/carol")
    harness.api("DELETE", "/api/v1/users/carol")
    harness.assert_revoked(carol)


@pytest.mark.parametrize("change", ["deactivate", "replace"])
def test_client_deactivated_or_changed(harness: Harness, change: str) -> None:
    """Client deactivated or changed → all its tokens; reactivating does not restore them; fresh ones work."""
    alice = harness.user_tokens("alice@example.com")
    service = harness.service_tokens()
    if change == "deactivate":
        harness.api("POST", "/api/v1/apps/webapp/lifecycle/deactivate")
        harness.api("POST", "/api/v1/apps/webapp/lifecycle/activate")
    else:
        app = harness.api("GET", "/api/v1/apps/webapp").json()
        app["label"] = "Web v2"
        harness.api("PUT", "/api/v1/apps/webapp", json=app)
    harness.assert_revoked(alice)
    harness.assert_valid(service)
    harness.assert_valid(harness.user_tokens("alice@example.com"))


def test_client_deleted(harness: Harness) -> None:
    """Client deleted → all its tokens; other clients' stay."""
    bob, service = harness.user_tokens("bob@example.com"), harness.service_tokens()
    harness.api("DELETE", "/api/v1/apps/webapp")
    harness.assert_revoked(bob)
    harness.assert_valid(service)


def test_client_unassigned_from_user(harness: Harness) -> None:
    """Client unassigned from a user → that user's tokens for it; other users' stay."""
    carol, alice = harness.user_tokens("carol@example.com"), harness.user_tokens("alice@example.com")
    harness.api("DELETE", "/api/v1/apps/webapp/users/carol")
    harness.assert_revoked(carol)
    harness.assert_valid(alice)


def test_group_unassigned(harness: Harness) -> None:
    """The user's group unassigned → tokens of members who lost access (bob), not of alice (direct)."""
    bob, alice = harness.user_tokens("bob@example.com"), harness.user_tokens("alice@example.com")
    harness.api("DELETE", "/api/v1/apps/webapp/groups/engineering")
    harness.assert_revoked(bob)
    harness.assert_valid(alice)


def test_user_removed_from_group(harness: Harness) -> None:
    """The user removed from the group that gave access → that user's tokens for the client."""
    bob = harness.user_tokens("bob@example.com")
    harness.api("DELETE", "/api/v1/groups/engineering/users/bob")
    harness.assert_revoked(bob)


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/scopes", {"name": "orders:admin"}),
    ("PUT", "", {"name": "Orders API", "audiences": ["https://api.example.com/orders"], "description": "v2"}),
    ("POST", "/policies", {"name": "Second", "conditions": {"clients": {"include": ["ALL_CLIENTS"]}}}),
])
def test_server_configuration_changed(harness: Harness, method: str, path: str, body: dict[str, Any]) -> None:
    """AS configuration changed → every token of the server; a token minted right after works."""
    alice, service = harness.user_tokens("alice@example.com"), harness.service_tokens()
    harness.api(method, f"/api/v1/authorizationServers/orders{path}", json=body)
    harness.assert_revoked(alice)
    harness.assert_revoked(service)
    harness.assert_valid(harness.service_tokens())


def test_server_deleted(harness: Harness) -> None:
    """AS deleted → its tokens are refused everywhere."""
    service = harness.service_tokens()
    harness.api("DELETE", "/api/v1/authorizationServers/orders")
    # The server's endpoints are gone with it, introspection included: nothing there vouches for the token.
    response = httpx.post(f"{harness.gate.core}/oauth2/orders/v1/introspect",
                          auth=("introspector", SECRETS["introspector"]), data={"token": service.access})
    assert response.status_code in (400, 404) or response.json() == {"active": False}
    assert harness.proxied(service.access) in (401, 403)


def test_key_rotation_is_not_revocation(harness: Harness) -> None:
    """keyRotate: tokens signed with the now-EXPIRED key stay valid; new ones are signed with the new key."""
    service = harness.service_tokens()
    harness.api("POST", "/api/v1/authorizationServers/orders/credentials/lifecycle/keyRotate", json={"use": "sig"})
    harness.assert_valid(service)
    harness.assert_valid(harness.service_tokens())
