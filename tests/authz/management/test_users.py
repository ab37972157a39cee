"""``/api/v1/users`` and ``/api/v1/groups`` (spec §1.7)."""

from __future__ import annotations

from authz.passwords import verify_secret
from tests.authz.management.kit import Api
from tests.authz.management.test_servers import assert_validation

USERS = "/api/v1/users"
GROUPS = "/api/v1/groups"
NEW_USER = {"profile": {"firstName": "Erin", "lastName": "Lee", "email": "erin@example.com",
                        "login": "erin@example.com"},
            "credentials": {"password": {"value": "Erin-password-1"}}}


class TestUsers:
    async def test_create_activated_with_password(self, api: Api) -> None:
        """A user is created ACTIVE (activate=true by default) with a hashed password, and logged."""
        response = await api.client.post(USERS, json=NEW_USER)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["id"].startswith("00u")
        assert body["status"] == "ACTIVE"
        assert body["profile"]["login"] == "erin@example.com"
        assert "value" not in body["credentials"].get("password", {})
        stored = api.store.get_object("user", body["id"])
        assert stored is not None
        assert verify_secret("Erin-password-1", stored.secret_hash)
        assert api.events("user.lifecycle.create")

    async def test_create_staged(self, api: Api) -> None:
        """activate=false creates a STAGED user."""
        response = await api.client.post(USERS, params={"activate": "false"}, json=NEW_USER)
        assert response.json()["status"] == "STAGED"

    async def test_create_in_groups(self, api: Api) -> None:
        """groupIds puts the new user in existing groups; an unknown group is refused."""
        response = await api.client.post(USERS, json={**NEW_USER, "groupIds": ["sales"]})
        members = (await api.client.get(f"{GROUPS}/sales/users")).json()
        assert response.json()["id"] in {m["id"] for m in members}
        other = {**NEW_USER, "profile": {**NEW_USER["profile"], "login": "other@example.com"}, "groupIds": ["ghost"]}
        assert (await api.client.post(USERS, json=other)).status_code == 400

    async def test_duplicate_login_is_rejected(self, api: Api) -> None:
        """Logins are unique."""
        body = {"profile": {"login": "alice@example.com"}}
        assert_validation(await api.client.post(USERS, json=body), "login")

    async def test_short_login_and_password_are_rejected(self, api: Api) -> None:
        """A login under 5 characters, or a password under 8, names the field."""
        assert_validation(await api.client.post(USERS, json={"profile": {"login": "abc"}}), "profile.login")
        weak = {**NEW_USER, "credentials": {"password": {"value": "short"}}}
        assert_validation(await api.client.post(USERS, json=weak), "credentials.password.value")

    async def test_get_by_id_or_login(self, api: Api) -> None:
        """A user is addressed by id or by login; an unknown one is E0000007."""
        assert (await api.client.get(f"{USERS}/alice")).json()["profile"]["firstName"] == "Alice"
        assert (await api.client.get(f"{USERS}/alice@example.com")).json()["id"] == "alice"
        assert (await api.client.get(f"{USERS}/nope")).status_code == 404

    async def test_list_search_and_filter(self, api: Api) -> None:
        """q matches the start of login or names; filter=status eq "..." selects by status."""
        assert [u["id"] for u in (await api.client.get(USERS, params={"q": "ali"})).json()] == ["alice"]
        await api.client.post(f"{USERS}/dave/lifecycle/suspend")
        suspended = (await api.client.get(USERS, params={"filter": 'status eq "SUSPENDED"'})).json()
        assert [u["id"] for u in suspended] == ["dave"]

    async def test_partial_update_merges_profile(self, api: Api) -> None:
        """POST /users/{id} merges the profile; PUT replaces it."""
        response = await api.client.post(f"{USERS}/alice", json={"profile": {"nickName": "Al"}})
        assert response.status_code == 200, response.text
        profile = response.json()["profile"]
        assert profile["firstName"] == "Alice" and profile["nickName"] == "Al"
        replaced = await api.client.put(f"{USERS}/alice", json={"profile": {"login": "alice@example.com"}})
        assert "firstName" not in replaced.json()["profile"]
        assert api.events("user.account.update_profile")

    async def test_lifecycle_rules(self, api: Api) -> None:
        """Suspend only from ACTIVE, unsuspend only from SUSPENDED, activate only when not active."""
        assert (await api.client.post(f"{USERS}/alice/lifecycle/unsuspend")).status_code == 400
        assert (await api.client.post(f"{USERS}/alice/lifecycle/activate")).status_code == 403
        assert (await api.client.post(f"{USERS}/alice/lifecycle/suspend")).status_code == 200
        assert (await api.client.get(f"{USERS}/alice")).json()["status"] == "SUSPENDED"
        assert (await api.client.post(f"{USERS}/alice/lifecycle/suspend")).status_code == 400
        assert (await api.client.post(f"{USERS}/alice/lifecycle/unsuspend")).status_code == 200
        assert (await api.client.post(f"{USERS}/alice/lifecycle/deactivate")).status_code == 200
        assert (await api.client.get(f"{USERS}/alice")).json()["status"] == "DEPROVISIONED"
        assert (await api.client.post(f"{USERS}/alice/lifecycle/activate")).status_code == 200
        assert (await api.client.post(f"{USERS}/nope/lifecycle/activate")).status_code == 404
        assert (await api.client.post(f"{USERS}/alice/lifecycle/explode")).status_code == 404
        for verb in ("suspend", "unsuspend", "deactivate", "activate"):
            assert api.events(f"user.lifecycle.{verb}")

    async def test_first_delete_deactivates(self, api: Api) -> None:
        """Okta: a first DELETE deactivates; the second deletes, and removes the user's assignments."""
        assert (await api.client.delete(f"{USERS}/alice")).status_code == 204
        assert (await api.client.get(f"{USERS}/alice")).json()["status"] == "DEPROVISIONED"
        assert (await api.client.delete(f"{USERS}/alice")).status_code == 204
        assert (await api.client.get(f"{USERS}/alice")).status_code == 404
        web = api.store.get_object("app", "web")
        assert web is not None
        assert "alice" not in web.document["assignments"]["users"]
        assert api.events("user.lifecycle.delete")


