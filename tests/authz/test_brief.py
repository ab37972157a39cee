"""The brief, bullet by bullet (reference/okta-api-access-management-troubleshooting.md).

Each test is named after one bullet of the brief's "Limits" and "Subtle Behavior" sections (and its
opening advice, "Always Start with the System Log"), and drives the behaviour the way an operator or a
client meets it: the config loader, the management API, the token, introspection and revoke endpoints.
Deeper tests of each behaviour live next to its module; this file is the index a reader starts from.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import pytest
import yaml
from starlette.applications import Starlette

from authz.errors import ScopegateError
from authz.logs_api import logs_routes
from authz.management import management_routes
from authz.responses import handle_scopegate_error
from config.loader import ConfigError, parse_config
from tests.authz.oauth_kit import BASE_CONFIG, ISSUER, REDIRECT, SECRET, WEB_SECRET, Core, build_core, sign_in

ADMIN_TOKEN = "brief-admin-token-0123456789abcdef"
WEB = ("web", WEB_SECRET)
SVC = ("svc", SECRET)
AS = "/api/v1/authorizationServers"


@dataclass
class Org:
    """The core's OAuth endpoints (``core``) and its management API (``admin``) over one state."""

    core: Core
    admin: httpx.AsyncClient

    async def active(self, token: str, caller: tuple[str, str] = SVC) -> bool:
        response = await self.core.client.post("/oauth2/orders/v1/introspect", data={"token": token}, auth=caller)
        assert response.status_code == 200, response.text
        return bool(response.json()["active"])

    async def refresh(self, refresh_token: str) -> httpx.Response:
        return await self.core.token({"grant_type": "refresh_token", "refresh_token": refresh_token}, auth=WEB)

    async def change(self, method: str, path: str, body: dict[str, Any] | None = None) -> None:
        response = await self.admin.request(method, path, json=body)
        assert response.status_code < 300, response.text


@pytest.fixture
async def org(tmp_path: Path) -> AsyncIterator[Org]:
    document = {**copy.deepcopy(BASE_CONFIG), "adminTokens": [ADMIN_TOKEN]}
    async for core in build_core(tmp_path, document):
        app = Starlette(routes=[*management_routes(core.ctx), *logs_routes(core.ctx)],
                        exception_handlers={ScopegateError: handle_scopegate_error})
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ISSUER,
                                     headers={"Authorization": f"SSWS {ADMIN_TOKEN}"}) as admin:
            yield Org(core, admin)


def config_with(mutate: Any) -> dict[str, Any]:
    document = copy.deepcopy(BASE_CONFIG)
    mutate(document)
    return document


def config_errors(document: dict[str, Any]) -> str:
    """The loader's message for an invalid document ('' if it loads)."""
    try:
        parse_config(yaml.safe_dump(document), "brief.yaml", {})
    except ConfigError as exc:
        return str(exc)
    return ""


def rule_token(document: dict[str, Any], **token: int) -> None:
    """Set the lifetimes of the Services policy's rule."""
    document["authorizationServers"][0]["policies"][0]["rules"][0]["actions"]["token"] = token


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def lifetime(token: str) -> int:
    claims = claims_of(token)
    return int(claims["exp"] - claims["iat"])


# --- Limits ----------------------------------------------------------------------------------------------


def test_limit_one_resource_per_authorization_server() -> None:
    """An authorization server has exactly one resource (audience): a second one is refused, and two
    servers cannot claim the same resource path (resources sharing a path belong to one server)."""
    assert config_errors(BASE_CONFIG) == ""
    two = config_with(lambda d: d["authorizationServers"][0]["audiences"].append("https://api.example.com/other"))
    assert "audiences" in config_errors(two)
    same_path = config_with(lambda d: d["authorizationServers"][1].update(
        audiences=["https://other.example.com/orders"]))
    assert "already covered by authorization server 'orders'" in config_errors(same_path)


async def test_limit_one_resource_per_authorization_server_through_the_api(org: Org) -> None:
    """The management API refuses a second audience with Okta's validation error naming the field."""
    response = await org.admin.put(f"{AS}/orders", json={
        "name": "Orders API", "audiences": ["https://api.example.com/orders", "https://api.example.com/more"]})
    assert response.status_code == 400
    assert response.json()["errorCode"] == "E0000001" and "audiences" in str(response.json()["errorCauses"])


