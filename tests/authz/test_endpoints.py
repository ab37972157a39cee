"""/v1/introspect, /v1/revoke, /v1/userinfo, /v1/keys and discovery (spec §2.1, §2.2, §2.7, §2.8)."""

from __future__ import annotations

from tests.authz.oauth_kit import SECRET, WEB_SECRET, Core

SVC = ("svc", SECRET)
WEB = ("web", WEB_SECRET)


async def introspect(core: Core, token: str, auth: tuple[str, str] = SVC, as_id: str = "orders") -> dict[str, object]:
    response = await core.client.post(f"/oauth2/{as_id}/v1/introspect", data={"token": token}, auth=auth)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, object] = response.json()
    return body


async def revoke(core: Core, token: str, auth: tuple[str, str] = SVC) -> int:
    response = await core.client.post("/oauth2/orders/v1/revoke", data={"token": token}, auth=auth)
    assert response.content == b""
    return response.status_code


class TestIntrospect:
    async def test_active_access_token(self, core: Core) -> None:
        """RFC 7662 fields for a live access token."""
        token = (await core.cc()).json()["access_token"]
        body = await introspect(core, token)
        assert body["active"] is True and body["client_id"] == "svc" and body["scope"] == "orders:read"
        assert body["token_type"] == "Bearer" and str(body["jti"]).startswith("AT.")

    async def test_inactive_cases_are_exactly_active_false(self, core: Core) -> None:
        """Unknown, malformed, expired, revoked and other-AS tokens → exactly {"active": false}."""
        token = (await core.cc()).json()["access_token"]
        billing = (await core.cc("billing:read", as_id="billing")).json()["access_token"]
        assert await introspect(core, "not-a-token") == {"active": False}
        assert await introspect(core, token[:-4] + "AAAA") == {"active": False}
        assert await introspect(core, billing) == {"active": False}
        core.clock.advance(31 * 60)
        assert await introspect(core, token) == {"active": False}
        fresh = (await core.cc()).json()["access_token"]
        assert await revoke(core, fresh) == 200
        assert await introspect(core, fresh) == {"active": False}

    async def test_other_client_of_the_same_as_may_introspect(self, core: Core) -> None:
        """Spec §9 D11: a resource server that is another client of the AS can introspect."""
        token = (await core.cc()).json()["access_token"]
        assert (await introspect(core, token, auth=WEB))["active"] is True

    async def test_introspection_by_other_clients_can_be_switched_off(self, core: Core) -> None:
        """Spec §9 D11's flag: introspectOtherClients false → another client's token reads as inactive."""
        await core.update_server("orders", lambda d: {**d, "introspectOtherClients": False})
        token = (await core.cc()).json()["access_token"]
        assert await introspect(core, token, auth=WEB) == {"active": False}
        assert (await introspect(core, token))["active"] is True

    async def test_refresh_token_introspection(self, core: Core) -> None:
        """A live refresh token is active with its scopes and user."""
        body = (await core.password("offline_access orders:read")).json()
        result = await introspect(core, body["refresh_token"], auth=WEB)
        assert result["active"] is True and result["username"] == "alice@example.com"

    async def test_callers_must_authenticate(self, core: Core) -> None:
        """No credentials → 401 invalid_client."""
        response = await core.client.post("/oauth2/orders/v1/introspect", data={"token": "x"})
        assert response.status_code == 401 and response.json()["error"] == "invalid_client"


