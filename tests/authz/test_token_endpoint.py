"""/v1/token: grants, client authentication and the spec's error strings (spec §2.4-§2.6, §3)."""

from __future__ import annotations

import jwt

from tests.authz.oauth_kit import SECRET, WEB_SECRET, Core


def claims_of(token: str) -> dict[str, object]:
    return jwt.decode(token, options={"verify_signature": False})


class TestClientCredentials:
    async def test_issues_access_token_with_okta_claims(self, core: Core) -> None:
        """An RS256 at+jwt with ver, jti, iss, aud, sub=client id, iat, exp, cid, scp and client_id; no uid."""
        response = await core.cc("orders:read")
        assert response.status_code == 200, response.text
        body = response.json()
        assert response.headers["cache-control"] == "no-store"
        assert set(body) == {"token_type", "expires_in", "access_token", "scope"}
        header = jwt.get_unverified_header(body["access_token"])
        assert header["alg"] == "RS256" and header["typ"] == "at+jwt" and header["kid"]
        claims = claims_of(body["access_token"])
        assert claims["iss"] == "http://core.test/oauth2/orders"
        assert claims["aud"] == "https://api.example.com/orders"
        assert claims["sub"] == claims["cid"] == claims["client_id"] == "svc"
        assert claims["scp"] == ["orders:read"] and claims["ver"] == 1 and "uid" not in claims
        assert str(claims["jti"]).startswith("AT.")

    async def test_lifetime_comes_from_the_rule(self, core: Core) -> None:
        """exp - iat = accessTokenLifetimeMinutes × 60, and expires_in agrees."""
        body = (await core.cc()).json()
        claims = claims_of(body["access_token"])
        assert claims["exp"] - claims["iat"] == 30 * 60 == body["expires_in"]  # type: ignore[operator]

    async def test_issued_token_is_recorded_with_its_event(self, core: Core) -> None:
        """The token record and the grant event are written together."""
        body = (await core.cc()).json()
        jti = str(claims_of(body["access_token"])["jti"])
        record = core.store.get_token(jti)
        assert record is not None and record.client_id == "svc" and record.scopes == ("orders:read",)
        events = core.events("app.oauth2.as.token.grant.access_token")
        assert events[-1]["target"][0]["id"] == jti
        assert body["access_token"] not in str(core.events())

    async def test_partial_scopes_mint_nothing(self, core: Core) -> None:
        """A request for several scopes of which the policy allows only some fails; nothing is issued."""
        response = await core.cc("orders:read orders:admin")
        assert response.status_code == 401
        assert response.json() == {"error": "access_denied", "error_description":
                                   "Policy evaluation failed for this request, please check the policy configurations."}
        assert core.store.list_tokens(client_id="svc") == []
        event = core.events("app.oauth2.as.token.grant")[-1]
        assert event["outcome"] == {"result": "FAILURE", "reason": "no_matching_policy"}
        debug = event["debugContext"]["debugData"]
        assert debug["denied_scopes"] == "orders:read orders:admin"
        assert debug["requested_scopes"] == "orders:read orders:admin" and debug["client_id"] == "svc"
        assert "orders:admin" in str(debug["policy_evaluation"])

    async def test_openid_is_refused(self, core: Core) -> None:
        """openid with client_credentials → invalid_scope with Okta's description."""
        response = await core.cc("openid orders:read")
        assert response.status_code == 400
        assert response.json()["error_description"] == "Cannot request 'openid' scopes using client credentials."

    async def test_undefined_scope_is_invalid_scope(self, core: Core) -> None:
        """An undefined scope → invalid_scope no_matching_scope."""
        response = await core.cc("orders:delete")
        assert response.json() == {"error": "invalid_scope", "error_description":
                                   "One or more scopes are not configured for the authorization server resource."}
        assert core.events("app.oauth2.as.token.grant")[-1]["outcome"]["reason"] == "no_matching_scope"

    async def test_default_scopes_when_scope_omitted(self, core: Core) -> None:
        """Omitted scope → the AS's default scopes permitted by the rule."""
        response = await core.token({"grant_type": "client_credentials"}, auth=("svc", SECRET))
        assert response.json()["scope"] == "orders:read"

    async def test_no_default_scopes_error(self, core: Core) -> None:
        """Omitted scope on an AS without default scopes → invalid_scope no_default_scopes."""
        response = await core.token({"grant_type": "client_credentials"}, auth=("svc", SECRET), as_id="billing")
        assert response.json()["error_description"] == ("The authorization server resource does not have any "
                                                        "configured default scopes, 'scope' must be provided.")

    async def test_tokens_are_per_authorization_server(self, core: Core) -> None:
        """The same client gets a billing token with billing's issuer and audience."""
        claims = claims_of((await core.cc("billing:read", as_id="billing")).json()["access_token"])
        assert claims["iss"] == "http://core.test/oauth2/billing" and claims["aud"] == "https://api.example.com/billing"