async def test_limit_scopes_unique_per_server(org: Org) -> None:
    """A scope name appears once per server (config and API refuse a duplicate); another server may
    define the same name, and it is a different scope there."""
    duplicate = config_with(lambda d: d["authorizationServers"][0]["scopes"].append({"name": "orders:read"}))
    assert "orders:read" in config_errors(duplicate) or "scopes" in config_errors(duplicate)
    response = await org.admin.post(f"{AS}/orders/scopes", json={"name": "orders:read"})
    assert response.status_code == 400 and response.json()["errorCode"] == "E0000001"
    await org.change("POST", f"{AS}/billing/scopes", {"name": "orders:read"})
    names = [s["name"] for s in (await org.admin.get(f"{AS}/billing/scopes")).json()]
    assert "orders:read" in names


def test_limit_resource_uri_absolute() -> None:
    """The resource URI must be absolute: a relative one is refused at load time."""
    relative = config_with(lambda d: d["authorizationServers"][0].update(audiences=["/orders"]))
    assert "audiences" in config_errors(relative)


async def test_limit_tokens_expire_or_are_revoked_explicitly_or_implicitly(org: Org) -> None:
    """A token stops being valid when it expires, when it is revoked at /v1/revoke, or when the
    configuration it came from changes."""
    expiring = (await org.core.cc()).json()["access_token"]
    org.core.clock.advance(30 * 60 + 1)
    assert not await org.active(expiring)

    revoked = (await org.core.cc()).json()["access_token"]
    response = await org.core.client.post("/oauth2/orders/v1/revoke", data={"token": revoked}, auth=SVC)
    assert response.status_code == 200
    assert not await org.active(revoked)

    implicit = (await org.core.cc()).json()["access_token"]
    assert await org.active(implicit)
    await org.change("POST", "/api/v1/apps/svc/lifecycle/deactivate")
    assert not await org.active(implicit, caller=WEB)


async def test_limit_id_token_expires_after_one_hour(org: Org) -> None:
    """The ID token lives 60 minutes whatever the rule's access token lifetime (here 15 minutes)."""
    body = (await org.core.password("openid orders:read")).json()
    assert lifetime(body["id_token"]) == 3600
    assert lifetime(body["access_token"]) == 15 * 60


async def test_limit_access_token_lifetime_between_five_minutes_and_one_day(org: Org) -> None:
    """accessTokenLifetimeMinutes is 5..1440: 4 and 1441 are refused, 5 and 1440 are issued as such."""
    for minutes in (4, 1441):
        assert "accessTokenLifetimeMinutes" in config_errors(config_with(
            lambda d, m=minutes: rule_token(d, accessTokenLifetimeMinutes=m)))
    for minutes in (5, 1440):
        assert config_errors(config_with(lambda d, m=minutes: rule_token(d, accessTokenLifetimeMinutes=m))) == ""
        await org.core.update_server("orders", lambda d, m=minutes: _set_services_lifetime(d, m))
        body = (await org.core.cc()).json()
        assert lifetime(body["access_token"]) == minutes * 60 == body["expires_in"]


def _set_services_lifetime(document: dict[str, Any], minutes: int) -> dict[str, Any]:
    document["policies"][0]["rules"][0]["actions"]["token"]["accessTokenLifetimeMinutes"] = minutes
    return document


def test_limit_refresh_token_lifetime_at_least_access_lifetime() -> None:
    """The refresh token lifetime has no upper limit (0 = unlimited) but may not be shorter than the
    access token lifetime."""
    shorter = config_with(lambda d: rule_token(d, accessTokenLifetimeMinutes=60, refreshTokenLifetimeMinutes=30))
    assert "refreshTokenLifetimeMinutes" in config_errors(shorter)
    for minutes in (60, 0, 5_000_000):
        ok = config_with(lambda d, m=minutes: rule_token(d, accessTokenLifetimeMinutes=60,
                                                          refreshTokenLifetimeMinutes=m))
        assert config_errors(ok) == "", minutes


async def test_limit_refresh_token_revoked_when_idle(org: Org) -> None:
    """A refresh token not used within the rule's window (minimum ten minutes) is revoked; each use
    resets the window."""
    nine = config_with(lambda d: rule_token(d, accessTokenLifetimeMinutes=5, refreshTokenWindowMinutes=9))
    assert "refreshTokenWindowMinutes" in config_errors(nine)
    ten = config_with(lambda d: rule_token(d, accessTokenLifetimeMinutes=5, refreshTokenWindowMinutes=10))
    assert config_errors(ten) == ""
    refresh_token = (await org.core.password("offline_access orders:read")).json()["refresh_token"]
    org.core.clock.advance(59 * 60)
    assert (await org.refresh(refresh_token)).status_code == 200
    org.core.clock.advance(61 * 60)
    response = await org.refresh(refresh_token)
    assert response.json() == {"error": "invalid_grant", "error_description": "The refresh token is invalid or expired."}


