"""security.md §4.1 "Policies and rules" and "redirect_uri": Okta's first-match evaluation, and exact
redirect URI matching (the OIDF redirect-URI family).

Policy tests issue real tokens and read the lifetime to tell which rule matched; the new-rule test goes
through the management API of the same core.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from starlette.applications import Starlette

from authz.errors import ScopegateError
from authz.management import management_routes
from authz.oauth import oauth_routes
from authz.responses import handle_scopegate_error
from config.loader import ConfigError, parse_config
from tests.authz.oauth_kit import BASE_CONFIG, ISSUER, REDIRECT, SECRET, Core
from tests.security.as_kit import assert_oauth_error, authorize_url, claims_of, core_with

ADMIN_TOKEN = "admin-token-0123456789abcdef"
NO_MATCH = "Policy evaluation failed for this request, please check the policy configurations."
AS_PATH = "/api/v1/authorizationServers/orders"


def rule(name: str, priority: int, scopes: list[str], minutes: int, status: str = "ACTIVE") -> dict[str, Any]:
    return {"name": name, "priority": priority, "status": status,
            "conditions": {"grantTypes": {"include": ["client_credentials"]}, "scopes": {"include": scopes}},
            "actions": {"token": {"accessTokenLifetimeMinutes": minutes}}}


def with_policies(policies: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    document = copy.deepcopy(BASE_CONFIG)
    document["authorizationServers"][0]["policies"] = policies
    document.update(extra)
    return document


async def minutes_of(core: Core, scope: str) -> int:
    response = await core.cc(scope)
    assert response.status_code == 200, response.text
    claims = claims_of(response.json()["access_token"])
    return int(claims["exp"] - claims["iat"]) // 60


# Listed out of priority order on purpose: priority decides, not the order in the document.
SHADOWING = with_policies([
    {"name": "Broad", "priority": 2, "conditions": {"clients": {"include": ["ALL_CLIENTS"]}},
     "rules": [rule("Anything", 1, ["*"], 60)]},
    {"name": "Narrow", "priority": 1, "conditions": {"clients": {"include": ["svc"]}},
     "rules": [rule("Broad read write", 2, ["orders:read", "orders:write"], 20),
               rule("Read only", 1, ["orders:read"], 5)]},
])


class TestPolicies:
    async def test_policy_priority_first_match_shadows(self, tmp_path: Path) -> None:
        """Okta: 'The first policy and rule that matches the client request is applied and no further rule
        or policy processing occurs.' The priority-1 rule of the priority-1 policy shadows the broader
        ones; a request it does not cover falls through to the next rule, then the next policy."""
        async for core in core_with(tmp_path, SHADOWING):
            assert await minutes_of(core, "orders:read") == 5
            assert await minutes_of(core, "orders:read orders:write") == 20
            assert await minutes_of(core, "orders:admin") == 60

    async def test_client_not_in_any_policy_gets_no_token(self, tmp_path: Path) -> None:
        """security.md §4.1: 'A client not assigned to any policy gets no token' (401 access_denied)."""
        document = with_policies([{"name": "Others", "priority": 1, "conditions": {"clients": {"include": ["web"]}},
                                   "rules": [rule("Any", 1, ["*"], 60)]}])
        async for core in core_with(tmp_path, document):
            assert_oauth_error(await core.cc(), 401, "access_denied", NO_MATCH)
            assert core.store.list_tokens() == []

    async def test_scope_outside_the_rule_is_denied(self, core: Core) -> None:
        """A requested scope that exists but no rule allows gets no token (the partial grant is refused)."""
        assert_oauth_error(await core.cc("orders:read orders:admin"), 401, "access_denied", NO_MATCH)
        assert core.store.list_tokens() == []

    async def test_issued_lifetime_equals_the_rules(self, core: Core) -> None:
        """The access token lives exactly accessTokenLifetimeMinutes of the matched rule (30 for svc)."""
        assert await minutes_of(core, "orders:read") == 30

    async def test_client_credentials_needs_a_rule_for_its_grant(self, tmp_path: Path) -> None:
        """Spec §3.1 point 6: a service has no user and needs a rule for client_credentials; rules for the
        user grants (here the ALL_CLIENTS 'People' policy) never serve it. (Spec §9 D4: people conditions
        count as met when there is no user, so the rule's grant types are what restrict a service.)"""
        document = with_policies(copy.deepcopy(BASE_CONFIG["authorizationServers"][0]["policies"][1:]))
        async for core in core_with(tmp_path, document):
            assert_oauth_error(await core.cc(), 401, "access_denied", NO_MATCH)
            assert core.store.list_tokens() == []
            assert (await core.password("orders:read")).status_code == 200

    async def test_deactivated_policies_and_rules_ignored(self, tmp_path: Path) -> None:
        """An INACTIVE policy and an INACTIVE rule are skipped: evaluation goes on to the next ACTIVE one."""
        document = with_policies([
            {"name": "Off", "priority": 1, "status": "INACTIVE", "conditions": {"clients": {"include": ["svc"]}},
             "rules": [rule("Would win", 1, ["*"], 10)]},
            {"name": "On", "priority": 2, "conditions": {"clients": {"include": ["svc"]}},
             "rules": [rule("Off rule", 1, ["*"], 20, status="INACTIVE"), rule("On rule", 2, ["orders:read"], 7)]},
        ])
        async for core in core_with(tmp_path, document):
            assert await minutes_of(core, "orders:read") == 7
            assert_oauth_error(await core.cc("orders:write"), 401, "access_denied", NO_MATCH)

    async def test_new_rule_appended_at_lowest_priority(self, tmp_path: Path) -> None:
        """Spec §1.5: 'A newly created rule gets the lowest priority': a rule created through the management
        API without a priority goes last, so it cannot shadow the existing rule that matches first."""
        async for core in core_with(tmp_path, {**BASE_CONFIG, "adminTokens": [ADMIN_TOKEN]}):
            app = Starlette(routes=[*oauth_routes(core.ctx), *management_routes(core.ctx)],
                            exception_handlers={ScopegateError: handle_scopegate_error})
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ISSUER,
                                         headers={"Authorization": f"SSWS {ADMIN_TOKEN}"}) as admin:
                policies = (await admin.get(f"{AS_PATH}/policies")).json()
                services = next(p for p in policies if p["name"] == "Services")
                new_rule = {"type": "RESOURCE_ACCESS", "name": "Short-lived",
                            "conditions": {"people": {"groups": {"include": ["EVERYONE"]}},
                                           "grantTypes": {"include": ["client_credentials"]},
                                           "scopes": {"include": ["orders:read"]}},
                            "actions": {"token": {"accessTokenLifetimeMinutes": 5, "refreshTokenLifetimeMinutes": 0,
                                                  "refreshTokenWindowMinutes": 10080}}}
                created = await admin.post(f"{AS_PATH}/policies/{services['id']}/rules", json=new_rule)
                assert created.status_code == 201, created.text
                rules = (await admin.get(f"{AS_PATH}/policies/{services['id']}/rules")).json()
                assert [(r["name"], r["priority"]) for r in rules] == [("Read write", 1), ("Short-lived", 2)]
            assert await minutes_of(core, "orders:read") == 30  # the old priority-1 rule still wins


