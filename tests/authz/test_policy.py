"""Policy and rule evaluation (spec §3.1-§3.3): the brief's semantics, one test each."""

from __future__ import annotations

from typing import Any

import pytest

from authz.errors import OAuthError
from authz.policy import (
    NO_MATCHING_POLICY,
    Principal,
    ScopeRequest,
    evaluate,
    require_match,
    resolve_scopes,
)
from config.schema import AuthorizationServerConfig


def rule(name: str, priority: int, grants: list[str], scopes: list[str], **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": name, "priority": priority, "id": f"0pr{name}",
                           "conditions": {"grantTypes": {"include": grants}, "scopes": {"include": scopes}}}
    if "people" in extra:
        doc["conditions"]["people"] = extra.pop("people")
    doc.update(extra)
    return doc


def server(policies: list[dict[str, Any]], **extra: Any) -> AuthorizationServerConfig:
    return AuthorizationServerConfig.model_validate({
        "id": "orders", "name": "Orders", "audiences": ["https://api.example.com/orders"],
        "scopes": [{"name": "orders:read", "default": True}, {"name": "orders:write"}, {"name": "orders:admin"}],
        "policies": policies, **extra})


def policy(name: str, priority: int, rules: list[dict[str, Any]], clients: list[str] | None = None,
           **extra: Any) -> dict[str, Any]:
    return {"name": name, "priority": priority, "id": f"00p{name}",
            "conditions": {"clients": {"include": clients or ["ALL_CLIENTS"]}}, "rules": rules, **extra}


ALICE = Principal("alice", frozenset({"engineering"}))


def req(*scopes: str) -> ScopeRequest:
    return ScopeRequest(tuple(scopes), defaulted=False)


class TestEvaluationOrder:
    def test_policies_by_priority_then_rules_by_priority_first_match_wins(self) -> None:
        """The lowest priority number is evaluated first; the first matching rule is applied."""
        s = server([
            policy("second", 2, [rule("b1", 1, ["client_credentials"], ["*"], actions={"token": {"accessTokenLifetimeMinutes": 10}})]),
            policy("first", 1, [rule("a2", 2, ["client_credentials"], ["*"]), rule("a1", 1, ["client_credentials"], ["orders:read"])]),
        ])
        ev = evaluate(s, "svc", None, "client_credentials", req("orders:read"))
        assert ev.policy is not None and ev.policy.name == "first"
        assert ev.rule is not None and ev.rule.name == "a1"

    def test_falls_through_to_next_policy_when_no_rule_matches(self) -> None:
        """'If none of the Policy Rules have conditions that can be met, then the next Policy in the list is considered.'"""
        s = server([
            policy("p1", 1, [rule("r1", 1, ["password"], ["*"])]),
            policy("p2", 2, [rule("r2", 1, ["client_credentials"], ["orders:read"])]),
        ])
        ev = evaluate(s, "svc", None, "client_credentials", req("orders:read"))
        assert ev.rule is not None and ev.rule.name == "r2"
        assert ev.trials[0].rules[0].reason.startswith("grant type client_credentials is not in")

    def test_inactive_policies_rules_and_ruleless_policies_are_skipped(self) -> None:
        """Inactive policies and rules, and policies without active rules, are never applied."""
        s = server([
            policy("off", 1, [rule("r", 1, ["client_credentials"], ["*"])], status="INACTIVE"),
            policy("empty", 2, [rule("r", 1, ["client_credentials"], ["*"], status="INACTIVE")]),
        ])
        ev = evaluate(s, "svc", None, "client_credentials", req("orders:read"))
        assert not ev.matched
        assert [t.reason for t in ev.trials] == ["policy is INACTIVE", "policy has no ACTIVE rules"]

    def test_client_condition_limits_the_policy(self) -> None:
        """A policy applies only to the clients it includes (or ALL_CLIENTS)."""
        s = server([policy("p", 1, [rule("r", 1, ["client_credentials"], ["*"])], clients=["reporting"])])
        assert evaluate(s, "reporting", None, "client_credentials", req("orders:read")).matched
        other = evaluate(s, "billing", None, "client_credentials", req("orders:read"))
        assert not other.matched and "billing is not in the policy's clients" in other.trials[0].reason

    def test_no_match_raises_the_spec_error_with_401(self) -> None:
        """No policy or rule matching → access_denied with Okta's exact description, 401 on /token (§9 D9)."""
        ev = evaluate(server([]), "svc", None, "client_credentials", req("orders:read"))
        with pytest.raises(OAuthError) as info:
            require_match(ev)
        assert info.value.get_body() == {"error": "access_denied", "error_description": NO_MATCHING_POLICY}
        assert info.value.status_code == 401 and info.value.reason == "no_matching_policy"


