"""Implicit revocation by configuration change (spec §5.2, issue 4): each trigger writes the right
watermark in the change's transaction; tokens minted before it are revoked, tokens minted after are not."""

from __future__ import annotations

from typing import Any

import pytest

from tests.authz.management.kit import Api
from tests.authz.management.test_apps import oidc_app
from tests.authz.management.test_servers import AS, RULE

DAY = 86400


def marks(api: Api, scope: str | None = None) -> list[tuple[str, str]]:
    return [(w["scope"], w["key"]) for w in api.watermarks() if scope is None or w["scope"] == scope]


class TestWatermarkShape:
    async def test_watermark_carries_the_current_sequence_and_a_day(self, api: Api) -> None:
        """before_seq is the store's current token sequence; exp is now + the longest access lifetime."""
        api.mint()
        api.mint()
        with api.store.transaction() as tx:
            seq = tx.current_token_seq()
        await api.client.post("/api/v1/users/alice/lifecycle/deactivate")
        [mark] = api.watermarks()
        assert mark == {"scope": "user", "key": "alice", "before_seq": seq, "exp": api.clock() + DAY}

    async def test_change_feed_names_the_changed_object(self, api: Api) -> None:
        """Every change appends a config entry so that other processes reload the object."""
        await api.client.post("/api/v1/apps/svc/lifecycle/deactivate")
        configs = [c.data for c in api.store.changes_since(0) if c.kind == "config"]
        assert {"kind": "app", "id": "svc"} in configs

    async def test_revocation_is_visible_before_the_call_returns(self, api: Api) -> None:
        """The process applies the feed before answering: the in-memory state already refuses the token."""
        token = api.mint(client_id="svc", user_id=None)
        assert not api.revocation.is_revoked(token)
        await api.client.post("/api/v1/apps/svc/lifecycle/deactivate")
        assert api.revocation.is_revoked(token)


class TestUserTriggers:
    async def test_deactivation_revokes_the_users_tokens(self, api: Api) -> None:
        """User deactivated → the user's earlier tokens are revoked; other users' are not."""
        alice, bob = api.mint(user_id="alice"), api.mint(user_id="bob")
        await api.client.post("/api/v1/users/alice/lifecycle/deactivate")
        assert marks(api) == [("user", "alice")]
        assert api.revocation.is_revoked(alice)
        assert not api.revocation.is_revoked(bob)

    async def test_deletion_revokes(self, api: Api) -> None:
        """User deleted (first DELETE deactivates, second deletes) → watermark each time."""
        token = api.mint(user_id="alice")
        await api.client.delete("/api/v1/users/alice")
        await api.client.delete("/api/v1/users/alice")
        assert marks(api) == [("user", "alice"), ("user", "alice")]
        assert api.revocation.is_revoked(token)

    async def test_refresh_tokens_are_marked_revoked(self, api: Api) -> None:
        """The user's refresh tokens are REVOKED in the same transaction."""
        api.refresh_token("rt-alice", user_id="alice")
        api.refresh_token("rt-bob", user_id="bob")
        await api.client.post("/api/v1/users/alice/lifecycle/deactivate")
        alice, bob = api.store.get_refresh_token("rt-alice"), api.store.get_refresh_token("rt-bob")
        assert alice is not None and bob is not None
        assert alice.status == "REVOKED"
        assert bob.status == "ACTIVE"

    async def test_suspension_is_not_revocation(self, api: Api) -> None:
        """Suspension keeps tokens (spec §9 D5); the grants check the status instead."""
        await api.client.post("/api/v1/users/alice/lifecycle/suspend")
        assert marks(api) == []

    async def test_token_minted_after_is_valid(self, api: Api) -> None:
        """No false positives: a token minted right after the deactivation (same second) is not revoked."""
        await api.client.post("/api/v1/users/alice/lifecycle/deactivate")
        await api.client.post("/api/v1/users/alice/lifecycle/activate")
        assert not api.revocation.is_revoked(api.mint(user_id="alice"))