# ---------------------------------------------------------------------------------------- redirect_uri


REGISTERED_WITH_QUERY = "https://app.example.com/cb?tenant=1"


def redirect_config() -> dict[str, Any]:
    document = copy.deepcopy(BASE_CONFIG)
    for app in document["apps"]:
        if app["clientId"] == "web":
            app["redirectUris"] = [REDIRECT, REGISTERED_WITH_QUERY]
    return document


@pytest.fixture
async def redirects(tmp_path: Path) -> AsyncIterator[Core]:
    async for built in core_with(tmp_path, redirect_config()):
        yield built


VARIANTS = {
    "query_added": REDIRECT + "?x=1",
    "query_changed": "https://app.example.com/cb?tenant=2",
    "query_extended": REGISTERED_WITH_QUERY + "&tenant=3",
    "fragment": REDIRECT + "#frag",
    "empty_fragment": REDIRECT + "#",
    "trailing_slash": REDIRECT + "/",
    "path_case": REDIRECT.replace("callback", "Callback"),
    "host_case": REDIRECT.replace("app.example.com", "APP.example.com"),
    "scheme": REDIRECT.replace("https://", "http://"),
    "default_port": REDIRECT.replace("app.example.com", "app.example.com:443"),
    "encoded_path": REDIRECT.replace("callback", "%63allback"),
    "dot_segment": "https://app.example.com/x/../callback",
    "userinfo": "https://app.example.com@evil.example/callback",
    "suffix_host": "https://app.example.com.evil.example/callback",
    "prefix": REDIRECT + "/../../evil",
    "whitespace": REDIRECT + " ",
    "other_site": "https://evil.example/callback",
}


class TestRedirectUri:
    @pytest.mark.parametrize("variant", list(VARIANTS))
    async def test_redirect_uri_exact_match_family(self, redirects: Core, variant: str) -> None:
        """RFC 9700 §4.1.3 'exact string matching' (OIDCCRedirectUriQueryMismatch, ...QueryAdded, ...RegFrag):
        any variant of a registered URI is an error page, never a redirect, and no code is issued."""
        response = await redirects.client.get(authorize_url(redirect_uri=VARIANTS[variant]))
        assert response.status_code == 400, response.text
        assert "location" not in response.headers
        assert "Login redirect URI" in response.text
        event = redirects.events("app.oauth2.as.authorize")[-1]
        assert event["outcome"]["reason"] == "illegal_redirect_uri"
        assert redirects.events("app.oauth2.as.authorize.code") == []

    async def test_redirect_uri_required(self, core: Core) -> None:
        """OIDCCEnsureRedirectUriInAuthorizationRequest: no redirect_uri is an error page, even though the
        client has exactly one registered."""
        response = await core.client.get(authorize_url(redirect_uri=""))
        assert response.status_code == 400 and "location" not in response.headers

    async def test_registered_uri_with_query_matches_exactly(self, redirects: Core) -> None:
        """The registered URI with its query matches itself, and the code is appended to that query."""
        response = await redirects.client.get(authorize_url(redirect_uri=REGISTERED_WITH_QUERY))
        assert response.status_code == 200, response.text

    def test_redirect_uri_with_fragment_cannot_be_registered(self) -> None:
        """RFC 6749 §3.1.2: 'The endpoint URI MUST NOT include a fragment component' (OIDCCRedirectUriRegFrag)."""
        document = copy.deepcopy(BASE_CONFIG)
        document["apps"][1]["redirectUris"] = [REDIRECT + "#frag"]
        import yaml

        with pytest.raises(ConfigError):
            parse_config(yaml.safe_dump(document), "test.yaml", {})

    async def test_error_redirect_only_to_registered_uri(self, core: Core) -> None:
        """Errors after the redirect URI is verified travel to that URI (with state), never elsewhere."""
        response = await core.client.get(authorize_url(scope="orders:delete", state="s-" + quote("<x>")))
        assert response.status_code == 302
        assert response.headers["location"].startswith(REDIRECT + "?")
        assert "error=invalid_scope" in response.headers["location"]
        assert SECRET not in response.headers["location"]