class TestScopes:
    def test_partial_scope_grant_fails_and_names_the_denied_scope(self) -> None:
        """A request for several scopes of which the rule allows only some matches nothing (brief, Limits)."""
        s = server([policy("p", 1, [rule("r", 1, ["client_credentials"], ["orders:read"])])])
        ev = evaluate(s, "svc", None, "client_credentials", req("orders:read", "orders:write"))
        assert not ev.matched and ev.granted == ()
        assert ev.debug_data()["denied_scopes"] == "orders:read orders:write"
        assert "orders:write" in ev.trials[0].rules[0].reason

    def test_oidc_scopes_need_the_rule_by_default(self) -> None:
        """Spec §9 D1: OIDC scopes must be listed in the rule (or '*') unless oidcScopesImplicit is set."""
        rules = [rule("r", 1, ["password"], ["orders:read"])]
        strict = server([policy("p", 1, rules)])
        assert not evaluate(strict, "web", ALICE, "password", req("openid", "orders:read")).matched
        listed = server([policy("p", 1, [rule("r", 1, ["password"], ["openid", "orders:read"])])])
        assert evaluate(listed, "web", ALICE, "password", req("openid", "orders:read")).matched
        star = server([policy("p", 1, [rule("r", 1, ["password"], ["*"])])])
        assert evaluate(star, "web", ALICE, "password", req("openid", "profile", "orders:read")).matched

    def test_oidc_scopes_exist_undefined_but_still_need_a_policy_and_rule(self) -> None:
        """OIDC scopes need no definition on the AS, but without a policy and rule nothing is granted."""
        s = server([])
        request = resolve_scopes(s, "openid profile", "password")
        assert request.scopes == ("openid", "profile")
        assert not evaluate(s, "web", ALICE, "password", request).matched
        implicit = server([], oidcScopesImplicit=True)
        assert not evaluate(implicit, "web", ALICE, "password", request).matched

    def test_oidc_scopes_implicit_option_grants_them_by_default(self) -> None:
        """The 2016 reading, 'The rule grants the OpenID Connect scopes by default', is the per-AS option."""
        s = server([policy("p", 1, [rule("r", 1, ["password"], ["orders:read"])])], oidcScopesImplicit=True)
        ev = evaluate(s, "web", ALICE, "password", req("openid", "profile", "orders:read"))
        assert ev.matched and ev.granted == ("openid", "profile", "orders:read")
        assert not evaluate(s, "web", ALICE, "password", req("openid", "orders:write")).matched

    def test_oidc_scopes_combine_with_custom_scopes(self) -> None:
        """'OpenID scopes can be requested with custom scopes.'"""
        s = server([policy("p", 1, [rule("r", 1, ["password"], ["openid", "email", "orders:read"])])])
        ev = evaluate(s, "web", ALICE, "password", resolve_scopes(s, "openid email orders:read", "password"))
        assert ev.granted == ("openid", "email", "orders:read")

    def test_omitted_scope_uses_default_scopes_filtered_by_the_rule(self) -> None:
        """'Okta returns all default scopes permitted by the access policy rule.'"""
        s = AuthorizationServerConfig.model_validate({
            "id": "a", "name": "A", "audiences": ["https://api.example.com/a"],
            "scopes": [{"name": "a:read", "default": True}, {"name": "a:list", "default": True}, {"name": "a:write"}],
            "policies": [policy("p", 1, [rule("r", 1, ["client_credentials"], ["a:read", "a:write"])])]})
        request = resolve_scopes(s, None, "client_credentials")
        assert request.defaulted and request.scopes == ("a:read", "a:list")
        ev = evaluate(s, "svc", None, "client_credentials", request)
        assert ev.granted == ("a:read",)

    def test_omitted_scope_without_defaults_is_invalid_scope(self) -> None:
        """No default scopes → invalid_scope no_default_scopes with Okta's description."""
        s = AuthorizationServerConfig.model_validate({"id": "a", "name": "A", "audiences": ["https://x.example/a"],
                                                      "scopes": [{"name": "a:read"}]})
        with pytest.raises(OAuthError) as info:
            resolve_scopes(s, None, "client_credentials")
        assert info.value.get_body() == {"error": "invalid_scope", "error_description":
            "The authorization server resource does not have any configured default scopes, 'scope' must be provided."}
        assert info.value.reason == "no_default_scopes"

    def test_undefined_scope_is_invalid_scope(self) -> None:
        """A scope the AS does not define (including 'groups') → invalid_scope no_matching_scope."""
        for scope in ("orders:delete", "openid groups"):
            with pytest.raises(OAuthError) as info:
                resolve_scopes(server([]), scope, "password")
            assert info.value.error == "invalid_scope"
            assert info.value.description == "One or more scopes are not configured for the authorization server resource."

    def test_openid_with_client_credentials_is_refused(self) -> None:
        """'Cannot request 'openid' scopes using client credentials.'"""
        with pytest.raises(OAuthError) as info:
            resolve_scopes(server([]), "openid orders:read", "client_credentials")
        assert info.value.description == "Cannot request 'openid' scopes using client credentials."

    def test_profile_without_openid_is_refused(self) -> None:
        """OIDC claim scopes without openid → Okta's openid_scope_required."""
        with pytest.raises(OAuthError) as info:
            resolve_scopes(server([]), "profile orders:read", "password")
        assert info.value.reason == "openid_scope_required"