class TestRevoke:
    async def test_unknown_token_is_200(self, core: Core) -> None:
        """RFC 7009: invalid tokens also get 200."""
        assert await revoke(core, "no-such-token") == 200

    async def test_a_client_revokes_only_its_own_tokens(self, core: Core) -> None:
        """Another client's revocation leaves the token active (and is logged as a failure)."""
        token = (await core.cc()).json()["access_token"]
        assert await revoke(core, token, auth=WEB) == 200
        assert (await introspect(core, token))["active"] is True
        assert core.events("app.oauth2.as.token.revoke")[-1]["outcome"]["reason"] == "token_not_owned"

    async def test_revoking_an_access_token_is_visible_immediately(self, core: Core) -> None:
        """The revocation is committed and applied to the revocation state before the response."""
        token = (await core.cc()).json()["access_token"]
        await revoke(core, token)
        import jwt

        claims = jwt.decode(token, options={"verify_signature": False})
        assert core.revocation.is_revoked(claims)
        assert core.events("app.oauth2.as.token.revoke")[-1]["outcome"]["result"] == "SUCCESS"

    async def test_revoking_refresh_token_revokes_its_access_tokens(self, core: Core) -> None:
        """Revoking a refresh token revokes the access tokens minted from it, not the reverse."""
        body = (await core.password("offline_access orders:read")).json()
        await revoke(core, body["access_token"], auth=WEB)
        assert (await introspect(core, body["refresh_token"], auth=WEB))["active"] is True
        again = (await core.token({"grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
                                  auth=WEB)).json()
        await revoke(core, body["refresh_token"], auth=WEB)
        assert await introspect(core, again["access_token"]) == {"active": False}
        assert await introspect(core, body["refresh_token"], auth=WEB) == {"active": False}


class TestUserinfo:
    async def test_claims_by_granted_scopes(self, core: Core) -> None:
        """sub is the user id; profile and email release their claims."""
        token = (await core.password("openid profile email orders:read")).json()["access_token"]
        response = await core.client.get("/oauth2/orders/v1/userinfo", headers={"Authorization": f"Bearer {token}"})
        assert response.json() == {"sub": "alice", "name": "Alice Doe", "given_name": "Alice", "family_name": "Doe",
                                   "preferred_username": "alice@example.com", "email": "alice@example.com",
                                   "email_verified": True}

    async def test_without_openid_is_insufficient_scope(self, core: Core) -> None:
        """A token without openid → 403 insufficient_scope."""
        token = (await core.password("orders:read")).json()["access_token"]
        response = await core.client.get("/oauth2/orders/v1/userinfo", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 403 and 'error="insufficient_scope"' in response.headers["www-authenticate"]

    async def test_invalid_or_revoked_token_is_401(self, core: Core) -> None:
        """401 invalid_token 'The access token is invalid'."""
        token = (await core.password("openid orders:read")).json()["access_token"]
        await revoke(core, token, auth=WEB)
        response = await core.client.get("/oauth2/orders/v1/userinfo", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401
        assert 'error_description="The access token is invalid"' in response.headers["www-authenticate"]


class TestDiscoveryAndKeys:
    async def test_metadata(self, core: Core) -> None:
        """Both well-known documents name the AS's issuer and endpoints."""
        for name in ("openid-configuration", "oauth-authorization-server"):
            doc = (await core.client.get(f"/oauth2/orders/.well-known/{name}")).json()
            assert doc["issuer"] == "http://core.test/oauth2/orders"
            assert doc["token_endpoint"] == "http://core.test/oauth2/orders/v1/token"
            assert doc["code_challenge_methods_supported"] == ["S256"]
            assert "openid" in doc["scopes_supported"] and "orders:read" not in doc["scopes_supported"]

    async def test_keys_have_cache_control(self, core: Core) -> None:
        """The JWKS is cacheable: Cache-Control max-age, must-revalidate."""
        response = await core.client.get("/oauth2/orders/v1/keys")
        assert response.headers["cache-control"].startswith("max-age=")
        keys = response.json()["keys"]
        assert keys and all(k["kty"] == "RSA" and "d" not in k for k in keys)

    async def test_unknown_as_is_okta_404(self, core: Core) -> None:
        """An unknown AS id → 404 E0000007 on metadata and keys."""
        response = await core.client.get("/oauth2/nope/v1/keys")
        assert response.status_code == 404 and response.json()["errorCode"] == "E0000007"
        assert response.json()["errorSummary"] == "Not found: Resource not found: nope (AuthorizationServer)"


class TestSystemLogHygiene:
    async def test_no_token_or_secret_reaches_the_log(self, core: Core) -> None:
        """Grants, refreshes, revocations and denials log ids and reasons, never token values or secrets."""
        body = (await core.password("openid offline_access orders:read")).json()
        again = (await core.token({"grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
                                  auth=WEB)).json()
        await revoke(core, body["refresh_token"], auth=WEB)
        await core.cc(client=("svc", "not-the-secret-000"))
        text = str(core.events())
        for value in (body["access_token"], body["refresh_token"], body["id_token"], again["access_token"],
                      WEB_SECRET, SECRET, "not-the-secret-000", "correct-horse-battery"):
            assert value not in text
        assert core.syslog.redactions == 0  # nothing needed scrubbing: the events were clean as written
        types = {e["eventType"] for e in core.events()}
        assert {"app.oauth2.as.token.grant.access_token", "app.oauth2.as.token.grant.id_token",
                "app.oauth2.as.token.grant.refresh_token", "app.oauth2.as.token.revoke",
                "app.oauth2.as.token.grant"} <= types