class TestClientTriggers:
    @pytest.mark.parametrize("change", ["deactivate", "replace", "delete"])
    async def test_client_change_revokes_the_clients_tokens(self, api: Api, change: str) -> None:
        """Client deactivated, changed or deleted → every token of the client, whoever it was for."""
        before = [api.mint(client_id="web", user_id="alice"), api.mint(client_id="web", user_id=None)]
        other = api.mint(client_id="svc", user_id=None)
        if change == "deactivate":
            response = await api.client.post("/api/v1/apps/web/lifecycle/deactivate")
        elif change == "replace":
            body = oidc_app(grant_types=["password"], application_type="native")
            response = await api.client.put("/api/v1/apps/web", json=body)
        else:
            response = await api.client.delete("/api/v1/apps/web")
        assert response.status_code < 300, response.text
        assert ("client", "web") in marks(api)
        assert all(api.revocation.is_revoked(t) for t in before)
        assert not api.revocation.is_revoked(other)
        assert not api.revocation.is_revoked(api.mint(client_id="web", user_id="alice"))

    async def test_reactivation_does_not_restore(self, api: Api) -> None:
        """Spec §5.2: "Reactivating the client doesn't make the token valid again"."""
        token = api.mint(client_id="web")
        await api.client.post("/api/v1/apps/web/lifecycle/deactivate")
        await api.client.post("/api/v1/apps/web/lifecycle/activate")
        api.revocation.apply(api.store.changes_since(api.revocation.last_seq))
        assert api.revocation.is_revoked(token)

    async def test_assigning_is_not_revocation(self, api: Api) -> None:
        """Granting access (assigning a user or a group) revokes nothing."""
        await api.client.post("/api/v1/apps/svc/users", json={"id": "dave"})
        await api.client.put("/api/v1/apps/svc/groups/sales", json={})
        assert marks(api) == []

    async def test_direct_unassignment(self, api: Api) -> None:
        """Client unassigned from a user → that user's tokens for that client only."""
        await api.client.post("/api/v1/apps/svc/users", json={"id": "dave"})
        for_svc, for_web = api.mint(client_id="svc", user_id="dave"), api.mint(client_id="web", user_id="dave")
        await api.client.delete("/api/v1/apps/svc/users/dave")
        assert marks(api) == [("user_client", "dave|svc")]
        assert api.revocation.is_revoked(for_svc)
        assert not api.revocation.is_revoked(for_web)

    async def test_unassignment_keeping_access_through_a_group(self, api: Api) -> None:
        """A user unassigned directly but still assigned through a group keeps access, and tokens."""
        await api.client.delete("/api/v1/apps/web/users/alice")
        assert marks(api) == []

    async def test_group_unassignment(self, api: Api) -> None:
        """The user's group unassigned → tokens of members who lost access (bob), not of alice (direct)."""
        bob, alice = api.mint(user_id="bob"), api.mint(user_id="alice")
        await api.client.delete("/api/v1/apps/web/groups/engineering")
        assert marks(api) == [("user_client", "bob|web")]
        assert api.revocation.is_revoked(bob)
        assert not api.revocation.is_revoked(alice)

    async def test_removed_from_group(self, api: Api) -> None:
        """The user removed from the group that gave access → that user's tokens for the client."""
        token = api.mint(user_id="bob")
        await api.client.delete("/api/v1/groups/engineering/users/bob")
        assert marks(api) == [("user_client", "bob|web")]
        assert api.revocation.is_revoked(token)

    async def test_group_deleted(self, api: Api) -> None:
        """A group deleted → its members who lose a client lose that client's tokens."""
        await api.client.delete("/api/v1/groups/engineering")
        assert marks(api) == [("user_client", "bob|web")]