class TestGroups:
    async def test_crud(self, api: Api) -> None:
        """A group is created (200, 00g id), read, renamed, and deleted (204)."""
        response = await api.client.post(GROUPS, json={"profile": {"name": "Ops", "description": "Operations"}})
        assert response.status_code == 200, response.text
        group_id = response.json()["id"]
        assert group_id.startswith("00g")
        assert (await api.client.get(f"{GROUPS}/{group_id}")).json()["profile"]["name"] == "Ops"
        renamed = await api.client.put(f"{GROUPS}/{group_id}", json={"profile": {"name": "Operations"}})
        assert renamed.json()["profile"]["name"] == "Operations"
        assert {g["id"] for g in (await api.client.get(GROUPS)).json()} >= {"engineering", "sales", group_id}
        assert (await api.client.delete(f"{GROUPS}/{group_id}")).status_code == 204
        assert (await api.client.get(f"{GROUPS}/{group_id}")).status_code == 404
        assert api.events("group.lifecycle.create") and api.events("group.lifecycle.delete")

    async def test_bad_input(self, api: Api) -> None:
        """A group needs a profile.name; an unknown property is refused; an unknown group is E0000007."""
        assert_validation(await api.client.post(GROUPS, json={"profile": {}}), "profile.name")
        assert_validation(await api.client.post(GROUPS, json={"profile": {"name": "X", "colour": "red"}}),
                          "profile.colour")
        assert_validation(await api.client.post(GROUPS, json={"profile": {"name": "Sales"}}), "profile.name")
        assert (await api.client.get(f"{GROUPS}/nope")).status_code == 404

    async def test_membership(self, api: Api) -> None:
        """PUT adds a member, DELETE removes one (204 each), both logged."""
        assert (await api.client.put(f"{GROUPS}/sales/users/alice")).status_code == 204
        assert "alice" in {u["id"] for u in (await api.client.get(f"{GROUPS}/sales/users")).json()}
        assert "sales" in {g["id"] for g in (await api.client.get(f"{USERS}/alice/groups")).json()}
        assert (await api.client.delete(f"{GROUPS}/sales/users/alice")).status_code == 204
        assert "alice" not in {u["id"] for u in (await api.client.get(f"{GROUPS}/sales/users")).json()}
        assert (await api.client.put(f"{GROUPS}/ghost/users/alice")).status_code == 404
        assert (await api.client.put(f"{GROUPS}/sales/users/ghost")).status_code == 404
        assert api.events("group.user_membership.add") and api.events("group.user_membership.remove")

    async def test_delete_removes_memberships_and_assignments(self, api: Api) -> None:
        """Deleting a group takes its memberships and app assignments with it."""
        assert (await api.client.delete(f"{GROUPS}/engineering")).status_code == 204
        bob = api.store.get_object("user", "bob")
        web = api.store.get_object("app", "web")
        assert bob is not None and web is not None
        assert bob.document["groups"] == []
        assert web.document["assignments"]["groups"] == []