class TestPassword:
    async def test_password_grant_issues_access_id_and_refresh_tokens(self, core: Core) -> None:
        """sub is the login, uid the user id; an ID token with openid; a refresh token with offline_access."""
        response = await core.password("openid profile offline_access orders:read")
        assert response.status_code == 200, response.text
        body = response.json()
        claims = claims_of(body["access_token"])
        assert claims["sub"] == "alice@example.com" and claims["uid"] == "alice"
        assert claims["exp"] - claims["iat"] == 15 * 60  # type: ignore[operator]
        id_claims = claims_of(body["id_token"])
        assert id_claims["sub"] == "alice" and id_claims["aud"] == "web"
        assert id_claims["exp"] - id_claims["iat"] == 3600  # type: ignore[operator]
        assert id_claims["name"] == "Alice Doe" and "at_hash" in id_claims
        assert body["refresh_token"] and "." not in body["refresh_token"]

    async def test_no_refresh_token_without_offline_access(self, core: Core) -> None:
        """refresh_token is present only if offline_access was granted; id_token only with openid."""
        body = (await core.password("orders:read")).json()
        assert "refresh_token" not in body and "id_token" not in body

    async def test_user_not_assigned_comes_before_policy(self, core: Core) -> None:
        """An unassigned user fails with user_not_assigned even though no rule would match either."""
        response = await core.password("orders:read", username="bob@example.com")
        assert response.status_code == 400
        assert response.json() == {"error": "access_denied",
                                   "error_description": "User is not assigned to the client application."}
        assert core.events("app.oauth2.as.token.grant")[-1]["outcome"]["reason"] == "user_not_assigned"

    async def test_assigned_user_without_a_rule_for_them_fails(self, core: Core) -> None:
        """The brief: without a rule allowing the client, user and scope combination, the request fails."""
        response = await core.password("orders:read", username="dave@example.com")
        assert response.status_code == 401 and response.json()["error"] == "access_denied"
        debug = core.events("app.oauth2.as.token.grant")[-1]["debugContext"]["debugData"]
        assert debug["user_id"] == "dave"
        assert "neither included by id nor by one of its groups" in str(debug["policy_evaluation"])

    async def test_wrong_password(self, core: Core) -> None:
        """Bad credentials → invalid_grant 'The credentials provided were invalid.'"""
        response = await core.token({"grant_type": "password", "username": "alice@example.com", "password": "nope",
                                     "scope": "orders:read"}, auth=("web", WEB_SECRET))
        assert response.json() == {"error": "invalid_grant", "error_description": "The credentials provided were invalid."}

    async def test_suspended_user_gets_no_grant(self, core: Core) -> None:
        """Spec §9 D5: a suspended user's correct password still gets no token."""
        response = await core.password("orders:read", username="carol@example.com")
        assert response.json()["error"] == "invalid_grant"
        assert core.events("app.oauth2.as.token.grant")[-1]["outcome"]["reason"] == "user_not_active"

    async def test_oidc_scopes_need_the_rule_unless_implicit(self, core: Core) -> None:
        """Spec §9 D1: phone is not in the rule, so the request fails; oidcScopesImplicit grants it."""
        response = await core.password("openid phone orders:read")
        assert response.json()["error"] == "access_denied"
        await core.update_server("orders", lambda d: {**d, "oidcScopesImplicit": True})
        response = await core.password("openid phone orders:read")
        assert response.status_code == 200 and response.json()["scope"] == "openid phone orders:read"


class TestGrantTypes:
    async def test_grant_type_not_allowed_for_client_is_unauthorized_client(self, core: Core) -> None:
        """Spec §9 D6: a known grant the client lacks → unauthorized_client naming its grant types."""
        response = await core.token({"grant_type": "password", "username": "a", "password": "b"}, auth=("svc", SECRET))
        assert response.json() == {"error": "unauthorized_client", "error_description":
                                   "The client is not authorized to use the provided grant type. Configured grant types: [client_credentials]."}

    async def test_unknown_grant_type_is_unsupported(self, core: Core) -> None:
        """Spec §9 D6: an unknown grant → unsupported_grant_type."""
        response = await core.token({"grant_type": "urn:example:magic"}, auth=("svc", SECRET))
        assert response.json()["error"] == "unsupported_grant_type"
        assert response.json()["error_description"].endswith("Configured grant types: [client_credentials].")

    async def test_missing_grant_type(self, core: Core) -> None:
        """No grant_type → invalid_request listing the valid values."""
        response = await core.token({}, auth=("svc", SECRET))
        assert response.json()["error_description"].startswith("The token request must specify a 'grant_type'.")

    async def test_duplicate_parameters(self, core: Core) -> None:
        """Repeated parameters → invalid_request."""
        response = await core.client.post("/oauth2/orders/v1/token", auth=("svc", SECRET),
                                          content="grant_type=client_credentials&scope=a&scope=b",
                                          headers={"content-type": "application/x-www-form-urlencoded"})
        assert response.json()["error_description"] == "The request contained multiple parameters with the same name."

    async def test_unknown_and_inactive_authorization_server(self, core: Core) -> None:
        """A protocol request to an unknown or inactive AS → invalid_request 'The authorization server id is invalid.'"""
        response = await core.cc(as_id="nope")
        assert response.status_code == 400
        assert response.json() == {"error": "invalid_request", "error_description": "The authorization server id is invalid."}
        await core.update_server("billing", lambda d: {**d, "status": "INACTIVE"})
        assert (await core.cc("billing:read", as_id="billing")).json()["error_description"] == \
            "The authorization server id is invalid."