async def _user_tokens(org: Org) -> tuple[str, str]:
    body = (await org.core.password("offline_access orders:read")).json()
    return body["access_token"], body["refresh_token"]


async def _assert_revoked(org: Org, access: str, refresh_token: str | None) -> None:
    assert not await org.active(access)
    assert org.core.revocation.is_revoked(claims_of(access))
    if refresh_token is not None:
        assert (await org.refresh(refresh_token)).json()["error"] == "invalid_grant"


async def test_limit_implicit_revocation_user_deactivated(org: Org) -> None:
    """User deactivation revokes the user's tokens (access and refresh), not the client's own."""
    access, refresh_token = await _user_tokens(org)
    service = (await org.core.cc()).json()["access_token"]
    await org.change("POST", "/api/v1/users/alice/lifecycle/deactivate")
    await _assert_revoked(org, access, refresh_token)
    assert await org.active(service)


async def test_limit_implicit_revocation_user_deleted(org: Org) -> None:
    """User deletion (deactivate, then delete, as Okta) revokes the user's tokens."""
    access, refresh_token = await _user_tokens(org)
    await org.change("DELETE", "/api/v1/users/alice")
    await org.change("DELETE", "/api/v1/users/alice")
    await _assert_revoked(org, access, refresh_token)


async def test_limit_implicit_revocation_server_config_changed_or_deleted(org: Org) -> None:
    """A change to the server's configuration (here: a new scope) revokes all its tokens; a token of
    another server stays valid; a token minted after the change is valid."""
    access, refresh_token = await _user_tokens(org)
    service = (await org.core.cc()).json()["access_token"]
    billing = (await org.core.cc("billing:read", as_id="billing")).json()["access_token"]
    await org.change("POST", f"{AS}/orders/scopes", {"name": "orders:export"})
    await _assert_revoked(org, access, refresh_token)
    await _assert_revoked(org, service, None)
    assert not org.core.revocation.is_revoked(claims_of(billing))
    assert await org.active((await org.core.cc()).json()["access_token"])


async def test_limit_implicit_revocation_server_deleted(org: Org) -> None:
    """Deleting the server revokes its tokens (deactivate first, as Okta requires)."""
    service = (await org.core.cc()).json()["access_token"]
    await org.change("POST", f"{AS}/orders/lifecycle/deactivate")
    await org.change("DELETE", f"{AS}/orders")
    assert org.core.revocation.is_revoked(claims_of(service))


async def test_limit_implicit_revocation_client_deactivated(org: Org) -> None:
    """Client deactivation revokes the client's tokens; reactivating does not restore them."""
    access, refresh_token = await _user_tokens(org)
    await org.change("POST", "/api/v1/apps/web/lifecycle/deactivate")
    await org.change("POST", "/api/v1/apps/web/lifecycle/activate")
    await _assert_revoked(org, access, refresh_token)
    assert (await org.core.password("orders:read")).status_code == 200


async def test_limit_implicit_revocation_client_changed(org: Org) -> None:
    """Changing the client app (here: its label) revokes the client's tokens, not another client's."""
    access, refresh_token = await _user_tokens(org)
    service = (await org.core.cc()).json()["access_token"]
    app = (await org.admin.get("/api/v1/apps/web")).json()
    await org.change("PUT", "/api/v1/apps/web", {**app, "label": "Web app (renamed)"})
    await _assert_revoked(org, access, refresh_token)
    assert await org.active(service)


async def test_limit_implicit_revocation_client_unassigned(org: Org) -> None:
    """Unassigning the client from a user (here: the user's group) revokes that user's tokens for that
    client."""
    access, refresh_token = await _user_tokens(org)
    await org.change("DELETE", "/api/v1/apps/web/groups/engineering")
    await _assert_revoked(org, access, refresh_token)
    assert (await org.core.password("orders:read")).json()["error_description"] == (
        "User is not assigned to the client application.")


async def test_limit_implicit_revocation_client_deleted(org: Org) -> None:
    """Deleting the client revokes its tokens."""
    access, _ = await _user_tokens(org)
    await org.change("POST", "/api/v1/apps/web/lifecycle/deactivate")
    await org.change("DELETE", "/api/v1/apps/web")
    assert org.core.revocation.is_revoked(claims_of(access))