class TestPeople:
    def test_group_include_user_include_and_exclude_wins(self) -> None:
        """People: include is OR over users and groups; an exclusion wins over any inclusion."""
        by_group = {"groups": {"include": ["engineering"]}}
        by_user = {"users": {"include": ["bob"]}, "groups": {"include": []}}
        excluded = {"users": {"exclude": ["alice"]}, "groups": {"include": ["EVERYONE"]}}
        for people, expected in ((by_group, True), (by_user, False), (excluded, False)):
            s = server([policy("p", 1, [rule("r", 1, ["password"], ["*"], people=people)])])
            assert evaluate(s, "web", ALICE, "password", req("orders:read")).matched is expected

    def test_no_user_matches_people_only_for_client_credentials(self) -> None:
        """Spec §9 D4: a user-less request satisfies people conditions only for client_credentials."""
        people = {"users": {"include": ["bob"]}, "groups": {"include": []}}
        s = server([policy("p", 1, [rule("r", 1, ["client_credentials", "password"], ["*"], people=people)])])
        assert evaluate(s, "svc", None, "client_credentials", req("orders:read")).matched
        assert not evaluate(s, "svc", None, "password", req("orders:read")).matched

    def test_debug_data_names_policy_rule_and_every_reason(self) -> None:
        """The trace says which policies and rules were tried and why each did not match."""
        s = server([policy("p", 1, [rule("r1", 1, ["password"], ["orders:read"]),
                                    rule("r2", 2, ["client_credentials"], ["*"])])])
        data = evaluate(s, "svc", None, "client_credentials", req("orders:write")).debug_data()
        assert data["policy"] == "00pp" and data["rule"] == "0prr2"
        assert data["granted_scopes"] == "orders:write"
        tried = data["policy_evaluation"][0]["rules"]
        assert tried[0]["matched"] is False and "grant type" in tried[0]["reason"]
        assert tried[1]["matched"] is True
