"""``/api/v1/authorizationServers``: servers, scopes, claims, policies and rules (spec §1.1-1.5)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.authz.management.kit import ADMIN_TOKEN, ISSUER, SECOND_ADMIN_TOKEN, Api

AS = "/api/v1/authorizationServers"
RULE: dict[str, Any] = {
    "type": "RESOURCE_ACCESS", "name": "Writers", "priority": 1,
    "conditions": {"people": {"groups": {"include": ["EVERYONE"]}},
                   "grantTypes": {"include": ["client_credentials"]}, "scopes": {"include": ["orders:write"]}},
    "actions": {"token": {"accessTokenLifetimeMinutes": 60, "refreshTokenLifetimeMinutes": 0,
                          "refreshTokenWindowMinutes": 10080}},
}


def causes(response: httpx.Response) -> list[str]:
    return [c["errorSummary"] for c in response.json()["errorCauses"]]


def assert_validation(response: httpx.Response, field: str) -> None:
    assert response.status_code == 400, response.text
    assert response.json()["errorCode"] == "E0000001"
    assert any(c.startswith(field + ":") for c in causes(response)), causes(response)


def as_watermarks(api: Api) -> list[dict[str, Any]]:
    return [w for w in api.watermarks() if w["scope"] == "as"]


class TestAdminAuthentication:
    async def test_missing_token_is_e0000011(self, api: Api) -> None:
        """A request without an admin token is refused with Okta's E0000011 and status 401."""
        response = await api.client.get(AS, headers={"Authorization": ""})
        assert response.status_code == 401
        assert response.json()["errorCode"] == "E0000011"

    async def test_wrong_token_is_e0000011(self, api: Api) -> None:
        """A token that is not one of adminTokens is refused."""
        response = await api.client.get(AS, headers={"Authorization": f"SSWS {ADMIN_TOKEN}x"})
        assert response.status_code == 401
        assert response.json()["errorCode"] == "E0000011"

    async def test_bearer_scheme_is_refused(self, api: Api) -> None:
        """The admin token only counts under the SSWS scheme."""
        response = await api.client.get(AS, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert response.status_code == 401

    async def test_ssws_without_space_is_accepted(self, api: Api) -> None:
        """Okta's SDK sends ``SSWS<token>`` without a space; it is accepted."""
        response = await api.client.get(AS, headers={"Authorization": f"SSWS{ADMIN_TOKEN}"})
        assert response.status_code == 200

    async def test_every_configured_token_works(self, api: Api) -> None:
        """Any token of adminTokens is accepted (rotation: old and new side by side)."""
        response = await api.client.get(AS, headers={"Authorization": f"SSWS {SECOND_ADMIN_TOKEN}"})
        assert response.status_code == 200

    async def test_auth_is_checked_before_not_found(self, api: Api) -> None:
        """An unauthenticated caller cannot probe which objects exist."""
        response = await api.client.get(f"{AS}/nope", headers={"Authorization": ""})
        assert response.status_code == 401


class TestServers:
    async def test_list_in_okta_shape(self, api: Api) -> None:
        """The list holds each server with its issuer {issuer}/oauth2/{id}, audiences and status."""
        response = await api.client.get(AS)
        assert response.status_code == 200
        [server] = response.json()
        assert server["id"] == "orders"
        assert server["issuer"] == f"{ISSUER}/oauth2/orders"
        assert server["audiences"] == ["https://api.example.com/orders"]
        assert server["status"] == "ACTIVE"

    async def test_create_returns_201_and_logs(self, api: Api) -> None:
        """A created server gets an Okta-style id, 201, its issuer, and an oauth2.as.created event."""
        response = await api.client.post(AS, json={"name": "Pets", "description": "Pets API",
                                                   "audiences": ["https://api.example.com/pets"],
                                                   "system": False, "_links": {}, "id": "ignored"})
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["id"].startswith("aus") and len(body["id"]) == 20
        assert body["issuer"] == f"{ISSUER}/oauth2/{body['id']}"
        [event] = api.events("oauth2.as.created")
        assert event["target"][0]["id"] == body["id"]
        assert event["target"][0]["changeDetails"]["to"]["name"] == "Pets"
        assert (await api.client.get(f"{AS}/{body['id']}")).json()["name"] == "Pets"

    async def test_create_generates_signing_keys(self, api: Api) -> None:
        """A new server can sign at once: it has an ACTIVE RS256 key."""
        created = (await api.client.post(AS, json={"name": "Pets", "audiences": ["https://api.example.com/pets"]})).json()
        keys = (await api.client.get(f"{AS}/{created['id']}/credentials/keys")).json()
        assert [k["status"] for k in keys].count("ACTIVE") == 1
        assert all(k["alg"] == "RS256" and k["use"] == "sig" for k in keys)

    async def test_relative_resource_uri_is_rejected(self, api: Api) -> None:
        """The resource URI must be absolute: a relative one is E0000001 naming audiences."""
        response = await api.client.post(AS, json={"name": "Pets", "audiences": ["/pets"]})
        assert_validation(response, "audiences")

    async def test_second_audience_is_rejected(self, api: Api) -> None:
        """One resource per server: a second audience is E0000001 naming audiences."""
        response = await api.client.post(AS, json={"name": "Pets", "audiences": [
            "https://api.example.com/pets", "https://api.example.com/cats"]})
        assert_validation(response, "audiences")

    async def test_overlapping_resource_is_rejected(self, api: Api) -> None:
        """Two servers may not cover the same path (config.invariants, shared with the file)."""
        response = await api.client.post(AS, json={"name": "Again", "audiences": ["https://other.example.com/orders"]})
        assert response.status_code == 400
        assert any("already covered" in c for c in causes(response))

    async def test_unknown_property_is_rejected(self, api: Api) -> None:
        """A misspelt property is an error naming it, not silently ignored."""
        response = await api.client.post(AS, json={"name": "Pets", "audiences": ["https://api.example.com/pets"],
                                                   "audience": "x"})
        assert_validation(response, "audience")

    async def test_access_token_claims_is_set_read_and_validated_through_the_api(self, api: Api) -> None:
        """``accessTokenClaims`` (issue 10 item 3) is one of the server's own fields over the API as in the file:
        set on create and replace, read back, and an unknown value is E0000001 naming it."""
        created = (await api.client.post(AS, json={"name": "Pets", "audiences": ["https://api.example.com/pets"],
                                                   "accessTokenClaims": "rfc9068"})).json()
        assert created["accessTokenClaims"] == "rfc9068"
        url = f"{AS}/{created['id']}"
        assert (await api.client.get(url)).json()["accessTokenClaims"] == "rfc9068"
        replaced = await api.client.put(url, json={"name": "Pets", "audiences": ["https://api.example.com/pets"],
                                                   "accessTokenClaims": "okta"})
        assert replaced.status_code == 200 and replaced.json()["accessTokenClaims"] == "okta"
        bad = await api.client.put(url, json={"name": "Pets", "audiences": ["https://api.example.com/pets"],
                                              "accessTokenClaims": "jwt"})
        assert_validation(bad, "accessTokenClaims")

    async def test_malformed_json_is_e0000003(self, api: Api) -> None:
        """A body that is not a JSON object is Okta's E0000003."""
        response = await api.client.post(AS, content=b"{nope", headers={"Content-Type": "application/json"})
        assert response.status_code == 400
        assert response.json()["errorCode"] == "E0000003"

    async def test_missing_is_e0000007(self, api: Api) -> None:
        """An unknown server id is 404 E0000007."""
        response = await api.client.get(f"{AS}/nope")
        assert response.status_code == 404
        assert response.json()["errorCode"] == "E0000007"

    async def test_wrong_method_is_e0000022(self, api: Api) -> None:
        """A method the path does not support is 405 E0000022."""
        response = await api.client.patch(f"{AS}/orders", json={})
        assert response.status_code == 405
        assert response.json()["errorCode"] == "E0000022"

    async def test_replace_keeps_scopes_and_policies(self, api: Api) -> None:
        """PUT replaces the server's own fields; scopes and policies (separate resources) stay."""
        response = await api.client.put(f"{AS}/orders", json={"name": "Orders v2", "description": "d",
                                                               "audiences": ["https://api.example.com/orders"]})
        assert response.status_code == 200, response.text
        assert response.json()["name"] == "Orders v2"
        doc = api.store.get_object("authorization_server", "orders")
        assert doc is not None
        assert doc.origin == "api"
        assert [s["name"] for s in doc.document["scopes"]] == ["orders:read", "orders:write"]
        assert len(doc.document["policies"][0]["rules"]) == 1
        assert api.events("oauth2.as.updated")

    async def test_replace_validates(self, api: Api) -> None:
        """PUT with a relative resource is E0000001, and nothing changes."""
        response = await api.client.put(f"{AS}/orders", json={"name": "Orders", "audiences": ["orders"]})
        assert_validation(response, "audiences")
        assert as_watermarks(api) == []

    async def test_lifecycle(self, api: Api) -> None:
        """deactivate and activate answer 204 and set the status; each logs its event."""
        assert (await api.client.post(f"{AS}/orders/lifecycle/deactivate")).status_code == 204
        assert (await api.client.get(f"{AS}/orders")).json()["status"] == "INACTIVE"
        assert (await api.client.post(f"{AS}/orders/lifecycle/activate")).status_code == 204
        assert (await api.client.get(f"{AS}/orders")).json()["status"] == "ACTIVE"
        assert api.events("oauth2.as.deactivated") and api.events("oauth2.as.activated")

    async def test_lifecycle_of_missing_server(self, api: Api) -> None:
        """Lifecycle on an unknown server is E0000007."""
        assert (await api.client.post(f"{AS}/nope/lifecycle/activate")).status_code == 404

    async def test_delete(self, api: Api) -> None:
        """DELETE answers 204; the server is gone and the deletion is logged."""
        assert (await api.client.delete(f"{AS}/orders")).status_code == 204
        assert (await api.client.get(f"{AS}/orders")).status_code == 404
        assert api.events("oauth2.as.deleted")
        assert (await api.client.delete(f"{AS}/orders")).status_code == 404

    async def test_pagination(self, api: Api) -> None:
        """limit and after page through the list; Link rel=next points at the next page."""
        for name in ("a", "b"):
            await api.client.post(AS, json={"name": name, "audiences": [f"https://api.example.com/{name}"]})
        first = await api.client.get(AS, params={"limit": 2})
        assert len(first.json()) == 2
        assert 'rel="next"' in first.headers["link"]
        next_url = first.headers["link"].split(", ")[-1].split(";")[0].strip("<>")
        second = await api.client.get(next_url)
        assert len(second.json()) == 1
        assert 'rel="next"' not in second.headers["link"]
        assert {s["id"] for s in first.json()}.isdisjoint({s["id"] for s in second.json()})

    async def test_bad_limit(self, api: Api) -> None:
        """A non-numeric limit is E0000001."""
        assert_validation(await api.client.get(AS, params={"limit": "x"}), "limit")


class TestScopes:
    async def test_create_get_list(self, api: Api) -> None:
        """A created scope gets an scp id and 201; the list holds it and the system OIDC scopes."""
        response = await api.client.post(f"{AS}/orders/scopes", json={"name": "orders:admin", "system": False,
                                                                      "consent": "IMPLICIT"})
        assert response.status_code == 201, response.text
        scope = response.json()
        assert scope["id"].startswith("scp")
        assert (await api.client.get(f"{AS}/orders/scopes/{scope['id']}")).json()["name"] == "orders:admin"
        listed = (await api.client.get(f"{AS}/orders/scopes")).json()
        names = {s["name"]: s["system"] for s in listed}
        assert names["orders:admin"] is False
        assert names["openid"] is True
        assert api.events("oauth2.scope.created")

    async def test_duplicate_name_is_rejected(self, api: Api) -> None:
        """Scope names are unique per server: a duplicate is E0000001 naming name."""
        assert_validation(await api.client.post(f"{AS}/orders/scopes", json={"name": "orders:read"}), "name")

    async def test_oidc_scope_cannot_be_declared(self, api: Api) -> None:
        """openid exists on every server; declaring it is E0000001 naming name."""
        assert_validation(await api.client.post(f"{AS}/orders/scopes", json={"name": "openid"}), "name")

    async def test_invalid_name_is_rejected(self, api: Api) -> None:
        """Scope names follow spec §1.2: 'okta.' is reserved."""
        assert_validation(await api.client.post(f"{AS}/orders/scopes", json={"name": "okta.users.read"}), "name")

    async def test_rename_keeps_the_id(self, api: Api) -> None:
        """A scope keeps its id when renamed (ids are stable)."""
        listed = (await api.client.get(f"{AS}/orders/scopes")).json()
        write = next(s for s in listed if s["name"] == "orders:write")
        response = await api.client.put(f"{AS}/orders/scopes/{write['id']}", json={"name": "orders:change"})
        assert response.status_code == 200, response.text
        assert response.json()["id"] == write["id"]
        again = (await api.client.get(f"{AS}/orders/scopes/{write['id']}")).json()
        assert again["name"] == "orders:change"

    async def test_scope_in_use_cannot_be_deleted(self, api: Api) -> None:
        """A scope a rule allows cannot be deleted: the reference would dangle."""
        listed = (await api.client.get(f"{AS}/orders/scopes")).json()
        read = next(s for s in listed if s["name"] == "orders:read")
        response = await api.client.delete(f"{AS}/orders/scopes/{read['id']}")
        assert response.status_code == 400
        assert any("orders:read" in c for c in causes(response))

    async def test_delete(self, api: Api) -> None:
        """An unused scope is deleted with 204 and oauth2.scope.deleted."""
        listed = (await api.client.get(f"{AS}/orders/scopes")).json()
        write = next(s for s in listed if s["name"] == "orders:write")
        assert (await api.client.delete(f"{AS}/orders/scopes/{write['id']}")).status_code == 204
        assert (await api.client.get(f"{AS}/orders/scopes/{write['id']}")).status_code == 404
        assert api.events("oauth2.scope.deleted")

    async def test_system_scope_cannot_be_deleted(self, api: Api) -> None:
        """The OIDC scopes are system scopes: deleting one is E0000001."""
        listed = (await api.client.get(f"{AS}/orders/scopes")).json()
        openid = next(s for s in listed if s["name"] == "openid")
        assert_validation(await api.client.delete(f"{AS}/orders/scopes/{openid['id']}"), "system")

    async def test_scope_of_missing_server(self, api: Api) -> None:
        """Scopes of an unknown server are E0000007."""
        assert (await api.client.get(f"{AS}/nope/scopes")).status_code == 404
        assert (await api.client.get(f"{AS}/orders/scopes/scpnope")).status_code == 404


class TestClaims:
    async def test_create_groups_claim_in_okta_spelling(self, api: Api) -> None:
        """Okta spells group_filter_type in snake case; it round-trips."""
        response = await api.client.post(f"{AS}/orders/claims", json={
            "name": "groups", "status": "ACTIVE", "claimType": "RESOURCE", "valueType": "GROUPS", "value": "eng",
            "group_filter_type": "STARTS_WITH", "alwaysIncludeInToken": True, "conditions": {"scopes": []}})
        assert response.status_code == 201, response.text
        claim = response.json()
        assert claim["id"].startswith("ocl")
        assert claim["group_filter_type"] == "STARTS_WITH"
        assert (await api.client.get(f"{AS}/orders/claims")).json()[0]["name"] == "groups"
        assert api.events("oauth2.claim.created")

    async def test_reserved_claim_is_rejected(self, api: Api) -> None:
        """A reserved claim name (sub) is E0000001 naming name."""
        response = await api.client.post(f"{AS}/orders/claims", json={"name": "sub", "value": "user.email"})
        assert_validation(response, "name")

    async def test_groups_claim_needs_filter(self, api: Api) -> None:
        """A GROUPS claim without a filter type is refused."""
        response = await api.client.post(f"{AS}/orders/claims", json={"name": "g", "valueType": "GROUPS", "value": "x"})
        assert response.status_code == 400

    async def test_replace_and_delete(self, api: Api) -> None:
        """A claim is replaced in place (same id) and deleted with 204."""
        created = (await api.client.post(f"{AS}/orders/claims", json={"name": "email", "value": "user.email"})).json()
        replaced = await api.client.put(f"{AS}/orders/claims/{created['id']}", json={"name": "mail", "value": "user.email"})
        assert replaced.json()["id"] == created["id"]
        assert (await api.client.delete(f"{AS}/orders/claims/{created['id']}")).status_code == 204
        assert (await api.client.get(f"{AS}/orders/claims/{created['id']}")).status_code == 404


class TestPolicies:
    async def test_create_at_priority_one_moves_the_others(self, api: Api) -> None:
        """A policy created at priority 1 goes first; the others move down, priorities stay contiguous."""
        response = await api.client.post(f"{AS}/orders/policies", json={
            "type": "OAUTH_AUTHORIZATION_POLICY", "name": "First", "description": "d", "priority": 1,
            "conditions": {"clients": {"include": ["ALL_CLIENTS"]}}, "system": False})
        assert response.status_code == 201, response.text
        assert response.json()["id"].startswith("00p")
        listed = (await api.client.get(f"{AS}/orders/policies")).json()
        assert [(p["name"], p["priority"]) for p in listed] == [("First", 1), ("Services", 2)]
        assert api.events("policy.lifecycle.create")

    async def test_create_without_priority_goes_last(self, api: Api) -> None:
        """A policy without a priority gets the lowest one."""
        response = await api.client.post(f"{AS}/orders/policies", json={"name": "Last"})
        assert response.json()["priority"] == 2

    async def test_unknown_client_is_rejected(self, api: Api) -> None:
        """A policy naming a client that does not exist is E0000001."""
        response = await api.client.post(f"{AS}/orders/policies", json={
            "name": "Ghost", "conditions": {"clients": {"include": ["ghost"]}}})
        assert response.status_code == 400
        assert any("ghost" in c for c in causes(response))

    async def test_replace_keeps_rules_and_id(self, api: Api) -> None:
        """PUT on a policy keeps its id and its rules."""
        response = await api.client.put(f"{AS}/orders/policies/00porders0000000001", json={
            "name": "Services v2", "priority": 1, "conditions": {"clients": {"include": ["svc", "web"]}}})
        assert response.status_code == 200, response.text
        rules = (await api.client.get(f"{AS}/orders/policies/00porders0000000001/rules")).json()
        assert [r["id"] for r in rules] == ["0prorders0000000001"]
        assert api.events("policy.lifecycle.update")

    async def test_lifecycle_and_delete(self, api: Api) -> None:
        """A policy is deactivated (204, INACTIVE), then deleted (204, gone)."""
        path = f"{AS}/orders/policies/00porders0000000001"
        assert (await api.client.post(f"{path}/lifecycle/deactivate")).status_code == 204
        assert (await api.client.get(path)).json()["status"] == "INACTIVE"
        assert (await api.client.delete(path)).status_code == 204
        assert (await api.client.get(path)).status_code == 404
        assert api.events("policy.lifecycle.deactivate") and api.events("policy.lifecycle.delete")

    async def test_missing_policy(self, api: Api) -> None:
        """An unknown policy id is E0000007."""
        assert (await api.client.get(f"{AS}/orders/policies/00pnope")).status_code == 404
        assert (await api.client.post(f"{AS}/orders/policies/00pnope/lifecycle/activate")).status_code == 404


class TestRules:
    path = f"{AS}/orders/policies/00porders0000000001/rules"

    async def test_create(self, api: Api) -> None:
        """A rule is created with 201, a 0pr id and policy.rule.add."""
        response = await api.client.post(self.path, json=RULE)
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["id"].startswith("0pr")
        assert body["actions"]["token"]["accessTokenLifetimeMinutes"] == 60
        assert body["conditions"]["scopes"]["include"] == ["orders:write"]
        assert api.events("policy.rule.add")

    @pytest.mark.parametrize(("token", "field"), [
        ({"accessTokenLifetimeMinutes": 4}, "actions.token.accessTokenLifetimeMinutes"),
        ({"accessTokenLifetimeMinutes": 1441}, "actions.token.accessTokenLifetimeMinutes"),
        ({"accessTokenLifetimeMinutes": 60, "refreshTokenLifetimeMinutes": 30},
         "actions.token.refreshTokenLifetimeMinutes"),
        ({"accessTokenLifetimeMinutes": 5, "refreshTokenWindowMinutes": 9}, "actions.token.refreshTokenWindowMinutes"),
    ])
    async def test_lifetime_invariants(self, api: Api, token: dict[str, int], field: str) -> None:
        """Lifetimes outside spec §1.5 are E0000001 with a cause naming the field."""
        response = await api.client.post(self.path, json={**RULE, "actions": {"token": token}})
        assert_validation(response, field)

    async def test_undefined_scope_is_rejected(self, api: Api) -> None:
        """A rule allowing a scope the server does not define is refused."""
        rule = {**RULE, "conditions": {**RULE["conditions"], "scopes": {"include": ["nope"]}}}
        response = await api.client.post(self.path, json=rule)
        assert response.status_code == 400
        assert any("nope" in c for c in causes(response))

    async def test_inline_hook_is_not_supported(self, api: Api) -> None:
        """Inline hooks are not implemented, so a rule naming one is refused rather than half-applied."""
        rule = {**RULE, "actions": {"token": {"accessTokenLifetimeMinutes": 60, "inlineHook": {"id": "cal1"}}}}
        assert_validation(await api.client.post(self.path, json=rule), "actions.token.inlineHook")

    async def test_replace_keeps_id_and_lifecycle(self, api: Api) -> None:
        """PUT keeps the rule's id; deactivate sets INACTIVE; delete removes it."""
        rule_path = f"{self.path}/0prorders0000000001"
        response = await api.client.put(rule_path, json={**RULE, "name": "Read v2",
                                                         "conditions": {**RULE["conditions"],
                                                                        "scopes": {"include": ["orders:read"]}}})
        assert response.status_code == 200, response.text
        assert response.json()["id"] == "0prorders0000000001"
        assert (await api.client.post(f"{rule_path}/lifecycle/deactivate")).status_code == 204
        assert (await api.client.get(rule_path)).json()["status"] == "INACTIVE"
        assert (await api.client.delete(rule_path)).status_code == 204
        assert (await api.client.get(rule_path)).status_code == 404
        assert api.events("policy.rule.update") and api.events("policy.rule.deactivate")
        assert api.events("policy.rule.delete")

    async def test_missing_rule(self, api: Api) -> None:
        """An unknown rule id is E0000007."""
        assert (await api.client.get(f"{self.path}/0prnope")).status_code == 404
        assert (await api.client.put(f"{self.path}/0prnope", json=RULE)).status_code == 404