async def test_limit_partial_scope_request_mints_nothing_and_logs_why(org: Org) -> None:
    """Several scopes of which the policy allows only some: an error, no token recorded, and the system
    log names the scope the rule lacks."""
    response = await org.core.cc("orders:read orders:admin")
    assert response.status_code == 401
    assert response.json() == {"error": "access_denied", "error_description":
                               "Policy evaluation failed for this request, please check the policy configurations."}
    assert "access_token" not in response.json()
    assert org.core.store.list_tokens(client_id="svc") == []
    event = org.core.events("app.oauth2.as.token.grant")[-1]
    assert event["outcome"] == {"result": "FAILURE", "reason": "no_matching_policy"}
    assert "orders:admin" in str(event["debugContext"]["debugData"]["policy_evaluation"])


# --- Subtle behaviour ------------------------------------------------------------------------------------


def _people_rule_includes(*users: str) -> Any:
    def mutate(document: dict[str, Any]) -> dict[str, Any]:
        document["policies"][1]["rules"][0]["conditions"]["people"]["users"] = {"include": list(users)}
        return document
    return mutate


async def test_subtle_user_must_be_assigned_directly_or_by_group(org: Org) -> None:
    """alice (assigned through her group) and dave (assigned directly) get tokens; bob, in no assigned
    group and not assigned himself, is refused before any policy is considered, even with a rule for him."""
    await org.core.update_server("orders", _people_rule_includes("dave", "bob"))
    assert (await org.core.password("orders:read", username="alice@example.com")).status_code == 200
    assert (await org.core.password("orders:read", username="dave@example.com")).status_code == 200
    response = await org.core.password("orders:read", username="bob@example.com")
    assert response.json() == {"error": "access_denied",
                               "error_description": "User is not assigned to the client application."}
    assert org.core.events("app.oauth2.as.token.grant")[-1]["outcome"]["reason"] == "user_not_assigned"
    await org.change("PUT", "/api/v1/apps/web/groups/sales", {})
    assert (await org.core.password("orders:read", username="bob@example.com")).status_code == 200


async def test_subtle_no_rule_for_client_user_scope_fails(org: Org) -> None:
    """dave is assigned but no rule covers him: the request fails; adding a rule for the client, user and
    scope resolves it."""
    response = await org.core.password("orders:read", username="dave@example.com")
    assert response.status_code == 401 and response.json()["error"] == "access_denied"
    await org.core.update_server("orders", _people_rule_includes("dave"))
    assert (await org.core.password("orders:read", username="dave@example.com")).status_code == 200


_OIDC_ONLY: dict[str, Any] = {
    "id": "profiles", "name": "Profiles", "audiences": ["https://api.example.com/profiles"],
    "policies": [{"name": "Sign-in", "priority": 1, "rules": [
        {"name": "OIDC", "priority": 1, "conditions": {
            "grantTypes": {"include": ["password"]}, "people": {"groups": {"include": ["engineering"]}},
            "scopes": {"include": ["openid", "profile", "email"]}}}]}],
}


async def test_subtle_oidc_scopes_need_policy_and_rule(tmp_path: Path) -> None:
    """Spec §9 D1 (the default): OIDC scopes exist on a server that defines no scope at all, but a request
    needs a policy and a rule, and the rule must list them (or have ``*``)."""
    def add(document: dict[str, Any]) -> None:
        bare = {**copy.deepcopy(_OIDC_ONLY), "id": "bare", "name": "Bare", "policies": [],
                "audiences": ["https://api.example.com/bare"]}
        document["authorizationServers"] += [copy.deepcopy(_OIDC_ONLY), bare]
    async for core in build_core(tmp_path, config_with(add)):
        grant = {"grant_type": "password", "username": "alice@example.com", "password": "correct-horse-battery"}
        ok = await core.token({**grant, "scope": "openid profile"}, auth=WEB, as_id="profiles")
        assert ok.status_code == 200 and ok.json()["scope"] == "openid profile"
        not_in_rule = await core.token({**grant, "scope": "openid phone"}, auth=WEB, as_id="profiles")
        assert not_in_rule.status_code == 401 and not_in_rule.json()["error"] == "access_denied"
        no_policy = await core.token({**grant, "scope": "openid"}, auth=WEB, as_id="bare")
        assert no_policy.status_code == 401 and no_policy.json()["error"] == "access_denied"


