"""``/api/v1/apps``: OAuth clients in Okta's shape, lifecycle and assignments (spec §1.6)."""

from __future__ import annotations

from typing import Any

from authz.passwords import verify_secret
from tests.authz.management.kit import Api
from tests.authz.management.test_servers import assert_validation

APPS = "/api/v1/apps"


def oidc_app(**settings: Any) -> dict[str, Any]:
    return {
        "name": "oidc_client", "label": "Reports", "signOnMode": "OPENID_CONNECT",
        "accessibility": {"selfService": False}, "visibility": {"hide": {"iOS": True, "web": True}},
        "credentials": {"oauthClient": {"token_endpoint_auth_method": "client_secret_basic", "autoKeyRotation": True}},
        "settings": {"oauthClient": {"grant_types": ["client_credentials"], "response_types": ["token"],
                                     "application_type": "service", "redirect_uris": [], **settings}},
    }


class TestApps:
    async def test_create_generates_id_and_secret(self, api: Api) -> None:
        """An app created without client_id or secret gets both; the secret is shown once and stored hashed."""
        response = await api.client.post(APPS, json=oidc_app())
        assert response.status_code == 200, response.text
        body = response.json()
        client_id = body["credentials"]["oauthClient"]["client_id"]
        secret = body["credentials"]["oauthClient"]["client_secret"]
        assert body["id"] == client_id and client_id.startswith("0oa")
        assert body["signOnMode"] == "OPENID_CONNECT" and body["label"] == "Reports"
        stored = api.store.get_object("app", client_id)
        assert stored is not None
        assert "clientSecret" not in stored.document
        assert verify_secret(secret, stored.secret_hash)
        assert "client_secret" not in (await api.client.get(f"{APPS}/{client_id}")).json()["credentials"]["oauthClient"]
        assert api.events("app.oauth2.client.lifecycle.create")

    async def test_create_with_given_client_id_and_secret(self, api: Api) -> None:
        """A given client_id and client_secret are used."""
        body = oidc_app()
        body["credentials"]["oauthClient"].update(client_id="reports", client_secret="reports-secret-0123456789")
        response = await api.client.post(APPS, json=body)
        assert response.json()["id"] == "reports"
        stored = api.store.get_object("app", "reports")
        assert stored is not None
        assert verify_secret("reports-secret-0123456789", stored.secret_hash)

    async def test_duplicate_client_id_is_rejected(self, api: Api) -> None:
        """client_id is unique."""
        body = oidc_app()
        body["credentials"]["oauthClient"]["client_id"] = "svc"
        assert_validation(await api.client.post(APPS, json=body), "credentials.oauthClient.client_id")

    async def test_short_secret_is_rejected(self, api: Api) -> None:
        """A client secret has 14 to 100 characters: the cause names Okta's field."""
        body = oidc_app()
        body["credentials"]["oauthClient"]["client_secret"] = "short"
        assert_validation(await api.client.post(APPS, json=body), "credentials.oauthClient.client_secret")

    async def test_unknown_grant_is_rejected(self, api: Api) -> None:
        """An unknown grant type is E0000001 naming settings.oauthClient.grant_types."""
        assert_validation(await api.client.post(APPS, json=oidc_app(grant_types=["magic"])),
                          "settings.oauthClient.grant_types")

    async def test_code_flow_needs_redirect(self, api: Api) -> None:
        """authorization_code without redirect_uris is refused."""
        response = await api.client.post(APPS, json=oidc_app(grant_types=["authorization_code"]))
        assert response.status_code == 400

    async def test_other_sign_on_modes_are_refused(self, api: Api) -> None:
        """scopegate serves OAuth clients only."""
        assert_validation(await api.client.post(APPS, json={**oidc_app(), "signOnMode": "SAML_2_0"}), "signOnMode")

    async def test_unknown_setting_is_rejected(self, api: Api) -> None:
        """A misspelt oauthClient setting is an error naming it."""
        assert_validation(await api.client.post(APPS, json=oidc_app(grant_type=["client_credentials"])),
                          "settings.oauthClient.grant_type")

    async def test_get_list_and_missing(self, api: Api) -> None:
        """Apps are listed and read in Okta's shape; an unknown id is E0000007."""
        listed = (await api.client.get(APPS)).json()
        assert {a["id"] for a in listed} == {"svc", "web"}
        web = (await api.client.get(f"{APPS}/web")).json()
        assert web["settings"]["oauthClient"]["redirect_uris"] == ["https://app.test/cb"]
        assert (await api.client.get(f"{APPS}/nope")).status_code == 404

    async def test_replace_keeps_secret_and_assignments(self, api: Api) -> None:
        """PUT without a secret keeps the stored hash and the app's assignments."""
        before = api.store.get_object("app", "web")
        assert before is not None
        body = oidc_app(grant_types=["authorization_code"], redirect_uris=["https://app.test/cb2"],
                        response_types=["code"], application_type="web")
        response = await api.client.put(f"{APPS}/web", json={**body, "label": "Web v2"})
        assert response.status_code == 200, response.text
        after = api.store.get_object("app", "web")
        assert after is not None
        assert after.secret_hash == before.secret_hash
        assert after.document["assignments"] == before.document["assignments"]
        assert after.document["name"] == "Web v2"
        assert api.events("app.oauth2.client.lifecycle.update")

    async def test_lifecycle_and_delete(self, api: Api) -> None:
        """deactivate → INACTIVE (200 {}), activate → ACTIVE, delete → 204 and gone."""
        assert (await api.client.post(f"{APPS}/svc/lifecycle/deactivate")).status_code == 200
        assert (await api.client.get(f"{APPS}/svc")).json()["status"] == "INACTIVE"
        assert (await api.client.post(f"{APPS}/svc/lifecycle/activate")).status_code == 200
        assert (await api.client.get(f"{APPS}/svc")).json()["status"] == "ACTIVE"
        assert api.events("app.oauth2.client.lifecycle.deactivate")
        # svc is named by a policy: deleting it would leave the policy pointing nowhere.
        assert (await api.client.delete(f"{APPS}/svc")).status_code == 400
        assert (await api.client.delete(f"{APPS}/web")).status_code == 204
        assert (await api.client.get(f"{APPS}/web")).status_code == 404
        assert api.events("app.oauth2.client.lifecycle.delete")


