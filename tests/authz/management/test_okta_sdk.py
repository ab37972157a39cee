"""The management API driven by Okta's own management SDK (``okta`` on PyPI), unmodified, over HTTPS.

Okta customers own scripts built on this SDK (issue 4); they must work against scopegate as they do
against Okta. The SDK refuses an http orgUrl, so the API is served over TLS with a test certificate.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp.connector
import okta.models as om
import pytest
from okta.client import Client as OktaClient

from authz.context import CoreContext
from tests.authz.management.kit import ADMIN_TOKEN, build_context
from tests.authz.management.tls_server import serve_tls
from tests.certs import self_signed


class Sdk:
    def __init__(self, url: str, ctx: CoreContext, token: str = ADMIN_TOKEN) -> None:
        self.url = url
        self.ctx = ctx
        self.client = OktaClient({"orgUrl": url, "token": token})


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One test certificate per session: the trust store below keeps every certificate it is given."""
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    # The SDK's own sslContext setting cannot be used (it deep-copies its config, and an SSLContext
    # cannot be copied), so the test certificate joins the trust store aiohttp verifies with, as an
    # operator would add their CA to the system's.
    aiohttp.connector._SSL_CONTEXT_VERIFIED.load_verify_locations(cafile=str(cert))
    return cert, key


@pytest.fixture
def sdk(tmp_path: Path, certificate: tuple[Path, Path]) -> Iterator[Sdk]:
    ctx, app, _ = build_context(tmp_path)
    with serve_tls(app, *certificate) as server:
        yield Sdk(server.url, ctx)
    ctx.store.close()


def ok(result: tuple[Any, ...]) -> Any:
    """The SDK answers (value, response, error) or (response, error); fail on an error."""
    *values, error = result
    assert error is None, error
    return values[0]


def error_of(result: tuple[Any, ...]) -> Any:
    error = result[-1]
    assert error is not None, "the call should have failed"
    return error


RULE_KW: dict[str, Any] = {
    "name": "Services read", "priority": 1, "type": "RESOURCE_ACCESS",
    "conditions": om.AuthorizationServerPolicyRuleConditions(
        people=om.AuthorizationServerPolicyPeopleCondition(
            groups=om.AuthorizationServerPolicyRuleGroupCondition(include=["EVERYONE"])),
        grant_types=om.GrantTypePolicyRuleCondition(include=["client_credentials"]),
        scopes=om.OAuth2ScopesMediationPolicyRuleCondition(include=["pets:read"])),
    "actions": om.AuthorizationServerPolicyRuleActions(token=om.TokenAuthorizationServerPolicyRuleAction(
        access_token_lifetime_minutes=30, refresh_token_lifetime_minutes=0, refresh_token_window_minutes=10080)),
}


class TestAuthorizationServersWithTheSdk:
    async def test_server_scope_policy_rule_lifecycle(self, sdk: Sdk) -> None:
        """Create a server, a scope, a policy and a rule with the SDK; read, replace and delete them."""
        c = sdk.client
        server = ok(await c.create_authorization_server(om.AuthorizationServer(
            name="Pets", description="Pets API", audiences=["https://api.example.com/pets"])))
        assert server.id.startswith("aus")
        assert server.issuer == f"{sdk.ctx.config.issuer}/oauth2/{server.id}"
        assert {s.name for s in ok(await c.list_authorization_servers())} == {"Orders API", "Pets"}

        scope = ok(await c.create_o_auth2_scope(server.id, om.OAuth2Scope(name="pets:read", description="Read")))
        assert scope.id.startswith("scp")
        names = {s.name for s in ok(await c.list_o_auth2_scopes(server.id))}
        assert {"pets:read", "openid"} <= names
        renamed = ok(await c.replace_o_auth2_scope(server.id, scope.id, om.OAuth2Scope(name="pets:view")))
        assert renamed.id == scope.id
        ok(await c.replace_o_auth2_scope(server.id, scope.id, om.OAuth2Scope(name="pets:read")))

        policy = ok(await c.create_authorization_server_policy(server.id, om.AuthorizationServerPolicy(
            name="Default", description="Everyone", priority=1, type="OAUTH_AUTHORIZATION_POLICY",
            conditions=om.AuthorizationServerPolicyConditions(clients=om.ClientPolicyCondition(include=["ALL_CLIENTS"])))))
        assert policy.id.startswith("00p")
        rule = ok(await c.create_authorization_server_policy_rule(
            server.id, policy.id, om.AuthorizationServerPolicyRuleRequest(**RULE_KW)))
        assert rule.id.startswith("0pr")
        assert rule.actions.token.access_token_lifetime_minutes == 30
        fetched = ok(await c.get_authorization_server_policy_rule(server.id, policy.id, rule.id))
        assert fetched.conditions.scopes.include == ["pets:read"]
        replaced = ok(await c.replace_authorization_server_policy_rule(
            server.id, policy.id, rule.id, om.AuthorizationServerPolicyRuleRequest(**{**RULE_KW, "name": "Renamed"})))
        assert (replaced.id, replaced.name) == (rule.id, "Renamed")
        ok(await c.deactivate_authorization_server_policy_rule(server.id, policy.id, rule.id))
        assert ok(await c.get_authorization_server_policy_rule(server.id, policy.id, rule.id)).status == "INACTIVE"
        assert [r.id for r in ok(await c.list_authorization_server_policy_rules(server.id, policy.id))] == [rule.id]
        ok(await c.delete_authorization_server_policy_rule(server.id, policy.id, rule.id))
        ok(await c.deactivate_authorization_server_policy(server.id, policy.id))
        ok(await c.delete_authorization_server_policy(server.id, policy.id))
        ok(await c.delete_o_auth2_scope(server.id, scope.id))

        ok(await c.deactivate_authorization_server(server.id))
        assert ok(await c.get_authorization_server(server.id)).status == "INACTIVE"
        ok(await c.activate_authorization_server(server.id))
        updated = ok(await c.replace_authorization_server(server.id, om.AuthorizationServer(
            name="Pets v2", description="Pets API", audiences=["https://api.example.com/pets"])))
        assert updated.name == "Pets v2"
        ok(await c.delete_authorization_server(server.id))
        assert error_of(await c.get_authorization_server(server.id)).error_code == "E0000007"

    async def test_keys_and_rotation(self, sdk: Sdk) -> None:
        """The SDK lists the signing keys and rotates them: the old ACTIVE key is EXPIRED, still listed."""
        c = sdk.client
        server = ok(await c.create_authorization_server(om.AuthorizationServer(
            name="Pets", description="d", audiences=["https://api.example.com/pets"])))
        before = {k.kid: k.status for k in ok(await c.list_authorization_server_keys(server.id))}
        rotated = ok(await c.rotate_authorization_server_keys(server.id, om.JwkUse(use="sig")))
        after = {k.kid: k.status for k in rotated}
        active = next(kid for kid, status in before.items() if status == "ACTIVE")
        assert after[active] == "EXPIRED"

    async def test_validation_errors_reach_the_sdk(self, sdk: Sdk) -> None:
        """An invalid rule comes back to the SDK as E0000001 with a cause naming the field."""
        c = sdk.client
        bad = {**RULE_KW, "actions": om.AuthorizationServerPolicyRuleActions(
            token=om.TokenAuthorizationServerPolicyRuleAction(access_token_lifetime_minutes=4))}
        bad["conditions"] = om.AuthorizationServerPolicyRuleConditions(
            grant_types=om.GrantTypePolicyRuleCondition(include=["client_credentials"]),
            scopes=om.OAuth2ScopesMediationPolicyRuleCondition(include=["orders:read"]))
        error = error_of(await c.create_authorization_server_policy_rule(
            "orders", "00porders0000000001", om.AuthorizationServerPolicyRuleRequest(**bad)))
        assert error.error_code == "E0000001"
        assert any("accessTokenLifetimeMinutes" in str(cause) for cause in error.error_causes)

    async def test_wrong_token(self, sdk: Sdk) -> None:
        """The SDK with a wrong API token gets E0000011."""
        wrong = Sdk(sdk.url, sdk.ctx, token="not-the-admin-token-0000")
        assert error_of(await wrong.client.list_authorization_servers()).error_code == "E0000011"