async def test_subtle_oidc_scopes_granted_by_default_with_oidc_scopes_implicit(tmp_path: Path) -> None:
    """The brief's older reading, as the per-server option ``oidcScopesImplicit``: the rule grants OIDC
    scopes without listing them; a policy and a rule are still needed."""
    def add(document: dict[str, Any]) -> None:
        server: dict[str, Any] = {**copy.deepcopy(_OIDC_ONLY), "oidcScopesImplicit": True,
                                  "scopes": [{"name": "profiles:read"}]}
        server["policies"][0]["rules"][0]["conditions"]["scopes"] = {"include": ["profiles:read"]}
        bare = {"id": "bare", "name": "Bare", "audiences": ["https://api.example.com/bare"],
                "oidcScopesImplicit": True}
        document["authorizationServers"] += [server, bare]
    async for core in build_core(tmp_path, config_with(add)):
        grant = {"grant_type": "password", "username": "alice@example.com", "password": "correct-horse-battery"}
        ok = await core.token({**grant, "scope": "openid phone email"}, auth=WEB, as_id="profiles")
        assert ok.status_code == 200 and ok.json()["scope"] == "openid phone email"
        no_policy = await core.token({**grant, "scope": "openid"}, auth=WEB, as_id="bare")
        assert no_policy.status_code == 401 and no_policy.json()["error"] == "access_denied"


async def test_subtle_oidc_scopes_combined_with_custom(org: Org) -> None:
    """openid and a custom scope in one request: one access token carrying both, and an ID token."""
    response = await org.core.password("openid email orders:read")
    assert response.status_code == 200
    body = response.json()
    assert body["scope"] == "openid email orders:read" and body["id_token"]
    assert claims_of(body["access_token"])["scp"] == ["openid", "email", "orders:read"]


async def test_subtle_token_lifetimes_come_from_the_matching_rule(org: Org) -> None:
    """Expiration depends on which policy and rule matched: the Services rule gives 30 minutes, the
    Engineers rule 15."""
    assert lifetime((await org.core.cc()).json()["access_token"]) == 30 * 60
    assert lifetime((await org.core.password("orders:read")).json()["access_token"]) == 15 * 60


async def test_subtle_policy_evaluated_once_at_start_of_flow(org: Org) -> None:
    """The code flow is evaluated at /authorize: after the user signed in, shortening the rule's lifetime
    and then removing the policy change nothing for the code exchange, which gets the lifetime in effect
    when the flow started; a new flow sees the change."""
    url = f"{ISSUER}/oauth2/orders/v1/authorize?" + urlencode({
        "client_id": "web", "redirect_uri": REDIRECT, "response_type": "code", "scope": "orders:read",
        "state": "st-1"})
    signed_in = await sign_in(org.core.client, url)
    assert signed_in.status_code == 302, signed_in.text
    code = parse_qs(urlsplit(signed_in.headers["location"]).query)["code"][0]

    def shorten(document: dict[str, Any]) -> dict[str, Any]:
        document["policies"][1]["rules"][0]["actions"]["token"]["accessTokenLifetimeMinutes"] = 5
        return document

    def remove(document: dict[str, Any]) -> dict[str, Any]:
        document["policies"] = [p for p in document["policies"] if p["name"] != "People"]
        return document

    await org.core.update_server("orders", shorten)
    await org.core.update_server("orders", remove)
    response = await org.core.token({"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT},
                                    auth=WEB)
    assert response.status_code == 200, response.text
    assert lifetime(response.json()["access_token"]) == 15 * 60
    assert (await org.core.password("orders:read")).json()["error"] == "access_denied"


# --- Always start with the system log --------------------------------------------------------------------


async def test_always_start_with_the_system_log(org: Org) -> None:
    """One denial event tells an operator what to change: which server, client, user, grant and scopes,
    and, for every policy and rule tried, why it did not match (the rule that lacks the scope, the
    policy whose client condition excludes the client)."""
    await org.core.password("openid orders:admin")
    events = (await org.admin.get("/api/v1/logs", params={
        "filter": 'eventType eq "app.oauth2.as.token.grant" and outcome.result eq "FAILURE"'})).json()
    assert len(events) == 1
    event = events[0]
    assert event["outcome"]["reason"] == "no_matching_policy"
    debug = event["debugContext"]["debugData"]
    assert debug["client_id"] == "web" and debug["user_id"] == "alice"
    assert debug["grant_type"] == "password" and debug["requested_scopes"] == "openid orders:admin"
    assert "orders:admin" in debug["denied_scopes"]
    trace = str(debug["policy_evaluation"])
    assert "Services" in trace and "People" in trace and "Engineers" in trace
    assert "orders:admin" in trace
    assert debug["authorization_server"] == "orders"