class TestAssignments:
    async def test_users_lists_direct_and_group_assignments(self, api: Api) -> None:
        """/apps/{id}/users holds the users with access: USER for direct, GROUP through a group."""
        users = {u["id"]: u["scope"] for u in (await api.client.get(f"{APPS}/web/users")).json()}
        assert users == {"alice": "USER", "bob": "GROUP"}

    async def test_assign_and_unassign_user(self, api: Api) -> None:
        """POST assigns a user (200 AppUser); DELETE unassigns (204); unknown ones are E0000007."""
        response = await api.client.post(f"{APPS}/svc/users", json={"id": "dave", "scope": "USER"})
        assert response.status_code == 200, response.text
        assert response.json()["credentials"]["userName"] == "dave@example.com"
        assert (await api.client.get(f"{APPS}/svc/users/dave")).status_code == 200
        assert (await api.client.delete(f"{APPS}/svc/users/dave")).status_code == 204
        assert (await api.client.get(f"{APPS}/svc/users/dave")).status_code == 404
        assert (await api.client.delete(f"{APPS}/svc/users/dave")).status_code == 404
        assert (await api.client.post(f"{APPS}/svc/users", json={"id": "ghost"})).status_code == 404
        assert (await api.client.post(f"{APPS}/nope/users", json={"id": "dave"})).status_code == 404
        assert_validation(await api.client.post(f"{APPS}/svc/users", json={}), "id")
        assert api.events("application.user_membership.add") and api.events("application.user_membership.remove")

    async def test_assign_and_unassign_group(self, api: Api) -> None:
        """PUT assigns a group (200), DELETE unassigns (204); unknown groups are E0000007."""
        response = await api.client.put(f"{APPS}/svc/groups/sales", json={})
        assert response.status_code == 200, response.text
        assert response.json()["id"] == "sales"
        assert [g["id"] for g in (await api.client.get(f"{APPS}/svc/groups")).json()] == ["sales"]
        assert (await api.client.get(f"{APPS}/svc/users/dave")).json()["scope"] == "GROUP"
        assert (await api.client.delete(f"{APPS}/svc/groups/sales")).status_code == 204
        assert (await api.client.get(f"{APPS}/svc/groups/sales")).status_code == 404
        assert (await api.client.put(f"{APPS}/svc/groups/ghost", json={})).status_code == 404