class TestAppsAndUsersWithTheSdk:
    async def test_oidc_app_lifecycle(self, sdk: Sdk) -> None:
        """Create an OIDC service app with the SDK, read it back as an OIDC app, deactivate and delete it."""
        c = sdk.client
        app = om.OpenIdConnectApplication(
            label="Reports", sign_on_mode="OPENID_CONNECT", name="oidc_client",
            credentials=om.OAuthApplicationCredentials(oauth_client=om.ApplicationCredentialsOAuthClient(
                token_endpoint_auth_method="client_secret_basic", auto_key_rotation=True)),
            settings=om.OpenIdConnectApplicationSettings(oauth_client=om.OpenIdConnectApplicationSettingsClient(
                grant_types=["client_credentials"], response_types=["token"], application_type="service",
                redirect_uris=[])))
        created = ok(await c.create_application(app))
        client_id = created.credentials.oauth_client.client_id
        assert created.id == client_id
        assert created.credentials.oauth_client.client_secret
        fetched = ok(await c.get_application(client_id))
        assert isinstance(fetched, om.OpenIdConnectApplication)
        assert fetched.settings.oauth_client.grant_types == ["client_credentials"]
        # q: the config file's short client ids (``svc``) are below the SDK's 6-character minimum.
        assert [a.id for a in ok(await c.list_applications(q="Reports"))] == [client_id]
        ok(await c.deactivate_application(client_id))
        assert ok(await c.get_application(client_id)).status == "INACTIVE"
        ok(await c.delete_application(client_id))
        assert error_of(await c.get_application(client_id)).error_code == "E0000007"

    async def test_user_lifecycle_and_assignment(self, sdk: Sdk) -> None:
        """Create a user with a password, put them in a group, assign them to an app, deactivate and delete."""
        c = sdk.client
        user = ok(await c.create_user(om.CreateUserRequest(
            profile=om.UserProfile(first_name="Erin", last_name="Lee", email="erin@example.com",
                                   login="erin@example.com"),
            credentials=om.UserCredentialsWritable(password=om.PasswordCredential(value="Erin-password-1")))))
        assert user.status == "ACTIVE"
        assert ok(await c.get_user("erin@example.com")).id == user.id
        group = ok(await c.add_group(om.AddGroupRequest(profile=om.OktaUserGroupProfile(name="Ops"))))
        ok(await c.assign_user_to_group(group.id, user.id))
        assert [u.id for u in ok(await c.list_group_users(group.id))] == [user.id]
        assigned = ok(await c.assign_user_to_application("svc", om.AppUserAssignRequest(id=user.id)))
        assert assigned.id == user.id
        ok(await c.unassign_user_from_application("svc", user.id))
        ok(await c.deactivate_user(user.id))
        assert ok(await c.get_user(user.id)).status == "DEPROVISIONED"
        ok(await c.delete_user(user.id))
        assert error_of(await c.get_user(user.id)).error_code == "E0000007"
