"""Refresh tokens, the admin view (spec §1.8)."""

from __future__ import annotations

from authz.store.base import IssuedToken
from tests.authz.management.kit import ISSUER, Api

BY_SERVER = "/api/v1/authorizationServers/orders/clients/web/tokens"
BY_USER = "/api/v1/users/alice/clients/web/tokens"


def minted_from(api: Api, refresh_id: str) -> str:
    """Record an access token minted with a refresh token; returns its jti."""
    claims = api.mint()
    with api.store.transaction() as tx:
        tx.record_token(IssuedToken(jti=claims["jti"], as_id="orders", client_id="web", user_id="alice",
                                    scopes=("offline_access",), issued_at=api.clock(), expires_at=api.clock() + 900,
                                    refresh_id=refresh_id, seq=int(claims["jti"].split(".")[1], 16)))
    return str(claims["jti"])


class TestRefreshTokenAdmin:
    async def test_list_by_server_and_by_user(self, api: Api) -> None:
        """Live refresh tokens are listed per server+client and per user+client in Okta's shape."""
        api.refresh_token("oar1")
        api.refresh_token("oar2", user_id="bob")
        by_server = (await api.client.get(BY_SERVER)).json()
        assert {t["id"] for t in by_server} == {"oar1", "oar2"}
        [token] = (await api.client.get(BY_USER)).json()
        assert token["id"] == "oar1"
        assert token["issuer"] == f"{ISSUER}/oauth2/orders"
        assert token["clientId"] == "web" and token["userId"] == "alice" and token["status"] == "ACTIVE"
        assert (await api.client.get(f"{BY_SERVER}/oar1")).json()["id"] == "oar1"
        clients = (await api.client.get("/api/v1/authorizationServers/orders/clients")).json()
        assert [c["client_id"] for c in clients] == ["web"]

    async def test_revoke_one(self, api: Api) -> None:
        """DELETE …/tokens/{id} revokes that refresh token and the access tokens minted from it."""
        api.refresh_token("oar1")
        api.refresh_token("oar2")
        jti = minted_from(api, "oar1")
        assert (await api.client.delete(f"{BY_SERVER}/oar1")).status_code == 204
        one, two = api.store.get_refresh_token("oar1"), api.store.get_refresh_token("oar2")
        assert one is not None and two is not None
        assert (one.status, two.status) == ("REVOKED", "ACTIVE")
        assert api.revocation.is_revoked({"iss": f"{ISSUER}/oauth2/orders", "jti": jti, "cid": "web"})
        assert (await api.client.get(f"{BY_SERVER}/oar1")).status_code == 404
        assert api.events("app.oauth2.as.token.revoke")

    async def test_revoke_all_for_user_and_client(self, api: Api) -> None:
        """DELETE …/users/{id}/clients/{cid}/tokens revokes only that user's tokens for that client."""
        api.refresh_token("oar1")
        api.refresh_token("oar2", user_id="bob")
        assert (await api.client.delete(BY_USER)).status_code == 204
        one, two = api.store.get_refresh_token("oar1"), api.store.get_refresh_token("oar2")
        assert one is not None and two is not None
        assert (one.status, two.status) == ("REVOKED", "ACTIVE")
        assert (await api.client.get(BY_USER)).json() == []

    async def test_missing_objects(self, api: Api) -> None:
        """Unknown servers, users, clients and token ids are E0000007."""
        assert (await api.client.get("/api/v1/authorizationServers/nope/clients/web/tokens")).status_code == 404
        assert (await api.client.get("/api/v1/users/nope/clients/web/tokens")).status_code == 404
        assert (await api.client.get("/api/v1/users/alice/clients/nope/tokens")).status_code == 404
        assert (await api.client.delete(f"{BY_SERVER}/oarnope")).status_code == 404

    async def test_needs_admin_token(self, api: Api) -> None:
        """The token admin API needs an admin token like every other route."""
        assert (await api.client.get(BY_SERVER, headers={"Authorization": "SSWS nope"})).status_code == 401