class TestServerTriggers:
    @pytest.mark.parametrize(("method", "path", "body"), [
        ("PUT", "", {"name": "Orders", "audiences": ["https://api.example.com/orders2"]}),
        ("POST", "/lifecycle/deactivate", None),
        ("POST", "/scopes", {"name": "orders:admin"}),
        ("POST", "/claims", {"name": "email", "value": "user.email"}),
        ("POST", "/policies", {"name": "More"}),
        ("POST", "/policies/00porders0000000001/rules", RULE),
        ("POST", "/policies/00porders0000000001/rules/0prorders0000000001/lifecycle/deactivate", None),
        ("DELETE", "", None),
    ])
    async def test_server_configuration_change_revokes(self, api: Api, method: str, path: str,
                                                       body: dict[str, Any] | None) -> None:
        """AS changed (resource, scopes, claims, policies, rules, the server) or deleted → all its tokens."""
        before = [api.mint(as_id="orders", client_id="svc", user_id=None), api.mint(as_id="orders")]
        other = api.mint(as_id="billing")
        response = await api.client.request(method, f"{AS}/orders{path}", json=body)
        assert response.status_code < 300, response.text
        assert marks(api) == [("as", "orders")]
        assert all(api.revocation.is_revoked(t) for t in before)
        assert not api.revocation.is_revoked(other)
        assert not api.revocation.is_revoked(api.mint(as_id="orders"))

    async def test_rejected_change_revokes_nothing(self, api: Api) -> None:
        """A change that fails validation writes nothing: no watermark, no event."""
        await api.client.post(f"{AS}/orders/scopes", json={"name": "orders:read"})
        assert marks(api) == []
        assert api.events() == []

    async def test_key_rotation_is_not_revocation(self, api: Api) -> None:
        """keyRotate: ACTIVE → EXPIRED (still published), NEXT → ACTIVE; no watermark (spec §5.2)."""
        created = (await api.client.post(AS, json={"name": "Pets", "audiences": ["https://api.example.com/pets"]})).json()
        api.store.changes_since(0)
        keys = f"{AS}/{created['id']}/credentials"
        before = {k["kid"]: k["status"] for k in (await api.client.get(f"{keys}/keys")).json()}
        response = await api.client.post(f"{keys}/lifecycle/keyRotate", json={"use": "sig"})
        assert response.status_code == 200, response.text
        after = {k["kid"]: k["status"] for k in response.json()}
        old_active = next(kid for kid, status in before.items() if status == "ACTIVE")
        old_next = next(kid for kid, status in before.items() if status == "NEXT")
        assert after[old_active] == "EXPIRED"
        assert after[old_next] == "ACTIVE"
        assert marks(api) == []
        assert api.events("app.oauth2.as.key.rollover")

    async def test_key_rotation_needs_use_sig(self, api: Api) -> None:
        """Any other use is 400 'Api validation failed: rotateKeys' (spec §1.1)."""
        response = await api.client.post(f"{AS}/orders/credentials/lifecycle/keyRotate", json={"use": "enc"})
        assert response.status_code == 400
        assert response.json()["errorSummary"] == "Api validation failed: rotateKeys"


class TestEventsHoldNoSecrets:
    async def test_configuration_events_need_no_redaction(self, api: Api) -> None:
        """Change events carry configuration (rules' actions.token included), never a secret: nothing is scrubbed."""
        await api.client.post(f"{AS}/orders/policies/00porders0000000001/rules", json=RULE)
        body = oidc_app()
        body["credentials"]["oauthClient"]["client_secret"] = "reports-secret-0123456789"
        await api.client.post("/api/v1/apps", json=body)
        await api.client.post("/api/v1/users", json={"profile": {"login": "erin@example.com"},
                                                     "credentials": {"password": {"value": "Erin-password-1"}}})
        assert api.syslog.redactions == 0
        assert "reports-secret-0123456789" not in str(api.events())
        assert "Erin-password-1" not in str(api.events())