class TestClientAuthentication:
    async def test_no_credentials(self, core: Core) -> None:
        """No credentials → 401 invalid_client 'No client credentials found.'"""
        response = await core.token({"grant_type": "client_credentials"})
        assert response.status_code == 401
        assert response.json() == {"error": "invalid_client", "error_description": "No client credentials found."}

    async def test_unknown_client(self, core: Core) -> None:
        """Unknown client_id → 401 'Invalid value for 'client_id' parameter.' with a Basic challenge."""
        response = await core.cc(client=("ghost", SECRET))
        assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Basic")
        assert response.json()["error_description"] == "Invalid value for 'client_id' parameter."

    async def test_wrong_secret(self, core: Core) -> None:
        """Wrong secret → 'The client secret supplied for a confidential client is invalid.'"""
        response = await core.cc(client=("svc", "wrong-secret-123456"))
        assert response.json()["error_description"] == "The client secret supplied for a confidential client is invalid."
        event = core.events("app.oauth2.as.token.grant")[-1]
        assert event["outcome"]["reason"] == "invalid_client_secret" and event["client"]["id"] == "svc"
        assert "wrong-secret-123456" not in str(core.events())

    async def test_multiple_credentials(self, core: Core) -> None:
        """Basic header and client_secret in the body → 401 invalid_request."""
        response = await core.token({"grant_type": "client_credentials", "client_id": "svc", "client_secret": SECRET},
                                    auth=("svc", SECRET))
        assert response.status_code == 401 and response.json()["error"] == "invalid_request"
        assert response.json()["error_description"].startswith("Cannot supply multiple client credentials.")

    async def test_credentials_in_query(self, core: Core) -> None:
        """Credentials in the query string → 400 invalid_request."""
        response = await core.client.post(f"/oauth2/orders/v1/token?client_id=svc&client_secret={SECRET}",
                                          data={"grant_type": "client_credentials"})
        assert response.status_code == 400
        assert response.json()["error_description"] == "Client credentials cannot be supplied via query parameters."

    async def test_malformed_basic(self, core: Core) -> None:
        """A Basic header that does not decode → 'Found Authentication header but was not valid client credentials.'"""
        response = await core.token({"grant_type": "client_credentials"}, headers={"Authorization": "Basic %%%"})
        assert response.json()["error_description"] == "Found Authentication header but was not valid client credentials."

    async def test_wrong_method(self, core: Core) -> None:
        """A client_secret_basic app posting its secret in the body fails the generic way."""
        response = await core.token({"grant_type": "client_credentials", "client_id": "svc", "client_secret": SECRET})
        assert response.json()["error_description"] == ("Client authentication failed. Either the client or the "
                                                        "client credentials are invalid.")


class TestPrivateKeyJwt:
    async def test_assertion_authenticates_once(self, tmp_path: object) -> None:
        """private_key_jwt with the app's jwks; the same jti cannot be used twice."""
        import copy
        from pathlib import Path

        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        from tests.authz.oauth_kit import BASE_CONFIG, build_core, rsa_key_pair

        pem, jwk = rsa_key_pair()
        doc = copy.deepcopy(BASE_CONFIG)
        doc["apps"].append({"clientId": "signer", "name": "Signer", "tokenEndpointAuthMethod": "private_key_jwt",
                            "grantTypes": ["client_credentials"], "jwks": {"keys": [{**jwk, "kid": "k1"}]}})
        doc["authorizationServers"][0]["policies"][0]["conditions"]["clients"]["include"].append("signer")
        assert isinstance(tmp_path, Path)
        async for core in build_core(tmp_path, doc):
            now = int(core.clock())
            key = load_pem_private_key(pem, None)
            claims = {"iss": "signer", "sub": "signer", "aud": "http://core.test/oauth2/orders/v1/token",
                      "iat": now, "exp": now + 300, "jti": "assertion-1"}
            assertion = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})  # type: ignore[arg-type]
            form = {"grant_type": "client_credentials", "scope": "orders:read",
                    "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    "client_assertion": assertion}
            first = await core.token(form)
            assert first.status_code == 200, first.text
            second = await core.token(form)
            assert second.json()["error_description"] == "The client_assertion token has already been used."
            wrong_aud = jwt.encode({**claims, "jti": "a2", "aud": "https://elsewhere"}, key, algorithm="RS256")  # type: ignore[arg-type]
            third = await core.token({**form, "client_assertion": wrong_aud})
            assert third.json()["error_description"] == ("The audience claim for client_assertion must be the "
                                                         "endpoint invoked for the request.")
            too_long = jwt.encode({**claims, "jti": "a3", "exp": now + 7200}, key, algorithm="RS256")  # type: ignore[arg-type]
            fourth = await core.token({**form, "client_assertion": too_long})
            assert fourth.json()["error_description"] == ("The client_assertion token has an expiration too far "
                                                          "into the future.")

